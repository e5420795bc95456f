"""What one commit of new frames costs as a store grows: seconds to append 8 frames (the
batch of ``metnet ingest``) to a store of N frames, and to open it, in this store format
(version 3: the times and raw file names in chunks of ``TIME_CHUNK`` frames) and in the
former one (version 2: the file names in a global attribute, the times in chunks of one
commit).

A store of N frames is emulated cheaply: 8 frames of 64 x 64 px written, then the arrays
along time resized to N and their times and file names written (the frames beyond the
first 8 are unwritten chunks, which an append does not read)::

    python pipelines/benchmark_append.py --frames 1000 10000 100000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from metnet.io.store import TIME_UNITS, append_frames, make_dataset, open_store, write_store

SIDE, BATCH = 64, 8
START = pd.Timestamp("2020-01-01")


def file_name(i: int) -> str:
    return f"/archive/radar/{START:%Y/%m/%d}/COMP_{i:08d}_radar_composite.h5"


def frames(first: int, n: int) -> object:
    """n frames from the ``first``-th 5-minute step on, as ``ingest`` commits them."""
    times = pd.date_range(START + pd.Timedelta(minutes=5 * first), periods=n, freq="5min")
    return make_dataset(np.zeros((n, SIDE, SIDE)), times, np.arange(SIDE) * 1e3,
                        np.arange(SIDE) * 1e3, crs="EPSG:3035", source="bench", step_minutes=5,
                        source_files=[file_name(first + i) for i in range(n)],
                        geolocate=first == 0)


def emulated_store(folder: Path, n: int, version: int) -> Path:
    """A store of n frames in format ``version`` (2 or 3)."""
    path = folder / f"v{version}-{n}.zarr"
    first = frames(0, BATCH)
    if version == 3:
        write_store(first, path)
    else:
        minutes = {"units": TIME_UNITS, "dtype": "int64"}
        first.drop_vars("source_file").assign_attrs(metnet_store_version=2).to_zarr(
            path, zarr_format=3, consolidated=True,
            encoding={"time": {**minutes, "chunks": (BATCH,)}, "missing_times": minutes})
    group = zarr.open_group(path, mode="r+")
    times = pd.date_range(START, periods=n, freq="5min")
    rate, time_array = group["rain_rate"], group["time"]  # held: see append_frames
    rate.resize((n, SIDE, SIDE))
    time_array.resize((n,))
    time_array[:] = ((times - pd.Timestamp("1970-01-01")) // pd.Timedelta(minutes=1)).values
    names = [file_name(i) for i in range(n)]
    if version == 3:
        files = group["source_file"]
        files.resize((n,))
        files[:] = np.array(names, dtype=object)
    else:
        group.attrs["source_files"] = names
    zarr.consolidate_metadata(path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print("| frames in the store | format | append 8 frames (s, median) | open (s) "
          "| metadata (kB) | time objects |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for n in args.frames:
            for version in (2, 3):
                path = emulated_store(Path(folder), n, version)
                seconds = []
                for k in range(args.repeats):
                    new = frames(n + BATCH * k, BATCH)
                    began = time.perf_counter()
                    append_frames(path, new)
                    seconds.append(time.perf_counter() - began)
                began = time.perf_counter()
                ds = open_store(path)
                opened = time.perf_counter() - began
                assert ds.sizes["time"] == n + BATCH * args.repeats
                metadata = sum(f.stat().st_size for f in path.rglob("zarr.json")) / 1e3
                objects = sum(1 for _ in (path / "time").rglob("c/*"))
                print(f"| {n} | {version} | {sorted(seconds)[len(seconds) // 2]:.3f} "
                      f"| {opened:.3f} | {metadata:.0f} | {objects} |", flush=True)


if __name__ == "__main__":
    main()
