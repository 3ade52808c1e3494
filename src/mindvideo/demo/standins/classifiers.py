"""The evaluation classifiers' stand-ins: frame → scene class, clip → class × motion (paper 4.3).

The paper scores frames with an ImageNet ViT (google/vit-base-patch16-224) and clips with a
Kinetics-400 VideoMAE (MCG-NJU/videomae-base-finetuned-kinetics). On the simulated dataset the
meaningful classes are the simulator's own, so the stand-ins are transformers classifiers trained
on the training segments' ground truth (``scenes.json``):

- ``image_classifier/``: ``ResNetForImageClassification`` over the 73 scene classes
  (``id2label`` = the class names) + a ``ViTImageProcessor`` (input = the frame size, the real
  ViT's mean/std 0.5). A convolutional network, not a ViT: small ViTs trained from scratch in a
  CPU budget learn colour but not shape (measured in docs/standins.md). The evaluation loads it
  with the same auto class as the real ViT, so the code path is the GPU one.
- ``video_classifier/``: ``VideoMAEForVideoClassification`` over class × motion (73 × 9 = 657
  labels ``"red circle, zoom-fast"``), 6 frames in one tubelet (every patch token sees the
  whole clip, so its embedding reads the patch's motion), + a ``VideoMAEImageProcessor``
  (ImageNet mean/std, as the Kinetics model). Trained on the single-scene clips of the training
  TRs and of the TR boundaries (the last 3 frames of one TR and the first 3 of the next),
  flipped left-right and played backwards at random: no label names a direction.

Both load with ``ImageClassifier.from_pretrained`` / ``VideoClassifier.from_pretrained(...,
num_frames=6)`` (``mindvideo.evaluation``) like the real folders. Their scores are not ImageNet
or Kinetics scores; ``standin.json`` says so.

Both heads are trained factorised and saved as the plain linear layer they equal, so a
combination rare in training still gets a sensible score:

- **by word** (:class:`WordLinear`): a class's weight vector is the sum of its name's words'
  vectors (``"red circle"`` = ``red`` + ``circle``), so a shape is learned from the scenes of
  every colour (frame top-1 0.85 → 0.93 on the demo);
- the video classifier, **by class and motion**: ``logit(c, m) = a_c · h + b_m · h`` with a
  class head and a motion head, i.e. cross-entropy on class plus cross-entropy on motion — saved
  as the one linear layer over the 657 labels it equals (``W[c·9 + m] = A[c] + B[m]``); its
  softmax is the product of the class and motion softmaxes.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mindvideo.demo.standins.base import (
    ClassifierPreset,
    ConvClassifierPreset,
    EpochDataset,
    StandinData,
    StandinJob,
    epoch_rng,
    final_loss,
    fit,
    normalise,
    seeded,
    write_marker,
)
from mindvideo.utils import atomic_dir

__all__ = [
    "FactorisedVideoClassifier",
    "WordLinear",
    "build_image_classifier",
    "build_video_classifier",
    "topk_accuracy",
    "train_image_standin",
    "train_video_standin",
    "video_clips",
]

logger = logging.getLogger(__name__)

VIT_MEAN = VIT_STD = (0.5, 0.5, 0.5)  # google/vit-base-patch16-224's preprocessor_config.json
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the Kinetics VideoMAE's
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_FRAMES = 6
TUBELET = 6
#: Kept in ``config.json`` (transformers keeps extra keys): the evaluation recognises a stand-in
#: by it even when only the model files are copied, and says its scores are not ImageNet's.
STANDIN_NOTE = {
    "image": "stand-in trained on the simulator's scene classes, not ImageNet",
    "video": "stand-in trained on the simulator's class x motion labels, not Kinetics-400",
}


def _tower(spec: ClassifierPreset, size: int) -> dict[str, Any]:
    if size % spec.grid:
        raise ValueError(f"frame size {size} is not a multiple of {spec.grid} patches")
    return dict(
        image_size=size,
        patch_size=size // spec.grid,
        hidden_size=spec.width,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=4 * spec.width,
    )


def build_image_classifier(spec: ConvClassifierPreset, size: int, labels: list[str]) -> Any:
    """A randomly initialised ``ResNetForImageClassification`` (basic blocks) over ``labels``;
    ``size`` must survive its stem's and stages' downsampling (×4, then ×2 per later stage)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    if len(spec.channels) != len(spec.depths):
        raise ValueError(f"{len(spec.channels)} stage widths for {len(spec.depths)} depths")
    if size < 4 * 2 ** (len(spec.channels) - 1):
        raise ValueError(f"frame size {size} is too small for {len(spec.channels)} stages")
    config = ResNetConfig(
        embedding_size=spec.stem,
        hidden_sizes=list(spec.channels),
        depths=list(spec.depths),
        layer_type="basic",
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        mindvideo_standin=STANDIN_NOTE["image"],
    )
    return ResNetForImageClassification(config)


