"""Scores of the model against persistence, Lagrangian extrapolation and a STEPS ensemble.

For each init time with a complete context and every target, these forecasts of the same
domain are scored against the observed rain rate (mm/h):

* ``model``: the ``model`` nowcast method (the network's distribution over the whole
  domain, :mod:`metnet.nowcasts.model`), deciding "rain above t" where P(R > t) >= 0.5;
* ``model_calibrated`` (with a ``calibration``): the same distribution tempered per lead
  (its logits divided by the lead's temperature, as ``metnet forecast`` writes it),
  deciding "rain above t" where P(R > t) >= the calibration's cut p*(lead, t);
* ``neighbourhood``: probabilistic extrapolation without training, the ``neighbourhood``
  method: each pixel's ensemble is the extrapolated field in a square around it that
  widens with lead time (:mod:`metnet.nowcasts.neighbourhood`), deciding where half of it
  is above t;
* ``steps`` (``steps_members`` > 0, default 20): the ``steps`` method, pysteps' STEPS
  ensemble (seed ``steps_seed + k`` at the k-th init time), deciding "rain above t" where
  the fraction of members above t is >= 0.5;
* ``persistence``: the last context frame, for every lead time;
* ``extrapolation``: semi-Lagrangian advection of the last frame by the Lucas-Kanade
  motion of the last three frames (:mod:`metnet.nowcasts.extrapolation`).

Every forecast comes from the nowcast methods of :mod:`metnet.nowcasts`.

The motion field is computed once per init time and drives both ``extrapolation`` and
``steps``.

Verified pixels: the observation is finite and the last context frame is finite
(outside the radar coverage every method is NaN). Inside them extrapolation and STEPS are
always finite (rain advected in from outside the coverage or the domain counts as
0 mm/h). An init time whose last context frame has no radar data at all is skipped with a
warning naming it.

Scores, per lead time, accumulated over init times before any ratio is taken:

* ``csi``, ``pod``, ``far`` at each threshold: pysteps ``det_cat_fct_*`` (an event is a
  rate *above* the threshold; a probabilistic method's event is its decision above);
* ``fss`` at the event threshold (1 mm/h) and each scale (km, converted to pixels):
  pysteps ``fss_*`` on the binary fields of the events (rate above the threshold, as for
  CSI; a probabilistic method: its decision), so that a rate exactly on the threshold is
  no event here either;
* ``mae`` (mm/h): the **median** of a probabilistic forecast (the model's distribution,
  the ensemble's members), the field of a deterministic one;
* ``crps`` (mm/h): the model's exact CRPS of its categorical distribution, the exact CRPS
  of the ensemble's empirical distribution (:func:`ensemble_crps`; pysteps'
  ``probscores.CRPS`` agrees except where the observation equals a member, e.g. both
  0 mm/h, which it under-scores), the absolute error of a deterministic forecast;
* ``brier`` at the event threshold: P(R > t) of a probabilistic forecast (for STEPS the
  fraction of members above t), 0/1 for a deterministic one;
* ``brier_reliability`` at the event threshold, probabilistic methods only: the
  reliability term of the Brier score's decomposition over the reliability diagram's
  probability bins (:func:`brier_reliability`; 0 is perfectly reliable).

A reliability diagram of P(R > t) at the event threshold, per probabilistic method and
lead time, uses pysteps ``reldiag_*`` (:data:`RELIABILITY_BINS` bins; event R > t, as in
the Brier score).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
import xarray as xr
from pysteps.verification import detcatscores, probscores, spatialscores
from torch import Tensor, nn
from tqdm.auto import tqdm

from metnet.atomic import atomic_write, remove_leftovers
from metnet.data.frames import pixel_size
from metnet.distribution import RainRateDistribution
from metnet.forecast import (
    DEFAULT_THRESHOLDS,
    Context,
    ForecastError,
    check_settings,
    complete_init_times,
    default_context,
    has_radar_data,
    no_radar_data,
    read_context,
    read_observations,
    resolve_lead_times,
    store_step,
    warn_user,
)
from metnet.nowcasts import get_method
from metnet.nowcasts.extrapolation import MOTION_FRAMES, motion_field
from metnet.nowcasts.steps import MEMBERS as STEPS_MEMBERS

METHODS = ("model", "model_calibrated", "neighbourhood", "steps", "persistence",
           "extrapolation")
PROBABILISTIC = ("model", "model_calibrated", "neighbourhood", "steps")
CATEGORICAL = ("CSI", "POD", "FAR")
DECISION_PROBABILITY = 0.5  # the uncalibrated cut on P(R > t)
RELIABILITY_BINS = 10
KM_PER_DEGREE = 111.195
DEFAULT_SCALES_KM = (1.0, 5.0, 10.0, 20.0)
#: What :func:`write_evaluation` writes into its folder.
EVALUATION_FILES = ("scores.csv", "reliability.csv", "skill.png", "reliability.png")


class DecisionCalibration(Protocol):
    """What :func:`evaluate` needs of a calibration (:class:`metnet.calibration.Calibration`)."""

    def scale_logits(self, logits: Tensor, lead_times: Sequence[int], dim: int) -> Tensor:
        """Logits (L, K, H, W) with the classes along ``dim`` (1) divided by the temperature
        of each lead (minutes, axis ``dim - 1``)."""

    def decision_threshold(self, lead_minutes: int, threshold: float) -> float:
        """The cut p* on P(R > ``threshold`` mm/h) at a lead time (minutes)."""


# -- one method's forecast, as the scores see it -----------------------------------------


@dataclass
class MethodForecast:
    """One method's forecast at one init time, every array (L, H, W).

    Attributes:
        value: rain rate (mm/h) scored by MAE (a probabilistic forecast's median).
        categorical: per threshold, the field pysteps thresholds (a rate, or for a
            probabilistic forecast ``t + 1`` where it decides "above t", else ``t - 1``).
        probability: P(R > event threshold) for the Brier score and reliability.
        crps: CRPS (mm/h) against the observation.
    """

    value: np.ndarray
    categorical: dict[float, np.ndarray]
    probability: np.ndarray
    crps: np.ndarray


def point_forecast(field: np.ndarray, obs: np.ndarray, thresholds: Sequence[float],
                   event_threshold: float) -> MethodForecast:
    """A deterministic field (L, H, W) mm/h as a forecast: 0/1 probabilities, CRPS = |error|."""
    with np.errstate(invalid="ignore"):
        probability = (field > event_threshold).astype(np.float32)
    return MethodForecast(field, {t: field for t in thresholds}, probability,
                          np.abs(field - obs))


def decisions(exceedance: dict[float, np.ndarray],
              cuts: dict[float, np.ndarray]) -> dict[float, np.ndarray]:
    """Categorical fields per threshold t: ``t + 1`` where P(R > t) (L, H, W) >= the cut of
    its lead (``cuts[t]``, (L,)), else ``t - 1`` (so that pysteps' "> t" is the decision)."""
    return {t: np.where(p >= np.asarray(cuts[t])[:, None, None], t + 1.0, t - 1.0)
            for t, p in exceedance.items()}


def distribution_forecast(dist: RainRateDistribution, obs: np.ndarray,
                          lead_times: Sequence[int], thresholds: Sequence[float],
                          event_threshold: float,
                          calibration: DecisionCalibration | None = None) -> MethodForecast:
    """A distribution's forecast of one init time (batch shape (L, H, W); the model's, or
    any with its ``exceedance``, ``quantile`` and ``crps``) against ``obs`` (L, H, W) mm/h:
    tempered by ``calibration`` (the model's only) and decided at its cuts, or decided at
    0.5."""
    if calibration is not None:
        dist = RainRateDistribution(calibration.scale_logits(dist.logits, lead_times, dim=1),
                                    dist.edges, dim=1)
    exceedance = {t: dist.exceedance(t).numpy() for t in thresholds}
    cuts = {t: [DECISION_PROBABILITY if calibration is None
                else calibration.decision_threshold(lead, t) for lead in lead_times]
            for t in thresholds}
    crps = dist.crps(torch.from_numpy(np.nan_to_num(obs))).numpy()
    return MethodForecast(dist.quantile(0.5).numpy(), decisions(exceedance, cuts),
                          exceedance[event_threshold], crps)


def ensemble_crps(members: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Exact CRPS (mm/h) of the empirical distribution of M members (M, ...) against
    ``obs`` (...): mean_i |X_i - y| - 1/2 mean_ij |X_i - X_j|, the second term as
    sum_i (2i - M - 1) X_(i) / M^2 over the sorted members X_(1) <= ... <= X_(M)."""
    m = members.shape[0]
    ordered = np.sort(members.astype(np.float64), axis=0)
    weights = (2.0 * np.arange(1, m + 1) - m - 1).reshape((m,) + (1,) * (members.ndim - 1))
    spread = (weights * ordered).sum(axis=0) / m**2
    return np.abs(ordered - obs).mean(axis=0) - spread


def ensemble_forecast(members: np.ndarray, obs: np.ndarray, thresholds: Sequence[float],
                      event_threshold: float) -> MethodForecast:
    """An ensemble (M, L, H, W) mm/h as a forecast: P(R > t) the fraction of members above
    t, decided at 0.5; the members' median; the ensemble CRPS."""
    missing = np.isnan(members[0])
    exceedance = {t: np.where(missing, np.nan, (members > t).mean(axis=0)) for t in thresholds}
    cuts = {t: np.full(members.shape[1], DECISION_PROBABILITY) for t in thresholds}
    return MethodForecast(np.median(members, axis=0), decisions(exceedance, cuts),
                          exceedance[event_threshold], ensemble_crps(members, obs))


# -- accumulation ------------------------------------------------------------------------


def brier_reliability(diagram: dict) -> float:
    """Reliability term sum_k n_k (p_k - o_k)^2 / N of the Brier score's decomposition
    (Murphy 1973) from a pysteps reliability diagram: bin k holds n_k of the N forecasts,
    with mean probability p_k and observed event frequency o_k (NaN without forecasts)."""
    count = diagram["num_idx"].astype(np.float64)
    gap = (diagram["X_sum"] - diagram["Y_sum"]) ** 2  # (n_k (p_k - o_k))^2
    used = count > 0
    return float((gap[used] / count[used]).sum() / count.sum()) if used.any() else np.nan


class ScoreAccumulator:
    """Contingency tables, FSS sums and mean-score sums of one method, per lead time.

    Args:
        num_leads: L.
        thresholds: categorical thresholds (mm/h).
        scales: FSS scales as {km: pixels}.
        event_threshold: threshold (mm/h) of FSS, Brier score and reliability.
        reliability: also accumulate a reliability diagram per lead (its event is the 0/1
            indicator of R > event threshold, given to pysteps' ``X_o >= 0.5``).
    """

    def __init__(self, num_leads: int, thresholds: Sequence[float], scales: dict[float, int],
                 event_threshold: float, reliability: bool = False) -> None:
        self.thresholds, self.scales, self.event = list(thresholds), scales, event_threshold
        leads = range(num_leads)
        self.contingency = {(j, t): detcatscores.det_cat_fct_init(t)
                            for j in leads for t in thresholds}
        self.fss = {(j, km): spatialscores.fss_init(0.5, px)  # on the 0/1 event fields
                    for j in leads for km, px in scales.items()}
        self.sums = {name: np.zeros(num_leads) for name in ("mae", "crps", "brier")}
        self.count = np.zeros(num_leads, dtype=np.int64)
        self.reldiag = ([probscores.reldiag_init(0.5, RELIABILITY_BINS, min_count=1)
                         for _ in leads] if reliability else None)

    def add(self, fc: MethodForecast, obs: np.ndarray, valid: np.ndarray) -> None:
        """Add one init time: forecast, observation (L, H, W) mm/h, verified pixels (L, H, W)."""
        for j, (o, v) in enumerate(zip(obs, valid, strict=True)):
            for t in self.thresholds:
                detcatscores.det_cat_fct_accum(self.contingency[j, t], fc.categorical[t][j][v],
                                               o[v])
            masked_obs = np.where(v, o > self.event, np.nan)
            masked_fc = np.where(v, fc.categorical[self.event][j] > self.event, np.nan)
            for km in self.scales:
                spatialscores.fss_accum(self.fss[j, km], masked_fc, masked_obs)
            observed_event = (o[v] > self.event).astype(np.float64)
            self.sums["mae"][j] += np.abs(fc.value[j][v] - o[v]).sum(dtype=np.float64)
            self.sums["crps"][j] += fc.crps[j][v].sum(dtype=np.float64)
            self.sums["brier"][j] += ((fc.probability[j][v] - observed_event) ** 2).sum()
            self.count[j] += int(v.sum())
            if self.reldiag is not None:
                probscores.reldiag_accum(self.reldiag[j], fc.probability[j][v], observed_event)

    def rows(self, method: str, lead_times: Sequence[int]) -> list[dict]:
        """Tidy score rows: method, metric, threshold, scale_km, lead_time_min, value."""
        return [{"method": method, "metric": metric, "threshold": threshold, "scale_km": scale,
                 "lead_time_min": lead, "value": float(value)}
                for j, lead in enumerate(lead_times)
                for metric, value, threshold, scale in self._lead_scores(j)]

    def _lead_scores(self, j: int) -> list[tuple[str, float, float, float]]:
        """(metric, value, threshold, scale_km) of lead number ``j``."""
        nan, n = np.nan, self.count[j]
        means = {name: s[j] / n if n else nan for name, s in self.sums.items()}
        scores = []
        for t in self.thresholds:
            table = detcatscores.det_cat_fct_compute(self.contingency[j, t], CATEGORICAL)
            scores += [(name.lower(), table[name], t, nan) for name in CATEGORICAL]
        scores += [("fss", spatialscores.fss_compute(self.fss[j, km]), self.event, km)
                   for km in self.scales]
        scores += [("mae", means["mae"], nan, nan), ("crps", means["crps"], nan, nan),
                   ("brier", means["brier"], self.event, nan)]
        if self.reldiag is not None:
            scores.append(("brier_reliability", brier_reliability(self.reldiag[j]),
                           self.event, nan))
        return scores

    def reliability_rows(self, method: str, lead_times: Sequence[int]) -> list[dict]:
        """Reliability rows: method, lead_time_min, bin, forecast_probability,
        observed_frequency, count (bins without samples: NaN)."""
        rows = []
        for lead, diagram in zip(lead_times, self.reldiag or [], strict=False):
            with np.errstate(invalid="ignore", divide="ignore"):
                forecast, observed = probscores.reldiag_compute(diagram)
            for k in range(RELIABILITY_BINS):
                rows.append({"method": method, "lead_time_min": lead, "bin": k,
                             "forecast_probability": forecast[k],
                             "observed_frequency": observed[k],
                             "count": int(diagram["sample_size"][k])})
        return rows


# -- the evaluation ----------------------------------------------------------------------


@dataclass
class Evaluation:
    """Scores (tidy: one row per method, metric, threshold/scale, lead) and the reliability
    diagram of each probabilistic method per lead time, with the init times scored."""

    scores: pd.DataFrame
    reliability: pd.DataFrame
    init_times: list


@dataclass(frozen=True)
class Setup:
    """What every init time of :func:`evaluate` is scored with.

    Attributes:
        leads: lead times (minutes).
        thresholds: every categorical threshold and the event threshold (mm/h).
        event: the event threshold (mm/h).
        km_per_pixel: grid spacing (km).
        step_minutes: the store's time step (minutes).
        steps_members: STEPS ensemble size (0: no STEPS).
        steps_seed: STEPS seed of the first init time (the k-th init time: + k).
        calibration: the model's calibration, or None (no ``model_calibrated``).
    """

    leads: list[int]
    thresholds: list[float]
    event: float
    km_per_pixel: float
    step_minutes: int
    steps_members: int
    steps_seed: int
    calibration: DecisionCalibration | None

    @property
    def lead_steps(self) -> list[int]:
        """Lead times in store steps (leads are multiples of the step)."""
        return [lead // self.step_minutes for lead in self.leads]

    @property
    def methods(self) -> list[str]:
        """The methods scored, in :data:`METHODS` order."""
        off = {"model_calibrated": self.calibration is None, "steps": not self.steps_members}
        return [m for m in METHODS if not off.get(m, False)]


def km_per_pixel(store_ds: xr.Dataset) -> float:
    """The store's grid spacing in km (degrees: 111.195 km each)."""
    size, units = pixel_size(store_ds["x"].values, store_ds["x"].attrs.get("units", "m"))
    return size / 1000.0 if units == "m" else size * KM_PER_DEGREE


def scale_pixels(store_ds: xr.Dataset, scales_km: Sequence[float]) -> dict[float, int]:
    """FSS scales {km: pixels (>= 1)} on the store's grid."""
    km = km_per_pixel(store_ds)
    return {float(s): max(1, round(s / km)) for s in scales_km}


def init_forecasts(rate: np.ndarray, obs: np.ndarray, dist: RainRateDistribution,
                   setup: Setup, k: int) -> dict[str, MethodForecast]:
    """Every method's forecast from one init time (the ``k``-th), by the nowcast methods.

    Args:
        rate: context rates (T >= 3, H, W) mm/h on the store's step, ending at the init time.
        obs: observations (L, H, W) mm/h.
        dist: the ``model`` method's distribution (batch shape (L, H, W)), from the
            network's own context (:func:`model_distribution`).
    """
    thresholds, event, leads = setup.thresholds, setup.event, setup.leads
    options = {"step_minutes": setup.step_minutes, "velocity": motion_field(rate),
               "km_per_pixel": setup.km_per_pixel, "members": setup.steps_members,
               "seed": setup.steps_seed + k}
    forecasts = {"model": distribution_forecast(dist, obs, leads, thresholds, event)}
    if setup.calibration is not None:
        forecasts["model_calibrated"] = distribution_forecast(dist, obs, leads, thresholds,
                                                              event, setup.calibration)
    forecasts["neighbourhood"] = distribution_forecast(
        get_method("neighbourhood")(rate, leads, **options), obs, leads, thresholds, event)
    if setup.steps_members:
        members = get_method("steps")(rate, leads, **options)
        forecasts["steps"] = ensemble_forecast(members, obs, thresholds, event)
    for method in ("persistence", "extrapolation"):
        forecasts[method] = point_forecast(get_method(method)(rate, leads, **options), obs,
                                           thresholds, event)
    return forecasts


def model_distribution(net: nn.Module, context: Context, init: np.datetime64,
                       lead_times: Sequence[int], batch_tiles: int = 8) -> RainRateDistribution:
    """The ``model`` method's distribution (batch shape (L, H, W)) at ``init``, from the
    network's context (its channels, its frames)."""
    rate, inputs = context.read(init)
    return get_method("model")(rate, lead_times, step_minutes=context.step_minutes, net=net,
                               inputs=inputs, batch_tiles=batch_tiles)


def evaluation_init_times(store_ds: xr.Dataset, start: str, end: str,
                          lead_times: Sequence[int], context: Context) -> list[np.datetime64]:
    """Store times in ``[start, end]`` where every method forecasts and is scored: the
    baselines' past frames on the store's step (at least 3, for the motion), the network's
    context (its frames, its spacing) and every target."""
    frames = max(context.past_frames, MOTION_FRAMES)
    ready = set(complete_init_times(store_ds, start, end, context.past_frames,
                                    context_step_minutes=context.step_minutes))
    return [init for init in complete_init_times(store_ds, start, end, frames, lead_times)
            if init in ready]


def evaluate(
    net: nn.Module,
    store_ds: xr.Dataset,
    init_times: Sequence,
    lead_times: Sequence[int] | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    scales_km: Sequence[float] = DEFAULT_SCALES_KM,
    event_threshold: float = 1.0,
    batch_tiles: int = 8,
    progress: bool = False,
    *,
    steps_members: int = STEPS_MEMBERS,
    steps_seed: int = 0,
    calibration: DecisionCalibration | None = None,
    context: Context | None = None,
    warn: Callable[[str], None] = warn_user,
) -> Evaluation:
    """Score the model and the baselines at each init time (see module doc).

    Args:
        net: MetNet in eval mode.
        store_ds: the opened store, holding context and targets of every init time (see
            :func:`evaluation_init_times`).
        init_times: init times (UTC).
        lead_times: minutes (default: every store step up to the net's longest lead).
        thresholds: categorical thresholds (mm/h).
        scales_km: FSS scales in km.
        event_threshold: threshold (mm/h) of FSS, Brier and the reliability diagram.
        batch_tiles: tiles per network call (at least 1).
        progress: progress bar over init times.
        steps_members: STEPS ensemble size (0: no ``steps`` method).
        steps_seed: STEPS seed of the first init time (the k-th init time uses + k).
        calibration: adds ``model_calibrated``; it must know every lead time and every
            threshold (the categorical ones and the event threshold).
        context: the network's input over the store
            (:func:`metnet.forecast.store_context`); None:
            :func:`metnet.forecast.default_context`.
        warn: called with a line naming each init time skipped because its last context
            frame has no radar data.

    Raises:
        ForecastError: no init time has radar data in its last context frame, or
            ``batch_tiles`` < 1.
    """
    check_settings(batch_tiles=batch_tiles)
    if steps_members < 0:
        raise ValueError(f"steps_members must be >= 0 (0: no STEPS), got {steps_members}")
    leads = resolve_lead_times(net, store_ds, lead_times)
    setup = Setup(leads, sorted({*map(float, thresholds), float(event_threshold)}),
                  float(event_threshold), km_per_pixel(store_ds), store_step(store_ds),
                  int(steps_members), int(steps_seed), calibration)
    scales = scale_pixels(store_ds, scales_km)
    acc = {m: ScoreAccumulator(len(leads), thresholds, scales, event_threshold,
                               m in PROBABILISTIC) for m in setup.methods}
    context = context or default_context(store_ds, net)
    frames = max(context.past_frames, MOTION_FRAMES)
    inits = []
    for k, init in enumerate(tqdm(init_times, desc="evaluate", unit="init",
                                  disable=not progress)):
        rate = read_context(store_ds, init, frames)
        if not has_radar_data(rate):
            warn(no_radar_data(init))
            continue
        inits.append(init)
        obs = read_observations(store_ds, init, leads)
        valid = np.isfinite(obs) & np.isfinite(rate[-1])
        dist = model_distribution(net, context, init, leads, batch_tiles)
        for method, forecast in init_forecasts(rate, obs, dist, setup, k).items():
            acc[method].add(forecast, obs, valid)
    if not inits:
        raise ForecastError(f"none of the {len(init_times)} init times has radar data in its "
                            "last context frame; nothing to score")
    scores = pd.DataFrame([r for m in setup.methods for r in acc[m].rows(m, leads)])
    reliability = pd.DataFrame([r for m in setup.methods
                                for r in acc[m].reliability_rows(m, leads)])
    return Evaluation(scores, reliability, inits)


def check_evaluation_out(out_dir: str | Path) -> Path:
    """The folder of an evaluation, refused if it holds an earlier one (any of
    :data:`EVALUATION_FILES`), which would be replaced.

    Raises:
        FileExistsError: naming the folder and the files in it.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; choose another --out")
    earlier = [name for name in EVALUATION_FILES if (out / name).exists()]
    if earlier:
        raise FileExistsError(f"{out}: holds an earlier evaluation ({', '.join(earlier)}); "
                              "remove it or choose another --out")
    return out


def write_evaluation(result: Evaluation, out_dir: str | Path) -> list[Path]:
    """Write :data:`EVALUATION_FILES` (``scores.csv``, ``reliability.csv``, ``skill.png``,
    ``reliability.png``) into a folder without an earlier evaluation, each atomically
    (:mod:`metnet.atomic`), after removing what a killed earlier write left there.

    Raises:
        FileExistsError: the folder holds an earlier evaluation (:func:`check_evaluation_out`).
    """
    from metnet.plotting import plot_reliability, plot_skill

    out = check_evaluation_out(out_dir)
    title = f"{len(result.init_times)} init times"
    writers = {
        "scores.csv": lambda p: result.scores.to_csv(p, index=False),
        "reliability.csv": lambda p: result.reliability.to_csv(p, index=False),
        "skill.png": lambda p: plot_skill(result.scores, p, title),
        "reliability.png": lambda p: plot_reliability(result.reliability, p, title),
    }
    for name, write in writers.items():
        remove_leftovers(out / name)
        with atomic_write(out / name) as tmp:
            write(tmp)
    return [out / name for name in writers]
