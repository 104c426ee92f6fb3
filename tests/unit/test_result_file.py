"""A benchmark's result file records the figures, the machine and the command that reproduces them."""

import json
import shlex
import sys

from bench.result_file import reproducing_command, write_result


def test_the_command_is_the_one_run_less_scratch_options_with_paths_under_the_checkout_made_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arguments = ["--log", str(tmp_path / ".digitdrift" / "log.db"), "--scratch", "/mnt/fast", "--scratch=/x", "--runs", "2"]
    command = reproducing_command("bench.example", arguments, drop=("--scratch",))
    assert shlex.split(command) == ["python", "-m", "bench.example", "--log", ".digitdrift/log.db", "--runs", "2"]
    assert reproducing_command("bench.example", ["--out", "/elsewhere/a b.json"]).endswith("--out '/elsewhere/a b.json'")


def test_the_result_holds_the_figures_the_machine_and_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench/example.py", "--windows", "3"])
    written = write_result(tmp_path / "r.json", "an example", {"seconds": 1.5}, "bench.example", ("numpy",))
    assert json.loads((tmp_path / "r.json").read_text()) == written
    assert written["benchmark"] == "an example" and written["seconds"] == 1.5
    assert written["command"] == "python -m bench.example --windows 3" and "numpy" in written["machine"]["packages"]
