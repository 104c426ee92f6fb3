"""Precise filtering of native libraries' start-up lines, which bypass Python's logging and warnings."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# TensorFlow 2.21 prints these from C++ while it is imported, whatever TF_CPP_MIN_LOG_LEVEL says (absl logs before
# absl::InitializeLog go straight to stderr). TF_ENABLE_ONEDNN_OPTS=0 would silence the oneDNN line but costs
# 39% of the served model's throughput at batch 32 on this machine, so the lines are dropped instead.
TENSORFLOW_IMPORT_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on\."),
    re.compile(r"^I\d{4} [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$"),
)


@contextmanager
def native_stderr_filtered(noise: tuple[re.Pattern, ...] = TENSORFLOW_IMPORT_NOISE) -> Iterator[None]:
    """Capture file descriptor 2 for the block, then pass on to stderr every line that matches none of `noise`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                if not any(pattern.search(line.rstrip("\n")) for pattern in noise)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
