"""Figures for forecasters: rain-rate maps with a conventional colour scale."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

RAIN_LEVELS_MM_H = [0.1, 0.2, 0.5, 1, 2, 4, 8, 16, 32, 64, 128]
RAIN_COLOURS = [
    "#c6dbef",
    "#9ecae1",
    "#6baed6",
    "#3182bd",
    "#31a354",
    "#a1d99b",
    "#fee391",
    "#fe9929",
    "#e6550d",
    "#a50f15",
]


def rain_colormap() -> tuple[ListedColormap, BoundaryNorm]:
    """Discrete rain-rate colormap (mm/h): white below 0.1, grey where unobserved."""
    cmap = ListedColormap(RAIN_COLOURS).with_extremes(under="white", over="#67000d",
                                                      bad="#d9d9d9")
    return cmap, BoundaryNorm(RAIN_LEVELS_MM_H, cmap.N)


def _extent_km(field: xr.DataArray) -> tuple[float, float, float, float]:
    dx = float(abs(field.x[1] - field.x[0])) / 2
    dy = float(abs(field.y[1] - field.y[0])) / 2
    scale = 1000.0 if field.x.attrs.get("units", "m") == "m" else 1.0
    x0, x1 = float(field.x.min()) - dx, float(field.x.max()) + dx
    y0, y1 = float(field.y.min()) - dy, float(field.y.max()) + dy
    return x0 / scale, x1 / scale, y0 / scale, y1 / scale


def draw_rain(ax: plt.Axes, field: xr.DataArray, title: str = "") -> matplotlib.image.AxesImage:
    """Draw one (y, x) rain-rate field in mm/h on ``ax``, north up, axes in km."""
    cmap, norm = rain_colormap()
    return _draw_map(ax, field, title, cmap=cmap, norm=norm)


def _draw_map(ax: plt.Axes, field: xr.DataArray, title: str, **style) -> matplotlib.image.AxesImage:
    """imshow of a (y, x) field, north up, with km axes and a title."""
    values = field.values
    if field.y[0] < field.y[-1]:  # rows stored south to north
        values = values[::-1]
    image = ax.imshow(values, extent=_extent_km(field), interpolation="none", **style)
    ax.set_title(title, fontsize=9)
    unit = "km" if field.x.attrs.get("units", "m") == "m" else field.x.attrs.get("units", "")
    ax.set_xlabel(f"x ({unit})", fontsize=8)
    ax.set_ylabel(f"y ({unit})", fontsize=8)
    ax.tick_params(labelsize=7)
    return image


def plot_frames(
    precip: xr.DataArray, path: str | Path, indices: Sequence[int] | None = None, ncols: int = 4
) -> Path:
    """Save a panel of rain-rate frames of a store's ``rain_rate`` (time, y, x) as PNG."""
    indices = list(indices) if indices is not None else list(range(min(4, precip.sizes["time"])))
    nrows = int(np.ceil(len(indices) / ncols))
    fig, axes = plt.subplots(
        nrows,
        min(ncols, len(indices)),
        figsize=(3.6 * min(ncols, len(indices)), 3.4 * nrows),
        squeeze=False,
        constrained_layout=True,
    )
    for ax in axes.flat[len(indices) :]:
        ax.axis("off")
    image = None
    for ax, index in zip(axes.flat, indices, strict=False):
        frame = precip.isel(time=index).load()
        when = pd.Timestamp(frame.time.values).strftime("%Y-%m-%d %H:%M UTC")
        image = draw_rain(ax, frame, when)
    fig.colorbar(image, ax=axes, label="rain rate (mm/h)", shrink=0.8, extend="max")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_forecast_panels(
    observed: np.ndarray,
    median: np.ndarray,
    probability: np.ndarray,
    persistence: np.ndarray,
    lead_times: Sequence[int],
    path: str | Path,
    threshold: float = 1.0,
    title: str = "",
) -> Path:
    """Rows per lead time: observation, model median, P(rain > threshold), persistence.

    Args:
        observed, median, persistence: (L, H, W) rain rate in mm/h (NaN: not observed).
        probability: (L, H, W) exceedance probability of ``threshold`` mm/h.
        lead_times: L lead times in minutes.
    """
    cmap, norm = rain_colormap()
    columns = ["observed", "model median", f"P(rain > {threshold:g} mm/h)", "persistence"]
    fig, axes = plt.subplots(len(lead_times), 4, figsize=(12, 3 * len(lead_times)),
                             squeeze=False, constrained_layout=True)
    rain_image = prob_image = None
    for row, lead in enumerate(lead_times):
        for col, field in enumerate((observed, median, probability, persistence)):
            ax = axes[row, col]
            if col == 2:
                prob_image = ax.imshow(field[row], cmap="viridis", vmin=0, vmax=1,
                                       interpolation="none")
            else:
                rain_image = ax.imshow(field[row], cmap=cmap, norm=norm, interpolation="none")
            ax.set_title(f"{columns[col]}, +{lead} min", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(rain_image, ax=axes[:, [0, 1, 3]], label="rain rate (mm/h)", shrink=0.6,
                 extend="max")
    fig.colorbar(prob_image, ax=axes[:, 2], label="probability", shrink=0.6)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _draw_probability(ax: plt.Axes, field: xr.DataArray, title: str) -> matplotlib.image.AxesImage:
    """Draw one (y, x) probability field (0..1) on ``ax`` like :func:`draw_rain`."""
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    return _draw_map(ax, field, title, cmap=cmap, vmin=0, vmax=1)


def plot_forecast_maps(
    columns: Sequence[tuple[str, xr.DataArray | None, str]],
    lead_times: Sequence[int],
    path: str | Path,
    title: str = "",
) -> Path:
    """Map panels, one row per lead time, one column per field, north up, axes in km.

    Args:
        columns: ``(label, field, kind)``: field (lead_time, y, x) with a ``lead_time``
            coordinate in minutes (None or an all-NaN lead: drawn as "not available");
            kind ``"rain"`` (mm/h, :func:`rain_colormap`) or ``"probability"`` (0..1).
        lead_times: the lead times (minutes) to draw, one row each.
        path: PNG to write.
    """
    width, height = 3.0 * len(columns) + 1.8, 2.9 * len(lead_times) + 0.9
    fig, axes = plt.subplots(len(lead_times), len(columns), figsize=(width, height),
                             squeeze=False)
    # Fixed margins: constrained layout takes seconds per figure at this panel count.
    fig.subplots_adjust(left=0.9 / width, right=1 - 1.9 / width, bottom=0.5 / height,
                        top=1 - 0.9 / height, wspace=0.35, hspace=0.4)
    images: dict[str, matplotlib.image.AxesImage] = {}
    for row, lead in enumerate(lead_times):
        for col, (label, field, kind) in enumerate(columns):
            ax, name = axes[row, col], f"{label}, +{lead} min"
            frame = None if field is None else field.sel(lead_time=lead)
            if frame is None or not np.isfinite(frame.values).any():
                ax.text(0.5, 0.5, "not available", ha="center", va="center")
                ax.set_title(name, fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            draw = draw_rain if kind == "rain" else _draw_probability
            images[kind] = draw(ax, frame, name)
    bar = {"rain": (1 - 1.6 / width, "rain rate (mm/h)"),
           "probability": (1 - 0.8 / width, "probability")}
    for kind, image in images.items():
        left, label = bar[kind]
        cax = fig.add_axes((left, 0.2, 0.12 / width, 0.6))
        ticks = RAIN_LEVELS_MM_H if kind == "rain" else None
        fig.colorbar(image, cax=cax, label=label, ticks=ticks,
                     extend="max" if kind == "rain" else "neither")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


SCORE_LABELS = {"csi": "CSI", "pod": "POD", "far": "FAR", "fss": "FSS", "mae": "MAE (mm/h)",
                "crps": "CRPS (mm/h)", "brier": "Brier score",
                "brier_reliability": "Brier reliability term"}
#: Line colour of each verification method (others: matplotlib's cycle, whose first colour
#: is the model's).
METHOD_COLOURS = {"model": "tab:blue", "model_calibrated": "tab:cyan", "steps": "tab:purple",
                  "persistence": "tab:grey", "extrapolation": "tab:orange",
                  "neighbourhood": "tab:green"}


def plot_skill(scores: pd.DataFrame, path: str | Path, title: str = "", ncols: int = 4) -> Path:
    """Scores against lead time: one panel per metric (and threshold or scale), one line
    per method (a fixed colour per method, one legend for the figure).

    Args:
        scores: tidy table with columns method, metric, threshold, scale_km,
            lead_time_min, value (:func:`metnet.verification.evaluate`).
    """
    keys = scores[["metric", "threshold", "scale_km"]].drop_duplicates()
    order = {metric: k for k, metric in enumerate(SCORE_LABELS)}
    keys = keys.assign(order=keys["metric"].map(lambda m: order.get(m, len(order))))
    keys = keys.sort_values(["order", "metric", "threshold", "scale_km"])
    nrows = int(np.ceil(len(keys) / ncols))
    height = 2.7 * nrows + 0.9
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, height), squeeze=False)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.45 / height, top=1 - 1.0 / height,
                        wspace=0.25, hspace=0.55)  # constrained layout is slow with many panels
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    handles: dict[str, plt.Line2D] = {}
    for ax, (_, key) in zip(axes.flat, keys.iterrows(), strict=False):
        panel = scores[(scores["metric"] == key["metric"])
                       & _same(scores["threshold"], key["threshold"])
                       & _same(scores["scale_km"], key["scale_km"])]
        for method, lines in panel.groupby("method", sort=False):
            line, = ax.plot(lines["lead_time_min"], lines["value"], marker="o", ms=3,
                            label=method, color=METHOD_COLOURS.get(method))
            handles.setdefault(method, line)
        ax.set_title(_panel_title(key), fontsize=9)
        ax.set_xlabel("lead time (min)", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncols=len(handles),
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1 - 0.45 / height))
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _same(column: pd.Series, value: float) -> pd.Series:
    return column.isna() if pd.isna(value) else column == value


