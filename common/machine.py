"""A description of the machine a measurement ran on, recorded beside its figures (benchmarks, scorecards)."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

# The vector instructions that decide how fast TensorFlow's kernels run here: "AMD EPYC" alone named CPUs whose
# model speed differed 4x (AVX-512 with bfloat16 against AVX2 only).
VECTOR_INSTRUCTIONS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def read_cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (none where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return frozenset(next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def describe_machine(packages: tuple[str, ...] = ("tensorflow-cpu", "keras", "mlflow", "numpy")) -> dict:
    """CPU model and its vector instructions, cores, memory, Python, platform and the versions of `packages`."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as info:
            memory_gib = round(int(info.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        memory_gib = None
    versions = {}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    flags = read_cpu_flags()
    return {
        "cpu": cpu,
        "vector_instructions": [name for name in VECTOR_INSTRUCTIONS if name in flags],
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


def shown_path(path: str | os.PathLike) -> str:
    """A path as a result file records it: relative to the working folder when it lies under it (`.digitdrift/...`,
    as a checkout of the project has it), so the command it is part of reproduces on another machine; else as given."""
    absolute = os.path.abspath(path)
    here = os.getcwd()
    return os.path.relpath(absolute, here) if absolute.startswith(here + os.sep) else str(path)
