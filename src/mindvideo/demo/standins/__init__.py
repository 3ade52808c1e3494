"""Small stand-ins for the pretrained models, trained on the simulated stimuli.

A GPU user points every stage at local folders of the real models (DESIGN.md, "Real weights
from local folders only"): Stable Diffusion 1.5, CLIP ViT-L/14, an ImageNet ViT and a
Kinetics-400 VideoMAE. The CPU demo has none of them, so :func:`train_standins` trains small
models of the same classes (a ResNet for the frame classifier, which the same auto class loads:
small ViTs do not learn shape on a CPU budget) on the simulated dataset and saves them **in
exactly those folder formats**; every stage then runs the code it runs on a GPU, with another
folder::

    OUT/
      clip/                  CLIPModel + CLIPProcessor (tokenizer, CLIPImageProcessor), like
                             openai/clip-vit-large-patch14            → pretrained.clip
      stable_diffusion/      a StableDiffusionPipeline folder, like runwayml/stable-diffusion-v1-5
        model_index.json     (safety_checker and feature_extractor null)
        unet/ vae/ text_encoder/ tokenizer/ scheduler/                → pretrained.stable_diffusion
      image_classifier/      ResNetForImageClassification + ViTImageProcessor over the simulator's
                             73 scene classes                         → pretrained.image_classifier
      video_classifier/      VideoMAEForVideoClassification + VideoMAEImageProcessor over
                             class × motion (657 labels), 6 frames    → pretrained.video_classifier
      README.md              what these are (simulator labels, not ImageNet/Kinetics)
      standins.json          preset, seed, sizes, training times and measured quality
      logs/{model}/logs/metrics.jsonl   training curves

The parts (paper section of the model each one replaces):

- **tokenizer**: a CLIP byte-level BPE (``vocab.json`` + ``merges.txt``) whose merges are
  learned from the captions, so every caption word is one token; 77 tokens (3.3).
- **CLIP** (3.3, eq. 3): text and vision towers trained with CLIP's contrastive loss on
  (frame, caption) pairs of the training segments.
- **Stable Diffusion** (3.4): an ``AutoencoderKL`` (4 latent channels, downsampling factor 4)
  trained to reconstruct training frames, and a text-conditioned ``UNet2DConditionModel``
  trained as an image diffusion model on its latents with the CLIP stand-in's frozen text
  tower (10 % empty captions, for classifier-free guidance); SD-1.5's PNDM scheduler config.
- **classifiers** (4.3): frame → scene class and clip → class × motion, trained on the training
  segments' ground truth from the simulator's ``scenes.json``.

Each folder is written atomically with a ``standin.json`` marker (written last) holding the
preset, seed and a fingerprint of the prepared data; a re-run reuses every folder whose marker
matches and trains only what is missing. Everything is deterministic for a seed (on one
device and thread count).
"""

from mindvideo.demo.standins.train import train_standins

__all__ = ["train_standins"]
