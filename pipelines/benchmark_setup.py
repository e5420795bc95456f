"""Benchmark ``NowcastDataModule.setup()``: time and peak memory against the store's length.

For each store, two fresh processes each set up a datamodule (``cache: lazy``, the default
sample shape: 7 context frames of 256x256 px, 64x64 px targets, patch stride 16): the first
after removing the store's sample indexes (so setup builds one, reading every frame once),
the second with the index in place (what every later run does). Each reports the setup
time, the resident memory before setup (interpreter, torch, Lightning) and the peak
resident memory of the process (``getrusage``), in a Markdown table row.

Default stores: synthetic, 200 and 800 frames of 512x512 px at 5 min, made on first use as
``metnet synth --out STORE --frames N --height 512 --width 512 --seed 1`` would.

    python pipelines/benchmark_setup.py
    python pipelines/benchmark_setup.py --stores outputs/stores/fmi.zarr
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from metnet.atomic import remove
from metnet.io.store import cache_folders, store_name

BENCH = Path("outputs") / "bench"
DEFAULT_STORES = [BENCH / f"synthetic_{n}x512x512.zarr" for n in (200, 800)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stores", type=Path, nargs="+", default=DEFAULT_STORES,
                   help="radar stores (the default ones are synthesised when absent)")
    p.add_argument("--cache", default="lazy", choices=["memory", "lazy"])
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def ensure_store(path: Path) -> Path:
    """The store at ``path``; a default one is synthesised if missing."""
    if path.exists():
        return path
    found = re.fullmatch(r"synthetic_(\d+)x512x512\.zarr", path.name)
    if path.parent != BENCH or not found:
        raise SystemExit(f"{path}: no such store")
    from metnet.io.store import write_store
    from metnet.io.synthetic import synthesize

    print(f"synthesising {path} ...", flush=True)
    write_store(synthesize(frames=int(found[1]), height=512, width=512, seed=1,
                           progress=True), path)
    return path


def child(store: Path, cache: str) -> None:
    """Set up one datamodule; print ``{"setup_s", "rss_before_mb", "peak_rss_mb"}``."""
    from metnet.data.datamodule import NowcastDataModule

    dm = NowcastDataModule([str(store)], cache=cache, patches_per_window=4)
    page_mb = resource.getpagesize() / 2**20
    rss_before = int(Path("/proc/self/statm").read_text().split()[1]) * page_mb
    start = time.perf_counter()
    dm.setup("fit")
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(json.dumps({"setup_s": elapsed, "rss_before_mb": rss_before, "peak_rss_mb": peak,
                      "frames": len(dm.datasets["train"].domains[0].frames.times)}))


def measure(store: Path, cache: str) -> dict[str, float]:
    """One setup of ``store`` in a fresh process."""
    done = subprocess.run([sys.executable, __file__, "--child", str(store), "--cache", cache],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        child(args.child, args.cache)
        return
    print(f"cache {args.cache}; context 7 x 256^2 px, target 64^2 px, patch stride 16")
    print("| store frames | sample index | setup | RSS before setup | peak RSS |")
    print("| --- | --- | --- | --- | --- |")
    for store in map(ensure_store, args.stores):
        for folder in cache_folders(store):
            for index in folder.glob(f"{store_name(store)}.sample-index-*.zarr"):
                remove(index)
        for state in ("built", "read"):
            m = measure(store, args.cache)
            print(f"| {m['frames']} | {state} | {m['setup_s']:.2f} s | "
                  f"{m['rss_before_mb']:.0f} MB | {m['peak_rss_mb']:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
