"""Rule compare_runs: every run's training loss in one figure."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain import report  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--output", required=True)
p.add_argument("--names", nargs="+", required=True)
p.add_argument("--metrics", nargs="+", required=True)
a = p.parse_args()
report.compare_runs(a.names, [Path(m) for m in a.metrics], Path(a.output))
