"""Which events of a data configuration's stores train, validate and test: per store, its
events (runs of frames without a gap longer than an hour) and, per split, the complete
windows (init times) they give, as the datamodule cuts them.

    python pipelines/split_table.py configs/data/radar.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml

from metnet.data.windows import (
    complete_windows,
    grid_frames,
    lead_steps,
    split_bounds,
    split_windows,
)
from metnet.io.store import open_store

EVENT_GAP = np.timedelta64(60, "m")


def events(times: np.ndarray) -> list[tuple[np.datetime64, np.datetime64, int]]:
    """(first, last, frames) of each run of frames without a gap longer than an hour."""
    breaks = np.flatnonzero(np.diff(times) > EVENT_GAP) + 1
    return [(run[0], run[-1], len(run)) for run in np.split(times, breaks)]


def minute(t: np.datetime64) -> str:
    return np.datetime_as_string(t, unit="m")


def table(config: dict) -> list[str]:
    step = config.get("step_minutes", 5)
    leads = lead_steps(config.get("lead_times") or list(range(step, 61, step)), step)
    context = config.get("context_frames", 6)
    stride = config.get("context_step_minutes", step) // step
    span = (context - 1) * stride * step + int(leads.max()) * step
    rows = [f"window: {context} context frames every {stride * step} min + leads to "
            f"{int(leads.max()) * step} min = {span} min of frames",
            "", "| store | event | frames | train inits | val inits | test inits |",
            "| --- | --- | ---: | --- | --- | --- |"]
    for path in config["stores"]:
        ds = open_store(path)
        all_times = ds["time"].values.astype("datetime64[ns]")
        times = all_times[grid_frames(all_times, int(ds.attrs["step_minutes"]), step, path)]
        windows = complete_windows(times, step, context, leads, stride)
        bounds = split_bounds(times, config.get("split_fractions", (0.7, 0.15, 0.15)),
                              config.get("split_times"))
        splits = split_windows(windows, times, bounds)
        for first, last, n in events(times):
            cells = []
            for split in ("train", "val", "test"):
                inits = splits[split].init_time
                inside = inits[(inits >= first) & (inits <= last)]
                cells.append(f"{len(inside)}: {minute(inside[0])[11:]}-{minute(inside[-1])[11:]}"
                             if len(inside) else "0")
            rows.append(f"| {Path(path).stem} | {minute(first)} to {minute(last)[11:]} | {n} | "
                        + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_config", type=Path, help="a configs/data/*.yaml file")
    args = parser.parse_args()
    print("\n".join(table(yaml.safe_load(args.data_config.read_text()))))


if __name__ == "__main__":
    main()
