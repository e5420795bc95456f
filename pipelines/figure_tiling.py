"""The same trained network forecast by tiles and in one pass: a figure of the exceedance
probability at one lead, the two side by side and their difference, where the tile seams
show.

The network must take inputs of any size (``position: none``); it is tiled the way every
network with a positional embedding is (tiles at half the target stride, ``sin²`` blend).
Prints the mean absolute difference of the probabilities next to each other along a row
at tile seams and elsewhere (a seam texture makes the first larger).

    python pipelines/figure_tiling.py --ckpt_path outputs/radar-onepass/checkpoints/best.ckpt \\
        --store outputs/stores/knmi.zarr --init 2010-08-26T06:30 --lead 30 \\
        --out notebooks/figures/one_pass_vs_tiles.png
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from metnet.checkpoint import Checkpoint
from metnet.data.motion import lead_planes
from metnet.forecast import read_context, store_step
from metnet.io.store import open_store
from metnet.nowcasts.extrapolation import MOTION_FRAMES
from metnet.nowcasts.model import (
    blended_probabilities,
    frames_needed,
    make_tiling,
    motion_layout,
    whole_domain_probabilities,
)
from metnet.plotting import plt


def exceedance(probs: torch.Tensor, edges: tuple[float, ...], threshold: float) -> np.ndarray:
    """P(R > threshold) (H, W) from bin probabilities (K, H, W); threshold a bin edge."""
    first = edges.index(threshold)
    return probs[first:].sum(0).numpy()


def seam_contrast(field: np.ndarray, stride: int, offset: int) -> tuple[float, float]:
    """Mean |difference| of column neighbours across tile seams (columns ``offset + k *
    stride``) and across every other column pair, over the finite pixels."""
    steps = np.abs(np.diff(field, axis=1))
    seams = np.zeros(steps.shape[1], dtype=bool)
    seams[offset - 1::stride] = True
    return float(np.nanmean(steps[:, seams])), float(np.nanmean(steps[:, ~seams]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt_path", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--init", required=True, help="init time, ISO")
    p.add_argument("--lead", type=int, default=30, help="lead time in minutes")
    p.add_argument("--threshold", type=float, default=1.0, help="mm/h, a bin edge")
    p.add_argument("--out", default="notebooks/figures/one_pass_vs_tiles.png")
    args = p.parse_args()
    net = Checkpoint.load(args.ckpt_path).net.eval()
    ds = open_store(args.store)
    rate = read_context(ds, np.datetime64(args.init, "ns"), frames_needed(net))
    step = store_step(ds)
    per_lead = lead_planes(rate[-MOTION_FRAMES:], [args.lead / step], *motion_layout(net))
    context = rate[-int(net.config["context_frames"]):]
    one = whole_domain_probabilities(net, context, [args.lead], per_lead=per_lead)[0]
    tiling = make_tiling(net, rate.shape[1:])
    tiled = blended_probabilities(net, context, [args.lead], tiling, 32, per_lead=per_lead)[0]
    outside = np.isnan(rate[-1])
    fields = {name: np.where(outside, np.nan, exceedance(probs, net.bin_edges, args.threshold))
              for name, probs in (("tiles", tiled), ("one pass", one))}
    stride, offset = tiling.stride[1], tiling.target_size[1] // 2
    for name, field in fields.items():
        across, elsewhere = seam_contrast(field, stride, offset)
        print(f"{name}: mean |step| across tile seams {across:.4f}, elsewhere {elsewhere:.4f}")
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), constrained_layout=True)
    for ax, (name, field) in zip(axes, fields.items(), strict=False):
        image = ax.imshow(field, vmin=0, vmax=1, cmap="viridis", interpolation="none")
        ax.set_title(f"{name}: P(R > {args.threshold:g} mm/h), +{args.lead} min")
    fig.colorbar(image, ax=axes[:2], shrink=0.8)
    diff = fields["tiles"] - fields["one pass"]
    image = axes[2].imshow(diff, vmin=-0.2, vmax=0.2, cmap="RdBu_r", interpolation="none")
    axes[2].set_title("tiles - one pass")
    fig.colorbar(image, ax=axes[2], shrink=0.8)
    fig.suptitle(f"{args.store} {args.init}: the same network by tiles and in one pass")
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
