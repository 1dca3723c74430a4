"""Rule plan_segments: checkpoint interval, steps per segment and segments from the measured costs."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain import pipeline  # noqa: E402
from segtrain.planning import PlanError  # noqa: E402
from segtrain.settings import from_jobs  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--run", required=True, help="the run's resolved settings as JSON")
p.add_argument("--costs", required=True)
p.add_argument("--plan-json", required=True)
p.add_argument("--plan-txt", required=True)
p.add_argument("--log")
a = p.parse_args()
pipeline.setup_logging(a.log)
try:
    pipeline.plan(from_jobs(json.loads(a.run)), Path(a.costs), Path(a.plan_json), Path(a.plan_txt))
except PlanError as exc:
    pipeline.log.error("cannot plan: %s", exc)
    sys.exit(2)
