"""Lucas-Kanade motion interpolated on a coarser grid against pysteps' dense field.

pysteps' dense Lucas-Kanade interpolates its sparse vectors to every pixel (inverse
distance weighting of the 20 nearest). :func:`metnet.nowcasts.extrapolation.motion_field`
does the same on a grid every ``grid_step`` pixels and interpolates bilinearly between.
For each domain and grid step this prints the seconds of one motion field (median of
``--repeats`` after a warm-up) and how far it is from pysteps' field (grid step 1, equal
to the bit), in pixels per step: mean, 99th percentile and largest difference, beside the
mean speed::

    python pipelines/benchmark_motion_grid.py --store outputs/stores/knmi.zarr@2010-08-26T06:30 \\
        --store outputs/stores/mch.zarr@2016-07-11T22:50 \\
        --store outputs/stores/fmi.zarr@2017-05-09T12:50
"""

from __future__ import annotations

import argparse

import numpy as np
from benchmark_forecast import add_domain_arguments, domains, measure

from metnet.nowcasts.extrapolation import motion_field


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_domain_arguments(p, [])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8],
                   help="grid steps in px (1: pysteps' dense field)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print("| domain | grid step (px) | seconds | mean speed | mean difference "
          "| 99th percentile | largest |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, rate, _ in domains(args):
        dense = motion_field(rate, grid_step=1)
        speed = np.hypot(*dense).mean()
        for step in args.steps:
            seconds, _ = measure(lambda r=rate, s=step: motion_field(r, grid_step=s),
                                 args.repeats)
            difference = np.abs(motion_field(rate, grid_step=step) - dense)
            print(f"| {name} | {step} | {seconds:.3f} | {speed:.2f} | {difference.mean():.4f} "
                  f"| {np.quantile(difference, 0.99):.3f} | {difference.max():.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
