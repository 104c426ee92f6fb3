"""common.files: files replaced whole."""

from __future__ import annotations

from common.files import write_whole


def test_write_whole_replaces_the_content_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "watermark.json"
    write_whole(path, "old")
    assert write_whole(path, b"new") == path and path.read_bytes() == b"new"
    assert [entry.name for entry in tmp_path.iterdir()] == ["watermark.json"]


def test_write_whole_gives_a_secret_its_owner_only_mode_whatever_the_file_had(tmp_path):
    path = tmp_path / "credentials.json"
    path.write_text("from before")
    path.chmod(0o644)
    write_whole(path, "secret", mode=0o600)
    assert oct(path.stat().st_mode & 0o777) == "0o600" and path.read_text() == "secret"
