"""Files replaced whole: a reader sees the old content or the new, never half of either."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_whole(path: str | Path, data: str | bytes, mode: int | None = None) -> Path:
    """Write `data` beside `path` (flushed to the disk) and rename it over `path`, atomically. `mode`: the file's
    permissions, set before a byte is written (0o600 for a secret: never readable by others, not for a moment)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")  # one of its own for each writer
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    if mode is not None:
        os.fchmod(descriptor, mode)  # the umask narrows what os.open gives; a mode asked for is the mode
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path
