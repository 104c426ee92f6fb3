"""Fill the local dataset cache from a mirror (folder or URL) or MNIST's public downloads."""

from __future__ import annotations

import hashlib
import logging
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from common.datasets import FOREIGN_LAYOUTS, MNIST_FILES, DatasetError

log = logging.getLogger(__name__)

PUBLIC_MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# Accepted SHA-256 per MNIST file: the original LeCun files (as served by the public mirrors above)
# and the copies in the shared local mirror (recompressed; train images rebuilt within one grey level).
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": {
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "8e59d4e6322d5e291f26338633ee8015e1369ee4616a784cd934bc27c2948978",
    },
    "train-labels-idx1-ubyte.gz": {
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "fcb926fa5ff984538180eace535719f90b4ac475ee857571c580b931884a5ec5",
    },
    "t10k-images-idx3-ubyte.gz": {
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "1488b2253c7678056ecec4d0a5964be6cf8cf6dc6411b21a48d77a497fefe2be",
    },
    "t10k-labels-idx1-ubyte.gz": {
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "daa0ca80179b076764a51a527b4850de26f321125e4d2d55cf279fff0a4b4c4d",
    },
}
FOREIGN_DOWNLOAD_HINT = {
    "devanagari": "the Devanagari Handwritten Character Dataset (UCI ML repository), its Test/digit_N folders",
    "japanese": "the Japanese Handwritten Digits dataset, its 00 ... 09 PNG folders",
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_all(cache_dir: str | Path, mirror: str | None = None) -> Path:
    """Fill `cache_dir` with MNIST and the foreign sets in their public layouts; return it.

    MNIST comes from `mirror` (folder or URL) or else the public URLs, verified by SHA-256.
    The foreign sets come from a mirror folder only. Files already cached and valid are kept.
    """
    cache = Path(cache_dir)
    fetch_mnist(cache / "mnist", mirror)
    for source in FOREIGN_LAYOUTS:
        fetch_png_folders(source, cache, mirror)
    return cache


def fetch_mnist(target: Path, mirror: str | None = None) -> None:
    """Copy or download the four MNIST files into `target`, each checked against MNIST_SHA256."""
    target.mkdir(parents=True, exist_ok=True)
    bases = [_mnist_base(mirror)] if mirror else list(PUBLIC_MNIST_URLS)
    for name in (name for pair in MNIST_FILES.values() for name in pair):
        destination = target / name
        if destination.is_file() and sha256_of(destination) in MNIST_SHA256[name]:
            log.info("mnist/%s: cached and verified", name)
            continue
        errors = []
        for base in bases:
            try:
                _copy_verified(f"{base.rstrip('/')}/{name}", destination, MNIST_SHA256[name])
                break
            except DatasetError as err:
                errors.append(str(err))
        else:
            raise DatasetError(f"could not fetch mnist/{name}: " + "; ".join(errors))


def _mnist_base(mirror: str) -> str:
    """A mirror laid out as the shared one (`<mirror>/mnist/`) or holding the files itself."""
    if _is_url(mirror):
        return mirror.rstrip("/") + "/mnist"
    folder = Path(mirror)
    return str(folder / "mnist") if (folder / "mnist").is_dir() else str(folder)


def _copy_verified(source: str, destination: Path, accepted: set[str]) -> None:
    """Copy `source` (path or URL) to `destination` through a temporary file, keeping it only if valid."""
    partial = destination.with_name(destination.name + ".part")
    try:
        if _is_url(source):
            log.info("downloading %s", source)
            with urllib.request.urlopen(source, timeout=60) as response, partial.open("wb") as out:
                shutil.copyfileobj(response, out)
        else:
            if not Path(source).is_file():
                raise DatasetError(f"{source}: not found in the mirror")
            log.info("copying %s", source)
            shutil.copyfile(source, partial)
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        raise DatasetError(f"{source}: {err}") from None
    digest = sha256_of(partial)
    if digest not in accepted:
        partial.unlink()
        raise DatasetError(f"{source}: SHA-256 {digest} matches no known copy of {destination.name}")
    partial.replace(destination)


def fetch_png_folders(source: str, cache: Path, mirror: str | None) -> None:
    """Copy a foreign set's PNG class folders from a mirror folder into `cache/<source>`."""
    destination = cache / source
    if destination.is_dir() and any(destination.rglob("*.png")):
        log.info("%s: cached", source)
        return
    origin = Path(mirror) / source if mirror and not _is_url(mirror) else None
    if origin is None or not origin.is_dir():
        raise DatasetError(
            f"{source}: no mirror folder to copy from ({origin or 'no mirror folder given'}); download "
            f"{FOREIGN_DOWNLOAD_HINT[source]} and pass its parent folder with --mirror"
        )
    if destination.resolve() == origin.resolve():
        return
    log.info("copying %s from %s", source, origin)
    partial = destination.with_name(destination.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(origin, partial, ignore=shutil.ignore_patterns("*.part"))
    partial.replace(destination)


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://", "file://"))
