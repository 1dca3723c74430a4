"""Rule merge_metrics: one metrics table across all segments of a run."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain import pipeline  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--output", required=True)
p.add_argument("segments", nargs="+", help="the run's segment output folders, in order")
a = p.parse_args()
pipeline.setup_logging()
pipeline.merge_metrics([Path(s) for s in a.segments], Path(a.output))
