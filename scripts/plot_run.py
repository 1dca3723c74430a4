"""Rule plot_run: training, checkpoint and timeline figures and the plan-versus-measured table."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain import report  # noqa: E402

p = argparse.ArgumentParser()
for name in ("--run", "--plan", "--metrics", "--training", "--checkpoints", "--timeline", "--table"):
    p.add_argument(name, required=True)
p.add_argument("segments", nargs="+", help="the run's segment output folders, in order")
a = p.parse_args()
report.make_run_report(a.run, Path(a.plan), Path(a.metrics), [Path(s) for s in a.segments],
                       Path(a.training), Path(a.checkpoints), Path(a.timeline), Path(a.table))
