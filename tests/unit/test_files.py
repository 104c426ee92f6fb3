"""common.files: files replaced whole."""

from __future__ import annotations

from common.files import write_whole


def test_write_whole_replaces_the_content_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "watermark.json"
    write_whole(path, "old")
    assert write_whole(path, b"new") == path and path.read_bytes() == b"new"
    assert [entry.name for entry in tmp_path.iterdir()] == ["watermark.json"]
