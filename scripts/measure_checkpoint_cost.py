"""Rule measure_checkpoint_cost: time training steps and checkpoint saves/loads for one run."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain import launch, pipeline  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--run", required=True, help="the run's resolved settings as JSON")
p.add_argument("--output", required=True)
p.add_argument("--log")
a = p.parse_args(launch.arguments())
settings = pipeline.with_definition(json.loads(a.run))
# the steps and saves of several processes are measured as they will run: as that many ranks
launch.as_ranks(int(settings.get("processes", 1)), float(settings.get("grace_period_seconds", 30)))
pipeline.setup_logging(a.log)
pipeline.measure(json.loads(a.run), Path(a.output))
