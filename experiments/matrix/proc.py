"""One subprocess of the study (a row, or a probe's candidate): its output in a log, a timeout
for hangs, Ctrl-C stopping it (and its children) before it is passed on, and the most telling
line of its output as the reason when it fails."""
import os
import signal
import subprocess
import time

from ..dist.launch import default_sigint
from ..record.sysinfo import PROJECT_ROOT


def display_command(cmd):
    """argv [python, -m, module, ...] as a reader would type it: python -m module ..."""
    return " ".join(cmd[1:]).replace("-m ", "python -m ", 1)


def reason_from_log(path, rc):
    """The most telling line of a failed subprocess's output: its `error:` line, else the last one."""
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        lines = []
    for ln in reversed(lines):
        if ln.startswith("error:") or ln.startswith(("diverged:", "interrupted:")):
            return ln
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln[:300]
    return (lines[-1][:300] if lines else f"exited with code {rc} and no output")


def run_logged(cmd, log_path, timeout_s):
    """Run cmd with its output in log_path; returns dict(returncode, status, reason, wall_s),
    status ok | diverged | interrupted | failed (a timeout is a failure). Ctrl-C ends the
    subprocess's whole group, then raises KeyboardInterrupt on."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w") as f:
        f.write("$ " + display_command(cmd) + "\n")
        f.flush()
        # SIGINT at its default in the row: kill() asks it to stop and save with SIGINT, also
        # when the study itself runs as a background job that ignores it
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=PROJECT_ROOT, preexec_fn=default_sigint)
        try:
            rc = proc.wait(timeout=timeout_s)
            status = {0: "ok", 3: "diverged", 130: "interrupted"}.get(rc, "failed")
            reason = "" if rc == 0 else reason_from_log(log_path, rc)
        except subprocess.TimeoutExpired:
            kill(proc)
            rc, status, reason = None, "failed", f"timed out after {timeout_s:g} s (--row-timeout)"
        except KeyboardInterrupt:
            kill(proc)
            raise
    return dict(returncode=rc, status=status, reason=reason, wall_s=round(time.perf_counter() - t0, 1))


def kill(proc):
    """End a subprocess's whole process group: SIGINT first (experiments.run then keeps what it
    measured), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
