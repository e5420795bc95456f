"""What the extrapolation prior costs a one-pass 12-lead forecast.

Seconds per init time of ``metnet.nowcasts.model.forecast`` (motion inputs, one pass over
the whole domain, the distribution over the bins) for the network of
``pipelines/benchmark_forecast.py`` (``configs/model/small.yaml`` with the data settings of
``configs/radar.yaml``), untrained (the cost does not depend on the weights), on its
domains (``--sides``, ``--store``), in seven forms that differ only in the prior:
none, the two neighbourhoods (``prior_error: false``), the two with the error ensemble
(shipped before the pin at 1 mm/h), the neighbourhood and the error ensemble with the
median pinned (``prior_pinned: true``), the same pinned only at 1 mm/h
(``prior_decisions: [1.0]``, with small.yaml's pin margin; the margin changes no cost),
that with the wide neighbourhood beside the first (``prior_wide_radius``), all with the
first neighbourhood's former half-width ``floor(1 + lead / 10 min)``, and the shipped
prior, whose first neighbourhood is ``lead / 10 min`` rounded (``prior_radius``).
The seven run in turn, ``--repeats`` times after a warm-up, so that the VM's
drifting speed falls on all of them alike; medians are printed, with the seconds of the
prior's mixture within them (its CPU kernel and the conversions of its arguments; since
21faadb the kernel also corrects and normalises the probabilities, which the network
without a prior does in torch's softmax, so this is more than the prior's own work), and
the median of each round's ratio to the forecast without a prior ("paired", steadier than
the ratio of two medians: the measure of the prior's cost)::

    python pipelines/benchmark_prior_cost.py --store outputs/stores/knmi.zarr@2010-08-26T06:30 \
        --sides
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from benchmark_forecast import LEADS, add_domain_arguments, domains, network

from metnet.models import MetNet
from metnet.nowcasts.model import forecast
from metnet.runtime import keep_freed_memory

#: The first neighbourhood's half-width before ``prior_radius: [0.5, 0.1]``.
FORMER = dict(prior_radius=(1.0, 0.1))
#: The forms before the wide neighbourhood.
NARROW = dict(prior_wide_radius=None, **FORMER)
UNPINNED = dict(prior_pinned=False, prior_decisions=None, **NARROW)
FORMS = {
    "no prior": dict(prior=False, prior_error=False, lead_channels=5, **UNPINNED),
    "prior (neighbourhoods)": dict(prior_error=False, lead_channels=4, **UNPINNED),
    "prior with error ensemble": dict(lead_channels=5, **UNPINNED),
    "pinned prior with error ensemble": dict(prior_pinned=True, prior_decisions=None,
                                             lead_channels=5, **NARROW),
    "pinned at 1 mm/h": dict(lead_channels=5, **NARROW),
    "and the wide neighbourhood": dict(lead_channels=5, **FORMER),
    "the first rounded (shipped)": dict(lead_channels=5),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_domain_arguments(p, [256])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    keep_freed_memory()
    nets = {name: network(True, **form) for name, form in FORMS.items()}
    for name, rate, _ in domains(args):
        print(f"{name}, torch on {torch.get_num_threads()} threads")
        print_costs(nets, rate, args.repeats)


def print_costs(nets: dict[str, MetNet], rate: np.ndarray, repeats: int) -> None:
    """Time the networks in turn on context rates (T, H, W) mm/h; print the medians, and of
    each prior the seconds its mixture (the CPU kernel) takes within them."""
    seconds: dict[str, list[float]] = {name: [] for name in nets}
    kernel: dict[str, list[float]] = {name: [] for name in nets}
    clocks = {name: _clock_mixture(net) for name, net in nets.items()}
    with torch.inference_mode():
        for repeat in range(repeats + 1):
            for name, net in nets.items():
                clocks[name][0] = 0.0
                began = time.perf_counter()
                forecast(rate, LEADS, step_minutes=5, net=net)
                if repeat:  # the first round warms up
                    seconds[name].append(time.perf_counter() - began)
                    kernel[name].append(clocks[name][0])
    base = seconds["no prior"]
    print("| network | seconds per init time | added to the forecast without a prior "
          "| added, paired | of which the prior's mixture |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, values in seconds.items():
        median = statistics.median(values)
        # each round's own ratio: the VM's drift between rounds cancels
        paired = statistics.median(v / b - 1 for v, b in zip(values, base, strict=True))
        print(f"| {name} | {median:.3f} | {median / statistics.median(base) - 1:+.0%} "
              f"| {paired:+.0%} | {statistics.median(kernel[name]):.3f} s |")


def _clock_mixture(net: MetNet) -> list[float]:
    """A one-element list that the seconds spent in the network's prior kernel
    (:meth:`~metnet.models.prior.ExtrapolationPrior.mixture`) add up in."""
    clock = [0.0]
    prior = net.head.prior
    if prior is None:
        return clock
    mixture = prior.mixture

    def timed(*args: object, **kwargs: object) -> torch.Tensor:
        began = time.perf_counter()
        out = mixture(*args, **kwargs)
        clock[0] += time.perf_counter() - began
        return out

    prior.mixture = timed
    return clock

if __name__ == "__main__":
    main()
