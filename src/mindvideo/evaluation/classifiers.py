"""Classifiers for the N-way identification tests, loaded once and run in batches (section 4.3).

The paper scores frames with an ImageNet ViT (google/vit-base-patch16-224) and clips with VideoMAE
fine-tuned on Kinetics-400 (MCG-NJU/videomae-base-finetuned-kinetics). Both load here from a local
folder holding ``config.json``, the weights and ``preprocessor_config.json`` — what
``save_pretrained`` writes and what a hub snapshot contains. Any other classifier plugs in as a
torch module that maps a preprocessed batch to logits plus a ``preprocess`` callable (the
simulator's small classifiers do this), and the metric runner depends only on the
:class:`ProbabilityModel` protocol.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from mindvideo.utils import UserError
from mindvideo.utils.threads import adapt_threads

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Preprocess = Callable[[np.ndarray], "torch.Tensor"]


@runtime_checkable
class ProbabilityModel(Protocol):
    """Anything that maps a batch of frames or clips to class probabilities.

    ``predict_proba(batch)``: uint8 ``[N, H, W, 3]`` frames (image classifier) or
    ``[N, F, H, W, 3]`` clips (video classifier) → ``[N, C]`` probabilities, rows summing to 1.
    """

    def predict_proba(self, batch: np.ndarray) -> np.ndarray: ...


def _resolve_device(device: str | torch.device | None) -> torch.device:
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _looks_local(path: str | os.PathLike[str]) -> bool:
    """A Path, an existing path, or a string that can only be a path (not an ``org/name`` id)."""
    if isinstance(path, Path) or os.path.exists(path):
        return True
    text = os.fspath(path)
    return os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1


def _load_pretrained(path: str | os.PathLike[str], kind: str, auto_model: Any, **model_kwargs: Any):
    """Load ``(model, processor)`` with transformers' auto classes, as a UserError on failure."""
    import transformers
    from transformers import AutoImageProcessor

    text = os.fspath(path)
    if _looks_local(path):
        folder = Path(text).expanduser()
        if not (folder / "config.json").is_file():
            raise UserError(
                f"The {kind} classifier folder {folder} has no config.json; point it at a folder "
                "written by save_pretrained (or a downloaded hub snapshot)."
            )
        text = str(folder)
    # The PIL backend reproduces the image processors of the authors' transformers version
    # (and needs no torchvision).
    major = int(transformers.__version__.split(".")[0])
    processor_kwargs = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    try:
        model = auto_model.from_pretrained(text, **model_kwargs)
        processor = AutoImageProcessor.from_pretrained(text, **processor_kwargs)
    except (OSError, ValueError) as err:
        raise UserError(
            f"Could not load the {kind} classifier from {text!r} ({err}); download it to a local "
            "folder and pass that folder's path."
        ) from err
    return model, processor


