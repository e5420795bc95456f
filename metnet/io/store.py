"""The zarr v3 rain-rate store: one CF dataset per source and domain.

Layout::

    precip_rate (time, y, x) float32, mm/h, NaN outside radar coverage
    time        UTC instants, one per frame, gaps allowed (never filled)
    y, x        pixel centres in projection units (``x.attrs["units"]``)

Global attributes: ``source``, ``crs`` (PROJ string), ``crs_wkt``,
``pixel_size_x``/``pixel_size_y`` (projection units), ``step_minutes``,
``source_files`` (the raw files the frames came from) and ``time_gaps``.

Writes are crash-safe: a new store is built beside its final path and renamed
into place, and frames appended to an existing store become visible only when
the consolidated metadata (one atomically replaced file) is rewritten last.
A reader therefore sees either the frames before an append or all of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import xarray as xr
import zarr

from metnet.atomic import atomic_write
from metnet.times import utc_index

# Consolidated metadata is how appends commit atomically (see module docstring).
warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)

VARIABLE = "precip_rate"
UNITS = "mm/h"
TIME_CHUNK = 4
SPACE_CHUNK = 256


class StoreError(ValueError):
    """A store that is missing, unreadable or breaks the store contract."""


def make_dataset(
    precip: np.ndarray,
    times: Sequence,
    x: np.ndarray,
    y: np.ndarray,
    *,
    crs: str,
    source: str,
    step_minutes: int,
    xy_units: str = "m",
    source_files: Sequence[str] = (),
) -> xr.Dataset:
    """Build a store-conformant dataset.

    Args:
        precip: rain rate (T, H, W) in mm/h, NaN where nothing was observed.
        times: T UTC instants (naive, or tz-aware which are converted to UTC).
        x: W pixel-centre abscissae in projection units.
        y: H pixel-centre ordinates in projection units (row order of ``precip``).
        crs: PROJ string (or anything ``pyproj.CRS`` accepts) of the grid.
        source: short name of the source (``fmi``, ``synthetic``, ...).
        step_minutes: the nominal time step of the archive.
        xy_units: units of ``x``/``y`` (``m`` or ``degrees``).
        source_files: the raw files, one per frame.
    """
    precip = np.asarray(precip, dtype=np.float32)
    time_index = utc_index(times)
    crs_obj = pyproj.CRS.from_user_input(crs)
    ds = xr.Dataset(
        {VARIABLE: (("time", "y", "x"), precip)},
        coords={"time": time_index.values, "y": np.asarray(y, float), "x": np.asarray(x, float)},
    )
    ds[VARIABLE].attrs = {
        "units": UNITS,
        "long_name": "surface precipitation rate",
        "standard_name": "rainfall_rate",
        "grid_mapping": "crs",
    }
    ds["x"].attrs = {"units": xy_units, "standard_name": "projection_x_coordinate", "axis": "X"}
    ds["y"].attrs = {"units": xy_units, "standard_name": "projection_y_coordinate", "axis": "Y"}
    ds["time"].attrs = {"standard_name": "time", "axis": "T"}
    ds.attrs = {
        "Conventions": "CF-1.8",
        "source": source,
        "crs": crs if isinstance(crs, str) else crs_obj.to_proj4(),
        "crs_wkt": crs_obj.to_wkt(),
        "pixel_size_x": float(abs(x[1] - x[0])) if len(x) > 1 else float("nan"),
        "pixel_size_y": float(abs(y[1] - y[0])) if len(y) > 1 else float("nan"),
        "step_minutes": int(step_minutes),
        "source_files": [str(f) for f in source_files],
    }
    ds.attrs["time_gaps"] = time_gaps(time_index, step_minutes)
    return ds


def time_gaps(times: Sequence, step_minutes: int) -> list[list[str]]:
    """Missing stretches of a time axis as ``[first_missing, last_missing]`` ISO pairs."""
    index = utc_index(times)
    step = pd.Timedelta(minutes=step_minutes)
    gaps = []
    for before, after in zip(index[:-1], index[1:], strict=True):
        if after - before > step:
            gaps.append([(before + step).isoformat(), (after - step).isoformat()])
    return gaps


def _encoding(ds: xr.Dataset) -> dict:
    _, height, width = ds[VARIABLE].shape
    chunks = (TIME_CHUNK, min(SPACE_CHUNK, height), min(SPACE_CHUNK, width))
    return {
        VARIABLE: {"chunks": chunks},
        "time": {"units": "minutes since 1970-01-01 00:00:00", "dtype": "int64"},
    }


def write_store(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a complete dataset as a new store, atomically (built aside, renamed in).

    Raises:
        StoreError: if ``path`` already exists.
    """
    path = Path(path)
    if path.exists():
        raise StoreError(f"{path}: already exists; remove it or choose another --out")
    with atomic_write(path) as tmp:
        ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=True, encoding=_encoding(ds))
    return path


