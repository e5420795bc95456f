"""Print per-lead scores as Markdown tables: CSI at 1 mm/h and CRPS, model vs baselines.

    python pipelines/score_table.py outputs/radar/csv/version_1/metrics.csv --split test
    python pipelines/score_table.py outputs/radar/evaluation/knmi/scores.csv
    python pipelines/score_table.py motion=outputs/radar/evaluation/knmi/scores.csv \
        plain=outputs/radar-plain/evaluation/knmi/scores.csv

A ``metrics.csv`` is the CSV log of ``metnet test`` (or ``validate``): the model (and
the calibrated model) vs persistence (and extrapolation) on the test patches. A
``scores.csv`` is written by ``metnet evaluate``: the model vs the baselines over whole
domains. Several ``LABEL=scores.csv`` of the same init times (an ablation) make one
table: each file's model methods carry its label, the baselines come from the first.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path


def last_scores(path: Path, split: str) -> dict[str, float]:
    """The last logged row that holds ``{split}`` scores, as ``{name: value}``."""
    rows = [row for row in csv.DictReader(path.open()) if row.get(f"{split}/model/crps")]
    if not rows:
        raise SystemExit(f"{path}: no {split} scores logged")
    return {key: float(value) for key, value in rows[-1].items() if value}


METHOD_ORDER = ("model", "model_calibrated", "persistence", "extrapolation", "neighbourhood",
                "steps")


def _ordered(methods: set[str]) -> list[str]:
    return sorted(methods, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER
                                          else len(METHOD_ORDER), m))


def table(scores: dict[str, float], split: str) -> str:
    """CSI at 1 mm/h and CRPS per lead for every method logged (model, model_calibrated,
    persistence, extrapolation)."""
    leads = sorted({int(m.group(1)) for key in scores
                    if (m := re.search(r"/lead_(\d+)$", key))})
    methods = _ordered({key.split("/")[1] for key in scores
                        if key.startswith(f"{split}/") and key.endswith("/crps")})
    header = ["lead (min)"] + [f"{label} {m}" for label in ("CSI 1 mm/h", "CRPS (mm/h)")
                               for m in methods]
    lines = ["| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
    for suffix, label in [(f"/lead_{lead}", str(lead)) for lead in leads] + [("", "all")]:
        values = [scores[f"{split}/{method}/{name}{suffix}"]
                  for name in ("csi_1", "crps") for method in methods]
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


def evaluation_values(path: Path, label: str = "") -> dict[tuple[str, str, int], float]:
    """{(method, metric, lead): value} of CSI at 1 mm/h and CRPS in an ``evaluate``
    scores.csv; with a label, model methods are renamed ``label method``."""
    values: dict[tuple[str, str, int], float] = {}
    for row in csv.DictReader(path.open()):
        if row["metric"] == "csi" and float(row["threshold"] or "nan") != 1.0:
            continue
        if row["metric"] in ("csi", "crps"):
            method = row["method"]
            if label and method.startswith("model"):
                method = f"{label} {method}"
            values[method, row["metric"], int(row["lead_time_min"])] = float(row["value"])
    return values


def evaluation_table(paths: list[tuple[str, Path]]) -> str:
    """CSI at 1 mm/h and CRPS per lead and method from ``(label, scores.csv)`` pairs."""
    values: dict[tuple[str, str, int], float] = {}
    for label, path in paths:
        values = {**evaluation_values(path, label), **values}  # earlier files win
    labels = [label for label, _ in paths]

    def model_order(method: str) -> tuple[int, int]:
        label, _, name = method.rpartition(" ")
        return labels.index(label), METHOD_ORDER.index(name)

    models = sorted({m for m, _, _ in values if m.rpartition(" ")[2].startswith("model")},
                    key=model_order)
    methods = models + _ordered({m for m, _, _ in values} - set(models))
    leads = sorted({lead for _, _, lead in values})
    header = ["lead (min)"] + [f"{metric.upper()} {m}" for metric in ("csi", "crps")
                               for m in methods]
    lines = ["| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
    for lead in leads:
        cells = [f"{values.get((m, metric, lead), float('nan')):.3f}"
                 for metric in ("csi", "crps") for m in methods]
        lines.append(f"| {lead} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _labelled(text: str) -> tuple[str, Path]:
    label, _, path = text.rpartition("=")
    return label, Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", nargs="+", type=_labelled,
                        help="metrics.csv of a CSV log, or [LABEL=]scores.csv (several)")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    args = parser.parse_args()
    if args.scores[0][1].name == "scores.csv":
        print(evaluation_table(args.scores))
    else:
        print(table(last_scores(args.scores[0][1], args.split), args.split))


if __name__ == "__main__":
    main()
