"""Seconds and peak memory per init time of a 12-lead whole-domain forecast, side by side
with pysteps' Lucas-Kanade extrapolation (its LK motion + its semi-Lagrangian scheme for 12
leads) and a 20-member STEPS ensemble of the same frames.

The network is that of ``configs/model/small.yaml`` with the data settings of
``configs/radar.yaml`` (6 frames of 128 px context, 32 px target, motion inputs with the
last step's error, the extrapolation prior with its error ensemble), untrained (its cost
does not depend on its weights), in two forms:

* ``one pass``: ``position: none`` (the whole domain at once; attention reaches 8 latent
  pixels, half the context);
* ``tiled``: the learned axial positional embedding, tiles at half the target stride,
  32 tiles per call (how every network forecast before ``position: none``).

Both include the network's motion inputs (pysteps' LK motion, interpolated on metnet's
coarser grid, and metnet's advection, which equals pysteps' to the bit); the pysteps
column is pysteps' own dense LK field on every pixel. The process runs as ``metnet
forecast`` does (:func:`metnet.runtime.keep_freed_memory`; ``--default-malloc`` leaves glibc's
allocation policy as it is). Synthetic domains of 256, 512 and 1024 px (1x, 4x, 16x the area), or
real stores at given init times::

    python pipelines/benchmark_forecast.py
    python pipelines/benchmark_forecast.py --store outputs/stores/knmi.zarr@2010-08-26T06:10 \\
        --store outputs/stores/mch.zarr@2016-07-11T22:50 --sides

``--paired N`` adds the steadier measure of the ratio to pysteps on this noisy VM: both
timed back to back in each of N rounds, the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from pysteps import nowcasts as pysteps_nowcasts

from metnet.data.motion import lead_planes
from metnet.forecast import read_context
from metnet.io.store import open_store
from metnet.io.synthetic import synthesize
from metnet.models import MetNet
from metnet.nowcasts import get_method
from metnet.nowcasts.extrapolation import MOTION_FRAMES, advect, motion_field
from metnet.nowcasts.model import one_pass_tiling, pad_planes, padded_input, prior_region
from metnet.runtime import keep_freed_memory

LEADS = list(range(5, 61, 5))
MODEL = Path(__file__).resolve().parents[1] / "configs" / "model" / "small.yaml"
DATA = dict(input_channels=2, context_frames=6, input_size=128, target_size=32,
            lead_channels=5)


def network(one_pass: bool, **changes: object) -> MetNet:
    """The benchmarked network, untrained, in eval mode (``changes``: other settings)."""
    config = {**yaml.safe_load(MODEL.read_text())["init_args"], **DATA,
              "position": "none" if one_pass else "axial", **changes}
    torch.manual_seed(0)
    return MetNet(**config).eval()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _glibc_mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        function = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    return function


MALLINFO2 = _glibc_mallinfo2()


def memory_in_use() -> int:
    """Bytes this process has allocated and not freed (glibc's heap and mapped blocks): memory
    kept for reuse after a free (``keep_freed_memory``) does not count, so one domain's
    figure does not depend on the domains measured before it. Resident memory without
    glibc."""
    if MALLINFO2 is not None:
        info = MALLINFO2()
        return info.uordblks + info.hblkhd
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median seconds over ``repeats`` runs after a warm-up, peak memory in use in MB above
    that before the calls), memory sampled every 2 ms in a thread."""
    start, peak, done = memory_in_use(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], memory_in_use())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    call()
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    done.set()
    sampler.join()
    return statistics.median(seconds), max(peak[0] - start, 0) / 2**20


def domains(args: argparse.Namespace) -> list[tuple[str, np.ndarray, float]]:
    """(name, context rates (T, H, W) mm/h, km per pixel) of each benchmarked domain."""
    out = []
    for side in args.sides:
        rate = synthesize(frames=8, height=side, width=side, seed=1)["rain_rate"].values
        out.append((f"synthetic {side} x {side}", rate, 1.0))
    for spec in args.store:
        path, init = spec.rsplit("@", 1)
        ds = open_store(path)
        rate = read_context(ds, np.datetime64(init, "ns"), DATA["context_frames"])
        km = float(abs(ds["x"].values[1] - ds["x"].values[0])) / 1000
        out.append((f"{Path(path).stem} {rate.shape[1]} x {rate.shape[2]}", rate, km))
    return out


def add_domain_arguments(p: argparse.ArgumentParser, sides: list[int]) -> None:
    """The options :func:`domains` reads: ``--sides`` (default ``sides``) and ``--store``."""
    p.add_argument("--sides", type=int, nargs="*", default=sides,
                   help="sides of square synthetic domains in px")
    p.add_argument("--store", action="append", default=[],
                   help="STORE@INIT_TIME of a real store (repeatable)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_domain_arguments(p, [256, 512, 1024])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiled-max-side", type=int, default=512,
                   help="skip the tiled network on larger domains (minutes each)")
    p.add_argument("--steps-max-side", type=int, default=1024)
    p.add_argument("--default-malloc", action="store_true",
                   help="keep glibc's allocation policy (not what metnet forecast runs)")
    p.add_argument("--parts", action="store_true",
                   help="also time each part of the one-pass forecast, on every domain")
    p.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                   help="also time pysteps LK and the one pass back to back ROUNDS times on "
                        "every domain and give the median of their ratios")
    args = p.parse_args()
    if not args.default_malloc:
        keep_freed_memory()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    nets = {"one pass": network(True), "tiled": network(False)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"seconds per init time (median of {args.repeats}) and peak memory in use (MB)\n")
    print("| domain | pysteps LK | one pass | one pass MB | tiled | tiled MB "
          "| STEPS 20 | STEPS / one pass | one pass / pysteps LK |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, rate, km in domains(args):
        print(row(name, rate, km, nets, args), flush=True)
    if args.paired:
        print(f"\none pass / pysteps LK, paired: each round times both back to back (median "
              f"of {args.paired} rounds, and the rounds' range)\n")
        print("| domain | pysteps LK | one pass | one pass / pysteps LK | range |")
        print("| --- | ---: | ---: | ---: | --- |")
        for name, rate, _ in domains(args):
            print(paired_row(name, rate, nets["one pass"], args.paired), flush=True)
    if args.parts:
        print("\n| domain | " + " | ".join(PARTS) + " |")
        print("| --- |" + " ---: |" * len(PARTS))
        for name, rate, _ in domains(args):
            print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in parts(
                nets["one pass"], rate, args.repeats)) + " |", flush=True)


