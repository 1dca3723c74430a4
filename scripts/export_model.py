"""Rule export_model: the final weights of a run in the framework's usual form."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain import pipeline  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--run", required=True, help="the run's model-defining settings as JSON")
p.add_argument("--segment", required=True, help="the last segment's output folder")
p.add_argument("--output", required=True)
a = p.parse_args()
pipeline.setup_logging()
pipeline.export_model(json.loads(a.run), Path(a.segment), Path(a.output))
