"""Scores of the model against persistence, Lagrangian extrapolation and a STEPS ensemble.

For each init time with a complete context and every target, these forecasts of the same
domain are scored against the observed rain rate (mm/h):

* ``model``: the probabilistic forecast of :func:`metnet.forecast.forecast_dataset` (its
  blended bin probabilities), deciding "rain above t" where P(R > t) >= 0.5;
* ``model_calibrated`` (with a ``calibration``): the same blended bin probabilities
  tempered per lead (their logs divided by the lead's temperature), deciding "rain above
  t" where P(R > t) >= the calibration's cut p*(lead, t); every score of it comes from
  the tempered distribution (``forecast_dataset(calibration=...)`` tempers each tile
  before blending instead, which differs slightly where tiles overlap);
* ``steps`` (``steps_members`` > 0, default 20): pysteps' STEPS ensemble
  (:func:`steps_ensemble`, seed ``steps_seed + k`` at the k-th init time), deciding "rain
  above t" where the fraction of members above t is >= 0.5;
* ``persistence``: the last context frame, for every lead time;
* ``extrapolation``: semi-Lagrangian advection of the last frame by the Lucas-Kanade
  motion of the last three frames (:mod:`metnet.data.motion`).

The motion field is computed once per init time and drives both ``extrapolation`` and
``steps``.

Verified pixels: the observation is finite and the last context frame is finite
(outside the radar coverage every method is NaN). Inside them extrapolation and STEPS are
always finite (rain advected in from outside the coverage or the domain counts as
0 mm/h).

Scores, per lead time, accumulated over init times before any ratio is taken:

* ``csi``, ``pod``, ``far`` at each threshold: pysteps ``det_cat_fct_*`` (an event is a
  rate *above* the threshold; a probabilistic method's event is its decision above);
* ``fss`` at the event threshold (1 mm/h) and each scale (km, converted to pixels):
  pysteps ``fss_*`` (event: rate >= threshold; a probabilistic method: its decision);
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

import contextlib
import io
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
import xarray as xr
from pysteps import nowcasts
from pysteps.utils import transformation
from pysteps.verification import detcatscores, probscores, spatialscores
from torch import Tensor, nn
from tqdm.auto import tqdm

from metnet.data.frames import pixel_size
from metnet.data.motion import DB_THRESHOLD, DB_ZERO, MOTION_FRAMES, advect, motion_field
from metnet.data.motion import extrapolate as extrapolation
from metnet.data.transforms import clean_rate
from metnet.distribution import RainRateDistribution
from metnet.forecast import (
    DEFAULT_THRESHOLDS,
    forecast_dataset,
    read_context,
    resolve_lead_times,
    store_step,
)
from metnet.io.store import VARIABLE

METHODS = ("model", "model_calibrated", "steps", "persistence", "extrapolation")
PROBABILISTIC = ("model", "model_calibrated", "steps")
CATEGORICAL = ("CSI", "POD", "FAR")
DECISION_PROBABILITY = 0.5  # the uncalibrated cut on P(R > t)
RELIABILITY_BINS = 10
KM_PER_DEGREE = 111.195
DEFAULT_SCALES_KM = (1.0, 5.0, 10.0, 20.0)
STEPS_MEMBERS = 20
STEPS_CASCADE_LEVELS = 6  # pysteps' default (its issue #385)


class DecisionCalibration(Protocol):
    """What :func:`evaluate` needs of a calibration (:class:`metnet.calibration.Calibration`)."""

    def scale_logits(self, logits: Tensor, lead_times: Sequence[int], dim: int) -> Tensor:
        """Logits (L, K, H, W) with the classes along ``dim`` (1) divided by the temperature
        of each lead (minutes, axis ``dim - 1``)."""

    def decision_threshold(self, lead_minutes: int, threshold: float) -> float:
        """The cut p* on P(R > ``threshold`` mm/h) at a lead time (minutes)."""


# -- baselines ---------------------------------------------------------------------------


def persistence(rate: np.ndarray, num_leads: int) -> np.ndarray:
    """Eulerian persistence (L, H, W) mm/h: the last of the context rates (T, H, W)."""
    return np.repeat(rate[-1:], num_leads, axis=0)


def db_fields(rate: np.ndarray) -> np.ndarray:
    """The last :data:`MOTION_FRAMES` of the rates (T, H, W) mm/h as dB fields (3, H, W)
    float64: below 0.1 mm/h and NaN set to -15 dB, as for the motion field
    (:func:`metnet.data.motion.motion_field`)."""
    db, _ = transformation.dB_transform(rate[-MOTION_FRAMES:].astype(np.float64),
                                        threshold=DB_THRESHOLD, zerovalue=DB_ZERO)
    db[~np.isfinite(db)] = DB_ZERO
    return db


def steps_ensemble(rate: np.ndarray, velocity: np.ndarray, lead_steps: Sequence[int],
                   km_per_pixel: float, step_minutes: float, members: int = STEPS_MEMBERS,
                   seed: int = 0) -> np.ndarray:
    """pysteps STEPS ensemble (M, L, H, W) float32 mm/h of context rates (T >= 3, H, W).

    ``pysteps.nowcasts.get_method("steps")`` as in pysteps' examples, on the dB fields of
    :func:`db_fields` (no-rain threshold -10 dB = 0.1 mm/h): 6 cascade levels,
    nonparametric noise, BPS motion perturbations, incremental mask, CDF matching, one
    worker and numpy's FFT; back-transformed to mm/h (below 0.1 mm/h: 0). Rain advected in
    from outside the domain is 0; pixels NaN in the last frame are NaN. The nowcast runs
    every step up to the longest lead and the leads are picked from it, so a lead's
    forecast does not depend on the other leads asked for.

    Args:
        rate: context rain rate in mm/h, oldest first, NaN where not observed.
        velocity: (2, H, W) motion in pixels per step (:func:`metnet.data.motion.motion_field`).
        lead_steps: lead times in store steps (positive integers).
        km_per_pixel: grid spacing (km).
        step_minutes: the store's (and the motion's) time step (minutes).
        members: ensemble size M.
        seed: seed of the noise and motion perturbations.
    """
    threshold_db = 10.0 * np.log10(DB_THRESHOLD)
    with contextlib.redirect_stdout(io.StringIO()):  # pysteps reports every step
        db = nowcasts.get_method("steps")(
            db_fields(rate), velocity.astype(np.float64), int(max(lead_steps)),
            n_ens_members=members, n_cascade_levels=STEPS_CASCADE_LEVELS,
            precip_thr=threshold_db, kmperpixel=km_per_pixel, timestep=step_minutes,
            noise_method="nonparametric", mask_method="incremental",
            probmatching_method="cdf", seed=seed, num_workers=1, fft_method="numpy")
    picked = db[:, [int(s) - 1 for s in lead_steps]]
    field, _ = transformation.dB_transform(picked, threshold=threshold_db, inverse=True)
    field = np.nan_to_num(field, nan=0.0)  # advected in from outside the domain
    return np.where(np.isnan(rate[-1]), np.nan, field).astype(np.float32)


def read_observations(store_ds: xr.Dataset, init_time: np.datetime64,
                      lead_times: Sequence[int]) -> np.ndarray:
    """Observed rain rate (L, H, W) mm/h at init + each lead (cleaned, NaN: not observed)."""
    times = (init_time + np.asarray(lead_times, dtype="timedelta64[m]")).astype("datetime64[ns]")
    return clean_rate(store_ds[VARIABLE].sel(time=times).values.astype(np.float32))


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


def model_forecast(fc: xr.Dataset, obs: np.ndarray, thresholds: Sequence[float],
                   event_threshold: float,
                   calibration: DecisionCalibration | None = None) -> MethodForecast:
    """The model's forecast from one init time of :func:`forecast_dataset` output (with
    ``bin_probability``) against ``obs`` (L, H, W) mm/h: its distribution (tempered by
    ``calibration``), decided at 0.5 or at the calibration's cut per lead and threshold."""
    fc = fc.isel(init_time=0)
    leads = [int(t) for t in fc["lead_time"].values]
    probs = torch.from_numpy(fc["bin_probability"].values).movedim(0, 1)  # (L, K, H, W)
    logits = torch.log(probs.nan_to_num(1.0).clamp_min(torch.finfo(torch.float32).tiny))
    if calibration is not None:
        logits = calibration.scale_logits(logits, leads, dim=1)
    dist = RainRateDistribution(logits, fc["bin_edges"].values, dim=1)
    exceedance = {t: dist.exceedance(t).numpy() for t in thresholds}
    cuts = {t: [DECISION_PROBABILITY if calibration is None
                else calibration.decision_threshold(lead, t) for lead in leads]
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
        self.fss = {(j, km): spatialscores.fss_init(event_threshold, px)
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
            masked_obs = np.where(v, o, np.nan)
            masked_fc = np.where(v, fc.categorical[self.event][j], np.nan)
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


def init_forecasts(fc: xr.Dataset, rate: np.ndarray, obs: np.ndarray, setup: Setup,
                   k: int) -> dict[str, MethodForecast]:
    """Every method's forecast from one init time (the ``k``-th).

    Args:
        fc: :func:`forecast_dataset` output of this init time, with ``bin_probability``.
        rate: context rates (T >= 3, H, W) mm/h.
        obs: observations (L, H, W) mm/h.
    """
    thresholds, event, leads = setup.thresholds, setup.event, setup.leads
    velocity = motion_field(rate)
    forecasts = {"model": model_forecast(fc, obs, thresholds, event)}
    if setup.calibration is not None:
        forecasts["model_calibrated"] = model_forecast(fc, obs, thresholds, event,
                                                       setup.calibration)
    if setup.steps_members:
        members = steps_ensemble(rate, velocity, setup.lead_steps, setup.km_per_pixel,
                                 setup.step_minutes, setup.steps_members, setup.steps_seed + k)
        forecasts["steps"] = ensemble_forecast(members, obs, thresholds, event)
    forecasts["persistence"] = point_forecast(persistence(rate, len(leads)), obs, thresholds,
                                              event)
    forecasts["extrapolation"] = point_forecast(advect(rate[-1], velocity, setup.lead_steps),
                                                obs, thresholds, event)
    return forecasts


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
) -> Evaluation:
    """Score the model and the baselines at each init time (see module doc).

    Args:
        net: MetNet in eval mode (2 input channels).
        store_ds: the opened store, holding context and targets of every init time (see
            :func:`metnet.forecast.complete_init_times` with ``max(context_frames, 3)``).
        init_times: init times (UTC).
        lead_times: minutes (default: every store step up to the net's longest lead).
        thresholds: categorical thresholds (mm/h).
        scales_km: FSS scales in km.
        event_threshold: threshold (mm/h) of FSS, Brier and the reliability diagram.
        batch_tiles: tiles per network call.
        progress: progress bar over init times.
        steps_members: STEPS ensemble size (0: no ``steps`` method).
        steps_seed: STEPS seed of the first init time (the k-th init time uses + k).
        calibration: adds ``model_calibrated``; it must know every lead time and every
            threshold (the categorical ones and the event threshold).
    """
    if steps_members < 0:
        raise ValueError(f"steps_members must be >= 0 (0: no STEPS), got {steps_members}")
    leads = resolve_lead_times(net, store_ds, lead_times)
    setup = Setup(leads, sorted({*map(float, thresholds), float(event_threshold)}),
                  float(event_threshold), km_per_pixel(store_ds), store_step(store_ds),
                  int(steps_members), int(steps_seed), calibration)
    scales = scale_pixels(store_ds, scales_km)
    acc = {m: ScoreAccumulator(len(leads), thresholds, scales, event_threshold,
                               m in PROBABILISTIC) for m in setup.methods}
    frames = max(int(net.config["context_frames"]), MOTION_FRAMES)
    inits = list(init_times)
    for k, init in enumerate(tqdm(inits, desc="evaluate", unit="init", disable=not progress)):
        fc = forecast_dataset(net, store_ds, [init], leads, quantiles=(0.5,),
                              thresholds=(setup.event,), bin_probabilities=True,
                              batch_tiles=batch_tiles)
        init = fc["init_time"].values[0]
        rate, obs = read_context(store_ds, init, frames), read_observations(store_ds, init, leads)
        valid = np.isfinite(obs) & np.isfinite(rate[-1])
        for method, forecast in init_forecasts(fc, rate, obs, setup, k).items():
            acc[method].add(forecast, obs, valid)
    scores = pd.DataFrame([r for m in setup.methods for r in acc[m].rows(m, leads)])
    reliability = pd.DataFrame([r for m in setup.methods
                                for r in acc[m].reliability_rows(m, leads)])
    return Evaluation(scores, reliability, inits)


def write_evaluation(result: Evaluation, out_dir: str | Path) -> list[Path]:
    """Write ``scores.csv``, ``reliability.csv``, ``skill.png`` and ``reliability.png``.

    Each file is written beside its final name and renamed into place.
    """
    from metnet.plotting import plot_reliability, plot_skill

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in (("scores.csv", result.scores), ("reliability.csv", result.reliability)):
        written.append(_atomic(out / name, lambda p, t=table: t.to_csv(p, index=False)))
    title = f"{len(result.init_times)} init times"
    written.append(_atomic(out / "skill.png", lambda p: plot_skill(result.scores, p, title)))
    written.append(_atomic(out / "reliability.png",
                           lambda p: plot_reliability(result.reliability, p, title)))
    return written


def _atomic(path: Path, write) -> Path:
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- forecast maps -----------------------------------------------------------------------


def plot_forecast(ds: xr.Dataset, store_ds: xr.Dataset, init_time: np.datetime64,
                  out_dir: str | Path, threshold: float = 1.0, max_leads: int = 6) -> Path:
    """Map panels of one init time of a forecast dataset: observation (where the store has
    it), the model's median, P(rain > ``threshold``), persistence and extrapolation.

    At most ``max_leads`` lead times, evenly spread and including the last, get a row.
    Returns the PNG written in ``out_dir`` (``forecast_YYYYmmddTHHMM.png``).
    """
    from metnet.plotting import plot_forecast_maps

    fc = ds.sel(init_time=init_time)
    leads = [int(t) for t in fc["lead_time"].values]
    shown = [leads[int(i)] for i in np.unique(np.linspace(0, len(leads) - 1,
                                                          min(max_leads, len(leads))).round())]
    like = fc["precip_rate_mean"]
    columns = [("observed", like.copy(data=_observed(store_ds, init_time, leads)), "rain")]
    if 0.5 in fc["quantile"].values:
        columns.append(("model median", fc["precip_rate_quantile"].sel(quantile=0.5), "rain"))
    else:
        columns.append(("model mean", like, "rain"))
    if threshold in fc["threshold"].values:
        columns.append((f"P(rain > {threshold:g} mm/h)",
                        fc["probability_of_exceedance"].sel(threshold=threshold), "probability"))
    columns += _baseline_columns(store_ds, init_time, leads, like)
    when = pd.Timestamp(init_time)
    path = Path(out_dir) / f"forecast_{when:%Y%m%dT%H%M}.png"
    return plot_forecast_maps(columns, shown, path,
                              f"metnet forecast from {when:%Y-%m-%d %H:%M} UTC")


def _observed(store_ds: xr.Dataset, init_time: np.datetime64, leads: list[int]) -> np.ndarray:
    """(L, H, W) observations at init + lead where the store has them, else NaN."""
    obs = np.full((len(leads), store_ds.sizes["y"], store_ds.sizes["x"]), np.nan, np.float32)
    times = set(store_ds["time"].values.astype("datetime64[ns]").tolist())
    for j, lead in enumerate(leads):
        valid = (init_time + np.timedelta64(lead, "m")).astype("datetime64[ns]")
        if valid.tolist() in times:
            obs[j] = read_observations(store_ds, init_time, [lead])[0]
    return obs


def _baseline_columns(store_ds: xr.Dataset, init_time: np.datetime64, leads: list[int],
                      like: xr.DataArray) -> list[tuple[str, xr.DataArray | None, str]]:
    """Persistence and (with 3 past frames in the store) extrapolation map columns."""
    step = store_step(store_ds)
    times = set(store_ds["time"].values.astype("datetime64[ns]").tolist())
    past = [(init_time - np.timedelta64(k * step, "m")).astype("datetime64[ns]").tolist()
            for k in range(MOTION_FRAMES)]
    frames = MOTION_FRAMES if all(t in times for t in past) else 1
    rate = read_context(store_ds, init_time, frames)
    columns = [("persistence", like.copy(data=persistence(rate, len(leads))), "rain")]
    extrapolated = (like.copy(data=extrapolation(rate, [t / step for t in leads]))
                    if frames == MOTION_FRAMES else None)
    return columns + [("extrapolation", extrapolated, "rain")]
