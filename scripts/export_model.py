"""Rules export_torch and export_keras: the last and the best checkpoint in the framework's forms."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain import pipeline  # noqa: E402
from segtrain.settings import from_jobs  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--run", required=True, help="the run's model-defining settings as JSON")
pipeline.add_segments_args(p)
p.add_argument("--output", nargs="+", required=True, help="which.ext=path, e.g. last.pt=results/r/model.pt")
a = p.parse_args()
pipeline.setup_logging()
outputs = dict(item.split("=", 1) for item in a.output)
pipeline.export_model(from_jobs(json.loads(a.run)), pipeline.segment_dirs(a)[-1], {k: Path(v) for k, v in outputs.items()})
