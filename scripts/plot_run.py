"""Rule plot_run: training, checkpoint and timeline figures and the plan-versus-measured table."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain import pipeline, report  # noqa: E402

p = argparse.ArgumentParser()
for name in ("--run", "--plan", "--metrics", "--training", "--checkpoints", "--timeline", "--table", "--page",
             "--plan-txt"):
    p.add_argument(name, required=True)
pipeline.add_segments_args(p)
a = p.parse_args()
report.make_run_report(a.run, Path(a.plan), Path(a.metrics), pipeline.segment_dirs(a),
                       Path(a.training), Path(a.checkpoints), Path(a.timeline), Path(a.table),
                       page=Path(a.page), plan_txt=Path(a.plan_txt))
