"""Chunk layouts of a store on the full MRMS grid (3500 x 7000 px, 0.01 deg): one zstd chunk
per frame (the MLCast specification's layout) against a zarr v3 shard per frame of 256 x 256
inner chunks. Prints the store size, the write time, and the time to read a whole frame and a
256 x 256 patch (the datamodule's lazy read) from each.

    python pipelines/benchmark_chunking.py --data ../shared/data --frames 4
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from metnet.io.sources import discover, resolve_source

INNER = 256


def mrms_frames(data: Path, frames: int) -> np.ndarray:
    """The first ``frames`` MRMS frames at full resolution, (T, H, W) float32 mm/h."""
    source = resolve_source("mrms", importer_args={"window_size": 1})
    found = discover(data / "mrms", source)[:frames]
    return np.stack([source.read(frame)[0] for frame in found])


def layout(kind: str, shape: tuple[int, int]) -> dict:
    height, width = shape
    if kind == "chunk per frame":
        return {"chunks": (1, height, width)}
    padded = tuple(-(-n // INNER) * INNER for n in shape)
    return {"chunks": (1, INNER, INNER), "shards": (1, *padded)}


def measure(rates: np.ndarray, kind: str, root: Path, patches: int = 50) -> str:
    path = root / f"{kind.replace(' ', '_')}.zarr"
    start = time.perf_counter()
    array = zarr.create_array(path, shape=rates.shape, dtype="float32",
                              compressors=[ZstdCodec(level=3)], fill_value=np.nan,
                              **layout(kind, rates.shape[1:]))
    array[:] = rates
    write_s = time.perf_counter() - start
    size_mb = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    array = zarr.open_array(path, mode="r")
    start = time.perf_counter()
    for t in range(len(rates)):
        array[t]
    frame_ms = (time.perf_counter() - start) / len(rates) * 1000
    rng = np.random.default_rng(0)
    _, height, width = rates.shape
    start = time.perf_counter()
    for _ in range(patches):
        t, r, c = (rng.integers(n) for n in (len(rates), height - 256, width - 256))
        array[t, r:r + 256, c:c + 256]
    patch_ms = (time.perf_counter() - start) / patches * 1000
    shutil.rmtree(path)
    return (f"{kind:16s} {size_mb:8.1f} MB  write {write_s:6.1f} s  frame {frame_ms:7.1f} ms  "
            f"256x256 patch {patch_ms:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--frames", type=int, default=4)
    args = parser.parse_args()
    rates = mrms_frames(args.data, args.frames)
    print(f"{len(rates)} MRMS frames of {rates.shape[1]} x {rates.shape[2]} px "
          f"({rates[0].nbytes / 1e6:.0f} MB each as float32)")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("chunk per frame", "shard per frame"):
            print(measure(rates, kind, Path(tmp)))


if __name__ == "__main__":
    main()
