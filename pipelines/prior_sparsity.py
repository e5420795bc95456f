"""Would the prior's histograms pay to be computed only where there is rain?

For each domain of ``pipelines/benchmark_forecast.py`` (``--sides``, ``--store``), from the
field extrapolated to each of the 12 leads, prints:

* the fraction of pixels whose neighbourhood (half-width ``1 + lead / 10 min`` px) holds a
  wet pixel, per lead (the pixels whose histograms are not a point mass at 0 mm/h);
* for square tiles of 16, 32 and 64 px, the work of computing only the tiles that hold
  such a pixel, each with the halo of the widest neighbourhood, against the whole domain;
* the rain's bounding box (grown by the neighbourhood) as a fraction of the domain::

    python pipelines/prior_sparsity.py --store outputs/stores/knmi.zarr@2010-08-26T06:30 \\
        --store outputs/stores/mch.zarr@2016-07-11T22:50 \\
        --store outputs/stores/fmi.zarr@2017-05-09T12:50
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from benchmark_forecast import LEADS, add_domain_arguments, domains

from metnet.data.motion import lead_planes
from metnet.models.prior import neighbourhood_radius
from metnet.nowcasts.extrapolation import MOTION_FRAMES

TILES = (16, 32, 64)


def reached(wet: torch.Tensor, r: int) -> torch.Tensor:
    """(H, W) pixels with a wet pixel of ``wet`` (H, W) within ``r`` px."""
    return F.max_pool2d(wet[None, None].float(), 2 * r + 1, 1, r)[0, 0] > 0


def tile_work(active: torch.Tensor, tile: int, halo: int) -> float:
    """Work of the tiles of side ``tile`` that hold an active pixel, each read with a halo
    of ``halo`` px, against that of the whole (H, W) domain."""
    h, w = active.shape
    padded = F.pad(active.float(), (0, -w % tile, 0, -h % tile))
    tiles = padded.unfold(0, tile, tile).unfold(1, tile, tile).amax((-1, -2)) > 0
    return tiles.float().mean().item() * ((tile + 2 * halo) / tile) ** 2


def bounding_box(wet: torch.Tensor, r: int) -> float:
    """The wet pixels' bounding box grown by ``r`` px, as a fraction of the domain."""
    rows, cols = wet.any(1).nonzero(), wet.any(0).nonzero()
    if not len(rows):
        return 0.0
    (h, w), grow = wet.shape, lambda idx, n: min(n, idx.max().item() + r + 1) - max(
        0, idx.min().item() - r)
    return grow(rows, h) * grow(cols, w) / (h * w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_domain_arguments(p, [256])
    args = p.parse_args()
    radii = [neighbourhood_radius(lead) for lead in LEADS]
    print("| domain | pixels reached, per lead | "
          + " | ".join(f"{t} px tiles: work" for t in TILES) + " | bounding box |")
    print("| --- | --- |" + " ---: |" * len(TILES) + " --- |")
    for name, rate, _ in domains(args):
        planes = torch.as_tensor(lead_planes(rate[-MOTION_FRAMES:], [lead / 5 for lead in LEADS],
                                             velocity=False))
        wet = (planes[:, 0] > 0) & (planes[:, 1] > 0.5)
        active = [reached(wet[i], r) for i, r in enumerate(radii)]
        fractions = [a.float().mean().item() for a in active]
        works = [sum(tile_work(a, t, max(radii)) for a in active) / len(LEADS) for t in TILES]
        boxes = [bounding_box(wet[i], r) for i, r in enumerate(radii)]
        print(f"| {name} | {min(fractions):.2f}-{max(fractions):.2f} | "
              + " | ".join(f"{w:.2f}" for w in works)
              + f" | {min(boxes):.2f}-{max(boxes):.2f} |", flush=True)


if __name__ == "__main__":
    main()
