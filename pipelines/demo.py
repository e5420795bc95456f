"""The embedded-default demo: a synthetic radar store and a figure of it.

Run with ``make demo`` (or ``python pipelines/demo.py``); everything lands in
``outputs/demo/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from metnet.io.store import open_store, write_store
from metnet.io.synthetic import synthesize
from metnet.plotting import plot_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    store = out / "synthetic.zarr"
    if not store.exists():
        write_store(
            synthesize(frames=96, height=256, width=256, seed=args.seed, progress=True), store
        )
    ds = open_store(store)
    figure = plot_frames(ds["precip_rate"], out / "synthetic_frames.png", indices=[0, 6, 12, 18])
    print(f"store:  {store} ({ds.sizes['time']} frames, {ds.sizes['y']}x{ds.sizes['x']} px)")
    print(f"figure: {figure}")


if __name__ == "__main__":
    main()