def _panel_title(key: pd.Series) -> str:
    text = SCORE_LABELS.get(key["metric"], key["metric"])
    if not pd.isna(key["threshold"]):
        text += f" >{key['threshold']:g} mm/h"
    if not pd.isna(key["scale_km"]):
        text += f", {key['scale_km']:g} km"
    return text


def plot_reliability(
    reliability: pd.DataFrame, path: str | Path, title: str = "", threshold: float = 1.0,
    min_count: int = 10, max_curves: int = 4,
) -> Path:
    """Reliability diagrams of exceedance probabilities, one column per method: a curve
    per lead time on top, the number of forecasts per probability bin below.

    Args:
        reliability: columns method, lead_time_min, bin, forecast_probability,
            observed_frequency, count (:func:`metnet.verification.evaluate`).
        min_count: bins with fewer forecasts are not drawn.
        max_curves: at most this many lead times, evenly spread, are drawn (the same
            lead has the same colour in every column).
    """
    methods = list(dict.fromkeys(reliability["method"]))
    leads = sorted(reliability["lead_time_min"].unique())
    picks = np.unique(np.linspace(0, len(leads) - 1, min(max_curves, len(leads))).round())
    colours = dict(zip([leads[int(i)] for i in picks], plt.cm.viridis(np.linspace(0, 0.85,
                                                                                  len(picks))),
                       strict=True))
    fig, axes = plt.subplots(2, len(methods), figsize=(4.2 * len(methods), 6.5),
                             height_ratios=(3, 1), sharex=True, squeeze=False,
                             constrained_layout=True)
    for (top, bottom), method in zip(axes.T, methods, strict=True):
        _draw_reliability(top, bottom, reliability[reliability["method"] == method], colours,
                          min_count)
        top.set_title(method, fontsize=10)
    axes[0, 0].set_ylabel("observed relative frequency")
    axes[1, 0].set_ylabel("forecasts")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Reliability of P(rain > {threshold:g} mm/h)" + (f", {title}" if title else ""))
    return _save(fig, path)


