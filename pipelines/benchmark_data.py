"""Benchmark the data pipeline: training samples per second through NowcastDataModule.

Times whole batches out of ``train_dataloader()`` (sampling, reading, transform,
batch assembly) for each worker count, after one warm-up batch (so worker
start-up is not counted), in ``--repeats`` runs; reports the best and the median
run (the best is the least disturbed by other load on the machine), plus the
one-off ``setup`` (store reads, patch statistics).

Default sample shape: 7 frames x 2 channels x 256x256 px context, 12 leads
(5..60 min) x 64x64 px target, batch 16, from a synthetic store of 288 frames
of 512x512 px that is made on first use (about 30 s) and reused.

    python pipelines/benchmark_data.py
    python pipelines/benchmark_data.py --workers 0 2 --cache memory lazy
    python pipelines/benchmark_data.py --store outputs/stores/fmi.zarr
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from metnet.data.datamodule import NowcastDataModule
from metnet.io.store import write_store
from metnet.io.synthetic import synthesize

DEFAULT_STORE = Path("outputs") / "bench" / "synthetic_288x512x512.zarr"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=DEFAULT_STORE,
                   help="radar store (the default one is synthesised when absent)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--cache", nargs="+", default=["memory"], choices=["memory", "lazy"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=12, help="timed batches per repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting")
    p.add_argument("--context-size", type=int, default=256)
    p.add_argument("--target-size", type=int, default=64)
    p.add_argument("--context-frames", type=int, default=7)
    return p.parse_args(argv)


def ensure_store(path: Path) -> Path:
    """The store at ``path``; the default synthetic one is created if missing."""
    if not path.exists():
        if path != DEFAULT_STORE:
            raise SystemExit(f"{path}: no such store")
        print(f"synthesising {path} (288 frames of 512x512) ...", flush=True)
        write_store(synthesize(frames=288, height=512, width=512, seed=1, progress=True), path)
    return path


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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    store = ensure_store(args.store)
    print(f"store {store}; context {args.context_frames} x {args.context_size}^2 px, "
          f"12 leads x {args.target_size}^2 px, batch {args.batch_size}")
    print("| cache | setup | workers | samples/s (best) | samples/s (median) |")
    print("| --- | --- | --- | --- | --- |")
    for cache in args.cache:
        for workers in args.workers:
            dm = NowcastDataModule(
                [str(store)], context_frames=args.context_frames,
                context_size=args.context_size, target_size=args.target_size, cache=cache,
                batch_size=args.batch_size, num_workers=workers, patches_per_window=4,
            )
            start = time.perf_counter()
            dm.setup("fit")
            setup = time.perf_counter() - start
            rates = measure(dm, args.batches, args.repeats)
            print(f"| {cache} | {setup:.1f} s | {workers} | {max(rates):.0f} | "
                  f"{statistics.median(rates):.0f} |", flush=True)


if __name__ == "__main__":
    main()
