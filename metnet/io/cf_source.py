"""CF netCDF / zarr datasets as a source: a rain-rate, precipitation-amount or reflectivity
variable that xarray opens, converted to mm/h by its units and placed by its grid mapping.

The valid time is the variable's time coordinate (one frame per time) or, for a file of one
field, the dataset's scalar variable or coordinate whose ``standard_name`` is ``time``.
Units: a rate (``mm/h``, ``mm s-1``, ``kg m-2 s-1``, ...), a depth per accumulation period
(``mm``, ``kg m-2``; the period is ``accumulation_minutes``, else the time bounds, else the
archive's step), or reflectivity (``dBZ``, through Z = a R^b, Marshall-Palmer by default).
The conversions are pysteps' (:func:`pysteps.utils.to_rainrate`).
"""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyproj
import xarray as xr

from metnet.io.sources import SourceError

#: Rate units and their factor to mm/h.
RATE_UNITS = {"mm/h": 1.0, "mm h-1": 1.0, "mm hr-1": 1.0, "mm/hr": 1.0, "kg m-2 h-1": 1.0,
              "mm s-1": 3600.0, "mm/s": 3600.0, "kg m-2 s-1": 3600.0, "m s-1": 3.6e6}
#: Depth units and their factor to mm.
DEPTH_UNITS = {"mm": 1.0, "kg m-2": 1.0, "m": 1000.0}
REFLECTIVITY_UNITS = ("dBZ", "dbz", "dBz")
LENGTH_UNITS = {"m": 1.0, "metre": 1.0, "meter": 1.0, "km": 1000.0, "kilometre": 1000.0}
ARGS = ("variable", "accumulation_minutes", "zr_a", "zr_b")


def _open(path: Path) -> xr.Dataset:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.is_dir():
                return xr.open_zarr(path, consolidated=None)
            return xr.open_dataset(path)
    except Exception as err:  # xarray's backends raise anything from OSError to KeyError
        raise SourceError(f"{path}: xarray cannot open it ({type(err).__name__}: {err})") from None


def _variable(ds: xr.Dataset, path: Path, args: dict[str, Any]) -> xr.DataArray:
    unknown = sorted(set(args) - set(ARGS))
    if unknown:
        raise SourceError(f"unknown xarray argument(s) {', '.join(unknown)}; known: "
                          f"{', '.join(ARGS)}")
    name = args["variable"]
    if name not in ds.data_vars:
        names = ", ".join(map(str, ds.data_vars))
        raise SourceError(f"{path}: no variable {name!r}; it has {names}")
    return ds[name]


def _time_dim(da: xr.DataArray) -> str | None:
    """The variable's time dimension, if it has one."""
    for dim in da.dims:
        coord = da.coords.get(dim)
        if coord is not None and (np.issubdtype(coord.dtype, np.datetime64)
                                  or coord.attrs.get("standard_name") == "time"):
            return str(dim)
    return None


def frame_times(path: Path, args: dict[str, Any]) -> list[datetime]:
    """The valid times (naive UTC) of the variable's frames in one file.

    Raises:
        SourceError: naming the file, when it has no readable time.
    """
    with _open(path) as ds:
        da = _variable(ds, path, args)
        dim = _time_dim(da)
        if dim is not None:
            values = da[dim].values
        else:
            scalar = [v for v in (*ds.data_vars.values(), *ds.coords.values())
                      if v.ndim == 0 and v.attrs.get("standard_name") == "time"]
            if not scalar:
                raise SourceError(f"{path}: {args['variable']!r} has no time dimension and the "
                                  "file no scalar variable with standard_name 'time'")
            values = [scalar[0].values]
        if not np.issubdtype(np.asarray(values).dtype, np.datetime64):
            raise SourceError(f"{path}: its time is not decodable as CF time")
        return [pd.Timestamp(v).to_pydatetime() for v in values]