class WordLinear(nn.Module):
    """A linear layer over named labels whose weight is shared through the labels' words.

    ``forward(x [N, D]) -> [N, C]`` with ``W[c] = Σ_{w in words(c)} A[w]`` and likewise the bias,
    where ``words(c)`` are the whitespace-separated words of ``labels[c]``. Labels must have
    distinct word sets (else two labels would always score alike). :meth:`folded` returns the
    ``nn.Linear`` it equals, which is what is saved.
    """

    def __init__(self, in_features: int, labels: list[str]) -> None:
        super().__init__()
        word_sets = [frozenset(label.split()) for label in labels]
        if len(set(word_sets)) != len(word_sets):
            raise ValueError(
                "two labels have the same words; a word-factorised head cannot tell them apart"
            )
        words = sorted(set().union(*word_sets))
        incidence = torch.zeros(len(labels), len(words))
        for c, names in enumerate(word_sets):
            incidence[c, [words.index(w) for w in names]] = 1.0
        self.words = words
        self.register_buffer("incidence", incidence, persistent=False)
        self.word_head = nn.Linear(in_features, len(words))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.word_head(x) @ self.incidence.T

    @torch.no_grad()
    def folded(self) -> nn.Linear:
        """The plain ``nn.Linear(D, C)`` that computes the same logits."""
        linear = nn.Linear(self.word_head.in_features, self.incidence.shape[0])
        linear.to(self.word_head.weight)
        linear.weight.copy_(self.incidence @ self.word_head.weight)
        linear.bias.copy_(self.incidence @ self.word_head.bias)
        return linear


def build_video_classifier(spec: ClassifierPreset, size: int, labels: list[str]) -> Any:
    """A randomly initialised ``VideoMAEForVideoClassification`` over ``labels`` (6 frames in
    one tubelet, mean pooling as the Kinetics model)."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    config = VideoMAEConfig(
        **_tower(spec, size),
        num_frames=NUM_FRAMES,
        tubelet_size=TUBELET,
        use_mean_pooling=True,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        mindvideo_standin=STANDIN_NOTE["video"],
    )
    return VideoMAEForVideoClassification(config)


class FactorisedVideoClassifier(nn.Module):
    """VideoMAE with a class head and a motion head (see the module docstring).

    ``forward(pixel_values: [N, 6, 3, H, W]) -> (class logits [N, C], motion logits [N, M])``.
    """

    def __init__(
        self, model: Any, n_classes: int, n_motions: int, class_names: list[str] | None = None
    ) -> None:
        super().__init__()
        self.model = model
        hidden = model.config.hidden_size
        if class_names is not None and len(class_names) != n_classes:
            raise ValueError(f"{len(class_names)} class names for {n_classes} classes")
        self.class_head: nn.Module = (
            nn.Linear(hidden, n_classes) if class_names is None else WordLinear(hidden, class_names)
        )
        self.motion_head = nn.Linear(hidden, n_motions)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.videomae(pixel_values).last_hidden_state  # [N, L, D]
        if self.model.fc_norm is not None:
            pooled = self.model.fc_norm(tokens.mean(1))
        else:
            pooled = tokens[:, 0]
        return self.class_head(pooled), self.motion_head(pooled)

    @torch.no_grad()
    def fold(self) -> Any:
        """Write the two heads into the model's classifier (label ``c·M + m``); returns it."""
        head = self.class_head
        classes = head.folded() if isinstance(head, WordLinear) else head
        w = classes.weight[:, None, :] + self.motion_head.weight[None, :, :]  # [C, M, D]
        b = classes.bias[:, None] + self.motion_head.bias[None, :]
        self.model.classifier.weight.copy_(w.reshape(-1, w.shape[-1]))
        self.model.classifier.bias.copy_(b.reshape(-1))
        return self.model


