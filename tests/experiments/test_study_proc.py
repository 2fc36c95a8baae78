"""A study row's subprocess (experiments/matrix/proc.py) is stopped by SIGINT, so that it keeps
what it measured, even where the study was started with SIGINT ignored (a background job of
a non-interactive shell, `nohup ... &`, a CI wrapper)."""
import signal
import sys

from experiments.matrix import proc

HANG = "import time\nwhile True:\n    time.sleep(0.1)\n"


def test_a_timed_out_row_stops_on_sigint_where_the_study_ignores_it(tmp_path):
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        res = proc.run_logged([sys.executable, "-c", HANG], str(tmp_path / "row.log"), timeout_s=2)
    finally:
        signal.signal(signal.SIGINT, old)
    assert res["status"] == "failed" and "timed out" in res["reason"]
    # kill() waits 20 s after SIGINT before SIGKILL: a row that inherited the ignore would take that long
    assert res["wall_s"] < 2 + 15, res
