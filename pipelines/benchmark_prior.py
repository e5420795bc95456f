"""How close the extrapolation prior's histograms come to the neighbourhood they describe.

For the test init times of a store, prints per lead time the CRPS (mm/h) of:

* ``neighbourhood``: the exact empirical CRPS of each pixel's neighbourhood of the
  extrapolated field (the ``neighbourhood`` nowcast method);
* ``binned``: that neighbourhood as a histogram over the shipped bins (the compact bins
  with the drizzle edges, or with ``--bins compact`` the compact 24 bins; uniform density
  within a bin, so "no rain" is spread over [0, 0.01) mm/h, or [0, 0.1));
* ``binned+dry``: the same with a dry bin, a point mass at 0 mm/h, in front;
* ``prior``: what an untrained network with ``prior: true`` and ``dry_bin: true``
  forecasts, the even mixture of that histogram and the histogram recentred on the pixel's
  own extrapolated rate (:class:`metnet.models.prior.ExtrapolationPrior`);
* ``prior+error``: the same with ``prior_error: true`` (the shipped configurations), the
  error ensemble of the last step's extrapolation error mixed in;
* ``pinned``: the plain neighbourhood and the error ensemble mixed, with the mixture's
  median pinned to the pixel's own extrapolated bin (``prior_pinned: true``);
* ``pinned at 1``: the same mixture pinned only to the side of 1 mm/h that extrapolation
  is on (``prior_pinned: true``, ``prior_decisions: [1.0]``), by 0.001;
* ``pin margin``: the same pinned by 0.05 up to 15 min and 0.05 * 15 / lead after it
  (``prior_pin_margin: 0.05``, ``prior_pin_minutes: 15``);
* ``wide``: the same with a wider neighbourhood of half-width ``floor(0.2 * lead)``
  mixed in beside the first (``prior_wide_radius: [0.0, 0.2]``);
* ``shipped``: the same with the first neighbourhood's half-width ``floor(0.5 + 0.1 *
  lead)``, lead / 10 min rounded, in place of ``floor(1 + 0.1 * lead)`` (``prior_radius:
  [0.5, 0.1]``, ``configs/model/small.yaml``);

and CSI at 1 mm/h of the priors (decided at P = 0.5) next to extrapolation's. With
``--radii A,B ...`` also ``radius A,B``: the ``pin margin`` prior with a neighbourhood
half-width of ``floor(A + B * lead)`` pixels; with ``--wides A,B ...`` also ``wide A,B``:
the shipped prior with that wide neighbourhood (BENCHMARKS.md, "A wide neighbourhood
beside the first", "The first neighbourhood rounded").

    python pipelines/benchmark_prior.py outputs/stores/knmi.zarr 2010-08-26T06:10 2010-08-26T06:35
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch

from metnet.data.motion import extrapolation_error
from metnet.distribution import RainRateDistribution, compact_bins
from metnet.forecast import complete_init_times, read_context, read_observations
from metnet.io.store import open_store
from metnet.models.prior import ExtrapolationPrior
from metnet.nowcasts import get_method
from metnet.nowcasts.extrapolation import motion_field
from metnet.transforms import rate_to_input

LEADS = (5, 10, 15, 30, 45, 60)
COLUMNS = ("neighbourhood", "binned", "binned+dry", "prior", "prior+error", "pinned",
           "pinned at 1", "pin margin", "wide", "shipped")
_PIN_MARGIN = {"error": True, "pinned": True, "decisions": [1.0], "pin_margin": 0.05,
               "pin_minutes": 15.0}
_WIDE = {**_PIN_MARGIN, "wide": (0.0, 0.2)}
#: The priors, by their settings besides the bins and the longest lead, each the one
#: before it with one change from "pinned" on.
PRIORS = {"prior": {}, "prior+error": {"error": True},
          "pinned": {"error": True, "pinned": True},
          "pinned at 1": {"error": True, "pinned": True, "decisions": [1.0]},
          "pin margin": _PIN_MARGIN, "wide": _WIDE,
          "shipped": {**_WIDE, "radius": (0.5, 0.1)}}


def prior_histograms(field: np.ndarray, leads: Sequence[int], prior: ExtrapolationPrior,
                     error: np.ndarray | None = None) -> torch.Tensor:
    """The histograms (L, C, K, H, W) of ``prior`` for an extrapolated field (L, H, W) mm/h
    at ``leads`` (minutes), and with its error ensemble the last step's extrapolation error
    (H, W), the domain padded with no rain."""
    r = prior.margin
    rate = torch.from_numpy(np.pad(np.nan_to_num(field), ((0, 0), (r, r), (r, r))))
    planes = [rate_to_input(rate), torch.ones_like(rate)]
    if error is not None:
        planes.append(torch.from_numpy(np.pad(error, r)).expand_as(rate))
    return prior.histograms(torch.stack(planes, dim=1), torch.tensor(leads))


def prior_distributions(field: np.ndarray, error: np.ndarray, drizzle: bool = True,
                        priors: dict[str, dict] = PRIORS) -> dict[str, RainRateDistribution]:
    """The binned neighbourhoods and the ``priors`` (name: settings) of an extrapolated
    field (L, H, W) mm/h and the last step's extrapolation error (H, W), over the compact
    bins (with the drizzle edges of the shipped configuration unless ``drizzle`` is
    False)."""
    out = {}
    for name, dry in (("binned", False), ("binned+dry", True)):
        prior = ExtrapolationPrior(compact_bins(dry=dry, drizzle=drizzle), max(LEADS))
        histograms = prior_histograms(field, LEADS, prior)  # (L, 2, K, H, W)
        out[name] = RainRateDistribution(histograms[:, 1].clamp_min(1e-12).log(),
                                         prior.edges.double(), dim=1)
    for name, settings in priors.items():
        prior = ExtrapolationPrior(compact_bins(dry=True, drizzle=drizzle), max(LEADS),
                                   **settings)
        histograms = prior_histograms(field, LEADS, prior, error if prior.error else None)
        mix = torch.zeros(len(LEADS), prior.mix_planes, *field.shape[1:])
        out[name] = RainRateDistribution(prior(mix, histograms, torch.tensor(LEADS)),
                                         prior.edges, dim=1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("start", help="first init time, ISO")
    p.add_argument("end", help="last init time, ISO")
    p.add_argument("--bins", choices=("drizzle", "compact"), default="drizzle",
                   help="the shipped bins (compact with the drizzle edges), or the compact "
                        "24 bins of the sections before 'Bins for drizzle'")
    p.add_argument("--radii", nargs="*", default=[], metavar="A,B",
                   help="also the 'pin margin' prior with these neighbourhood half-widths")
    p.add_argument("--wides", nargs="*", default=[], metavar="A,B",
                   help="also the shipped prior with these wide neighbourhoods")
    args = p.parse_args()
    priors = {**PRIORS,
              **{f"radius {v}": {**PRIORS["pin margin"], "radius": _pair(v)} for v in args.radii},
              **{f"wide {v}": {**PRIORS["shipped"], "wide": _pair(v)} for v in args.wides}}
    columns = (*COLUMNS, *(name for name in priors if name not in PRIORS))
    ds = open_store(args.store)
    sums = {name: np.zeros(len(LEADS)) for name in columns}
    hits = {name: np.zeros((len(LEADS), 3)) for name in (*priors, "extrapolation")}
    count = np.zeros(len(LEADS))
    inits = complete_init_times(ds, args.start, args.end, 3, LEADS)
    for init in inits:
        rate, obs = read_context(ds, init, 3), read_observations(ds, init, LEADS)
        velocity = motion_field(rate)
        field = get_method("extrapolation")(rate, LEADS, step_minutes=5, velocity=velocity)
        valid = np.isfinite(obs) & np.isfinite(rate[-1])
        y = torch.from_numpy(np.nan_to_num(obs).astype(np.float64))
        dists = {"neighbourhood": get_method("neighbourhood")(rate, LEADS, step_minutes=5,
                                                              velocity=velocity),
                 **prior_distributions(field, extrapolation_error(rate, velocity),
                                       drizzle=args.bins == "drizzle", priors=priors)}
        for name, dist in dists.items():
            crps = dist.crps(y).numpy()
            sums[name] += [crps[j][valid[j]].sum() for j in range(len(LEADS))]
        observed = obs > 1
        events = {name: dists[name].exceedance(1.0).numpy() >= 0.5 for name in priors}
        events["extrapolation"] = np.nan_to_num(field) > 1
        for name, event in events.items():
            for j in range(len(LEADS)):
                e, o = event[j][valid[j]], observed[j][valid[j]]
                hits[name][j] += [(e & o).sum(), (~e & o).sum(), (e & ~o).sum()]
        count += valid.reshape(len(LEADS), -1).sum(1)
    print(f"{args.store}: {len(inits)} init times; CRPS (mm/h) per lead, then CSI at 1 mm/h")
    print(f"| lead (min) | {' | '.join(columns)} | "
          + " | ".join(f"CSI {name}" for name in hits) + " |")
    print("| ---: " * (len(columns) + len(hits) + 1) + "|")
    for j, lead in enumerate(LEADS):
        csi = [h / (h + m + f) for h, m, f in (counts[j] for counts in hits.values())]
        cells = [f"{sums[n][j] / count[j]:.5f}" for n in columns] + [f"{c:.3f}" for c in csi]
        print(f"| {lead} | {' | '.join(cells)} |")


def _pair(text: str) -> tuple[float, float]:
    """``"A,B"`` as the pair (A, B) of a neighbourhood half-width's settings."""
    a, b = (float(v) for v in text.split(","))
    return a, b


if __name__ == "__main__":
    main()
