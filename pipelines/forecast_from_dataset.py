"""Forecast a store's whole domain from a checkpoint, write it, draw it and time it.

The same work as ``metnet forecast`` (:func:`metnet.forecast.forecast_dataset`), plus a
timing line: seconds per init time and the throughput in domain pixels x lead times per
second (the first init time, which pays one-off start-up costs, is timed separately).

    metnet synth --out outputs/demo/synthetic.zarr --frames 96
    python pipelines/forecast_from_dataset.py --ckpt_path outputs/checkpoints/last.ckpt \\
        --store outputs/demo/synthetic.zarr --start 2024-06-01T13:00 --end 2024-06-01T13:30 \\
        --out outputs/forecast/synthetic.nc --plot outputs/forecast
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import xarray as xr

from metnet.checkpoint import Checkpoint
from metnet.forecast import complete_init_times, forecast_dataset, store_context
from metnet.io.forecast_file import write_forecast
from metnet.io.store import open_store
from metnet.plotting import plot_forecast
from metnet.runtime import inference_device, keep_freed_memory


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt_path", required=True, help="checkpoint of `metnet fit`")
    p.add_argument("--store", required=True, help="radar store (STORE.zarr)")
    p.add_argument("--satellite_stores", nargs="+", help="satellite stores of a model trained "
                   "with them (default: the paths its data settings record)")
    p.add_argument("--start", required=True, help="first init time, ISO, UTC")
    p.add_argument("--end", required=True, help="last init time, ISO, UTC")
    p.add_argument("--out", help="OUT.nc or OUT.zarr to write (default: none)")
    p.add_argument("--plot", metavar="DIR", help="draw the first init time's maps here")
    p.add_argument("--lead_times", nargs="+", type=int, help="minutes (default: all)")
    p.add_argument("--batch_tiles", type=int, default=8, help="tiles per network call")
    p.add_argument("--stride", type=int, help="tile stride in pixels (default: half the "
                   "target size; the target size: no overlap, 4x fewer tiles, visible seams)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # as metnet forecast
    checkpoint = Checkpoint.load(args.ckpt_path)
    store = open_store(args.store)
    checkpoint.check(store)
    device = inference_device(args.device)
    net = checkpoint.net.to(device)
    context = store_context(store, net, checkpoint.data_settings, args.satellite_stores)
    inits = complete_init_times(store, args.start, args.end, context.past_frames,
                                context_step_minutes=context.step_minutes)
    if not inits:
        sys.exit(f"no init time from {args.start} to {args.end} has a full context")
    parts, seconds = [], []
    for init in inits:
        start = time.perf_counter()
        parts.append(forecast_dataset(net, store, [init], args.lead_times, context=context,
                                      batch_tiles=args.batch_tiles,
                                      stride=(args.stride,) * 2 if args.stride else None))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    ds = parts[0] if len(parts) == 1 else _concat(parts)
    size = ds.sizes["y"] * ds.sizes["x"] * ds.sizes["lead_time"]
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    print(f"{len(inits)} init times x {ds.sizes['lead_time']} leads of {ds.sizes['y']}x"
          f"{ds.sizes['x']} px on {device} (torch threads {torch.get_num_threads()}): "
          f"first {seconds[0]:.2f} s, then median {steady:.2f} s per init time = "
          f"{size / steady / 1e6:.2f} M pixel-leads/s")
    if args.out:
        print(f"wrote {write_forecast(ds, args.out)}")
    if args.plot:
        print(f"wrote {plot_forecast(ds, store, ds['init_time'].values[0], args.plot)}")
    return 0


def _concat(parts: list[xr.Dataset]) -> xr.Dataset:
    """Forecasts of single init times as one dataset along ``init_time``."""
    return xr.concat(parts, dim="init_time", data_vars="minimal", coords="minimal",
                     compat="override", join="override")


if __name__ == "__main__":
    sys.exit(main())
