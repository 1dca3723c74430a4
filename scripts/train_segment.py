"""Rule train_segment: resume, train to the segment's planned end step, save periodically."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain.lifecycle import STOP, watch_parent  # noqa: E402

STOP.install()  # before the framework import: a SIGTERM/SIGUSR1 during start-up must not kill us
watch_parent()  # and a killed Snakemake stops this job instead of leaving it running as an orphan

from segtrain import launch, pipeline  # noqa: E402
from segtrain.settings import from_jobs  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--run", required=True, help="the run's resolved settings as JSON")
p.add_argument("--segment", required=True, help="the segment's plan entry as JSON")
p.add_argument("--previous", default="", help="the previous segment's output folder (none for segment 0)")
p.add_argument("--threads", type=int, default=1, help="CPU threads for the framework")
p.add_argument("--output", required=True)
p.add_argument("--log")
a = p.parse_args(launch.arguments())
run = from_jobs(json.loads(a.run))
# processes above 1: this command runs again as that many ranks under torchrun (nothing returns here)
launch.as_ranks(run.processes, run.grace_period_seconds, nodes=run.nodes, cpus_per_node=run.threads * run.processes)
pipeline.setup_logging(a.log)
code = pipeline.train(run, json.loads(a.segment), a.previous or None, Path(a.output), a.threads)
if run.is_script and run.processes == 1:
    sys.exit(code)  # a script's own exit handlers (its loggers' uploads, ...) must run
# Everything is written, fsynced and unlocked: exit now. The interpreter's teardown (freeing the
# frameworks' modules) takes 1-2 s, a window in which a stop signal or a kill would make Snakemake
# count a finished segment as failed and delete its output; with several processes gloo's threads
# may abort in it (a script's own exit handlers run first).
pipeline.exit_now(code, exit_handlers=run.is_script)
