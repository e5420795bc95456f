"""Seconds per init time of the one-pass 12-lead forecast with the code of several git
revisions, run in turn, so that the VM's drifting speed falls on all of them alike.

Each revision is checked out in a temporary worktree; each round runs every revision once
in a fresh process that times ``get_method("model")`` with that revision's
``benchmark_forecast.network(True)`` on its ``domains`` (the median of ``--repeats``
forecasts after a warm-up, per domain). The table gives every round's figure::

    python pipelines/benchmark_revisions.py 86e296f HEAD --rounds 4 \\
        --store outputs/stores/knmi.zarr@2010-08-26T06:30 --sides 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def time_forecasts(root: Path, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per domain of the one-pass forecast with the code under ``root``."""
    sys.path[:0] = [str(root), str(root / "pipelines")]
    import torch
    from benchmark_forecast import LEADS, domains, network

    import metnet
    from metnet.nowcasts import get_method
    from metnet.runtime import keep_freed_memory

    if not Path(metnet.__file__).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"metnet was imported from {metnet.__file__}, not from {root}")
    keep_freed_memory()
    net, out = network(True), {}
    with torch.inference_mode():
        for name, rate, _ in domains(args):
            get_method("model")(rate, LEADS, step_minutes=5, net=net)
            seconds = []
            for _ in range(args.repeats):
                began = time.perf_counter()
                get_method("model")(rate, LEADS, step_minutes=5, net=net)
                seconds.append(time.perf_counter() - began)
            out[name] = statistics.median(seconds)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("revisions", nargs="*", help="git revisions to compare")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sides", type=int, nargs="*", default=[256],
                   help="sides of square synthetic domains in px")
    p.add_argument("--store", action="append", default=[],
                   help="STORE@INIT_TIME of a real store (repeatable)")
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)  # one timing process
    args = p.parse_args()
    if args.root is not None:
        print(json.dumps(time_forecasts(args.root, args)))
        return
    passed = [*(["--sides", *map(str, args.sides)]),
              *(arg for spec in args.store for arg in ("--store", spec)),
              "--repeats", str(args.repeats)]
    figures: dict[str, dict[str, list[float]]] = {rev: {} for rev in args.revisions}
    with tempfile.TemporaryDirectory() as folder:
        trees = {}
        for i, rev in enumerate(args.revisions):
            trees[rev] = Path(folder) / f"tree{i}"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q",
                            str(trees[rev]), rev], check=True)
        try:
            for _ in range(args.rounds):
                for rev, tree in trees.items():
                    result = subprocess.run(
                        [sys.executable, __file__, "--root", str(tree), *passed],
                        check=True, capture_output=True, text=True, cwd=REPO)
                    for name, value in json.loads(result.stdout.splitlines()[-1]).items():
                        figures[rev].setdefault(name, []).append(value)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(tree)], check=False)
    print("| domain | " + " | ".join(args.revisions) + " |")
    print("| --- |" + " --- |" * len(args.revisions))
    for name in figures[args.revisions[0]]:
        cells = [", ".join(f"{v:.2f}" for v in figures[rev][name])
                 + f" (median {statistics.median(figures[rev][name]):.2f})"
                 for rev in args.revisions]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
