"""The goal of issue 16 per lead time, from whole-domain evaluations (``metnet evaluate``).

For each ``scores.csv``: the model's CSI at 1 mm/h less extrapolation's (the goal: at least
0), its CRPS less STEPS' (the goal: at most 0) and its Brier reliability term at 1 mm/h
(the goal: below 0.01), a ``*`` beside each miss; then the misses counted::

    python pipelines/goal_table.py outputs/radar/evaluation/{knmi,mch,fmi}/scores.csv
    python pipelines/goal_table.py --method model_calibrated outputs/radar/evaluation/*/scores.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

#: The event threshold of the goal (mm/h) and the reliability it must stay under.
THRESHOLD = 1.0
RELIABILITY = 0.01


def goal_rows(path: Path, method: str) -> pd.DataFrame:
    """Per lead (minutes): CSI less extrapolation's, CRPS less STEPS' and the reliability of
    ``method`` in one ``scores.csv``."""
    scores = pd.read_csv(path)

    def values(name: str, metric: str) -> pd.Series:
        rows = scores[(scores.method == name) & (scores.metric == metric)]
        if metric != "crps":
            rows = rows[rows.threshold == THRESHOLD]
        if rows.empty:
            hint = " (an evaluation with --steps_members 0 has none)" if name == "steps" else ""
            raise SystemExit(f"{path}: no {metric} of method {name!r}{hint}")
        return rows.set_index("lead_time_min")["value"]

    return pd.DataFrame({
        "csi": values(method, "csi"),
        "csi - extrapolation": values(method, "csi") - values("extrapolation", "csi"),
        "crps": values(method, "crps"),
        "crps - steps": values(method, "crps") - values("steps", "crps"),
        "reliability": values(method, "brier_reliability"),
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scores", nargs="+", type=Path, help="scores.csv of metnet evaluate")
    p.add_argument("--method", default="model")
    args = p.parse_args()
    misses = 0
    print("| store | lead (min) | CSI | - extrapolation | CRPS | - STEPS | reliability |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for path in args.scores:
        for lead, row in goal_rows(path, args.method).iterrows():
            flags = (row['csi - extrapolation'] < 0, row['crps - steps'] > 0,
                     row["reliability"] >= RELIABILITY)
            misses += sum(flags)
            mark = ["*" if flag else "" for flag in flags]
            print(f"| {path.parent.name} | {lead} | {row['csi']:.3f} "
                  f"| {row['csi - extrapolation']:+.4f}{mark[0]} | {row['crps']:.3f} "
                  f"| {row['crps - steps']:+.4f}{mark[1]} | {row['reliability']:.4f}{mark[2]} |")
    print(f"{misses} misses")


if __name__ == "__main__":
    main()
