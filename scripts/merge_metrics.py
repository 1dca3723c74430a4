"""Rule merge_metrics: one metrics table across all segments of a run."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain import pipeline  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--output", required=True)
pipeline.add_segments_args(p)
a = p.parse_args()
pipeline.setup_logging()
pipeline.merge_metrics(pipeline.segment_dirs(a), Path(a.output))
