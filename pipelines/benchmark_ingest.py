"""Ingest throughput: frames/s and MB/s of raw input, per source.

    python pipelines/benchmark_ingest.py --data ../shared/data fmi opera
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from metnet.io.ingest import ingest
from metnet.io.sources import discover, get_source
from metnet.io.store import open_store

FOLDERS = {
    "fmi": "radar/fmi", "mch": "radar/mch", "knmi": "radar/KNMI", "bom": "radar/bom",
    "opera": "radar/OPERA", "mrms": "mrms", "saf-crr": "saf",
}


def measure(data: Path, source: str) -> str:
    src = data / FOLDERS[source]
    files = discover(src, get_source(source))
    megabytes = sum(path.stat().st_size for path in {f.path for f in files}) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{source}.zarr"
        start = time.perf_counter()
        report = ingest(src, source, out, progress=False)
        seconds = time.perf_counter() - start
        ds = open_store(out)
        shape = "x".join(str(n) for n in ds.rain_rate.shape[1:])
        store_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    return (
        f"{source:8s} {report.written:4d} frames {shape:>10s}  {seconds:6.1f} s  "
        f"{report.written / seconds:6.1f} frames/s  {megabytes / seconds:6.1f} MB/s raw in  "
        f"({megabytes:.0f} MB raw -> {store_mb:.0f} MB store)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", choices=sorted(FOLDERS))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    for source in args.sources:
        print(measure(args.data, source), flush=True)


if __name__ == "__main__":
    main()
