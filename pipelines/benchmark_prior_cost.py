"""What the extrapolation prior costs a one-pass 12-lead forecast.

Seconds per init time of ``metnet.nowcasts.model.forecast`` (motion inputs, one pass over
the whole domain, the distribution over the bins) for the network of
``configs/model/small.yaml`` with the data settings of ``configs/radar.yaml``, untrained
(the cost does not depend on the weights), in three forms that differ only in the prior:
none, the two neighbourhoods (``prior_error: false``) and the shipped one with the error
ensemble. The three run in turn, ``--repeats`` times after a warm-up, so that the VM's
drifting speed falls on all of them alike; medians are printed::

    python pipelines/benchmark_prior_cost.py --store outputs/stores/knmi.zarr@2010-08-26T06:30
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from metnet.forecast import read_context
from metnet.io.store import open_store
from metnet.io.synthetic import synthesize
from metnet.models import MetNet
from metnet.nowcasts.model import forecast
from metnet.runtime import keep_freed_memory

LEADS = list(range(5, 61, 5))
MODEL = Path(__file__).resolve().parents[1] / "configs" / "model" / "small.yaml"
DATA = dict(input_channels=2, context_frames=6, input_size=128, target_size=32)
FORMS = {
    "no prior": dict(prior=False, prior_error=False, lead_channels=5),
    "prior (neighbourhoods)": dict(prior_error=False, lead_channels=4),
    "prior with error ensemble": dict(lead_channels=5),
}


def networks() -> dict[str, MetNet]:
    """The three networks, untrained, in eval mode."""
    config = {**yaml.safe_load(MODEL.read_text())["init_args"], **DATA}
    torch.manual_seed(0)
    return {name: MetNet(**{**config, **form}).eval() for name, form in FORMS.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", help="STORE@INIT_TIME of a real store (default: synthetic "
                                   "256 x 256 px)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    keep_freed_memory()
    if args.store:
        path, init = args.store.rsplit("@", 1)
        rate = read_context(open_store(path), np.datetime64(init, "ns"), DATA["context_frames"])
    else:
        rate = synthesize(frames=8, height=256, width=256, seed=1)["rain_rate"].values
    nets = networks()
    seconds: dict[str, list[float]] = {name: [] for name in nets}
    with torch.inference_mode():
        for repeat in range(args.repeats + 1):
            for name, net in nets.items():
                began = time.perf_counter()
                forecast(rate, LEADS, step_minutes=5, net=net)
                if repeat:  # the first round warms up
                    seconds[name].append(time.perf_counter() - began)
    base = statistics.median(seconds["no prior"])
    print(f"{rate.shape[1]} x {rate.shape[2]} px, torch on {torch.get_num_threads()} threads")
    print("| network | seconds per init time | added to the forecast without a prior |")
    print("| --- | ---: | ---: |")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {(median - base) / base:+.0%} |")


if __name__ == "__main__":
    main()
