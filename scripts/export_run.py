"""Rule export_run: final weights in the framework's usual form and one merged metrics table."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain import pipeline  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--run", required=True, help="the run's resolved settings as JSON")
p.add_argument("--model", required=True)
p.add_argument("--metrics", required=True)
p.add_argument("--log")
p.add_argument("segments", nargs="+", help="the run's segment output folders, in order")
a = p.parse_args()
pipeline.setup_logging(a.log)
pipeline.export(json.loads(a.run), a.segments, Path(a.model), Path(a.metrics))
