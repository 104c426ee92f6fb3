"""`python -m monitoring run --every`: what it refuses before it starts."""

from __future__ import annotations

from monitoring.__main__ import main


def test_every_refuses_a_log_file_naming_what_it_keeps_monitoring(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIGITDRIFT_HOME", str(tmp_path))
    assert main(["run", "--log", str(tmp_path / "predictions.db"), "--every", "1h"]) == 2
    assert "--every 1h: keeps monitoring a dataset (a folder or az://...)" in capsys.readouterr().err


def test_every_refuses_a_period_it_cannot_read(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIGITDRIFT_HOME", str(tmp_path))
    assert main(["run", "--log", str(tmp_path), "--every", "hourly"]) == 2
    assert "--every 'hourly': expected" in capsys.readouterr().err


def test_every_refuses_full_and_a_max_runs_under_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIGITDRIFT_HOME", str(tmp_path))
    assert main(["run", "--log", str(tmp_path), "--every", "1h", "--full"]) == 2
    assert "with --full every period would judge every window again" in capsys.readouterr().err
    assert main(["run", "--log", str(tmp_path), "--every", "1h", "--max-runs", "0"]) == 2
    assert "--max-runs 0: expected 1 or more" in capsys.readouterr().err
