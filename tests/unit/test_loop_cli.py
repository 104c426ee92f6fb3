"""The loop's command line: what it refuses before starting anything."""

import pytest

from loop.__main__ import main


def test_simulate_refuses_labels_that_would_come_back_before_the_controller_can_count_them(capsys):
    with pytest.raises(SystemExit) as refused:
        main(["simulate", "--label-delay", "0"])
    assert refused.value.code == 2 and "--label-delay 0: expected 1 or more" in capsys.readouterr().err