class LabelledFrames(EpochDataset):
    """Frames (uint8 ``[H, W, 3]``, flipped left-right at random: a class does not depend on
    it) with their class."""

    def __init__(self, frames: np.ndarray, labels: np.ndarray, seed: int) -> None:
        self.frames = frames
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.seed = seed

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        frame = self.frames[index]
        if epoch_rng(self.seed, self.epoch, index, 4).random() < 0.5:
            frame = frame[:, ::-1]
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(frame)),
            "label": self.labels[index],
        }


class LabelledClips(EpochDataset):
    """Clips (uint8 ``[6, H, W, 3]``) with their class and motion, each flipped left-right and
    played backwards at random (by ``seed``, the epoch and the index). Neither changes a label:
    a motion's label names its kind and speed, not its direction — a pan or a translation either
    way, a zoom in or out, a rotation either way (the simulator draws the direction apart)."""

    def __init__(
        self, clips: np.ndarray, classes: np.ndarray, motions: np.ndarray, seed: int
    ) -> None:
        self.clips = clips
        self.classes = torch.from_numpy(np.asarray(classes, dtype=np.int64))
        self.motions = torch.from_numpy(np.asarray(motions, dtype=np.int64))
        self.seed = seed

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip = self.clips[index]  # [F, H, W, 3]
        rng = epoch_rng(self.seed, self.epoch, index, 6)
        if rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        if rng.random() < 0.5:
            clip = clip[::-1]
        clip = torch.from_numpy(np.ascontiguousarray(clip))
        return {"clips": clip, "class": self.classes[index], "motion": self.motions[index]}


def video_clips(
    data: StandinData, split: str, limit: int | None = None, boundaries: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The clips of one split whose 6 frames show one scene (a TR with a cut has no single
    label): uint8 ``[N, 6, H, W, 3]``, class ``[N]``, motion ``[N]``; ``limit`` keeps that many,
    evenly spread. ``boundaries``: after them, the single-scene clips that straddle two TRs of a
    segment (the last half of one TR's frames and the first half of the next's) — more clips of
    the same footage for training; the evaluation judges TR-aligned clips."""
    labels = data.labels
    cls, mot = labels.class_id[split], labels.motion_id[split]  # [S, T, F]

    def single(c: np.ndarray, m: np.ndarray) -> np.ndarray:  # [..., F] → one scene throughout
        return (c == c[..., :1]).all(-1) & (m == m[..., :1]).all(-1)

    one_scene = single(cls, mot)
    seg, tr = np.nonzero(one_scene)
    if limit is not None and len(seg) > limit:
        keep = np.unique(np.linspace(0, len(seg) - 1, limit).round().astype(np.int64))
        seg, tr = seg[keep], tr[keep]
    frames = data.prepared.frames(split)
    clips = [np.asarray(frames[s, t]) for s, t in zip(seg, tr, strict=True)]
    classes, motions = list(cls[seg, tr, 0]), list(mot[seg, tr, 0])
    if boundaries:
        n_frames = cls.shape[2]
        half = n_frames // 2
        # [S, T-1, F]: the frames of TR t from ``half`` on, then those of TR t+1 before it
        c = np.concatenate([cls[:, :-1, half:], cls[:, 1:, :half]], axis=-1)
        m = np.concatenate([mot[:, :-1, half:], mot[:, 1:, :half]], axis=-1)
        for s, t in zip(*np.nonzero(single(c, m)), strict=True):
            clips.append(np.concatenate([frames[s, t, half:], frames[s, t + 1, :half]]))
            classes.append(c[s, t, 0])
            motions.append(m[s, t, 0])
    return np.stack(clips), np.asarray(classes), np.asarray(motions)


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows of ``probs [N, C]`` whose ``labels [N]`` is among the k largest."""
    top = np.argsort(-probs, axis=1)[:, :k]
    return float((top == labels[:, None]).any(1).mean())


@torch.no_grad()
def _saved_probabilities(folder: Path, inputs: np.ndarray, video: bool) -> np.ndarray:
    """Class probabilities from a saved folder through the evaluation loaders' own calls
    (transformers auto classes; the PIL image-processor backend)."""
    import transformers
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        AutoModelForVideoClassification,
    )

    auto = AutoModelForVideoClassification if video else AutoModelForImageClassification
    model = auto.from_pretrained(folder).eval()
    major = int(transformers.__version__.split(".")[0])
    kwargs = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    processor = AutoImageProcessor.from_pretrained(folder, **kwargs)
    out = []
    for start in range(0, len(inputs), 64):
        batch = inputs[start : start + 64]
        if video:
            pixels = processor([list(c) for c in batch], return_tensors="pt")["pixel_values"]
        else:
            pixels = processor(images=list(batch), return_tensors="pt")["pixel_values"]
        out.append(torch.softmax(model(pixel_values=pixels).logits.double(), -1).numpy())
    return np.concatenate(out)


