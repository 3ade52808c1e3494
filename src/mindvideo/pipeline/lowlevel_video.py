"""The low-level path at sampling: each window's low-resolution video, decoded from its fMRI.

``mindvideo reconstruct lowlevel=DIR strength=S`` loads the decoder that ``mindvideo lowlevel``
fitted (:class:`~mindvideo.encoder.lowlevel.LowLevelDecoder`) and, for every window, decodes
the video of each TR whose frames the clip shows (``frame_trs``) from that TR's fMRI window —
the prepared subject's fMRI (z-scored per run, test repetitions averaged), windowed as the
decoder was fitted. The video starts the sampler: ``MindVideoPipeline(video=…, strength=S)``
(SDEdit). Without ``lowlevel`` nothing here runs and sampling is the paper's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindvideo.data.prepared import PreparedData
from mindvideo.data.ridge import mean_repetitions, window_features
from mindvideo.encoder.lowlevel import LowLevelDecoder
from mindvideo.utils import UserError

__all__ = ["DECODER_DIR", "PIPELINE_DIR", "LowLevelVideos", "decoder_folder", "load_lowlevel"]

DECODER_DIR = "decoder"
"""The decoder's folder inside ``mindvideo lowlevel``'s output."""


PIPELINE_DIR = "lowlevel"
"""The decoder's folder inside a pipeline folder that carries one (a copy of ``decoder/``)."""


def decoder_folder(path: str | os.PathLike) -> Path:
    """The decoder's ``save_pretrained`` folder: ``path`` itself, the output of ``mindvideo
    lowlevel`` (``path/decoder``), or a pipeline folder carrying it (``path/lowlevel``)."""
    path = Path(path)
    for folder in (path, path / DECODER_DIR, path / PIPELINE_DIR):
        if (folder / "config.json").is_file():
            return folder
    raise UserError(
        f"{path} holds no low-level decoder (config.json in it, in {DECODER_DIR}/ or in "
        f"{PIPELINE_DIR}/); pass the output folder of `mindvideo lowlevel`."
    )


def load_lowlevel(path: str | os.PathLike) -> LowLevelDecoder:
    """Load a low-level decoder for inference (CPU, float32, eval mode)."""
    folder = decoder_folder(path)
    return LowLevelDecoder.from_pretrained(folder).eval().requires_grad_(False)


class LowLevelVideos:
    """The low-level video of reconstruction windows, from a prepared subject's split.

    ``videos(windows)``: ``[B, F·len(frame_trs), 3, s, s]`` float in ``[0, 1]`` for window
    entries with ``segment`` and ``frame_trs`` (as ``mindvideo reconstruct`` lists them).
    """

    def __init__(
        self, decoder: LowLevelDecoder, prepared: PreparedData, split: str, frames_per_tr: int
    ) -> None:
        c = decoder.config
        if prepared.n_voxels != c.num_voxels:
            raise UserError(
                f"The low-level decoder was fitted on {c.num_voxels} voxels per TR, but "
                f"{prepared.root} has {prepared.n_voxels}; fit it on this subject's prepared "
                "data (mindvideo lowlevel --data ...)."
            )
        if frames_per_tr != c.frames:
            raise UserError(
                f"The low-level decoder gives {c.frames} frames per TR, but frames_per_tr is "
                f"{frames_per_tr}; set frames_per_tr={c.frames}."
            )
        self.decoder = decoder
        fmri = mean_repetitions(prepared.fmri(split))
        self.features = window_features(fmri, int(c.window))  # [S, T, w·V]

    def videos(self, windows: list[dict[str, Any]]) -> torch.Tensor:
        rows = [self.features[w["segment"], list(w["frame_trs"])] for w in windows]
        x = torch.from_numpy(np.stack(rows))  # [B, C, w·V]
        with torch.inference_mode():
            video = self.decoder(x.flatten(0, 1))  # [B·C, F, 3, s, s]
        return video.unflatten(0, x.shape[:2]).flatten(1, 2)  # [B, C·F, 3, s, s]
