"""Whether the prior's histograms changed: this checkout's against a git revision's.

The ``ExtrapolationPrior`` of ``metnet/models/prior.py`` at ``REV`` (loaded from git, with
the rest of this checkout) and this checkout's compute the histograms of the shipped
network (``pipelines/benchmark_forecast.py``) over each domain's whole-domain per-lead
planes; the script prints how many values and pixels differ::

    python pipelines/prior_against_revision.py 7a0ed16 --sides 256 \\
        --store outputs/stores/knmi.zarr@2010-08-26T06:30 \\
        --store outputs/stores/mch.zarr@2016-07-11T22:50 \\
        --store outputs/stores/fmi.zarr@2017-05-09T12:50
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import subprocess
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from benchmark_forecast import (
    LEADS,
    MOTION_FRAMES,
    add_domain_arguments,
    domains,
    lead_planes,
    network,
)

from metnet.nowcasts.model import one_pass_tiling, pad_planes, prior_histograms

ROOT = Path(__file__).resolve().parents[1]


def prior_module(revision: str, folder: Path) -> types.ModuleType:
    """``metnet/models/prior.py`` as it was at ``revision`` (this repository's own history),
    imported from a copy in ``folder``."""
    path = folder / "former_prior.py"
    path.write_text(subprocess.run(["git", "show", f"{revision}:metnet/models/prior.py"],
                                   cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    spec = importlib.util.spec_from_file_location("former_prior", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    arguments = module.ExtrapolationPrior.__init__.__code__.co_varnames
    if "wide" not in arguments:
        module.prior_kernel = functools.partial(_former_kernels, "pinned" in arguments)
    return module


def _former_kernels(pins: bool) -> types.SimpleNamespace:
    """This checkout's CPU kernels as revisions before the wide neighbourhood call them:
    the histograms without the wide radii after the radii (and, before ``prior_pinned``,
    without the ``pinned`` argument before their output)."""
    from metnet.models import prior_kernel as kernels

    def histograms(bins: object, radii: np.ndarray, *args: object) -> None:
        *rest, out = args
        kernels.histograms(bins, radii, np.full(len(radii), -1), *rest,
                           *(() if pins else (False,)), out)

    return types.SimpleNamespace(histograms=histograms)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("revision")
    add_domain_arguments(p, [256])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        former = prior_module(args.revision, Path(folder))
    print("| domain | values | values differing | pixels differing |")
    print("| --- | ---: | ---: | ---: |")
    arguments = former.ExtrapolationPrior.__init__.__code__.co_varnames
    pins, wide = "pinned" in arguments, "wide" in arguments
    for name, rate, _ in domains(args):
        # revisions before the pin (or the wide neighbourhood) are compared on the network
        # they shipped: unpinned (without it)
        unpinned = {} if pins else {"prior_pinned": False, "prior_decisions": None}
        net = network(True, **unpinned, **({} if wide else {"prior_wide_radius": None}))
        planes = lead_planes(rate[-MOTION_FRAMES:], [lead / 5 for lead in LEADS],
                             velocity=True, error=True)
        tiling = one_pass_tiling(net, rate.shape[1:])
        planes = pad_planes(planes, tiling)
        prior = net.head.prior
        with torch.inference_mode():
            now = prior_histograms(net, planes, LEADS, tiling)
            net.head.prior = former.ExtrapolationPrior(prior.edges.tolist(), max(LEADS),
                                                       prior.radius, prior.error,
                                                       *((prior.pinned,) if pins else ()),
                                                       **({"wide": prior.wide} if wide else {}))
            before = prior_histograms(net, planes, LEADS, tiling)
        differ = now != before
        print(f"| {name} | {differ.numel()} | {int(differ.sum())} "
              f"| {int(differ.any(2).sum())} |", flush=True)


if __name__ == "__main__":
    main()