def append_frames(path: str | Path, new: xr.Dataset) -> None:
    """Append frames (later than the store's last) to an existing store, crash-safely.

    The data and per-array metadata are written first; the consolidated
    metadata that readers use is rewritten last, so a kill before that leaves
    the store exactly as it was.
    """
    path = Path(path)
    group = zarr.open_group(path, mode="r+", use_consolidated=True)
    # Hold the array objects: each group[...] lookup rebuilds one from the stale consolidated
    # metadata, which would silently drop writes beyond the old shape.
    time_array, precip = group["time"], group[VARIABLE]
    n_old, n_new = time_array.shape[0], new.sizes["time"]
    if precip.shape[1:] != new[VARIABLE].shape[1:]:
        raise StoreError(
            f"{path}: new frames are {new[VARIABLE].shape[1:]}, store is {precip.shape[1:]}"
        )
    encoded_time = _encode_times(time_array, new["time"].values)
    precip.resize((n_old + n_new, *precip.shape[1:]))
    precip[n_old:] = new[VARIABLE].values.astype(np.float32)
    time_array.resize((n_old + n_new,))
    time_array[n_old:] = encoded_time
    all_times = _decode_times(time_array)
    attrs = dict(group.attrs)
    attrs["source_files"] = list(attrs.get("source_files", [])) + list(
        new.attrs.get("source_files", [])
    )
    attrs["time_gaps"] = time_gaps(all_times, int(attrs["step_minutes"]))
    group.attrs.update(attrs)
    zarr.consolidate_metadata(path)


def _encode_times(time_array: zarr.Array, times: np.ndarray) -> np.ndarray:
    units = time_array.attrs.get("units", "minutes since 1970-01-01 00:00:00")
    if not units.startswith("minutes since 1970-01-01"):
        raise StoreError(f"unexpected time encoding {units!r}")
    minutes = (pd.DatetimeIndex(times) - pd.Timestamp("1970-01-01")) // pd.Timedelta(minutes=1)
    return np.asarray(minutes, dtype=time_array.dtype)


def _decode_times(time_array: zarr.Array) -> pd.DatetimeIndex:
    return pd.Timestamp("1970-01-01") + pd.to_timedelta(time_array[:], unit="min")


def open_store(path: str | Path) -> xr.Dataset:
    """Open a store lazily and check it against the store contract.

    Raises:
        StoreError: with a one-line message naming the store and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such store")
    try:
        ds = xr.open_zarr(path, consolidated=True)
    except Exception as err:  # zarr/xarray raise many types for a damaged store
        raise StoreError(f"{path}: not a readable zarr store ({err})") from err
    validate(ds, str(path))
    return ds


def validate(ds: xr.Dataset, name: str = "store") -> None:
    """Raise :class:`StoreError` unless ``ds`` follows the store contract."""
    if VARIABLE not in ds:
        raise StoreError(f"{name}: missing variable {VARIABLE!r}")
    var = ds[VARIABLE]
    if var.dims != ("time", "y", "x"):
        raise StoreError(f"{name}: {VARIABLE} has dims {var.dims}, expected ('time', 'y', 'x')")
    if var.dtype != np.float32:
        raise StoreError(f"{name}: {VARIABLE} is {var.dtype}, expected float32")
    if var.attrs.get("units") != UNITS:
        raise StoreError(f"{name}: {VARIABLE} units are {var.attrs.get('units')!r}, not {UNITS}")
    for key in ("source", "crs", "step_minutes", "pixel_size_x", "pixel_size_y"):
        if key not in ds.attrs:
            raise StoreError(f"{name}: missing attribute {key!r}")
    if not np.issubdtype(ds["time"].dtype, np.datetime64):
        raise StoreError(f"{name}: time coordinate is not a datetime")
    times = ds["time"].values
    if len(times) > 1 and not (np.diff(times) > np.timedelta64(0)).all():
        raise StoreError(f"{name}: times are not strictly increasing")
    step = np.timedelta64(int(ds.attrs["step_minutes"]), "m")
    if len(times) and ((times - times[0]) % step != np.timedelta64(0)).any():
        raise StoreError(f"{name}: some times are off the {ds.attrs['step_minutes']}-minute step")
    try:
        pyproj.CRS.from_user_input(ds.attrs["crs"])
    except pyproj.exceptions.CRSError as err:
        raise StoreError(f"{name}: invalid crs {ds.attrs['crs']!r}") from err