def paired_row(name: str, rate: np.ndarray, net: MetNet, rounds: int) -> str:
    """One row of the paired comparison: pysteps LK and the one-pass forecast of context
    rates (T, H, W) mm/h timed back to back in each round (which goes first alternating),
    so that the VM's drifting speed falls on both; the median seconds of each and the
    median and range of the rounds' ratios."""
    calls = {"lk": lambda: pysteps_extrapolation(rate),
             "one": lambda: get_method("model")(rate, LEADS, step_minutes=5, net=net)}
    for call in calls.values():  # warm-up
        call()
    seconds: dict[str, list[float]] = {key: [] for key in calls}
    for round_ in range(rounds):
        for key in (("lk", "one") if round_ % 2 == 0 else ("one", "lk")):
            began = time.perf_counter()
            calls[key]()
            seconds[key].append(time.perf_counter() - began)
    ratios = [one / lk for one, lk in zip(seconds["one"], seconds["lk"], strict=True)]
    return (f"| {name} | {statistics.median(seconds['lk']):.2f} "
            f"| {statistics.median(seconds['one']):.2f} | {statistics.median(ratios):.2f} "
            f"| {min(ratios):.2f}-{max(ratios):.2f} |")


PARTS = ("LK motion", "advection", "encoder", "prior",
         "decoder and head to probabilities, prior included")


def parts(net: MetNet, rate: np.ndarray, repeats: int) -> list[float]:
    """Seconds (median) of each of :data:`PARTS` of a one-pass forecast of context rates
    (T, H, W) mm/h, one after the other (a forecast runs the encoder beside the motion and
    advection), all leads decoded at once to probabilities, as a forecast without
    calibration asks for them (the prior alone: its mixture from the whole-domain planes,
    as the head makes it)."""
    steps = [lead / 5 for lead in LEADS]
    velocity = motion_field(rate)
    per_lead = lead_planes(rate[-MOTION_FRAMES:], steps, velocity=True, error=True)
    context = rate[-DATA["context_frames"]:]
    tiling = one_pass_tiling(net, context.shape[1:])
    x, planes = padded_input(context, tiling)[None], pad_planes(per_lead, tiling)
    leads = torch.tensor(LEADS)
    prior = net.head.prior
    region = prior_region(prior, planes, tiling)
    mix = torch.zeros(len(LEADS), prior.mix_planes, *tiling.covered)
    with torch.inference_mode():
        latent = net.encode(x)
        calls = [lambda: motion_field(rate), lambda: advect(rate[-1], velocity, steps),
                 lambda: net.encode(x), lambda: prior.mixture(mix, region, leads),
                 lambda: net.decode(latent, leads, planes[None], probabilities=True)]
        return [measure(call, repeats)[0] for call in calls]


def pysteps_extrapolation(rate: np.ndarray) -> np.ndarray:
    """pysteps alone: LK motion of the last 3 frames (T, H, W) mm/h (its dense field, on
    every pixel), then its semi-Lagrangian extrapolation of the last frame to the 12 leads
    (L, H, W)."""
    last = np.nan_to_num(rate[-1].astype(np.float64))
    return pysteps_nowcasts.get_method("extrapolation")(
        last, motion_field(rate, grid_step=1).astype(np.float64), [lead / 5 for lead in LEADS],
        extrap_kwargs={"outval": 0.0})


def row(name: str, rate: np.ndarray, km: float, nets: dict[str, MetNet],
        args: argparse.Namespace) -> str:
    """One table row: every method on the context rates (T, H, W) mm/h of one domain."""
    side = max(rate.shape[1:])
    cells = {"extrapolation": measure(lambda: pysteps_extrapolation(rate), args.repeats)}
    for label, net in nets.items():
        if label == "tiled" and side > args.tiled_max_side:
            continue
        cells[label] = measure(lambda n=net: get_method("model")(
            rate, LEADS, step_minutes=5, net=n, batch_tiles=32), args.repeats)
    if side <= args.steps_max_side:
        cells["steps"] = measure(lambda: get_method("steps")(
            rate, LEADS, step_minutes=5, km_per_pixel=km, members=20, seed=0), 1)

    def fmt(key: str, index: int = 0, form: str = "{:.2f}") -> str:
        return form.format(cells[key][index]) if key in cells else "-"

    one = cells["one pass"][0]
    ratio = f"{cells['steps'][0] / one:.0f}x" if "steps" in cells else "-"
    return (f"| {name} | {fmt('extrapolation')} | {one:.2f} | {fmt('one pass', 1, '{:.0f}')} "
            f"| {fmt('tiled')} | {fmt('tiled', 1, '{:.0f}')} | {fmt('steps')} | {ratio} "
            f"| {one / cells['extrapolation'][0]:.2f} |")

if __name__ == "__main__":
    main()
