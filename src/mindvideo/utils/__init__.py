"""Small helpers every layer may use: errors a user can cause, atomic file writes."""

from mindvideo.utils.errors import UserError
from mindvideo.utils.io import atomic_dir, atomic_path, atomic_write_bytes, atomic_write_text

__all__ = ["UserError", "atomic_dir", "atomic_path", "atomic_write_bytes", "atomic_write_text"]
