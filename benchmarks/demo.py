"""The README's first command, timed: the offline demo from nothing to `report.md`, in a fresh workdir.

    python -m benchmarks.demo [--json] [--workdir DIR] [-- extra --config.KEY=VALUE overrides]

Runs `python -m slam_jax.main --config configs/demo.py --workdir DIR` as a user would (a new process, an empty
DIR: every stage runs), then reads DIR/report.json for each stage's wall time and the metrics. Target (issue 7):
under 10 minutes on a 2-core CPU, with tStoryCloze-like accuracy >= 0.65 after pre-training and no metric
worse after DPO (with the pairs that changed side and the McNemar p of that change). The machine's load
average is recorded beside the figures.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import common
from slam_jax.paths import Path

TARGET_SECONDS = 600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--workdir", default="", help="run here (must not exist; default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="--config.KEY=VALUE overrides passed to the demo")
    args = parser.parse_args()
    temporary = not args.workdir
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="slam_jax_demo_")) / "demo"
    if workdir.exists():
        raise SystemExit(f"error: {workdir} exists; the benchmark times a run from nothing")
    command = [sys.executable, "-m", "slam_jax.main", "--config", "configs/demo.py", "--workdir", str(workdir)]
    start = time.perf_counter()
    completed = subprocess.run(command + args.overrides, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if completed.returncode:
        raise SystemExit(f"error: the demo failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")
    report = json.loads((workdir / "report.json").read_text())
    result = {
        "benchmark": "demo",
        "command": " ".join(command[1:] + args.overrides),
        "wall_seconds": round(wall, 1),
        "target_seconds": TARGET_SECONDS,
        "stage_seconds": {stage: round(seconds, 1) for stage, seconds in report["stage_seconds"].items()},
        "metrics": {
            row["metric"]: {
                "before_dpo": row["before"],
                "after_dpo": row["after"],
                "pairs_right_to_wrong": row["lost"],
                "pairs_wrong_to_right": row["gained"],
                "mcnemar_p": row["p_value"],
            }
            for row in report["metrics"]
        },
        "pairs": {row["metric"]: row["after_pairs"] for row in report["metrics"]},
        "machine": common.machine(),
    }
    lines = [f"demo: {wall:.0f} s wall (target < {TARGET_SECONDS:.0f} s)"]
    lines += [f"  {stage:<14} {seconds:7.1f} s" for stage, seconds in result["stage_seconds"].items()]
    lines += [
        f"  {metric:<14} {m['before_dpo']:.4f} -> {m['after_dpo']:.4f}  pairs right -> wrong / wrong -> right"
        f" {m['pairs_right_to_wrong']:g} / {m['pairs_wrong_to_right']:g}, McNemar p {m['mcnemar_p']:.2g}"
        for metric, m in result["metrics"].items()
    ]
    if temporary:
        shutil.rmtree(workdir.parent)
    common.emit(result, args.json, lines)


if __name__ == "__main__":
    main()
