"""What writing a forecast costs per init time, for each kind of ``metnet forecast --out``.

Reads a forecast file (as ``metnet forecast`` writes it) and writes its init times one by
one through :class:`metnet.io.forecast_file.ForecastOutput`, as a forecast run does, then
finishes the output; prints seconds per init time for the writes and for the finish (an
``OUT.nc`` is assembled from its hidden parts there), best of ``--repeat`` runs.

    python pipelines/benchmark_forecast_output.py /tmp/fc5.nc
    python pipelines/benchmark_forecast_output.py /tmp/fc5.nc --zlib-parts   # as before zstd
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import xarray as xr

from metnet.io import forecast_file
from metnet.io.forecast_file import SETTINGS_ATTR, ForecastOutput


def time_output(ds: xr.Dataset, path: Path) -> tuple[float, float]:
    """Seconds per init time to write ``ds``'s init times to ``path``, and to finish it."""
    start = time.perf_counter()
    output = ForecastOutput(path, {"benchmark": True})
    for i in range(ds.sizes["init_time"]):
        output.write(ds.isel(init_time=[i]))
    written = time.perf_counter()
    output.close()
    n = ds.sizes["init_time"]
    return (written - start) / n, (time.perf_counter() - written) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("forecast", help="a forecast file written by metnet forecast")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--zlib-parts", action="store_true",
                   help="compress the hidden parts of OUT.nc as the kept file (zlib 4)")
    args = p.parse_args()
    if args.zlib_parts:
        forecast_file.part_compression = lambda: forecast_file.KEPT_COMPRESSION
    ds = xr.open_dataset(args.forecast).load()
    ds.attrs.pop(SETTINGS_ATTR, None)
    print(f"{args.forecast}: {ds.sizes['init_time']} init times, {ds.sizes['lead_time']} "
          f"leads of {ds.sizes['y']} x {ds.sizes['x']} px; seconds per init time")
    print("| output | write | finish | total |")
    print("| --- | ---: | ---: | ---: |")
    for name in ("out.nc", "out", "out.zarr"):
        runs = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as folder:
                runs.append(time_output(ds, Path(folder) / name))
                shutil.rmtree(Path(folder) / name, ignore_errors=True)
        write, finish = min(runs, key=sum)
        print(f"| {name} | {write:.3f} | {finish:.3f} | {write + finish:.3f} |")


if __name__ == "__main__":
    main()
