"""Benchmark the data pipeline: training samples per second through NowcastDataModule.

Times whole batches out of ``train_dataloader()`` (sampling, reading, transform,
batch assembly) for each worker count, after one warm-up batch (so worker
start-up is not counted), in ``--repeats`` runs; reports the best and the median
run (the best is the least disturbed by other load on the machine), the one-off
``setup`` (store coordinates, sample index), and the peak memory of the loader.

Default sample shape: 7 frames x 2 channels x 256x256 px context, 12 leads
(5..60 min) x 64x64 px target, batch 16. Default store: synthetic, 512x512 px at
5 min, ``--frames`` long: one synthetic day of 288 frames, repeated with later times
for longer stores, made on first use and reused (with its sample index).

``--memory-cap-gb`` runs the loader (this process and its workers) in a new memory
cgroup of that size (needs root and cgroup v1 or v2): the run is killed if it needs
more, so a store larger than the cap shows that training streams it.

    python pipelines/benchmark_data.py
    python pipelines/benchmark_data.py --workers 0 2 --cache memory lazy
    python pipelines/benchmark_data.py --cache lazy --frames 6000 --memory-cap-gb 1.5
    python pipelines/benchmark_data.py --store outputs/stores/fmi.zarr
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from metnet.data.datamodule import NowcastDataModule
from metnet.io.store import append_frames, write_store
from metnet.io.synthetic import synthesize

BENCH = Path("outputs") / "bench"
PEAK_FILE = "METNET_BENCHMARK_CGROUP_PEAK"  # set once the script runs in its cgroup
DAY = 288
SIDE = 512
CGROUPS = (  # (folder of new groups, limit file, peak file): cgroup v1, then v2
    (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.max_usage_in_bytes"),
    (Path("/sys/fs/cgroup"), "memory.max", "memory.peak"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=None,
                   help="radar store (default: the synthetic one of --frames, made if absent)")
    p.add_argument("--frames", type=int, default=DAY,
                   help="length of the default synthetic store, frames")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--cache", nargs="+", default=["memory"], choices=["memory", "lazy"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=24, help="timed batches per repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting")
    p.add_argument("--context-size", type=int, default=256)
    p.add_argument("--target-size", type=int, default=64)
    p.add_argument("--context-frames", type=int, default=7)
    p.add_argument("--shuffle-block", type=int, default=None,
                   help="data.shuffle_block (default: the datamodule's)")
    p.add_argument("--memory-cap-gb", type=float, default=None,
                   help="run in a memory cgroup of this many GB")
    return p.parse_args(argv)


def synthetic_store(frames: int) -> Path:
    """The synthetic store of ``frames`` frames of 512x512 px, made if missing: one synthetic
    day, repeated with later times (the loader's cost does not depend on the weather)."""
    path = BENCH / f"synthetic_{frames}x{SIDE}x{SIDE}.zarr"
    if path.exists():
        return path
    print(f"synthesising {path} ...", flush=True)
    day = synthesize(frames=min(frames, DAY), height=SIDE, width=SIDE, seed=1, progress=True)
    partial = path.with_suffix(".partial.zarr")
    write_store(day, partial)
    step = np.timedelta64(5 * DAY, "m")
    for copy in tqdm(range(1, -(-frames // DAY)), desc="repeating the day", unit="day"):
        later = day.isel(time=slice(0, min(DAY, frames - copy * DAY)))
        append_frames(partial, later.assign_coords(time=later["time"] + copy * step))
    partial.rename(path)
    return path


def cap_memory(gigabytes: float) -> None:
    """Run this script again, from the start, in a new memory cgroup limited to
    ``gigabytes`` (so that all of its memory, imports included, counts against the cap)."""
    for folder, limit, peak in CGROUPS:
        group = folder / f"metnet-benchmark-{os.getpid()}"
        try:
            group.mkdir()
            (group / limit).write_text(str(int(gigabytes * 2**30)))
            (group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            continue
        os.environ[PEAK_FILE] = str(group / peak)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    raise SystemExit(f"--memory-cap-gb: cannot create a memory cgroup under "
                     f"{' or '.join(str(f) for f, _, _ in CGROUPS)} (needs root and cgroups); "
                     f"run without the cap")


def measure(dm: NowcastDataModule, batches: int, repeats: int) -> list[float]:
    """Samples per second over ``batches`` training batches, ``repeats`` times in a row, after
    one warm-up batch (epochs roll over as needed)."""
    loader = dm.train_dataloader()
    iterator = iter(loader)
    next(iterator)
    rates = []
    for _ in range(repeats):
        start, samples = time.perf_counter(), 0
        for _ in range(batches):
            batch = next(iterator, None)
            if batch is None:
                loader.sampler.set_epoch(loader.sampler.epoch + 1)
                iterator = iter(loader)
                batch = next(iterator)
            samples += len(batch["context"])
        rates.append(samples / (time.perf_counter() - start))
    del iterator, loader  # stop the workers of this setting
    return rates


def peak_rss_mb() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child (workers), MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    store = args.store or synthetic_store(args.frames)
    if not store.exists():
        raise SystemExit(f"{store}: no such store")
    if args.memory_cap_gb and PEAK_FILE not in os.environ:
        cap_memory(args.memory_cap_gb)
    peak_file = Path(os.environ[PEAK_FILE]) if args.memory_cap_gb else None
    print(f"store {store}; context {args.context_frames} x {args.context_size}^2 px, "
          f"12 leads x {args.target_size}^2 px, batch {args.batch_size}"
          + (f"; memory cap {args.memory_cap_gb:g} GB" if peak_file else ""))
    print("| cache | setup | workers | samples/s (best) | samples/s (median) |")
    print("| --- | --- | --- | --- | --- |")
    for cache in args.cache:
        for workers in args.workers:
            dm = NowcastDataModule(
                [str(store)], context_frames=args.context_frames,
                context_size=args.context_size, target_size=args.target_size, cache=cache,
                batch_size=args.batch_size, num_workers=workers, patches_per_window=4,
                shuffle_block=args.shuffle_block,
            )
            start = time.perf_counter()
            dm.setup("fit")
            setup = time.perf_counter() - start
            rates = measure(dm, args.batches, args.repeats)
            print(f"| {cache} | {setup:.1f} s | {workers} | {max(rates):.0f} | "
                  f"{statistics.median(rates):.0f} |", flush=True)
    own, child = peak_rss_mb()
    print(f"peak RSS: main process {own:.0f} MB"
          + (f", largest worker {child:.0f} MB" if max(args.workers) > 0 else ""))
    if peak_file:
        print(f"cgroup peak (RSS and page cache, all processes): "
              f"{int(peak_file.read_text()) / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
