"""Files replaced whole: a reader sees the old content or the new, never half of either."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_whole(path: str | Path, data: str | bytes) -> Path:
    """Write `data` beside `path` (flushed to the disk) and rename it over `path`, atomically."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")  # one of its own for each writer
    with partial.open("wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path
