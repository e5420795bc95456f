"""Scores of the model against Eulerian persistence and Lagrangian extrapolation.

For each init time with a complete context and every target, three forecasts of
the same domain are scored against the observed rain rate (mm/h):

* ``model``: the probabilistic forecast of :func:`metnet.forecast.forecast_dataset`;
* ``persistence``: the last context frame, for every lead time;
* ``extrapolation``: pysteps' semi-Lagrangian advection of the last frame by the
  Lucas-Kanade motion of the last three frames (in dB, as in pysteps' examples).

Verified pixels: the observation is finite and the last context frame is finite
(outside the radar coverage every method is NaN). Inside them the
extrapolation is always finite (rain advected in from outside the coverage or
the domain counts as 0 mm/h).

Scores, per lead time, accumulated over init times before any ratio is taken:

* ``csi``, ``pod``, ``far`` at each threshold: pysteps ``det_cat_fct_*`` (an event
  is a rate *above* the threshold); the model's event is P(R > t) >= 0.5;
* ``fss`` at the event threshold (1 mm/h) and each scale (km, converted to pixels):
  pysteps ``fss_*`` (event: rate >= threshold; the model: P(R > t) >= 0.5);
* ``mae`` (mm/h): the model's **median** (the minimiser of the expected absolute
  error), the baselines' field;
* ``crps`` (mm/h): the model's exact CRPS of its categorical distribution; for a
  point forecast the CRPS is its absolute error;
* ``brier`` at the event threshold: the model's P(R > t); the baselines' 0/1.

A reliability diagram of the model's P(R > t) at the event threshold uses pysteps
``reldiag_*`` per lead time.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from pysteps import motion, nowcasts
from pysteps.utils import transformation
from pysteps.verification import detcatscores, probscores, spatialscores
from torch import nn
from tqdm.auto import tqdm

from metnet.data.frames import pixel_size
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

METHODS = ("model", "persistence", "extrapolation")
CATEGORICAL = ("CSI", "POD", "FAR")
MOTION_FRAMES = 3
DB_THRESHOLD = 0.1  # mm/h: below this, "no rain" in the dB field for optical flow
DB_ZERO = -15.0  # dB value of no rain (pysteps' examples)
RELIABILITY_BINS = 10
KM_PER_DEGREE = 111.195
DEFAULT_SCALES_KM = (1.0, 5.0, 10.0, 20.0)


# -- baselines ---------------------------------------------------------------------------


def persistence(rate: np.ndarray, num_leads: int) -> np.ndarray:
    """Eulerian persistence (L, H, W) mm/h: the last of the context rates (T, H, W)."""
    return np.repeat(rate[-1:], num_leads, axis=0)


def extrapolation(rate: np.ndarray, lead_steps: Sequence[float]) -> np.ndarray:
    """pysteps Lagrangian extrapolation (L, H, W) mm/h of context rates (T >= 3, H, W).

    Lucas-Kanade motion (``pysteps.motion.get_method("LK")``) of the last three frames in
    dB (rates below 0.1 mm/h and NaN set to -15 dB), then semi-Lagrangian advection
    (``pysteps.nowcasts.get_method("extrapolation")``) of the last frame, NaN set to 0,
    with 0 flowing in from outside the domain. Pixels NaN in the last frame are NaN.

    Args:
        rate: context rain rate in mm/h, oldest first, NaN where not observed.
        lead_steps: lead times in store steps.
    """
    db, _ = transformation.dB_transform(rate[-MOTION_FRAMES:].astype(np.float64),
                                        threshold=DB_THRESHOLD, zerovalue=DB_ZERO)
    db[~np.isfinite(db)] = DB_ZERO
    velocity = motion.get_method("LK")(db)
    last = np.nan_to_num(rate[-1].astype(np.float64), nan=0.0)
    advected = nowcasts.get_method("extrapolation")(
        last, velocity, list(lead_steps), extrap_kwargs={"outval": 0.0})
    return np.where(np.isnan(rate[-1]), np.nan, advected).astype(np.float32)


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
        value: rain rate (mm/h) scored by MAE (the model's median).
        categorical: per threshold, the field pysteps thresholds (rate, or for the model
            ``t + 1`` where P(R > t) >= 0.5, else ``t - 1``).
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


def model_forecast(fc: xr.Dataset, obs: np.ndarray, thresholds: Sequence[float],
                   event_threshold: float) -> MethodForecast:
    """The model's forecast from one init time of :func:`forecast_dataset` output (with
    ``bin_probability``, the 0.5 quantile and every threshold)."""
    fc = fc.isel(init_time=0)
    exceed = fc["probability_of_exceedance"]
    categorical = {t: np.where(exceed.sel(threshold=t).values >= 0.5, t + 1.0, t - 1.0)
                   for t in thresholds}
    probs = torch.from_numpy(fc["bin_probability"].values).movedim(0, 1)  # (L, K, H, W)
    logits = torch.log(probs.nan_to_num(1.0).clamp_min(torch.finfo(torch.float32).tiny))
    dist = RainRateDistribution(logits, fc["bin_edges"].values, dim=1)
    crps = dist.crps(torch.from_numpy(np.nan_to_num(obs))).numpy()
    return MethodForecast(fc["precip_rate_quantile"].sel(quantile=0.5).values, categorical,
                          exceed.sel(threshold=event_threshold).values, crps)


# -- accumulation ------------------------------------------------------------------------


class ScoreAccumulator:
    """Contingency tables, FSS sums and mean-score sums of one method, per lead time.

    Args:
        num_leads: L.
        thresholds: categorical thresholds (mm/h).
        scales: FSS scales as {km: pixels}.
        event_threshold: threshold (mm/h) of FSS, Brier score and reliability.
        reliability: also accumulate a reliability diagram per lead.
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
        self.reldiag = ([probscores.reldiag_init(event_threshold, RELIABILITY_BINS, min_count=1)
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
                probscores.reldiag_accum(self.reldiag[j], fc.probability[j][v], o[v])

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
        return scores + [("mae", means["mae"], nan, nan), ("crps", means["crps"], nan, nan),
                         ("brier", means["brier"], self.event, nan)]

    def reliability_rows(self, lead_times: Sequence[int]) -> list[dict]:
        """Reliability rows: lead_time_min, bin, forecast_probability, observed_frequency,
        count (bins without samples: NaN)."""
        rows = []
        for lead, diagram in zip(lead_times, self.reldiag or [], strict=False):
            with np.errstate(invalid="ignore", divide="ignore"):
                forecast, observed = probscores.reldiag_compute(diagram)
            for k in range(RELIABILITY_BINS):
                rows.append({"lead_time_min": lead, "bin": k,
                             "forecast_probability": forecast[k],
                             "observed_frequency": observed[k],
                             "count": int(diagram["sample_size"][k])})
        return rows


# -- the evaluation ----------------------------------------------------------------------


@dataclass
class Evaluation:
    """Scores (tidy: one row per method, metric, threshold/scale, lead) and the model's
    reliability diagram per lead time, with the init times scored."""

    scores: pd.DataFrame
    reliability: pd.DataFrame
    init_times: list


def scale_pixels(store_ds: xr.Dataset, scales_km: Sequence[float]) -> dict[float, int]:
    """FSS scales {km: pixels (>= 1)} on the store's grid (degrees: 111.195 km each)."""
    size, units = pixel_size(store_ds["x"].values, store_ds["x"].attrs.get("units", "m"))
    km = size / 1000.0 if units == "m" else size * KM_PER_DEGREE
    return {float(s): max(1, round(s / km)) for s in scales_km}


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
) -> Evaluation:
    """Score the model, persistence and extrapolation at each init time (see module doc).

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
    """
    leads = resolve_lead_times(net, store_ds, lead_times)
    levels = sorted({*map(float, thresholds), float(event_threshold)})
    scales = scale_pixels(store_ds, scales_km)
    acc = {m: ScoreAccumulator(len(leads), thresholds, scales, event_threshold, m == "model")
           for m in METHODS}
    steps = [lead / store_step(store_ds) for lead in leads]
    frames = max(int(net.config["context_frames"]), MOTION_FRAMES)
    for init in tqdm(list(init_times), desc="evaluate", unit="init", disable=not progress):
        fc = forecast_dataset(net, store_ds, [init], leads, quantiles=(0.5,),
                              thresholds=levels, bin_probabilities=True,
                              batch_tiles=batch_tiles)
        init = fc["init_time"].values[0]
        rate, obs = read_context(store_ds, init, frames), read_observations(store_ds, init, leads)
        valid = np.isfinite(obs) & np.isfinite(rate[-1])
        forecasts = {
            "model": model_forecast(fc, obs, levels, event_threshold),
            "persistence": point_forecast(persistence(rate, len(leads)), obs, levels,
                                          event_threshold),
            "extrapolation": point_forecast(extrapolation(rate, steps), obs, levels,
                                            event_threshold),
        }
        for method, forecast in forecasts.items():
            acc[method].add(forecast, obs, valid)
    scores = pd.DataFrame([r for m in METHODS for r in acc[m].rows(m, leads)])
    reliability = pd.DataFrame(acc["model"].reliability_rows(leads))
    return Evaluation(scores, reliability, list(init_times))


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
