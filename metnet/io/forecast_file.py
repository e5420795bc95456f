"""The CF forecast file: a forecast as an xarray dataset, written as netCDF-4 or zarr v3.

Dims ``(init_time, lead_time, y, x)``, with the store's x/y and CRS:

* ``precip_rate_mean`` (mm/h), ``precip_rate_quantile`` (quantile, ...) (mm/h);
* ``probability_of_exceedance`` (threshold, ...): P(R > threshold);
* ``rain_forecast`` (threshold, ...): the deterministic product, 1 where the exceedance
  probability reaches ``decision_probability`` (threshold, lead_time), else 0;
* optionally ``bin_probability`` (bin, ...) with ``bin_edges`` (bin_edge, mm/h).

:func:`write_forecast` writes it atomically (:mod:`metnet.atomic`); :class:`ForecastOutput`
streams one init time at a time to ``.zarr`` (appended), a folder (one ``.nc`` per init time)
or one ``.nc`` (assembled from such a folder at the end), and resumes after the init times
already written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from metnet.atomic import atomic_write, remove

TIME_UNITS = "minutes since 1970-01-01 00:00:00"
SUFFIXES = (".nc", ".zarr")

_DIMS = {
    "precip_rate_mean": (),
    "precip_rate_quantile": ("quantile",),
    "probability_of_exceedance": ("threshold",),
    "rain_forecast": ("threshold",),
    "bin_probability": ("bin",),
}

_ATTRS = {
    "precip_rate_mean": {"units": "mm/h", "standard_name": "rainfall_rate",
                         "long_name": "expected surface precipitation rate",
                         "cell_methods": "realization: mean"},
    "precip_rate_quantile": {"units": "mm/h", "standard_name": "rainfall_rate",
                             "long_name": "quantile of surface precipitation rate"},
    "probability_of_exceedance": {
        "units": "1", "long_name": "probability that the precipitation rate exceeds the "
        "threshold"},
    "rain_forecast": {"units": "1", "flag_values": "0 1",
                      "flag_meanings": "no_rain_above_threshold rain_above_threshold",
                      "long_name": "deterministic forecast of rain above the threshold"},
    "bin_probability": {"units": "1",
                        "long_name": "probability of each rain-rate bin (see bin_edges)"},
}


def forecast_dataset_from_fields(
    fields: dict[str, np.ndarray], store_ds: xr.Dataset, init_times: Sequence,
    lead_times: Sequence[int], quantiles: Sequence[float], thresholds: Sequence[float],
    bin_edges: Sequence[float], decision_probability: np.ndarray,
) -> xr.Dataset:
    """The CF forecast dataset of forecast fields over a store's grid.

    Args:
        fields: by variable name (see the module docstring), arrays shaped as its leading
            dimension (if any), then (init_time, lead_time, y, x).
        store_ds: the store forecast from (grid, CRS, source, step).
        init_times: the I init times (UTC).
        lead_times: the L lead times (minutes).
        quantiles, thresholds: levels of ``precip_rate_quantile`` and thresholds (mm/h) of
            ``probability_of_exceedance`` and ``rain_forecast``.
        bin_edges: K+1 edges (mm/h) of ``bin_probability`` (written only with it).
        decision_probability: (N, L) probability cuts of ``rain_forecast``.
    """
    base = ("init_time", "lead_time", "y", "x")
    init_index = np.array(init_times, dtype="datetime64[ns]")
    valid = init_index[:, None] + np.array(lead_times, dtype="timedelta64[m]")[None, :]
    coords = {
        "init_time": ("init_time", init_index, {"standard_name": "forecast_reference_time",
                                                "long_name": "time of the last context frame"}),
        "lead_time": ("lead_time", np.array(lead_times, dtype=np.int32),
                      {"units": "minute", "long_name": "forecast lead time",
                       "standard_name": "forecast_period"}),
        "valid_time": (("init_time", "lead_time"), valid.astype("datetime64[ns]"),
                       {"standard_name": "time", "long_name": "time the forecast is valid for"}),
        "y": store_ds["y"].variable.copy(deep=True).load(),
        "x": store_ds["x"].variable.copy(deep=True).load(),
        "quantile": ("quantile", np.asarray(quantiles, dtype=np.float64),
                     {"units": "1", "long_name": "probability level of the quantile"}),
        "threshold": ("threshold", np.asarray(thresholds, dtype=np.float64),
                      {"units": "mm/h", "long_name": "rain-rate threshold"}),
    }
    if "bin_probability" in fields:
        coords["bin_edges"] = ("bin_edge", np.asarray(bin_edges, dtype=np.float64),
                               {"units": "mm/h", "long_name": "rain-rate bin edges; bin k "
                                "holds rates from bin_edges[k] to bin_edges[k+1]"})
    ds = xr.Dataset({name: ((*_DIMS[name], *base), value) for name, value in fields.items()},
                    coords=coords)
    for name in fields:
        ds[name].attrs = {**_ATTRS[name], "grid_mapping": "crs"}
    ds["decision_probability"] = (("threshold", "lead_time"), decision_probability, {
        "units": "1", "long_name": "probability cut of rain_forecast: rain where "
        "probability_of_exceedance >= this (calibrated on validation, or 0.5)"})
    ds["crs"] = xr.DataArray(np.int32(0), attrs={
        "crs_wkt": store_ds.attrs.get("crs_wkt", ""), "spatial_ref": store_ds.attrs.get(
            "crs_wkt", ""), "proj4": str(store_ds.attrs["crs"])})
    ds.attrs = {
        "Conventions": "CF-1.8",
        "title": "metnet probabilistic precipitation nowcast",
        "source": f"metnet forecast from the {store_ds.attrs.get('source', '')} store",
        "crs": str(store_ds.attrs["crs"]),
        "crs_wkt": str(store_ds.attrs.get("crs_wkt", "")),
        "pixel_size_x": float(store_ds.attrs["pixel_size_x"]),
        "pixel_size_y": float(store_ds.attrs["pixel_size_y"]),
        "step_minutes": int(store_ds.attrs["step_minutes"]),
        "probability_blending": "bin probabilities of overlapping tiles, sin^2 taper",
    }
    return ds


#: The global attribute that records what a forecast output was made with (JSON).
SETTINGS_ATTR = "metnet_forecast_settings"


class ForecastOutput:
    """A forecast output written one init time at a time, resumable.

    ``OUT.zarr``: init times are appended as they complete (a kill loses only the init time
    in progress). ``OUT/`` (a path without suffix): one ``OUT/YYYYmmddTHHMM.nc`` per init
    time, each written atomically. ``OUT.nc``: such a folder kept hidden beside it
    (``.OUT.nc.parts``), assembled into ``OUT.nc`` by :meth:`close`. An existing output is
    resumed when it was made with the same ``settings`` (checkpoint, store, lead times,
    levels); its init times are in :attr:`done`.

    Raises:
        FileExistsError: an existing output made with other settings.
        ValueError: a suffix other than ``.nc`` / ``.zarr`` / none.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any]) -> None:
        self.path = Path(path)
        if self.path.suffix not in (*SUFFIXES, ""):
            raise ValueError(f"{self.path}: the output must end in .nc (netCDF-4), .zarr "
                             "(zarr v3), or be a folder (one .nc per init time)")
        self.settings = json.dumps(settings, sort_keys=True, default=str)
        self.parts = (self.path.with_name(f".{self.path.name}.parts")
                      if self.path.suffix == ".nc" else self.path)
        if self.path.suffix == ".nc" and self.path.exists():
            raise FileExistsError(f"{self.path}: already exists; remove it or choose another "
                                  "--out")
        self.done = self._written()

    def _written(self) -> set[np.datetime64]:
        """The init times an existing output holds (after checking its settings)."""
        if self.path.suffix == ".zarr":
            if not self.path.exists():
                return set()
            ds = xr.open_zarr(self.path, consolidated=True)
            self._check(ds.attrs, self.path)
            return set(ds["init_time"].values.astype("datetime64[ns]"))
        done = set()
        for part in sorted(self.parts.glob("*.nc")) if self.parts.is_dir() else []:
            with xr.open_dataset(part) as ds:
                self._check(ds.attrs, part)
                done.update(ds["init_time"].values.astype("datetime64[ns]"))
        return done

    def _check(self, attrs: dict, where: Path) -> None:
        if attrs.get(SETTINGS_ATTR) != self.settings:
            raise FileExistsError(
                f"{where}: holds a forecast made with other settings (checkpoint, store, lead "
                "times or levels); remove it or choose another --out")

    def write(self, ds: xr.Dataset) -> None:
        """Add a forecast of one init time."""
        ds = ds.assign_attrs({SETTINGS_ATTR: self.settings})
        init = ds["init_time"].values[0]
        if self.path.suffix != ".zarr":
            self.parts.mkdir(parents=True, exist_ok=True)
            stamp = np.datetime_as_string(init, unit="m").replace(":", "").replace("-", "")
            write_forecast(ds, self.parts / f"{stamp}.nc")
        elif not self.path.exists():
            write_forecast(ds, self.path)
        else:
            if self.done and init <= max(self.done):
                raise ValueError(f"{self.path}: init time {init} is not after the last one "
                                 "written; write earlier init times to another --out")
            fixed = [name for name, var in ds.data_vars.items() if "init_time" not in var.dims]
            ds.drop_vars(fixed).to_zarr(self.path, mode="a", append_dim="init_time",
                                        consolidated=True)
        self.done.add(init)

    def close(self) -> Path:
        """Finish the output (assemble ``OUT.nc`` from its parts) and return its path."""
        if self.path.suffix == ".nc" and self.parts.is_dir():
            parts = sorted(self.parts.glob("*.nc"))
            with atomic_write(self.path) as tmp:
                _concatenate_netcdf(parts, tmp)
            remove(self.parts)
        return self.path


def _concatenate_netcdf(parts: list[Path], out: Path) -> None:
    """Join one-init-time forecast files along ``init_time`` into ``out``, one part in
    memory at a time."""
    import netCDF4

    with xr.open_dataset(parts[0]) as first:
        first.load().to_netcdf(out, engine="netcdf4", format="NETCDF4",
                               unlimited_dims=["init_time"],
                               encoding=_encoding(first, zlib=True))
    with netCDF4.Dataset(out, "a") as dst:
        for part in parts[1:]:
            with netCDF4.Dataset(part) as src:
                n = len(dst.dimensions["init_time"])
                for name, var in src.variables.items():
                    if "init_time" not in var.dimensions:
                        continue
                    index = [slice(None)] * var.ndim
                    index[var.dimensions.index("init_time")] = slice(n, n + 1)
                    dst[name][tuple(index)] = var[:]


def check_output_path(path: str | Path) -> Path:
    """The forecast output path, refused up front if it cannot be written.

    Raises:
        ValueError: a suffix other than ``.nc`` / ``.zarr``. FileExistsError: it exists.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: the output must end in .nc (netCDF-4) or .zarr (zarr v3)")
    if path.exists():
        raise FileExistsError(f"{path}: already exists; remove it or choose another --out")
    return path


def write_forecast(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a forecast dataset as netCDF-4 (``.nc``) or zarr v3 (``.zarr``), atomically:
    it is written to a hidden sibling path and renamed into place when complete.

    Raises:
        FileExistsError: ``path`` exists. ValueError: another suffix.
    """
    path = check_output_path(path)
    encoding = _encoding(ds, zlib=path.suffix == ".nc")
    with atomic_write(path) as tmp:
        if path.suffix == ".nc":
            ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
        else:
            ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=True, encoding=encoding)
    return path


def _encoding(ds: xr.Dataset, zlib: bool) -> dict:
    time = {"units": TIME_UNITS, "dtype": "int64"}
    out: dict[str, dict] = {"init_time": time, "valid_time": dict(time)}
    for name, var in ds.data_vars.items():
        if var.ndim >= 4:
            out[name] = {"zlib": True, "complevel": 4} if zlib else {}
    return out
