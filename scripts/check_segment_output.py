"""Rule train_segment, after its training process exited with status 0: fail the job with the
reason when the segment's output is not finished (no segment.json), instead of leaving Snakemake to
report missing files as filesystem latency on every retry."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain.attempts import Ledger, record_exit_without_output  # noqa: E402
from segtrain.layout import SEGMENT_SUMMARY, RunPaths  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--output", required=True, help="the segment's output folder, results/<run>/segments/<segment>")
p.add_argument("--log", help="the job's log, where the reason is appended too")
a = p.parse_args()
out = Path(a.output)
if (out / SEGMENT_SUMMARY).is_file():
    sys.exit(0)
paths = RunPaths(out.parent.parent)
message = f"segtrain: {record_exit_without_output(Ledger(paths.attempts), int(out.name), a.output)}"
print(message, file=sys.stderr)
if a.log:
    with open(a.log, "a") as fh:
        print(message, file=fh)
sys.exit(1)
