"""Fetching into the cache: verified copies, refused corrupt ones, a mirror left untouched."""

import os

import pytest

from common.datasets import DatasetError, load_mnist
from common.fetch import fetch_all, fetch_mnist, sha256_of


def snapshot(folder):
    return {path: (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.rglob("*")}


def test_fetch_from_the_mirror_fills_a_loadable_cache_and_leaves_the_mirror_alone(shared_data, tmp_path):
    before = snapshot(shared_data / "mnist")
    fetch_mnist(tmp_path / "mnist", str(shared_data))
    assert snapshot(shared_data / "mnist") == before
    assert len(load_mnist(tmp_path / "mnist", "test")) == 10000
    for name in os.listdir(shared_data / "mnist"):
        assert sha256_of(tmp_path / "mnist" / name) == sha256_of(shared_data / "mnist" / name)


def test_corrupt_file_in_a_mirror_is_refused_by_sha256_and_not_cached(shared_data, tmp_path):
    mirror = tmp_path / "mirror" / "mnist"
    mirror.mkdir(parents=True)
    for name in os.listdir(shared_data / "mnist"):
        (mirror / name).write_bytes((shared_data / "mnist" / name).read_bytes())
    tampered = mirror / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(tampered.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    tampered.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.gz: SHA-256 [0-9a-f]{64} matches no known copy"):
        fetch_mnist(tmp_path / "cache", str(tmp_path / "mirror"))
    assert not (tmp_path / "cache" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list((tmp_path / "cache").glob("*.part"))


def test_a_bad_cached_file_is_replaced_from_the_mirror(shared_data, tmp_path):
    cache = tmp_path / "mnist"
    fetch_mnist(cache, str(shared_data))
    (cache / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    fetch_mnist(cache, str(shared_data))
    assert sha256_of(cache / "train-labels-idx1-ubyte.gz") == sha256_of(shared_data / "mnist" / "train-labels-idx1-ubyte.gz")


def test_missing_file_in_the_mirror_is_named(tmp_path):
    (tmp_path / "mirror" / "mnist").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"could not fetch mnist/train-images-idx3-ubyte.gz: .* not found in the mirror"):
        fetch_mnist(tmp_path / "cache", str(tmp_path / "mirror"))


def test_foreign_sets_without_a_mirror_folder_say_where_to_get_them(shared_data, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "mnist").mkdir(parents=True)
    for name in os.listdir(shared_data / "mnist"):
        (mirror / "mnist" / name).write_bytes((shared_data / "mnist" / name).read_bytes())
    with pytest.raises(DatasetError, match=r"devanagari: no mirror folder .* Devanagari Handwritten Character Dataset"):
        fetch_all(tmp_path / "cache", str(mirror))


def test_fetch_all_copies_the_foreign_layouts(shared_data, tmp_path):
    cache = fetch_all(tmp_path / "cache", str(shared_data))
    assert len(list((cache / "devanagari" / "Test" / "digit_3").glob("*.png"))) == 240
    assert len(list((cache / "japanese" / "07").glob("*.png"))) == len(list((shared_data / "japanese" / "07").glob("*.png")))


def test_fetch_from_a_url_mirror_over_loopback(shared_data, tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(shared_data)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fetch_mnist(tmp_path / "mnist", f"http://127.0.0.1:{server.server_address[1]}/")
        with pytest.raises(DatasetError, match=r"could not fetch mnist/train-images-idx3-ubyte.gz: .*404"):
            fetch_mnist(tmp_path / "other", f"http://127.0.0.1:{server.server_address[1]}/nowhere")
    finally:
        server.shutdown()
    assert len(load_mnist(tmp_path / "mnist", "test")) == 10000
