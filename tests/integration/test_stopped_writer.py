"""A dataset writer stopped (SIGSTOP) between a commit and its answer: when the process wakes, its publisher waits a
moment, so the answer that would leave late takes its records back before they are published (a real process)."""

import signal
import subprocess
import sys
import textwrap

from common.prediction_dataset import filesystem, list_parts, read_parts

WRITER = textwrap.dedent(
    """
    import sys, time
    from serving.dataset_sink import DatasetSink
    from tests.unit.test_prediction_dataset import record

    sink = DatasetSink(sys.argv[1], sys.argv[2], flush_seconds=2)
    sink.write([record(1, 0), record(2, 0)])
    print("staged", flush=True)
    last = time.monotonic()
    while (now := time.monotonic()) - last < 1:  # until the process has been stopped and woken
        last = now
        time.sleep(0.05)
    time.sleep(0.5)  # the event loop answers what waited before it reaches this request
    print("withdrawn", sorted(sink.withdraw(["req-1"])), flush=True)
    sink.close()
    """
)


def test_a_writer_woken_from_a_stop_withdraws_a_late_answers_records_before_its_publisher_publishes_them(tmp_path):
    dataset, staging = tmp_path / "dataset", tmp_path / "staging"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(dataset), str(staging)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "staged"
        writer.send_signal(signal.SIGSTOP)  # before the publisher's first round, 2 s after the start
        try:
            subprocess.run(["sleep", "5"], check=True)
        finally:
            writer.send_signal(signal.SIGCONT)
        assert writer.stdout.readline().strip() == "withdrawn ['req-1']"
        assert writer.wait(timeout=30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    fs, root = filesystem(str(dataset))
    assert list(read_parts(fs, list_parts(fs, root))["request_id"]) == ["req-2"]
