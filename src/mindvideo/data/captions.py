"""Frame captions for multimodal contrastive learning (paper 3.3 and B).

Paper 3.3: "videos in the training set are downsampled to a smaller frame rate (3FPS). Each
frame is then captioned with BLIP, which creates the {image, text} pairs." Paper B: "To augment
the frame captions, we apply synonym augmentation and random word swapping."

Three pieces:

- :class:`BlipCaptioner` — ``transformers.BlipForConditionalGeneration`` and its
  ``BlipProcessor`` loaded from a local model folder (e.g. a copy of Salesforce's
  blip-image-captioning-large), captioning uint8 frames ``[N, H, W, 3]`` in batches.
- :func:`caption_frames` — a cache keyed by frame content: each frame's key hashes its bytes,
  its shape and the captioner's identity; captions are appended to a JSON-lines file as batches
  complete, so an interrupted run resumes where it stopped and identical frames (a still scene
  gives 6 identical frames per TR) are captioned once.
- :class:`CaptionAugmenter` — synonym replacement and random word swaps that work offline, from
  a curated lexicon shipped with the package (``synonyms.json``, see :func:`load_lexicon`).

And :func:`clip_caption`, the one caption of a clip (the most common of its frames' captions),
which video tuning trains with and ``reconstruct condition=caption`` generates from.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mindvideo.utils import UserError
from mindvideo.utils.io import read_json

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = [
    "STOP_WORDS",
    "BlipCaptioner",
    "CaptionAugmenter",
    "FrameCaptioner",
    "caption_frames",
    "clip_caption",
    "frame_key",
    "load_lexicon",
]

# Files of a model folder that decide what BLIP writes: configs, tokenizer, processor. Their
# bytes go into the captioner's identity (weights are fingerprinted separately: too big to hash).
_IDENTITY_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "vocab.txt",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Bytes read from each end of a weight file for its fingerprint (with its name and size).
_FINGERPRINT_BYTES = 1 << 20

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16"}
_DTYPES |= {"bfloat16": "bfloat16", "bf16": "bfloat16"}


# --------------------------------------------------------------------------------------------
# BLIP


class FrameCaptioner(Protocol):
    """What :func:`caption_frames` needs from a captioner.

    ``identity`` must change whenever the captions could (other weights, other generation
    settings); it is part of every cache key.
    """

    identity: str
    batch_size: int

    def caption(self, frames: np.ndarray) -> list[str]: ...


class BlipCaptioner:
    """BLIP image captioning (paper 3.3: "Each frame is then captioned with BLIP").

    Build it with :meth:`from_pretrained` from a local model folder. Captions are deterministic:
    greedy decoding (``num_beams=1``) or beam search, never sampling, under
    ``torch.inference_mode()``.

    Args:
        model: a ``transformers.BlipForConditionalGeneration`` in eval mode.
        processor: its ``transformers.BlipProcessor`` (image processor + tokenizer).
        identity: a string that changes whenever the captions could; see :meth:`from_pretrained`.
        batch_size: frames per ``generate`` call.
        max_new_tokens, min_new_tokens, num_beams: decoding settings passed to ``generate``.
        prompt: optional text prefix for conditional captioning (e.g. ``"a picture of"``); BLIP
            continues it, and the returned caption starts with it.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        identity: str,
        *,
        batch_size: int = 32,
        max_new_tokens: int = 20,
        min_new_tokens: int = 0,
        num_beams: int = 1,
        prompt: str | None = None,
    ) -> None:
        if batch_size < 1 or max_new_tokens < 1 or num_beams < 1 or min_new_tokens < 0:
            raise UserError(
                f"Captioner settings batch_size={batch_size}, max_new_tokens={max_new_tokens}, "
                f"num_beams={num_beams} must be >= 1 and min_new_tokens={min_new_tokens} >= 0; "
                "fix them in the captions config."
            )
        self.model = model
        self.processor = processor
        self.identity = identity
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.min_new_tokens = int(min_new_tokens)
        self.num_beams = int(num_beams)
        self.prompt = prompt

    @classmethod
    def from_config(cls, path: str | os.PathLike, settings: Any) -> BlipCaptioner:
        """:meth:`from_pretrained` with the decoding settings of a prepare config's ``captions``
        section (``dtype``, ``batch_size``, ``max_new_tokens``, ``prompt``, ``num_beams``)."""
        keys = ("dtype", "batch_size", "max_new_tokens", "prompt", "num_beams")
        return cls.from_pretrained(path, **{k: getattr(settings, k) for k in keys})

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
        max_new_tokens: int = 20,
        prompt: str | None = None,
        *,
        min_new_tokens: int = 0,
        num_beams: int = 1,
    ) -> BlipCaptioner:
        """Load BLIP and its processor from a local folder (nothing is downloaded).

        Args:
            path: a folder written by ``save_pretrained`` holding a BLIP captioning model
                (``config.json`` with ``model_type: blip``, weights, processor and tokenizer).
            device: default ``"cuda"`` when available, else ``"cpu"``.
            dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` (or a ``torch.dtype``);
                default float16 on CUDA, float32 on CPU.

        The captioner's ``identity`` hashes the folder's config, processor and tokenizer files,
        a fingerprint of each weight file (name, size, first and last MiB), the dtype, the image
        processor class and the decoding settings.

        Raises:
            UserError: the folder does not exist, or does not hold a loadable BLIP captioning
                model.
        """
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        folder = Path(path).expanduser()
        config_file = folder / "config.json"
        if not folder.is_dir():
            raise UserError(
                f"BLIP model folder {folder} does not exist; set pretrained.blip to a local copy "
                "of a BLIP captioning model (e.g. Salesforce/blip-image-captioning-large)."
            )
        if not config_file.is_file():
            raise UserError(
                f"{folder} has no config.json, so it is not a saved model; point pretrained.blip "
                "at a folder written by save_pretrained (a BLIP captioning model)."
            )
        config = read_json(config_file, "re-copy the model")
        architectures = config.get("architectures") or ["BlipForConditionalGeneration"]
        if (
            config.get("model_type") != "blip"
            or "BlipForConditionalGeneration" not in architectures
        ):
            raise UserError(
                f"{folder} holds a {config.get('model_type')!r} model "
                f"({', '.join(map(str, architectures))}), not a BLIP captioning model; point "
                "pretrained.blip at a BlipForConditionalGeneration folder "
                "(e.g. Salesforce/blip-image-captioning-large)."
            )

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        torch_dtype = _resolve_dtype(dtype, device)
        try:
            processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
            model = BlipForConditionalGeneration.from_pretrained(
                folder, dtype=torch_dtype, local_files_only=True
            )
        except (OSError, ValueError, KeyError) as err:
            raise UserError(
                f"Could not load a BLIP captioning model and processor from {folder} ({err}); "
                "the folder needs the weights, config.json and the processor/tokenizer files."
            ) from err
        model.to(device).eval()

        settings = {
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": min_new_tokens,
            "num_beams": num_beams,
            "prompt": prompt,
            "dtype": str(torch_dtype),
            "image_processor": type(processor.image_processor).__name__,
        }
        identity = _folder_identity(folder, settings)
        log.info("BLIP captioner from %s (identity %s) on %s", folder, identity[:12], device)
        return cls(
            model,
            processor,
            identity,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            num_beams=num_beams,
            prompt=prompt,
        )

    def caption(self, frames: np.ndarray | Sequence[np.ndarray]) -> list[str]:
        """Caption each frame.

        Args:
            frames: uint8 RGB ``[N, H, W, 3]`` (or a sequence of ``[H, W, 3]``).

        Returns:
            N captions, lower-case as BLIP writes them, whitespace-normalised.
        """
        frames = _as_frame_batch(frames)
        captions: list[str] = []
        for start in range(0, len(frames), self.batch_size):
            captions.extend(self._caption_batch(frames[start : start + self.batch_size]))
        return captions

    def _caption_batch(self, frames: np.ndarray) -> list[str]:
        """frames: ``[B, H, W, 3]`` uint8 → B captions, with one ``generate`` call."""
        import torch

        param = next(self.model.parameters())
        kwargs: dict[str, Any] = {"images": list(frames), "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = [self.prompt] * len(frames)  # same prompt: no padding needed
        inputs = self.processor(**kwargs)
        inputs = {
            k: v.to(param.device, dtype=param.dtype if k == "pixel_values" else None)
            for k, v in inputs.items()
        }
        with torch.inference_mode():
            tokens = self.model.generate(
                **inputs,
                do_sample=False,
                num_beams=self.num_beams,
                max_new_tokens=self.max_new_tokens,
                min_new_tokens=self.min_new_tokens,
            )
        texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    import torch

    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise UserError(
            f"Unknown captioner dtype {dtype!r}; use one of float32, float16, bfloat16."
        )
    return getattr(torch, name)


def _folder_identity(folder: Path, settings: Mapping[str, Any]) -> str:
    """Hash of what decides a folder's captions: small files whole, weights fingerprinted."""
    h = hashlib.sha256(b"mindvideo-blip-captioner-v1\0")
    for name in _IDENTITY_FILES:
        file = folder / name
        if file.is_file():
            h.update(f"{name}\0".encode())
            h.update(file.read_bytes())
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.name.endswith(_WEIGHT_SUFFIXES):
            size = file.stat().st_size
            h.update(f"{file.name}\0{size}\0".encode())
            with file.open("rb") as f:
                h.update(f.read(_FINGERPRINT_BYTES))
                f.seek(max(0, size - _FINGERPRINT_BYTES))
                h.update(f.read(_FINGERPRINT_BYTES))
    h.update(json.dumps(dict(settings), sort_keys=True).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# cache


def clip_caption(captions: Sequence[str]) -> str:
    """The one caption of a clip: the most common of its frames' captions, ties to the earliest.

    BLIP captions each frame; a 6-frame clip usually shows one scene, so its frames mostly
    share a caption. When they all differ this is the first frame's caption.
    """
    if not captions:
        raise ValueError("a clip needs at least one caption")
    counts = Counter(captions)
    best = max(counts.values())
    return next(c for c in captions if counts[c] == best)


def frame_key(frame: np.ndarray, identity: str) -> str:
    """Cache key of one frame ``[H, W, 3]``: sha256 of captioner identity, shape, dtype, bytes."""
    frame = np.ascontiguousarray(frame)
    h = hashlib.sha256(f"{identity}\0{frame.shape}\0{frame.dtype.str}\0".encode())
    h.update(memoryview(frame).cast("B"))
    return h.hexdigest()


def caption_frames(
    frames: np.ndarray | Iterable[np.ndarray],
    captioner: FrameCaptioner,
    cache_path: str | os.PathLike | None = None,
    *,
    progress: bool = True,
) -> list[str]:
    """Caption frames once each, with a resumable cache keyed by frame content (paper 3.3).

    Frames already in the cache are not recomputed; identical frames are captioned once. New
    captions are appended to ``cache_path`` (JSON lines ``{"key": ..., "caption": ...}``) after
    every batch and flushed to disk, so an interrupted run loses at most the batch in flight.
    One cache file may hold captions of several captioners: the key includes the captioner's
    identity. A line cut short by a crash is ignored on the next run.

    Args:
        frames: uint8 RGB frames: an array ``[..., H, W, 3]`` (leading axes are flattened in C
            order, e.g. ``[segments, TRs, 6, H, W, 3]``), or an iterable of frames ``[H, W, 3]``
            or chunks ``[n, H, W, 3]`` (streamed: only one batch is held in memory).
        captioner: e.g. a :class:`BlipCaptioner`.
        cache_path: the JSON-lines cache file; ``None`` caches in memory for this call only.
        progress: show a tqdm bar over frames.

    Returns:
        One caption per frame, in input order (flattened).
    """
    from tqdm.auto import tqdm

    cache_file = Path(cache_path) if cache_path is not None else None
    cache = _read_cache(cache_file) if cache_file is not None else {}
    total = int(np.prod(frames.shape[:-3])) if isinstance(frames, np.ndarray) else None
    keys: list[str] = []
    pending: dict[str, np.ndarray] = {}  # key -> frame, insertion-ordered, unique keys
    computed = 0

    def flush() -> None:
        nonlocal computed
        if not pending:
            return
        batch_keys = list(pending)
        captions = captioner.caption(np.stack([pending[k] for k in batch_keys]))
        if len(captions) != len(batch_keys):
            raise RuntimeError(
                f"captioner returned {len(captions)} captions for {len(batch_keys)} frames"
            )
        new = dict(zip(batch_keys, captions, strict=True))
        if cache_file is not None:
            _append_cache(cache_file, new)
        cache.update(new)
        computed += len(new)
        pending.clear()

    with tqdm(total=total, unit="frame", desc="captions", disable=not progress) as bar:
        for frame in _iter_frames(frames):
            key = frame_key(frame, captioner.identity)
            keys.append(key)
            if key not in cache and key not in pending:
                pending[key] = np.array(frame, copy=True)  # a memmap view may go away
                if len(pending) >= captioner.batch_size:
                    flush()
            bar.update(1)
            bar.set_postfix(captioned=computed, refresh=False)
        flush()
    log.info(
        "captions: %d frames, %d unique, %d captioned now, %d from cache",
        len(keys),
        len(set(keys)),
        computed,
        len(set(keys)) - computed,
    )
    return [cache[k] for k in keys]


def _iter_frames(frames: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield ``[H, W, 3]`` uint8 frames from an array ``[..., H, W, 3]`` or an iterable."""
    if isinstance(frames, np.ndarray):
        if frames.ndim < 3:
            _check_frame(frames)
        flat = frames.reshape(-1, *frames.shape[-3:])
        if len(flat):
            _check_frame(flat[0])
        yield from flat
        return
    for item in frames:
        item = np.asarray(item)
        if item.ndim == 4:
            for frame in item:
                _check_frame(frame)
                yield frame
        else:
            _check_frame(item)
            yield item


def _check_frame(frame: np.ndarray) -> None:
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise UserError(
            f"Frames to caption must be uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}; "
            "pass the frames array written by prepare (uint8 [..., H, W, 3])."
        )


def _as_frame_batch(frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    frames = np.stack(list(frames)) if not isinstance(frames, np.ndarray) else frames
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UserError(
            f"Frames to caption must be uint8 RGB [N, H, W, 3], got {frames.dtype} "
            f"{frames.shape}; pass the frames array written by prepare."
        )
    return frames


def _read_cache(path: Path) -> dict[str, str]:
    """Read a JSON-lines caption cache; unreadable lines (a crash mid-write) are skipped."""
    cache: dict[str, str] = {}
    if not path.exists():
        return cache
    skipped = 0
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                cache[str(record["key"])] = str(record["caption"])
            except (json.JSONDecodeError, KeyError, TypeError):
                skipped += 1
    if skipped:
        log.warning("caption cache %s: skipped %d unreadable line(s)", path, skipped)
    log.info("caption cache %s: %d captions", path, len(cache))
    return cache


def _append_cache(path: Path, captions: Mapping[str, str]) -> None:
    """Append one batch as JSON lines in a single write, then fsync (the resume point)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(
        json.dumps({"key": k, "caption": c}, ensure_ascii=False) + "\n" for k, c in captions.items()
    )
    with path.open("a+b") as f:
        # A crash mid-line leaves no newline at the end: start ours on a fresh line.
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                text = "\n" + text
        f.write(text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------
# augmentation

STOP_WORDS: frozenset[str] = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
    she her hers herself it its itself they them their theirs themselves what which who whom
    whose this that these those am is are was were be been being have has had having do does
    did doing a an the and but if or because as until while of at by for with about against
    between into through during before after above below to from up down in out on off over
    under again further then once here there when where why how all any both each few more most
    other some such no nor not only own same so than too very s t can will just don should now
    d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma mightn mustn needn shan
    shouldn wasn weren won wouldn another every either neither its onto upon within without
    across along around behind beside beneath near next toward towards inside outside past
    away among via one two three four five six seven eight nine ten eleven twelve
    """.split()
)
"""Words the augmenter never replaces or moves: English function words (the usual NLTK list),
determiners, prepositions and number words. Listed prepositions win over a lexicon entry."""

# A word: letters, optionally joined by hyphens or apostrophes ("close-up", "man's").
_WORD = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*")
_TOKENS = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*|[^A-Za-z]+")
_AN_EXCEPTIONS = ("uni", "use", "usu", "uti", "eu", "one", "once", "ure")
_AN_SILENT_H = ("hour", "honest", "honor", "honour", "heir")


@lru_cache(maxsize=1)
def _default_lexicon() -> dict[str, tuple[str, ...]]:
    resource = importlib.resources.files("mindvideo.data").joinpath("synonyms.json")
    return _parse_lexicon(json.loads(resource.read_text(encoding="utf-8")), "synonyms.json")


def load_lexicon(path: str | os.PathLike | None = None) -> dict[str, tuple[str, ...]]:
    """Load a synonym lexicon: word → synonyms (all lower case, single words).

    Without ``path``, the curated lexicon shipped in the package (``mindvideo/data/
    synonyms.json``, ~500 words of natural-video and simulator captions). A user file is JSON,
    either a flat object ``{"word": ["synonym", ...]}`` or the shipped format
    ``{"synonyms": {"category": {"word": [...]}}}``. An empty list marks a word that is kept.

    Raises:
        UserError: the file is missing, is not JSON of that shape, lists a word twice, or has a
            synonym that is not a single word.
    """
    if path is None:
        return dict(_default_lexicon())
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError(f"Synonym lexicon {path} does not exist; fix the lexicon path.") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(
            f"Synonym lexicon {path} is not readable JSON ({err}); write it as "
            '{"word": ["synonym", ...]}.'
        ) from err
    return _parse_lexicon(data, str(path))


def _parse_lexicon(data: Any, source: str) -> dict[str, tuple[str, ...]]:
    table = data.get("synonyms", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise UserError(
            f'Synonym lexicon {source} must be a JSON object {{"word": ["synonym", ...]}}.'
        )
    entries: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, dict):  # a category
            entries.extend(value.items())
        else:
            entries.append((key, value))
    lexicon: dict[str, tuple[str, ...]] = {}
    for word, synonyms in entries:
        if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
            raise UserError(
                f"Synonym lexicon {source}: the entry {word!r} must be a list of strings."
            )
        key = str(word).lower()
        if key in lexicon:
            raise UserError(f"Synonym lexicon {source} lists {key!r} twice; keep one entry.")
        values = tuple(dict.fromkeys(s.lower() for s in synonyms if s.lower() != key))
        bad = [s for s in (key, *values) if not _WORD.fullmatch(s)]
        if bad:
            raise UserError(
                f"Synonym lexicon {source}: {bad[0]!r} (entry {word!r}) is not a single word; "
                "synonyms replace one word by one word, so write each as one word."
            )
        lexicon[key] = values
    return lexicon


class CaptionAugmenter:
    """Synonym replacement and random word swaps for captions (paper B), offline.

    "To augment the frame captions, we apply synonym augmentation and random word swapping."
    Works like nlpaug's ``SynonymAug`` and ``RandomWordAug(action="swap")`` with a curated
    lexicon instead of WordNet (no download at run time).

    1. Synonyms: each word that has lexicon synonyms (and is not a stop word or in ``keep``) is
       replaced, with probability ``p_synonym``, by one of its synonyms drawn uniformly.
    2. Swaps: each content word (not a stop word), with probability ``p_swap``, trades places
       with its left or right content-word neighbour. Stop words (articles, prepositions,
       numbers, ...) and punctuation stay where they are.

    The number of words never changes (synonyms are single words). A position keeps its case
    pattern (a capitalised first word stays capitalised), and "a"/"an" before a changed word is
    fixed to agree with it. ``p_synonym = p_swap = 0`` returns the caption unchanged.

    Args:
        p_synonym: probability that an eligible word is replaced by a synonym.
        p_swap: probability that a content word is swapped with a neighbour.
        lexicon: a lexicon path or mapping (see :func:`load_lexicon`); default: the shipped one.
        keep: extra words never replaced (e.g. class words you want verbatim).
        seed: seeds the generator used when ``__call__`` gets no ``rng``.
    """

    def __init__(
        self,
        p_synonym: float = 0.3,
        p_swap: float = 0.1,
        lexicon: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
        keep: Iterable[str] = (),
        seed: int | None = 0,
    ) -> None:
        for name, p in (("p_synonym", p_synonym), ("p_swap", p_swap)):
            if not 0.0 <= p <= 1.0:
                raise UserError(f"Caption augmentation {name}={p} must be in [0, 1].")
        self.p_synonym = float(p_synonym)
        self.p_swap = float(p_swap)
        if lexicon is None or isinstance(lexicon, (str, os.PathLike)):
            self.lexicon = load_lexicon(lexicon)
        else:
            self.lexicon = _parse_lexicon(
                {k: list(v) for k, v in lexicon.items()}, "(mapping passed to CaptionAugmenter)"
            )
        self.keep = frozenset(w.lower() for w in keep)
        self._rng = np.random.default_rng(seed)

    def __call__(self, caption: str, rng: np.random.Generator | None = None) -> str:
        """Return an augmented copy of ``caption``; the same ``rng`` state gives the same text."""
        if self.p_synonym == 0.0 and self.p_swap == 0.0:
            return caption
        rng = self._rng if rng is None else rng
        tokens = _TOKENS.findall(caption)
        slots = [i for i, t in enumerate(tokens) if _WORD.fullmatch(t)]
        words = [tokens[i] for i in slots]
        new = [w.lower() for w in words]
        changed = [False] * len(words)

        # 1. synonym replacement
        draws = rng.random(len(words))
        for j, w in enumerate(new):
            synonyms = self.lexicon.get(w, ())
            if synonyms and draws[j] < self.p_synonym and w not in STOP_WORDS | self.keep:
                new[j] = synonyms[int(rng.integers(len(synonyms)))]
                changed[j] = True

        # 2. random swaps among content words
        content = [j for j, w in enumerate(words) if w.lower() not in STOP_WORDS]
        if len(content) >= 2:
            draws = rng.random(len(content))
            sides = rng.integers(0, 2, size=len(content))
            for c in range(len(content)):
                if draws[c] >= self.p_swap:
                    continue
                other = c + 1 if (sides[c] == 1 or c == 0) and c + 1 < len(content) else c - 1
                a, b = content[c], content[other]
                new[a], new[b] = new[b], new[a]
                changed[a] = changed[b] = True

        # 3. case pattern of each position; articles agree with a changed next word
        for j, w in enumerate(new):
            tokens[slots[j]] = _match_case(w, words[j])
        for j in range(1, len(words)):
            prev = tokens[slots[j - 1]]
            between = "".join(tokens[slots[j - 1] + 1 : slots[j]])
            if changed[j] and prev.lower() in ("a", "an") and between.isspace():
                tokens[slots[j - 1]] = _match_case(_article(new[j]), prev)
        return "".join(tokens)


def _match_case(word: str, like: str) -> str:
    """``word`` (lower case) in the case pattern of ``like``."""
    if len(like) > 1 and like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _article(word: str) -> str:
    """Indefinite article for ``word`` by its spelling (a good guess, not phonetics)."""
    w = word.lower()
    if w.startswith(_AN_SILENT_H):
        return "an"
    if w[:1] in "aeiou" and not w.startswith(_AN_EXCEPTIONS):
        return "an"
    return "a"