def read_frame(
    path: Path, index: int | None, args: dict[str, Any], step_minutes: int | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """One frame as rain rate (H, W) float32 mm/h, NaN where unobserved, with pysteps-style
    grid metadata (``x1``..``y2``, pixel sizes, ``yorigin``, ``projection``,
    ``cartesian_unit``).

    Raises:
        SourceError: naming the file and the problem (units, grid, shape).
    """
    with _open(path) as ds:
        da = _variable(ds, path, args)
        dim = _time_dim(da)
        if dim is not None:
            da = da.isel({dim: index or 0})
        if da.ndim != 2:
            raise SourceError(f"{path}: {da.name!r} has dimensions {da.dims}; expected "
                              "(time,) y, x")
        metadata = _grid(ds, da, path)
        field_ = da.values.astype(float)
        rate = _to_rain_rate(field_, da, ds, dim, args, step_minutes, path)
    return rate.astype(np.float32), metadata


def _to_rain_rate(field_: np.ndarray, da: xr.DataArray, ds: xr.Dataset, dim: str | None,
                  args: dict[str, Any], step_minutes: int | None, path: Path) -> np.ndarray:
    from pysteps.utils import to_rainrate

    units = str(da.attrs.get("units", "")).strip()
    metadata: dict[str, Any] = {"transform": None, "threshold": 0.0, "zerovalue": 0.0}
    if units in RATE_UNITS:
        return field_ * RATE_UNITS[units]
    if units in DEPTH_UNITS:
        minutes = args.get("accumulation_minutes") or _bounds_minutes(ds, dim) or step_minutes
        if not minutes:
            raise SourceError(f"{path}: {da.name!r} is a depth ({units}); give its "
                              "accumulation period (--importer_arg accumulation_minutes=N)")
        metadata.update(unit="mm", accutime=float(minutes))
        rate, _ = to_rainrate(field_ * DEPTH_UNITS[units], metadata)
        return rate
    if units in REFLECTIVITY_UNITS:
        metadata.update(unit="dBZ", transform="dB", threshold=-np.inf,
                        zr_a=float(args.get("zr_a", 200.0)), zr_b=float(args.get("zr_b", 1.6)))
        with np.errstate(invalid="ignore"):
            rate, _ = to_rainrate(field_, metadata)
        return rate
    known = ", ".join([*RATE_UNITS, *DEPTH_UNITS, "dBZ"])
    raise SourceError(f"{path}: {da.name!r} has units {units!r}; known units: {known}")


def _bounds_minutes(ds: xr.Dataset, dim: str | None) -> float | None:
    name = ds[dim].attrs.get("bounds") if dim is not None else None
    if name is None or name not in ds:
        return None
    width = np.diff(ds[name].values[0]).astype("timedelta64[s]").astype(float)
    return float(width[0]) / 60.0


def _grid(ds: xr.Dataset, da: xr.DataArray, path: Path) -> dict[str, Any]:
    ydim, xdim = da.dims
    x, y = (np.asarray(ds[d].values, float) if d in ds.coords else None for d in (xdim, ydim))
    if x is None or y is None or len(x) < 2 or len(y) < 2:
        raise SourceError(f"{path}: {da.name!r} needs 1-D coordinates on {ydim!r} and {xdim!r}")
    crs, unit = _crs(ds, da, xdim, path)
    scale: float | None = 1.0
    if unit != "degrees":
        scale = LENGTH_UNITS.get(str(ds[xdim].attrs.get("units", "m")))
        if scale is None:
            raise SourceError(f"{path}: unknown units {ds[xdim].attrs.get('units')!r} of "
                              f"{xdim!r}; known: {', '.join(LENGTH_UNITS)}")
    x, y = x * scale, y * scale
    dx, dy = float(abs(x[1] - x[0])), float(abs(y[1] - y[0]))
    return {
        "projection": crs, "cartesian_unit": unit,
        "x1": float(x.min() - dx / 2), "x2": float(x.max() + dx / 2),
        "y1": float(y.min() - dy / 2), "y2": float(y.max() + dy / 2),
        "xpixelsize": dx, "ypixelsize": dy, "yorigin": "upper" if y[0] > y[-1] else "lower",
    }


def _crs(ds: xr.Dataset, da: xr.DataArray, xdim: str, path: Path) -> tuple[str, str]:
    """PROJ string and coordinate unit (``m`` or ``degrees``) of the variable's grid."""
    name = da.attrs.get("grid_mapping")
    if name is not None:
        if name not in ds.variables:
            raise SourceError(f"{path}: grid_mapping {name!r} of {da.name!r} does not exist")
        try:
            crs = pyproj.CRS.from_cf(ds[name].attrs)
        except pyproj.exceptions.CRSError as err:
            raise SourceError(f"{path}: grid mapping {name!r} is not a CRS ({err})") from None
        unit = "degrees" if crs.is_geographic else "m"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return crs.to_proj4(), unit
    standard = ds[xdim].attrs.get("standard_name", "")
    if standard == "longitude" or str(ds[xdim].attrs.get("units", "")).startswith("degree"):
        return "+proj=longlat +datum=WGS84 +no_defs", "degrees"
    raise SourceError(f"{path}: {da.name!r} has no grid_mapping and {xdim!r} is not longitude")
