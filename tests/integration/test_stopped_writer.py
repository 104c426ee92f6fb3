"""A dataset writer stopped (SIGSTOP) between a commit and its answer: when the process wakes, its publisher waits a
moment, so the answer that would leave late takes its records back before they are published (a real process)."""

import signal
import subprocess
import sys
import textwrap

from common.prediction_dataset import filesystem, list_parts, read_parts

WRITER = textwrap.dedent(
    """
    import logging, sys, time
    from serving.dataset_sink import DatasetSink
    from tests.unit.test_prediction_dataset import record

    logging.basicConfig(level=logging.INFO)
    sink = DatasetSink(sys.argv[1], sys.argv[2], flush_seconds=4)
    sink.write([record(1, 0), record(2, 0)])
    print("staged", flush=True)
    sys.stdin.readline()  # the test has stopped and woken this process
    time.sleep(0.5)  # the event loop answers what waited before it reaches this request
    print("withdrawn", sorted(sink.withdraw(["req-1"])), flush=True)
    sink.close()
    """
)


def test_a_writer_woken_from_a_stop_withdraws_a_late_answers_records_before_its_publisher_publishes_them(tmp_path):
    dataset, staging = tmp_path / "dataset", tmp_path / "staging"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(dataset), str(staging)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "staged"
        writer.send_signal(signal.SIGSTOP)  # before the publisher's first round, 4 s after the start
        try:
            subprocess.run(["sleep", "6"], check=True)
        finally:
            writer.send_signal(signal.SIGCONT)
        writer.stdin.write("woken\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "withdrawn ['req-1']"
        _, errors = writer.communicate(timeout=30)
        assert writer.returncode == 0, errors[-2000:]
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert "waiting 2 s for late answers first" in errors  # the publisher saw the stop
    fs, root = filesystem(str(dataset))
    assert list(read_parts(fs, list_parts(fs, root))["request_id"]) == ["req-2"]
