"""Where STEPS beats the extrapolation prior at short leads, and what simple changes of the
prior would do there.

For the init times of a store, per lead time: the CRPS (mm/h) of the prior (what an
untrained network with ``prior: true`` and ``dry_bin: true`` forecasts,
:class:`metnet.models.prior.ExtrapolationPrior`) and of the 20-member STEPS ensemble with
the same motion, split by the observed rate, with the mean forecast rate next to
extrapolation's and the observed one (``--steps``); and the CRPS and CSI at 1 mm/h
(P >= 0.5) of variants of the prior, each changing one thing:

* ``radius=A,B``: the neighbourhood's half-width ``floor(A + B * lead)`` pixels;
* ``weight=W``: the centred component's share of the mixture (0.5 untrained);
* ``blur=S``: the wet bins' mass spread over neighbouring bins (Gaussian, S bins);
* ``point=P``: a share P moved to the pixel's own extrapolated bin (a sharper prior);
* ``shift=D``: the wet mass moved D bins along the bins (negative: to lower rates);
* ``error=W``: the error ensemble (``prior_error``: the pixel's extrapolated value plus the
  last step's extrapolation errors around it) with a share W of the mixture, the two
  neighbourhoods sharing the rest evenly (0.5: the untrained prior with ``prior_error``);
* ``pin=W[,A,B]``: the error ensemble (as ``error=0.5,1``) and the neighbourhoods, the
  centred one with a share W of them, mixed, then the mixture's median pinned to the
  pixel's own extrapolated bin (``pin=0``: the untrained prior with ``prior_pinned``),
  with the neighbourhood's half-width ``floor(A + B * lead)`` if given.
* ``cap=W``: the same mixture with only its lower half pinned: the cumulative probability
  below the pixel's own bin capped just under 1/2, so that P >= 0.5 wherever extrapolation
  says rain above a bin edge, and higher rates than the pixel's left where the mixture
  puts them.
* ``at=T[,T2...]``: the mixture of ``pin=0`` with its median pinned only to the side of
  each decision threshold T (mm/h, bin edges) that extrapolation is on, not to the
  pixel's own bin: P(R > T) >= 0.5 exactly where extrapolation says rain above T
  (``prior_decisions``).

    python pipelines/benchmark_prior_steps.py outputs/stores/mch.zarr 2016-07-11T22:50 \\
        2016-07-11T23:00 --steps
    python pipelines/benchmark_prior_steps.py outputs/stores/mch.zarr 2016-07-11T21:10 \\
        2016-07-11T21:20 --variants radius=2,0.1 blur=1 point=0.2 shift=-0.2
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from benchmark_prior import prior_histograms

from metnet.data.motion import extrapolation_error
from metnet.distribution import RainRateDistribution, compact_bins
from metnet.forecast import complete_init_times, read_context, read_observations
from metnet.io.store import open_store
from metnet.models.prior import RADIUS, ExtrapolationPrior, decision_intervals, pin_median
from metnet.nowcasts import steps
from metnet.nowcasts.extrapolation import forecast, motion_field
from metnet.verification import ensemble_crps

LEADS = (5, 10, 15, 30, 45, 60)
STEPS_LEADS = (5, 10, 15)
CLASSES = (0.1, 1.0, 5.0, 20.0)  # observed-rate class edges, mm/h
EDGES = compact_bins(dry=True)


def histograms(field: np.ndarray, radius: tuple[float, float] = RADIUS,
               error: np.ndarray | None = None) -> torch.Tensor:
    """The prior's (centred, plain[, error]) histograms (L, C, K, H, W) of an extrapolated
    field, with the error ensemble of an :func:`extrapolation_error` field if given."""
    prior = ExtrapolationPrior(EDGES, max(LEADS), radius, error is not None)
    return prior_histograms(field, LEADS, prior, error)


def variant(field: np.ndarray, error: np.ndarray, name: str, value: str) -> torch.Tensor:
    """Bin probabilities (L, K, H, W) of the prior changed as ``name=value`` says."""
    radius = tuple(float(v) for v in value.split(",")) if name == "radius" else RADIUS
    if name == "pin" and "," in value:
        value, *rest = value.split(",")
        radius = tuple(float(v) for v in rest)
    if name == "error":
        centred, plain, ensemble = histograms(field, radius, error).unbind(1)
        weight, power = (float(v) for v in (value + ",0").split(",")[:2])
        share = weight * torch.tensor([min(1.0, 5 / lead) ** power for lead in LEADS])
        share = share[:, None, None, None]
        return share * ensemble + (1 - share) / 2 * (centred + plain)
    if name in ("pin", "cap", "at"):
        centred, plain, ensemble = histograms(field, radius, error).unbind(1)
        share = 0.5 * torch.tensor([min(1.0, 5 / lead) for lead in LEADS])[:, None, None, None]
        weight = 0.0 if name == "at" else float(value)
        mixture = share * ensemble + (1 - share) * torch.lerp(plain, centred, weight)
        own = histograms(field, (0.0, 0.0))[:, 1]  # radius 0: the pixel's own bin
        if name == "pin":
            return pin_median(mixture, own)
        if name == "at":
            thresholds = [float(v) for v in value.split(",")]
            return pin_median(mixture, own, decision_intervals(EDGES, thresholds))
        intervals = decision_intervals(EDGES, None)  # cap: the lower half of pin_median,
        intervals[:, 1] = len(EDGES) - 1  # no interval closing above the pixel's own bin
        return pin_median(mixture, own, intervals)
    centred, plain = histograms(field, radius).unbind(1)
    weight = float(value) if name == "weight" else 0.5
    probs = torch.lerp(plain, centred, weight)
    wet = probs[:, 1:]
    if name == "blur":
        k = torch.arange(wet.shape[1], dtype=torch.float32)
        kernel = torch.exp(-0.5 * ((k[:, None] - k[None, :]) / float(value)) ** 2)
        wet = torch.einsum("ij,ljhw->lihw", kernel / kernel.sum(0), wet)
    elif name == "point":
        own = histograms(field, (0.0, 0.0))[:, 1, 1:]
        wet = torch.lerp(wet, own, float(value))
    elif name == "shift":
        d, zero = float(value), torch.zeros_like(wet[:, :1])
        down = torch.cat([wet[:, :1] + wet[:, 1:2], wet[:, 2:], zero], 1)
        up = torch.cat([zero, wet[:, :-2], wet[:, -2:-1] + wet[:, -1:]], 1)
        wet = wet + max(-d, 0) * (down - wet) + max(d, 0) * (up - wet)
    return torch.cat([probs[:, :1], wet], 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("start", help="first init time, ISO")
    p.add_argument("end", help="last init time, ISO")
    p.add_argument("--steps", action="store_true", help="the prior against STEPS by class")
    p.add_argument("--variants", nargs="*", default=[], metavar="NAME=VALUE")
    args = p.parse_args()
    ds = open_store(args.store)
    km = float(ds.attrs["pixel_size_x"]) / 1000
    names = ["prior", *args.variants]
    crps, count = np.zeros((len(names), len(LEADS))), np.zeros(len(LEADS))
    hits = np.zeros((len(names) + 1, len(LEADS), 3))
    by_class = np.zeros((len(STEPS_LEADS), len(CLASSES) + 1, 7))
    inits = complete_init_times(ds, args.start, args.end, 3, LEADS)
    for init in inits:
        rate, obs = read_context(ds, init, 3), read_observations(ds, init, LEADS)
        velocity = motion_field(rate)
        field = forecast(rate, LEADS, step_minutes=5, velocity=velocity)
        error = extrapolation_error(rate, velocity)
        valid = np.isfinite(obs) & np.isfinite(rate[-1])
        y = np.nan_to_num(obs)
        observed = obs > 1
        for i, name in enumerate(names):
            probs = variant(field, error, *(name.split("=") if "=" in name else ("", "")))
            dist = RainRateDistribution((probs + 1e-7).log(), torch.tensor(EDGES), dim=1)
            score = dist.crps(torch.from_numpy(y.astype(np.float64))).numpy()
            crps[i] += [score[j][valid[j]].sum() for j in range(len(LEADS))]
            event = dist.exceedance(1.0).numpy() >= 0.5
            for j in range(len(LEADS)):
                e, o = event[j][valid[j]], observed[j][valid[j]]
                hits[i, j] += [(e & o).sum(), (~e & o).sum(), (e & ~o).sum()]
            if i == 0 and args.steps:
                _steps_by_class(rate, field, y, valid, score, dist.mean().numpy(), velocity, km,
                                by_class)
        event = np.nan_to_num(field) > 1
        for j in range(len(LEADS)):
            e, o = event[j][valid[j]], observed[j][valid[j]]
            hits[-1, j] += [(e & o).sum(), (~e & o).sum(), (e & ~o).sum()]
        count += valid.reshape(len(LEADS), -1).sum(1)
    print(f"{args.store}: {len(inits)} init times")
    if args.steps:
        _print_by_class(by_class)
    print("| variant | " + " | ".join(f"CRPS {lead}" for lead in LEADS) + " | "
          + " | ".join(f"CSI {lead}" for lead in LEADS) + " |")
    print("| --- " + "| ---: " * 2 * len(LEADS) + "|")
    csi = hits[..., 0] / hits.sum(-1)
    for i, name in enumerate([*names, "extrapolation"]):
        cells = ([f"{v:.3f}" for v in crps[i] / count] if i < len(names) else ["-"] * len(LEADS))
        print(f"| {name} | {' | '.join(cells)} | {' | '.join(f'{v:.3f}' for v in csi[i])} |")


def _steps_by_class(rate: np.ndarray, field: np.ndarray, y: np.ndarray, valid: np.ndarray,
                    prior_crps: np.ndarray, prior_mean: np.ndarray, velocity: np.ndarray,
                    km: float, out: np.ndarray) -> None:
    """Add an init time's pixels to ``out`` (leads, classes, 7): count, CRPS sums of the
    prior and STEPS, and sums of their means, extrapolation and the observations."""
    members = np.nan_to_num(steps.forecast(rate, STEPS_LEADS, step_minutes=5,
                                           km_per_pixel=km, velocity=velocity))
    for j, lead in enumerate(STEPS_LEADS):
        lj = LEADS.index(lead)
        score = ensemble_crps(members[:, j], y[lj])
        cls = np.digitize(y[lj], CLASSES)
        for c in range(len(CLASSES) + 1):
            m = valid[lj] & (cls == c)
            out[j, c] += [m.sum(), prior_crps[lj][m].sum(), score[m].sum(),
                          prior_mean[lj][m].sum(), members[:, j].mean(0)[m].sum(),
                          np.nan_to_num(field[lj])[m].sum(), y[lj][m].sum()]


def _print_by_class(out: np.ndarray) -> None:
    """Each class's share of the pixels, its share of the CRPS, and mean biases (mm/h)."""
    names = ["< 0.1", "0.1-1", "1-5", "5-20", ">= 20"]
    print("| lead | observed (mm/h) | share | CRPS prior | CRPS steps | mean prior - obs | "
          "mean steps - obs | extrapolation - obs |")
    print("| ---: | --- " + "| ---: " * 6 + "|")
    for j, lead in enumerate(STEPS_LEADS):
        total = out[j, :, 0].sum()
        for c, name in enumerate(names):
            n, cp, cs, mp, ms, me, mo = out[j, c]
            print(f"| {lead} | {name} | {n / total:.3f} | {cp / total:.4f} | {cs / total:.4f} "
                  f"| {(mp - mo) / n:+.2f} | {(ms - mo) / n:+.2f} | {(me - mo) / n:+.2f} |")
        print(f"| {lead} | all | 1 | {out[j, :, 1].sum() / total:.4f} | "
              f"{out[j, :, 2].sum() / total:.4f} | | | |")


if __name__ == "__main__":
    main()