def _scores(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, Any]:
    return {
        "test_top1": topk_accuracy(probs, labels, 1),
        "test_top5": topk_accuracy(probs, labels, 5),
        "chance_top1": 1.0 / n_classes,
        "chance_top5": min(1.0, 5.0 / n_classes),
        "n_classes": n_classes,
        "n_test": len(labels),
    }


def _video_scores(
    probs: np.ndarray, classes: tuple[np.ndarray, int], motions: tuple[np.ndarray, int]
) -> dict[str, Any]:
    """Scores of clip probabilities ``[N, C·M]`` (label ``c·M + m``) for the true ``(labels
    [N], count)`` of class and motion: the joint label, and class / motion alone."""
    (cls, n_classes), (mot, n_motions) = classes, motions
    metrics = _scores(probs, cls * n_motions + mot, n_classes * n_motions)
    by = probs.reshape(len(probs), n_classes, n_motions)
    metrics["test_class_top1"] = topk_accuracy(by.sum(2), cls, 1)
    metrics["test_motion_top1"] = topk_accuracy(by.sum(1), mot, 1)
    metrics["chance_class_top1"] = 1.0 / n_classes
    metrics["chance_motion_top1"] = 1.0 / n_motions
    return metrics


def _image_loss_fn(mean: Any, std: Any):
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
        logits = model(pixel_values=normalise(batch["frames"], mean, std)).logits
        loss = F.cross_entropy(logits.float(), batch["label"])
        acc = (logits.argmax(-1) == batch["label"]).float().mean()
        return loss, {"accuracy": acc}

    return loss_fn


def _video_loss_fn(mean: Any, std: Any):
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
        clips = batch["clips"]  # [N, F, H, W, 3]
        n, f = clips.shape[:2]
        pixels = normalise(clips.flatten(0, 1), mean, std).unflatten(0, (n, f))
        class_logits, motion_logits = model(pixels)
        loss = F.cross_entropy(class_logits.float(), batch["class"]) + F.cross_entropy(
            motion_logits.float(), batch["motion"]
        )
        return loss, {"class_accuracy": (class_logits.argmax(-1) == batch["class"]).float().mean()}

    return loss_fn


def _save_classifier(
    folder: Path,
    network: Any,
    processor: Any,
    test_inputs: np.ndarray,
    video: bool,
    score: Callable[[np.ndarray], dict[str, Any]],
    key: dict[str, Any],
    log_dir: Path,
    seconds: Callable[[], float],
    **fields: Any,
) -> dict[str, Any]:
    """Write ``folder`` (``network`` + ``processor``) and its marker with ``fields``; the test
    metrics are ``score`` of the class probabilities of ``test_inputs`` (frames, or clips with
    ``video``) through the saved folder. Returns the marker."""
    with atomic_dir(folder) as tmp:
        network.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        metrics = score(_saved_probabilities(tmp, test_inputs, video=video))
        metrics["final_train_loss"] = final_loss(log_dir)
        return write_marker(tmp, key, **fields, seconds=seconds(), metrics=metrics)


