"""How far two evaluations of the same init times differ, method by method.

For each method in both ``scores.csv`` files (``metnet evaluate``), the largest change over
the lead times of CSI at 1 mm/h and of CRPS (the second file less the first, signed), and
the leads where each is largest::

    python pipelines/score_difference.py outputs/radar-error/evaluation/knmi/scores.csv \\
        outputs/motion-grid/evaluation/knmi/scores.csv
"""

from __future__ import annotations

import argparse

import pandas as pd


def per_lead(path: str, metric: str) -> pd.DataFrame:
    """(lead, method) values of CSI at 1 mm/h (the finest scale) or CRPS from a scores.csv."""
    scores = pd.read_csv(path)
    rows = scores[scores.metric == metric]
    if metric == "csi":
        rows = rows[rows.threshold == 1.0]
    if rows.scale_km.notna().any():
        rows = rows[rows.scale_km == rows.scale_km.min()]
    return rows.pivot_table(index="lead_time_min", columns="method", values="value")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("first")
    p.add_argument("second")
    args = p.parse_args()
    print("| method | largest CSI change | at lead (min) | largest CRPS change | at lead (min) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    changes = {metric: (per_lead(args.second, metric) - per_lead(args.first, metric))
               .dropna(axis=1, how="all") for metric in ("csi", "crps")}  # methods of both
    for method in changes["crps"].columns.intersection(changes["csi"].columns):
        cells = []
        for metric in ("csi", "crps"):
            change = changes[metric][method].dropna()
            lead = change.abs().idxmax()
            cells += [f"{change[lead]:+.4f}", f"{lead:g}"]
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
