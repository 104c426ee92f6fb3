"""The native-stderr filter drops TensorFlow's known start-up lines and passes everything else on."""

import os

from common.quiet import native_stderr_filtered

NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1795377723.040714   24774 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.\n"
    "I0000 00:00:1795377751.022523   24843 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.\n"
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.\n"
)


def test_known_tensorflow_start_up_lines_are_dropped_and_others_kept(capfd):
    with native_stderr_filtered():
        os.write(2, NOISE.encode())
        os.write(2, b"E0000 a real native error\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR, and more\n")
    err = capfd.readouterr().err
    assert err == (
        "E0000 a real native error\n"
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR, and more\n"
    )


def test_stderr_is_restored_even_when_the_block_fails(capfd):
    try:
        with native_stderr_filtered():
            os.write(2, b"said before the failure\n")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "said before the failure\nafter\n"