def _draw_reliability(top: plt.Axes, bottom: plt.Axes, rows: pd.DataFrame,
                      colours: dict[int, np.ndarray], min_count: int) -> None:
    """One method's reliability curves (``top``) and bin counts (``bottom``), one per lead
    time in ``colours``."""
    top.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect reliability")
    for lead, colour in colours.items():
        everything = rows[rows["lead_time_min"] == lead]
        drawn = everything[everything["count"] >= min_count]
        top.plot(drawn["forecast_probability"], drawn["observed_frequency"], marker="o", ms=3,
                 color=colour, label=f"+{lead} min")
        bottom.step((everything["bin"] + 0.5) / len(everything), everything["count"],
                    where="mid", color=colour)
    top.set(xlim=(0, 1), ylim=(0, 1))
    top.grid(alpha=0.3)
    bottom.set(yscale="log", xlabel="forecast probability")
    bottom.grid(alpha=0.3)


def plot_forecast(ds: xr.Dataset, store_ds: xr.Dataset, init_time: np.datetime64,
                  out_dir: str | Path, threshold: float = 1.0, max_leads: int = 6) -> Path:
    """Map panels of one init time of a forecast dataset: observation (where the store has
    it), the model's median, P(rain > ``threshold``), persistence and extrapolation.

    At most ``max_leads`` lead times, evenly spread and including the last, get a row.
    Returns the PNG written in ``out_dir`` (``forecast_YYYYmmddTHHMM.png``).
    """
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
    from metnet.forecast import read_observations

    obs = np.full((len(leads), store_ds.sizes["y"], store_ds.sizes["x"]), np.nan, np.float32)
    times = set(store_ds["time"].values.astype("datetime64[ns]").tolist())
    for j, lead in enumerate(leads):
        valid = (init_time + np.timedelta64(lead, "m")).astype("datetime64[ns]")
        if valid.tolist() in times:
            obs[j] = read_observations(store_ds, init_time, [lead])[0]
    return obs


def _baseline_columns(store_ds: xr.Dataset, init_time: np.datetime64, leads: list[int],
                      like: xr.DataArray) -> list[tuple[str, xr.DataArray | None, str]]:
    """Persistence and (with 3 past frames in the store) extrapolation map columns, from
    the nowcast methods of :mod:`metnet.nowcasts`."""
    from metnet.forecast import read_context, store_step
    from metnet.nowcasts import get_method
    from metnet.nowcasts.extrapolation import MOTION_FRAMES
    from metnet.times import context_times

    step = store_step(store_ds)
    times = set(store_ds["time"].values.astype("datetime64[ns]").tolist())
    past = context_times(init_time, MOTION_FRAMES, step)
    frames = MOTION_FRAMES if all(t.tolist() in times for t in past) else 1
    rate = read_context(store_ds, init_time, frames)
    persistence = get_method("persistence")(rate, leads)
    extrapolated = (like.copy(data=get_method("extrapolation")(rate, leads, step_minutes=step))
                    if frames == MOTION_FRAMES else None)
    return [("persistence", like.copy(data=persistence), "rain"),
            ("extrapolation", extrapolated, "rain")]