def train_image_standin(job: StandinJob) -> dict[str, Any]:
    """Train the frame classifier (scene class) and write ``folder``; returns its marker with
    the held-out test accuracy measured through the saved folder."""
    data, folder, spec, key, seed, device, log_dir = job.astuple()
    from transformers import ViTImageProcessorPil

    start = time.perf_counter()
    preset: ConvClassifierPreset = spec.image_classifier
    labels = data.labels.classes
    seeded(seed, 4)
    model = build_image_classifier(preset, data.frame_size, labels)
    head = model.classifier[-1]  # ResNet's head: Flatten, Linear
    model.classifier[-1] = WordLinear(head.in_features, labels)
    processor = ViTImageProcessorPil(
        size={"height": data.frame_size, "width": data.frame_size},
        image_mean=list(VIT_MEAN),
        image_std=list(VIT_STD),
    )
    model = fit(
        "image classifier",
        model,
        LabelledFrames(data.train_frames, data.train_class, seed),
        _image_loss_fn(VIT_MEAN, VIT_STD),
        preset.train,
        log_dir,
        seed,
        device,
    )
    model.classifier[-1] = model.classifier[-1].folded()
    train_s = time.perf_counter() - start

    def score(probs: np.ndarray) -> dict[str, Any]:
        return _scores(probs, data.test_class, len(labels))

    marker = _save_classifier(
        folder,
        model,
        processor,
        data.test_frames,
        False,
        score,
        key,
        log_dir,
        model="ResNetForImageClassification",
        replaces="google/vit-base-patch16-224",
        head="word-factorised (a class = the sum of its name's words), saved folded",
        labels="the simulator's scene classes (scenes.json), not ImageNet classes",
        parameters=sum(p.numel() for p in model.parameters()),
        image_size=data.frame_size,
        train=preset.train,
        train_examples=len(data.train_frames),
        train_seconds=round(train_s, 2),
        seconds=lambda: round(time.perf_counter() - start, 2),
    )
    metrics = marker["metrics"]
    logger.info(
        "Image classifier stand-in: test top-1 %.3f (chance %.4f), top-5 %.3f.",
        metrics["test_top1"],
        metrics["chance_top1"],
        metrics["test_top5"],
    )
    return marker


def train_video_standin(job: StandinJob) -> dict[str, Any]:
    """Train the clip classifier (class × motion) and write ``folder``; returns its marker with
    the held-out test accuracy (joint label, and class / motion alone)."""
    data, folder, spec, key, seed, device, log_dir = job.astuple()
    from transformers import VideoMAEImageProcessorPil

    start = time.perf_counter()
    preset: ClassifierPreset = spec.video_classifier
    labels = data.labels.video_labels
    n_classes, n_motions = len(data.labels.classes), len(data.labels.motions)
    clips, cls, mot = video_clips(data, "train", boundaries=True)
    seeded(seed, 5)
    model = build_video_classifier(preset, data.frame_size, labels)
    processor = VideoMAEImageProcessorPil(
        size={"shortest_edge": data.frame_size},
        crop_size={"height": data.frame_size, "width": data.frame_size},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    trained = fit(
        "video classifier",
        FactorisedVideoClassifier(model, n_classes, n_motions, data.labels.classes),
        LabelledClips(clips, cls, mot, seed),
        _video_loss_fn(IMAGENET_MEAN, IMAGENET_STD),
        preset.train,
        log_dir,
        seed,
        device,
    )
    model = trained.fold()
    train_s = time.perf_counter() - start
    test_clips, test_cls, test_mot = video_clips(data, "test", limit=data.test_frames.shape[0])
    score = functools.partial(
        _video_scores, classes=(test_cls, n_classes), motions=(test_mot, n_motions)
    )
    marker = _save_classifier(
        folder,
        model,
        processor,
        test_clips,
        True,
        score,
        key,
        log_dir,
        model="VideoMAEForVideoClassification",
        replaces="MCG-NJU/videomae-base-finetuned-kinetics",
        labels="class × motion of the simulator (scenes.json), not Kinetics-400 classes",
        parameters=sum(p.numel() for p in model.parameters()),
        image_size=data.frame_size,
        num_frames=NUM_FRAMES,
        train=preset.train,
        train_examples=len(clips),
        train_seconds=round(train_s, 2),
        seconds=lambda: round(time.perf_counter() - start, 2),
    )
    metrics = marker["metrics"]
    logger.info(
        "Video classifier stand-in: test top-1 %.3f (chance %.4f), top-5 %.3f; class %.3f, "
        "motion %.3f.",
        metrics["test_top1"],
        metrics["chance_top1"],
        metrics["test_top5"],
        metrics["test_class_top1"],
        metrics["test_motion_top1"],
    )
    return marker