class TorchClassifier:
    """A torch classifier that returns logits, with its preprocessing, batched for inference.

    Args:
        model: a module mapping a preprocessed batch (``preprocess(frames)``) to logits ``[N, C]``,
            or to an output with a ``.logits`` attribute (transformers models).
        preprocess: uint8 frames/clips as numpy → the model's input tensor (first dim N).
        device: where the model runs (default: CUDA when available, else CPU).
        batch_size: inputs per forward pass; results do not depend on it.
        dtype: optional dtype for the model and its inputs (e.g. ``torch.float16`` on a GPU, as the
            authors ran); probabilities are always computed in float64 from the logits.
        num_frames: frames per clip the model expects (video classifiers), checked on input.
    """

    input_ndim: ClassVar[int] = 4
    kind: ClassVar[str] = "image"

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Preprocess,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        dtype: torch.dtype | None = None,
        num_frames: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch_size={batch_size} must be at least 1.")
        self.device = _resolve_device(device)
        self.dtype = dtype
        self.model = model.to(self.device) if dtype is None else model.to(self.device, dtype=dtype)
        self.model.eval()
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.num_frames = num_frames

    @property
    def num_classes(self) -> int | None:
        """C, from the model's config when it has one (else known only after a prediction)."""
        config = getattr(self.model, "config", None)
        return getattr(config, "num_labels", None)

    @property
    def labels(self) -> list[str] | None:
        """Class names in index order, from the model's config ``id2label`` when present."""
        config = getattr(self.model, "config", None)
        id2label = getattr(config, "id2label", None)
        if not id2label:
            return None
        return [str(id2label[i]) for i in range(len(id2label))]

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        arr = np.asarray(batch)
        shape = "[N, H, W, 3] frames" if self.input_ndim == 4 else "[N, F, H, W, 3] clips"
        if arr.ndim != self.input_ndim or arr.shape[-1] != 3:
            raise UserError(f"The {self.kind} classifier takes {shape}, got shape {arr.shape}.")
        if arr.dtype != np.uint8:
            raise UserError(
                f"The {self.kind} classifier takes uint8 pixels in 0..255, got dtype {arr.dtype}."
            )
        if self.num_frames is not None and arr.shape[1] != self.num_frames:
            raise UserError(
                f"The video classifier was built for {self.num_frames} frames per clip but got "
                f"{arr.shape[1]}; load it with num_frames={arr.shape[1]}."
            )
        return arr

    @classmethod
    def _wrap_or_load(
        cls,
        path_or_model: str | os.PathLike[str] | torch.nn.Module,
        preprocess: Preprocess | None,
        auto_model: Any,
        default_preprocess: Callable[[Any], Preprocess],
        model_kwargs: dict[str, Any],
        **settings: Any,
    ) -> Any:
        """A built module (``preprocess`` required) or a transformers folder loaded with
        ``auto_model`` (``preprocess`` defaults to ``default_preprocess(its processor)``)."""
        import torch

        inputs = "frames [N, H, W, 3]" if cls.input_ndim == 4 else "clips [N, F, H, W, 3]"
        if isinstance(path_or_model, torch.nn.Module):
            if preprocess is None:
                raise UserError(
                    f"The {cls.kind} classifier is a torch module, so it needs preprocess=, a "
                    f"function from uint8 {inputs} to the model's input tensor."
                )
            return cls(path_or_model, preprocess, **settings)
        model, processor = _load_pretrained(path_or_model, cls.kind, auto_model, **model_kwargs)
        if cls.input_ndim == 5:
            settings["num_frames"] = getattr(model.config, "num_frames", None)
        logger.info(
            "Loaded %s classifier %s (%d classes%s)",
            cls.kind,
            path_or_model,
            model.config.num_labels,
            f", {settings['num_frames']} frames" if cls.input_ndim == 5 else "",
        )
        if preprocess is None:
            preprocess = default_preprocess(processor)
        return cls(model, preprocess, **settings)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, C]`` (float64, rows sum to 1) for uint8 frames or clips."""
        import torch
        from tqdm.auto import tqdm

        arr = self._check_batch(batch)
        chunks = []
        starts = range(0, arr.shape[0], self.batch_size)
        # disable=None: no bar when stderr is not a terminal (logs, CI).
        bar = tqdm(starts, desc=f"{self.kind} classifier", unit="batch", leave=False, disable=None)
        with torch.inference_mode():
            for start in bar:
                adapt_threads()
                x = self.preprocess(arr[start : start + self.batch_size])
                x = x.to(self.device, dtype=self.dtype) if self.dtype else x.to(self.device)
                out = self.model(x)
                logits = getattr(out, "logits", out)
                if isinstance(logits, (tuple, list)):
                    logits = logits[0]
                chunks.append(torch.softmax(logits.double(), dim=-1).cpu().numpy())
        if not chunks:
            return np.zeros((0, self.num_classes or 0))
        return np.concatenate(chunks, axis=0)


class ImageClassifier(TorchClassifier):
    """Frame classifier for the frame-level N-way test (ViT on ImageNet in the paper).

    ``predict_proba(frames: uint8 [N, H, W, 3]) -> [N, C]``.
    """

    input_ndim: ClassVar[int] = 4
    kind: ClassVar[str] = "image"

    @classmethod
    def from_pretrained(
        cls,
        path_or_model: str | os.PathLike[str] | torch.nn.Module,
        *,
        preprocess: Preprocess | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        dtype: torch.dtype | None = None,
    ) -> ImageClassifier:
        """Load a transformers image-classification folder, or wrap a built module.

        Args:
            path_or_model: a folder with ``config.json``, weights and ``preprocessor_config.json``
                (e.g. google/vit-base-patch16-224 saved locally), or a torch module returning
                logits (then ``preprocess`` is required).
            preprocess: frames ``[N, H, W, 3]`` uint8 → model input; by default the folder's
                image processor (resize to the model's size, rescale, normalise).
        """
        from transformers import AutoModelForImageClassification

        def processor_preprocess(processor: Any) -> Preprocess:
            def frames_to_pixels(frames: np.ndarray) -> torch.Tensor:
                return processor(images=list(frames), return_tensors="pt")["pixel_values"]

            return frames_to_pixels

        return cls._wrap_or_load(
            path_or_model,
            preprocess,
            AutoModelForImageClassification,
            processor_preprocess,
            {},
            device=device,
            batch_size=batch_size,
            dtype=dtype,
        )


class VideoClassifier(TorchClassifier):
    """Clip classifier for the video-level N-way test (VideoMAE on Kinetics-400 in the paper).

    ``predict_proba(clips: uint8 [N, F, H, W, 3]) -> [N, C]``.
    """

    input_ndim: ClassVar[int] = 5
    kind: ClassVar[str] = "video"

    @classmethod
    def from_pretrained(
        cls,
        path_or_model: str | os.PathLike[str] | torch.nn.Module,
        *,
        preprocess: Preprocess | None = None,
        num_frames: int | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 8,
        dtype: torch.dtype | None = None,
    ) -> VideoClassifier:
        """Load a transformers video-classification folder, or wrap a built module.

        Args:
            path_or_model: a folder with ``config.json``, weights and ``preprocessor_config.json``
                (e.g. MCG-NJU/videomae-base-finetuned-kinetics saved locally), or a torch module
                returning logits (then ``preprocess`` is required).
            preprocess: clips ``[N, F, H, W, 3]`` uint8 → model input; by default the folder's
                image processor applied per frame, giving ``[N, F, 3, h, w]``.
            num_frames: frames per clip. For a folder it overrides the config, as the authors
                loaded the 16-frame Kinetics VideoMAE with ``num_frames=6`` (its position
                embeddings are fixed sinusoids, so any even count works); clips are checked
                against it.
        """
        from transformers import AutoModelForVideoClassification

        def processor_preprocess(processor: Any) -> Preprocess:
            def clips_to_pixels(clips: np.ndarray) -> torch.Tensor:  # [N, F, 3, h, w]
                return processor([list(c) for c in clips], return_tensors="pt")["pixel_values"]

            return clips_to_pixels

        return cls._wrap_or_load(
            path_or_model,
            preprocess,
            AutoModelForVideoClassification,
            processor_preprocess,
            {} if num_frames is None else {"num_frames": int(num_frames)},
            device=device,
            batch_size=batch_size,
            dtype=dtype,
            num_frames=num_frames,
        )
