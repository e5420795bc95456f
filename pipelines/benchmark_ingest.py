"""Ingest throughput: frames/s and MB/s of raw input, per source and number of workers.

    python pipelines/benchmark_ingest.py --data ../shared/data fmi opera --workers 1 2

One worker is the in-process path (no Dask). N > 1 workers: a local Dask cluster of N
single-threaded processes, as ``metnet ingest --workers N`` starts, is started first and its
workers import the readers (the time printed apart, as start-up), then the timed ingest runs
on it (``--scheduler``). The readers are imported before the in-process ingest too, so that
every figure is the throughput of a running ingest.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from metnet.io.ingest import Workers, ingest
from metnet.io.sources import discover, get_source
from metnet.io.store import open_store

FOLDERS = {
    "fmi": "radar/fmi", "mch": "radar/mch", "knmi": "radar/KNMI", "bom": "radar/bom",
    "opera": "radar/OPERA", "mrms": "mrms", "saf-crr": "saf",
}


def import_readers() -> None:
    """Import what an ingest imports on its first frame: metnet's ingest, pysteps' readers."""
    import pysteps.io  # noqa: F401

    import metnet.io.ingest  # noqa: F401


@contextmanager
def cluster(workers: int) -> Iterator[tuple[str | None, float]]:
    """The scheduler address of a started local cluster of ``workers`` processes, its
    readers imported (``None`` for 1: in process), and the seconds that took."""
    if workers == 1:
        yield None, 0.0
        return
    start = time.perf_counter()
    with Workers(workers).client() as client:
        client.run(import_readers)
        yield client.scheduler.address, time.perf_counter() - start


def measure(data: Path, source: str, workers: int) -> str:
    src = data / FOLDERS[source]
    files = discover(src, get_source(source))
    megabytes = sum(path.stat().st_size for path in {f.path for f in files}) / 1e6
    with tempfile.TemporaryDirectory() as tmp, cluster(workers) as (scheduler, startup):
        out = Path(tmp) / f"{source}.zarr"
        start = time.perf_counter()
        report = ingest(src, source, out, progress=False, scheduler=scheduler)
        seconds = time.perf_counter() - start
        ds = open_store(out)
        shape = "x".join(str(n) for n in ds.rain_rate.shape[1:])
        store_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    return (
        f"{source:8s} {workers:2d} worker(s) {report.written:4d} frames {shape:>10s}  "
        f"{seconds:6.1f} s  {report.written / seconds:6.1f} frames/s  "
        f"{megabytes / seconds:6.1f} MB/s raw in  (cluster start-up {startup:.1f} s; "
        f"{megabytes:.0f} MB raw -> {store_mb:.0f} MB store)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", choices=sorted(FOLDERS))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="numbers of workers to measure, e.g. 1 2 8")
    args = parser.parse_args()
    import_readers()
    for source in args.sources:
        for workers in args.workers:
            print(measure(args.data, source, workers), flush=True)


if __name__ == "__main__":
    main()
