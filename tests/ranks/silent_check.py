"""Run by tests/test_world.py as 2 ranks under torchrun (gloo on CPU): rank 0 freezes rank 1
(SIGSTOP) and waits for it at an agreement; after the warning time rank 0's log names rank 1 as
silent, and once it has, rank 0 lets it go on (SIGCONT) and the agreement completes. A rank busy in its own
code (a long step) is named as busy, not silent."""

import logging
import os
import signal
import sys
import threading
import time

from segtrain.world import current

logging.basicConfig(level=logging.INFO, format=f"rank {os.environ['RANK']}: %(message)s", stream=sys.stderr)
world = current()
pids = world.all_gather(os.getpid())


class LetItGo(logging.Handler):
    """Rank 0: once the frozen rank is named, it may go on."""

    def emit(self, record):
        if "agreement" in record.getMessage():
            os.kill(pids[1], signal.SIGCONT)


if world.rank == 0:
    logging.getLogger("segtrain.world").addHandler(LetItGo())
    os.kill(pids[1], signal.SIGSTOP)
    backstop = threading.Timer(60.0, os.kill, (pids[1], signal.SIGCONT))  # should the warning never come
    backstop.daemon = True
    backstop.start()
time.sleep(0.5)
assert world.agree(False) is False  # rank 0 waits here for the frozen rank 1
if world.rank == 1:
    time.sleep(12.0)  # busy in its own code: its beat goes on
world.barrier()
print(f"rank {world.rank} done", flush=True)
world.close()
sys.stderr.flush()
os._exit(0)  # as a job's processes end (pipeline.exit_now): gloo's threads may abort in the interpreter's teardown
