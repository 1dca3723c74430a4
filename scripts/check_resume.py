"""Rule measure_checkpoint_cost, second part: check that a resume of the run's own code is bitwise
identical (segtrain.check) and add the verdict to the costs the plan reads."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain import pipeline  # noqa: E402
from segtrain.settings import from_jobs  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--run", required=True, help="the run's resolved settings as JSON")
p.add_argument("--costs", required=True, help="the measure job's costs.json, which gets the verdict")
p.add_argument("--log", required=True, help="the job's log, where the check's own jobs write too")
a = p.parse_args()
run = from_jobs(json.loads(a.run))
pipeline.setup_logging()
sys.exit(pipeline.check_resume(run, Path(a.costs), Path(a.log)))
