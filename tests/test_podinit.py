"""segtrain.podinit, a pod's PID 1: stop signals reach the whole job, and it outlives the job."""

import os
import signal
import subprocess
import sys
import time

CHILD = """
import signal, sys, time
def stop(signum, frame):
    time.sleep(1.0)  # a save that takes a while
    open(sys.argv[1], "w").write(str(time.time()))
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[1] + ".ready", "w").close()
time.sleep(60)
"""


def test_sigterm_reaches_a_grandchild_behind_a_shell_and_init_waits_for_its_save(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    saved = tmp_path / "saved"
    # like the Job's command: a compound sh -c whose shell dies at once on SIGTERM
    init = subprocess.Popen([sys.executable, "-m", "segtrain.podinit", "--", "/bin/sh", "-c",
                             f"true && {sys.executable} {child} {saved} && echo done"])
    deadline = time.time() + 30
    while not (tmp_path / "saved.ready").exists():
        assert time.time() < deadline and init.poll() is None
        time.sleep(0.01)
    os.kill(init.pid, signal.SIGTERM)
    code = init.wait(timeout=30)
    ended = time.time()
    assert saved.exists(), "the grandchild never got SIGTERM"
    assert float(saved.read_text()) <= ended, "init exited before the grandchild finished its save"
    assert code == 128 + signal.SIGTERM  # the shell's death, as a shell reports it: the job failed


def test_the_exit_status_is_the_commands():
    assert subprocess.run([sys.executable, "-m", "segtrain.podinit", "--", "sh", "-c", "exit 3"]).returncode == 3
    assert subprocess.run([sys.executable, "-m", "segtrain.podinit", "--", "true"]).returncode == 0
    assert subprocess.run([sys.executable, "-m", "segtrain.podinit", "--", "/no/such/program"],
                          capture_output=True).returncode == 127
