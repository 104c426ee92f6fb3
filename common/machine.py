"""A description of the machine a measurement ran on, recorded beside its figures (benchmarks, scorecards)."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version


def describe_machine(packages: tuple[str, ...] = ("tensorflow-cpu", "keras", "mlflow", "numpy")) -> dict:
    """CPU model, cores, memory, Python, platform and the versions of `packages`."""
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
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }
