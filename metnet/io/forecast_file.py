"""The CF forecast file: a forecast as an xarray dataset, written as netCDF-4 or zarr v3.

Dims ``(init_time, lead_time, y, x)``, with the store's x/y and CRS:

* ``precip_rate_mean`` (mm/h), ``precip_rate_quantile`` (quantile, ...) (mm/h);
* ``probability_of_exceedance`` (threshold, ...): P(R > threshold);
* ``rain_forecast`` (threshold, ...): the deterministic product, 1 where the exceedance
  probability reaches ``decision_probability`` (threshold, lead_time), else 0;
* optionally ``bin_probability`` (bin, ...) with ``bin_edges`` (bin_edge, mm/h).

The file follows CF-1.8 (IOOS compliance-checker ``cf:1.8`` and ``cfchecks`` find nothing
wrong): a ``crs`` grid mapping with its projection parameters and ``crs_wkt``, float64 times
(CF-1.8 has no int64), no ``_FillValue`` on coordinates, ``rain_forecast`` stored as int8
flags, a ``history``, and ``init_time`` the unlimited dimension. The rate variables also
carry pysteps' geodata (:func:`pysteps_geodata`).

:func:`write_forecast` writes it atomically (:mod:`metnet.atomic`); :class:`ForecastOutput`
streams one init time at a time to ``.zarr`` (appended), a folder (one ``.nc`` per init time)
or one ``.nc`` (assembled from such a folder at the end), and resumes after the init times
already written.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import xarray as xr

from metnet.atomic import atomic_write, remove, remove_leftovers
from metnet.io.store import grid_mapping

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
                         "long_name": "expected surface precipitation rate (the mean of the "
                         "forecast distribution)"},
    "precip_rate_quantile": {"units": "mm/h", "standard_name": "rainfall_rate",
                             "long_name": "quantile of surface precipitation rate"},
    # CF has no standard name for a probability of exceedance; the threshold coordinate
    # names the quantity exceeded (standard_name rainfall_rate).
    "probability_of_exceedance": {
        "units": "1", "long_name": "probability that the surface precipitation rate exceeds "
        "the threshold"},
    "rain_forecast": {"flag_values": np.array([0, 1], dtype=np.int8),
                      "flag_meanings": "no_rain_above_threshold rain_above_threshold",
                      "long_name": "deterministic forecast of rain above the threshold"},
    "bin_probability": {"units": "1",
                        "long_name": "probability of each rain-rate bin (see bin_edges)"},
}
#: The variables whose attributes hold pysteps' geodata (:func:`pysteps_geodata`).
RATE_VARIABLES = ("precip_rate_mean", "precip_rate_quantile")
#: pysteps' geodata keys (as its importers give them), written on :data:`RATE_VARIABLES`.
GEODATA_KEYS = ("projection", "x1", "x2", "y1", "y2", "xpixelsize", "ypixelsize",
                "cartesian_unit", "yorigin")
#: netCDF compression of the forecast fields of the files a user keeps: zlib, which every
#: netCDF reader has.
KEPT_COMPRESSION: dict[str, Any] = {"zlib": True, "complevel": 4}
#: ``rain_forecast`` on disk: int8 flags, this outside the radar coverage (NaN in memory).
FLAG_FILL = np.int8(-1)


def forecast_dataset_from_fields(
    fields: dict[str, np.ndarray], store_ds: xr.Dataset, init_times: Sequence,
    lead_times: Sequence[int], quantiles: Sequence[float], thresholds: Sequence[float],
    bin_edges: Sequence[float], decision_probability: np.ndarray, coverage: str,
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
        coverage: how the network covered the domain, in words (the ``domain_coverage``
            attribute; :func:`metnet.nowcasts.model.domain_coverage`).
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
                      {"units": "mm/h", "standard_name": "rainfall_rate",
                       "long_name": "rain-rate threshold (exceeded: rate > threshold)"}),
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
    crs = pyproj.CRS.from_user_input(store_ds.attrs.get("crs_wkt") or store_ds.attrs["crs"])
    ds["crs"] = xr.DataArray(np.int32(0), attrs=grid_mapping(crs))
    geodata = pysteps_geodata(store_ds, crs)
    for name in RATE_VARIABLES:
        if name in ds:
            ds[name].attrs.update(geodata)
    ds.attrs = {
        "Conventions": "CF-1.8",
        "title": "metnet probabilistic precipitation nowcast",
        "source": f"metnet forecast from the {store_ds.attrs.get('source', '')} store",
        "history": _history(store_ds),
        "crs": str(store_ds.attrs["crs"]),
        "crs_wkt": crs.to_wkt(),
        "pixel_size_x": float(store_ds.attrs["pixel_size_x"]),
        "pixel_size_y": float(store_ds.attrs["pixel_size_y"]),
        "step_minutes": int(store_ds.attrs["step_minutes"]),
        "domain_coverage": coverage,
    }
    return ds


def pysteps_geodata(store_ds: xr.Dataset, crs: pyproj.CRS) -> dict[str, Any]:
    """pysteps' geodata of a store's grid, as its importers give it: the outer edges
    ``x1 < x2``, ``y1 < y2`` and pixel sizes in projection units (``cartesian_unit``),
    ``yorigin`` ("upper": the first row is the northernmost) and the PROJ ``projection``.

    ``pysteps.visualization.plot_precip_field(field, geodata=ds[name].attrs)`` plots a
    (y, x) slice of a forecast's rain variable with these attributes alone.
    """
    x, y = store_ds["x"].values.astype(float), store_ds["y"].values.astype(float)
    dx = float(store_ds.attrs["pixel_size_x"])
    dy = float(store_ds.attrs["pixel_size_y"])
    with warnings.catch_warnings():  # PROJ notes what a PROJ string cannot say
        warnings.simplefilter("ignore")
        projection = crs.to_proj4()
    return {
        "projection": projection,
        "x1": float(x.min() - dx / 2), "x2": float(x.max() + dx / 2),
        "y1": float(y.min() - dy / 2), "y2": float(y.max() + dy / 2),
        "xpixelsize": dx, "ypixelsize": dy,
        "cartesian_unit": str(store_ds["x"].attrs.get("units", "m")),
        "yorigin": "upper" if len(y) < 2 or y[0] > y[-1] else "lower",
    }


def _history(store_ds: xr.Dataset) -> str:
    """The store's CF ``history`` with a line for this forecast appended."""
    from metnet import __version__

    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = (f"{now} metnet {__version__}: forecast from the "
            f"{store_ds.attrs.get('source', '')} store")
    earlier = str(store_ds.attrs.get("history", "")).strip()
    return f"{earlier}\n{line}" if earlier else line


#: The global attribute that records what a forecast output was made with (JSON).
SETTINGS_ATTR = "metnet_forecast_settings"


class ForecastOutput:
    """A forecast output written one init time at a time, resumable.

    ``OUT.zarr``: init times are appended as they complete (a kill loses only the init time
    in progress). ``OUT/`` (a path without suffix): one ``OUT/YYYYmmddTHHMM.nc`` per init
    time, each written atomically. ``OUT.nc``: such a folder kept hidden beside it
    (``.OUT.nc.parts``, compressed by :func:`part_compression`), assembled into ``OUT.nc``
    by :meth:`close`. An existing output is resumed when it was made with the same
    ``settings`` (checkpoint, stores, lead times, levels); its init times are in
    :attr:`done`. What killed earlier writers left (hidden
    temporary files beside the output and its parts, :func:`metnet.atomic.remove_leftovers`)
    is removed first.

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
        remove_leftovers(self.path)
        if self.path.suffix != ".zarr":
            remove_leftovers(self.parts / "*.nc")
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
        for part in self._part_files():
            with xr.open_dataset(part) as ds:
                self._check(ds.attrs, part)
                done.update(ds["init_time"].values.astype("datetime64[ns]"))
        return done

    def _part_files(self) -> list[Path]:
        """The one-init-time files written, in time order (hidden temporary files of writers
        excluded)."""
        if not self.parts.is_dir():
            return []
        return sorted(p for p in self.parts.glob("*.nc") if not p.name.startswith("."))

    def _check(self, attrs: dict, where: Path) -> None:
        if attrs.get(SETTINGS_ATTR) != self.settings:
            raise FileExistsError(
                f"{where}: holds a forecast made with other settings (checkpoint, stores, lead "
                "times or levels); remove it or choose another --out")

    def write(self, ds: xr.Dataset) -> None:
        """Add a forecast of one init time."""
        ds = ds.assign_attrs({SETTINGS_ATTR: self.settings})
        init = ds["init_time"].values[0]
        if self.path.suffix != ".zarr":
            self.parts.mkdir(parents=True, exist_ok=True)
            stamp = np.datetime_as_string(init, unit="m").replace(":", "").replace("-", "")
            hidden = self.parts != self.path  # read back only by close(): compressed fast
            write_forecast(ds, self.parts / f"{stamp}.nc",
                           compression=part_compression() if hidden else KEPT_COMPRESSION)
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
            with atomic_write(self.path) as tmp:
                _concatenate_netcdf(self._part_files(), tmp)
            remove(self.parts)
        return self.path


def _concatenate_netcdf(parts: list[Path], out: Path) -> None:
    """Join one-init-time forecast files along ``init_time`` into ``out``, one part in
    memory at a time."""
    import netCDF4

    with xr.open_dataset(parts[0]) as first:
        first.load().to_netcdf(out, engine="netcdf4", format="NETCDF4",
                               unlimited_dims=["init_time"],
                               encoding=_encoding(first, KEPT_COMPRESSION))
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


@functools.cache
def part_compression() -> dict[str, Any]:
    """netCDF compression of the hidden one-init-time parts of an ``OUT.nc`` output, which
    only :meth:`ForecastOutput.close` reads: zstd level 1 where the HDF5 zstd filter loads
    (several times faster to write than zlib), else :data:`KEPT_COMPRESSION`."""
    import netCDF4

    with netCDF4.Dataset("probe.nc", "w", diskless=True, persist=False) as probe:
        if probe.has_zstd_filter():  # the plugin is found at run time (HDF5_PLUGIN_PATH)
            return {"compression": "zstd", "complevel": 1}
    return KEPT_COMPRESSION


#: Init times per chunk of a zarr forecast's times (``init_time``, ``valid_time``): a month
#: of 5-minute init times in one object each, not one object per init time for every open
#: to read (the fields keep one chunk per init time).
INIT_TIMES_CHUNK = 2**13


def write_forecast(ds: xr.Dataset, path: str | Path,
                   compression: dict[str, Any] = KEPT_COMPRESSION) -> Path:
    """Write a forecast dataset as netCDF-4 (``.nc``, fields compressed as ``compression``
    says: netCDF4 variable settings) or zarr v3 (``.zarr``), atomically: it is written to a
    hidden sibling path and renamed into place when complete (what a killed earlier write of
    ``path`` left is removed first).

    Raises:
        FileExistsError: ``path`` exists. ValueError: another suffix.
    """
    path = check_output_path(path)
    remove_leftovers(path)
    encoding = _encoding(ds, compression if path.suffix == ".nc" else {})
    if path.suffix == ".zarr":  # init times appended one by one share their objects
        encoding["init_time"]["chunks"] = (INIT_TIMES_CHUNK,)
        encoding["valid_time"]["chunks"] = (INIT_TIMES_CHUNK, ds.sizes["lead_time"])
    with atomic_write(path) as tmp:
        if path.suffix == ".nc":
            ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding,
                         unlimited_dims=["init_time"])
        else:
            ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=True, encoding=encoding)
    return path


def _encoding(ds: xr.Dataset, compression: dict[str, Any]) -> dict:
    """How a forecast is stored (CF-1.8): times as float64 minutes (CF-1.8 has no int64;
    exact for whole seconds), coordinates without ``_FillValue``, ``rain_forecast`` as int8
    flags with :data:`FLAG_FILL` outside the coverage, fields compressed as ``compression``
    says (netCDF4 variable settings; empty: as the format's default)."""
    time = {"units": TIME_UNITS, "dtype": "float64", "_FillValue": None}
    out: dict[str, dict] = {"init_time": time, "valid_time": dict(time)}
    for name in ds.coords:
        if name not in out and ds[name].dtype.kind in "fiu":
            out[name] = {"_FillValue": None}
    for name, var in ds.data_vars.items():
        if var.ndim >= 4:
            out[name] = dict(compression)
    if "rain_forecast" in ds:
        out["rain_forecast"].update(dtype="int8", _FillValue=FLAG_FILL)
    return out
