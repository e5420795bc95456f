"""Which events of a data configuration's stores train, validate and test: per store, its
events (runs of frames without a gap longer than an hour), its window (context and leads,
at the store's own step where it differs: such a store only trains) and, per split, the
complete windows (init times) they give, as the datamodule cuts them.

    python pipelines/split_table.py configs/data/radar.yaml
    python pipelines/split_table.py configs/data/radar.yaml --stores outputs/stores/*.zarr
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
    store_sampling,
    training_only,
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
    lead_times = config.get("lead_times") or list(range(step, 61, step))
    lead_steps(lead_times, step)  # refuses leads off the step grid
    context = config.get("context_frames", 6)
    stride = config.get("context_step_minutes", step) // step
    rows = ["| store | event | frames | window | train inits | val inits | test inits |",
            "| --- | --- | ---: | --- | --- | --- | --- |"]
    for path in config["stores"]:
        ds = open_store(path)
        all_times = ds["time"].values.astype("datetime64[ns]")
        store_step = int(ds.attrs["step_minutes"])
        own, leads = store_sampling(store_step, step, lead_times, path)
        times = all_times[grid_frames(all_times, store_step, own, path)]
        windows = complete_windows(times, own, context, leads // own, stride)
        if own == step:
            bounds = split_bounds(times, config.get("split_fractions", (0.7, 0.15, 0.15)),
                                  config.get("split_times"))
            splits = split_windows(windows, times, bounds)
        else:
            splits = training_only(windows)
        span = (context - 1) * stride * own + int(leads.max())
        window = (f"{context} frames every {stride * own} min, leads {int(leads[0])}-"
                  f"{int(leads[-1])} min every {own} min ({span} min)")
        for first, last, n in events(times):
            cells = []
            for split in ("train", "val", "test"):
                inits = splits[split].init_time
                inside = inits[(inits >= first) & (inits <= last)]
                cells.append(f"{len(inside)}: {minute(inside[0])[11:]}-{minute(inside[-1])[11:]}"
                             if len(inside) else "0")
            rows.append(f"| {Path(path).stem} | {minute(first)} to {minute(last)[11:]} | {n} | "
                        f"{window} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_config", type=Path, help="a configs/data/*.yaml file")
    parser.add_argument("--stores", nargs="+", help="these stores instead of the config's "
                        "(as --data.stores on metnet fit)")
    args = parser.parse_args()
    config = yaml.safe_load(args.data_config.read_text())
    print("\n".join(table({**config, **({"stores": args.stores} if args.stores else {})})))


if __name__ == "__main__":
    main()
