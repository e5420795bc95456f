"""Print the per-lead test scores of a run next to persistence's, as a Markdown table.

    python pipelines/score_table.py outputs/radar/csv/version_1/metrics.csv --split test

Reads the CSV log that ``metnet test`` (or ``validate``) wrote and prints, for every lead
time, the model's and persistence's CSI at 1 mm/h and CRPS.
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


def table(scores: dict[str, float], split: str) -> str:
    leads = sorted({int(m.group(1)) for key in scores
                    if (m := re.search(r"/lead_(\d+)$", key))})
    lines = ["| lead (min) | CSI 1 mm/h model | CSI 1 mm/h persistence "
             "| CRPS model (mm/h) | CRPS persistence (mm/h) |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for lead in leads:
        values = [scores[f"{split}/{method}/{name}/lead_{lead}"]
                  for name in ("csi_1", "crps") for method in ("model", "persistence")]
        lines.append(f"| {lead} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    pooled = [scores[f"{split}/{method}/{name}"]
              for name in ("csi_1", "crps") for method in ("model", "persistence")]
    lines.append("| all | " + " | ".join(f"{v:.3f}" for v in pooled) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", type=Path, help="metrics.csv of a CSV log")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    args = parser.parse_args()
    print(table(last_scores(args.metrics, args.split), args.split))


if __name__ == "__main__":
    main()
