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
    cmap = ListedColormap(RAIN_COLOURS)
    cmap.set_under("white")
    cmap.set_over("#67000d")
    cmap.set_bad("#d9d9d9")
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
    values = field.values
    if field.y[0] < field.y[-1]:  # rows stored south to north
        values = values[::-1]
    image = ax.imshow(values, cmap=cmap, norm=norm, extent=_extent_km(field), interpolation="none")
    ax.set_title(title, fontsize=9)
    unit = "km" if field.x.attrs.get("units", "m") == "m" else field.x.attrs.get("units", "")
    ax.set_xlabel(f"x ({unit})", fontsize=8)
    ax.set_ylabel(f"y ({unit})", fontsize=8)
    ax.tick_params(labelsize=7)
    return image


def plot_frames(
    precip: xr.DataArray, path: str | Path, indices: Sequence[int] | None = None, ncols: int = 4
) -> Path:
    """Save a panel of rain-rate frames of a store's ``precip_rate`` (time, y, x) as PNG."""
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
