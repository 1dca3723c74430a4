"""Rule measure_checkpoint_cost: time training steps and checkpoint saves/loads for one run."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain import launch, pipeline  # noqa: E402
from segtrain.settings import from_jobs  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--run", required=True, help="the run's resolved settings as JSON")
p.add_argument("--output", required=True)
p.add_argument("--log")
a = p.parse_args(launch.arguments())
run = from_jobs(json.loads(a.run))
# the steps and saves of several processes are measured as they will run: as that many ranks
launch.as_ranks(run.processes, run.grace_period_seconds, nodes=run.nodes, cpus_per_node=run.threads * run.processes)
pipeline.setup_logging(a.log)
pipeline.measure(run, Path(a.output))
# the costs are written: end without the interpreter's teardown, in which several processes' gloo
# threads may abort (exit -6, a failed job after a complete measurement)
pipeline.exit_now(0)
