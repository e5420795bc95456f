"""The zarr v3 rain-rate store: one CF dataset per source and domain, laid out as the MLCast
source-data specification for radar precipitation asks (``mlcast.validate_dataset
source_data radar_precipitation STORE``).

Layout (store format version 2, attribute ``metnet_store_version``)::

    rain_rate     (time, y, x) float32, kg m-2 h-1 (= mm/h of water), NaN outside coverage;
                  standard_name rainfall_flux, grid_mapping crs; one zstd chunk per frame
    crs           the CF grid mapping (grid_mapping_name, projection parameters, crs_wkt,
                  spatial_ref)
    time          UTC instants, one per frame, strictly increasing
    missing_times the steps of the time grid without a frame (never filled)
    y, x          pixel centres: projection coordinates in metres, or latitude/longitude in
                  degrees for lon/lat grids
    lat, lon      (y, x) pixel-centre latitude and longitude, degrees

Global attributes: ``source``, ``crs`` (PROJ string), ``crs_wkt``, ``pixel_size_x``/
``pixel_size_y`` (projection units), ``step_minutes``, ``source_files`` (the raw files the
frames came from), ``license`` (SPDX, when given), ``history`` and the ``mlcast_*``
provenance attributes. Version 1 stores (``precip_rate`` in ``mm/h``, gaps in a
``time_gaps`` attribute, no grid-mapping variable or lat/lon) are still read, their rain
rate under the name ``rain_rate``, and appended to.

Writes are crash-safe: a new store is built beside its final path and renamed
into place, and frames appended to an existing store become visible only when
the consolidated metadata (one atomically replaced file) is rewritten last.
A reader therefore sees either the frames before an append or all of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyproj
import xarray as xr
import zarr
from zarr.codecs import ZstdCodec

from metnet.atomic import atomic_write
from metnet.times import utc_index

# Consolidated metadata is how appends commit atomically (see module docstring).
warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)

VARIABLE = "rain_rate"
#: The rain-rate variable of version 1 stores, read under :data:`VARIABLE`.
LEGACY_VARIABLE = "precip_rate"
#: The units of rain_rate: a CF rainfall flux numerically equal to mm/h of water.
UNITS = "kg m-2 h-1"
#: The units a store's rain rate may carry (version 1 stores say mm/h).
ACCEPTED_UNITS = (UNITS, "mm/h")
STORE_VERSION = 2
#: The MLCast validator release whose specification the stores follow.
MLCAST_VALIDATOR_VERSION = "0.4.0"
TIME_UNITS = "minutes since 1970-01-01 00:00:00"


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
    provenance: dict[str, Any] | None = None,
    geolocate: bool = True,
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
        provenance: extra global attributes (``license``, ``mlcast_created_by``, ...).
        geolocate: add the 2-D ``lat``/``lon`` coordinates (frames to append need not).
    """
    precip = np.asarray(precip, dtype=np.float32)
    time_index = utc_index(times)
    crs_obj = pyproj.CRS.from_user_input(crs)
    x, y = np.asarray(x, float), np.asarray(y, float)
    ds = xr.Dataset(
        {VARIABLE: (("time", "y", "x"), precip), "crs": ((), np.int32(0), grid_mapping(crs_obj))},
        coords={"time": time_index.values, "y": y, "x": x,
                "missing_times": ("missing_times", missing_times(time_index, step_minutes).values,
                                  {"long_name": "times of the step grid without a frame"}),
                **(lat_lon(x, y, crs_obj) if geolocate else {})},
    )
    ds[VARIABLE].attrs = {
        "units": UNITS,
        "long_name": "surface precipitation rate (1 kg m-2 h-1 = 1 mm/h of water)",
        "standard_name": "rainfall_flux",
        "grid_mapping": "crs",
    }
    ds["x"].attrs, ds["y"].attrs = _xy_attrs(crs_obj.is_geographic, xy_units)
    ds["time"].attrs = {"standard_name": "time", "axis": "T"}
    ds.attrs = {
        "Conventions": "CF-1.8",
        "metnet_store_version": STORE_VERSION,
        "source": source,
        "crs": crs if isinstance(crs, str) else crs_obj.to_proj4(),
        "crs_wkt": crs_obj.to_wkt(),
        "pixel_size_x": float(abs(x[1] - x[0])) if len(x) > 1 else float("nan"),
        "pixel_size_y": float(abs(y[1] - y[0])) if len(y) > 1 else float("nan"),
        "step_minutes": int(step_minutes),
        "source_files": [str(f) for f in source_files],
        **(provenance or {}),
    }
    if len(time_index):  # the step is regular from the first frame, missing times included
        ds.attrs["consistent_timestep_start"] = time_index[0].isoformat()
    return ds


def provenance(license: str | None = None, creator: str | None = None,
               identifier: str | None = None, history: str = "") -> dict[str, Any]:
    """The global attributes that say where a store comes from and on what terms: the
    MLCast metadata that metnet can state truthfully (the ones given, the creation time and
    the specification version), and a CF ``history`` line."""
    from metnet import __version__

    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    attrs: dict[str, Any] = {
        "history": f"{now} metnet {__version__}: {history}".strip().rstrip(":"),
        "mlcast_created_on": now,
        "mlcast_dataset_version": f"{STORE_VERSION}.0.0",
        "mlcast_dataset_validator_version": MLCAST_VALIDATOR_VERSION,
    }
    for key, value in (("license", license), ("mlcast_created_by", creator),
                       ("mlcast_dataset_identifier", identifier)):
        if value:
            attrs[key] = value
    return attrs


def grid_mapping(crs: pyproj.CRS) -> dict[str, Any]:
    """The CF grid-mapping attributes of ``crs`` (``grid_mapping_name``, its parameters,
    ``crs_wkt``), with GDAL's ``spatial_ref`` too."""
    with warnings.catch_warnings():  # to_cf notes what CF cannot say; the WKT says it
        warnings.simplefilter("ignore")
        attrs = crs.to_cf()
    attrs["spatial_ref"] = attrs["crs_wkt"]
    return attrs


def lat_lon(x: np.ndarray, y: np.ndarray, crs: pyproj.CRS) -> dict[str, tuple]:
    """2-D latitude and longitude of the pixel centres, as coordinates on (y, x)."""
    xx, yy = np.meshgrid(x, y)
    to_lonlat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(xx, yy)
    return {
        "lat": (("y", "x"), lat.astype(np.float32),
                {"standard_name": "latitude", "units": "degrees_north", "long_name": "latitude"}),
        "lon": (("y", "x"), lon.astype(np.float32),
                {"standard_name": "longitude", "units": "degrees_east", "long_name": "longitude"}),
    }


def _xy_attrs(geographic: bool, units: str) -> tuple[dict, dict]:
    if geographic:
        return ({"standard_name": "longitude", "units": "degrees_east", "axis": "X"},
                {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"})
    return ({"standard_name": "projection_x_coordinate", "units": units, "axis": "X"},
            {"standard_name": "projection_y_coordinate", "units": units, "axis": "Y"})


def missing_times(times: Sequence, step_minutes: int) -> pd.DatetimeIndex:
    """The steps between the first and last of ``times`` that have no frame."""
    index = utc_index(times)
    if len(index) < 2:
        return pd.DatetimeIndex([], dtype="datetime64[ns]")
    grid = pd.date_range(index[0], index[-1], freq=f"{int(step_minutes)}min")
    return grid.difference(index).astype("datetime64[ns]")


def gaps(ds: xr.Dataset) -> pd.DatetimeIndex:
    """A store's missing times, from ``missing_times`` (version 2) or the ``time_gaps``
    attribute (version 1)."""
    if "missing_times" in ds:
        return pd.DatetimeIndex(ds["missing_times"].values)
    step = int(ds.attrs["step_minutes"])
    stretches = [pd.date_range(a, b, freq=f"{step}min")
                 for a, b in ds.attrs.get("time_gaps", [])]
    return utc_index([t for stretch in stretches for t in stretch])


def _encoding(ds: xr.Dataset) -> dict:
    """One zstd chunk per frame, as the MLCast specification asks (``BENCHMARKS.md``
    compares it with a shard per frame of 256 x 256 inner chunks)."""
    _, height, width = ds[VARIABLE].shape
    encoding = {
        VARIABLE: {"chunks": (1, height, width), "compressors": [ZstdCodec(level=3)]},
        "time": {"units": TIME_UNITS, "dtype": "int64"},
    }
    if "missing_times" in ds:
        encoding["missing_times"] = {"units": TIME_UNITS, "dtype": "int64"}
    return encoding


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
    time_array, precip = group["time"], group[on_disk_variable(group)]
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
    missing = missing_times(all_times, int(attrs["step_minutes"]))
    if "missing_times" in group:
        missing_array = group["missing_times"]
        missing_array.resize((len(missing),))
        missing_array[:] = _encode_times(missing_array, missing.values)
    else:  # a version 1 store
        attrs["time_gaps"] = _stretches(missing, int(attrs["step_minutes"]))
    group.attrs.update(attrs)
    zarr.consolidate_metadata(path)


def on_disk_variable(group: zarr.Group) -> str:
    """The name of the rain-rate array in a store's zarr group (version 1 or 2)."""
    return VARIABLE if VARIABLE in group else LEGACY_VARIABLE


def _stretches(missing: pd.DatetimeIndex, step_minutes: int) -> list[list[str]]:
    """Missing times as ``[first, last]`` ISO pairs of consecutive steps (version 1)."""
    step = pd.Timedelta(minutes=step_minutes)
    pairs: list[list[str]] = []
    for t in missing:
        if pairs and pd.Timestamp(pairs[-1][1]) + step == t:
            pairs[-1][1] = t.isoformat()
        else:
            pairs.append([t.isoformat(), t.isoformat()])
    return pairs


def _encode_times(time_array: zarr.Array, times: np.ndarray) -> np.ndarray:
    units = time_array.attrs.get("units", TIME_UNITS)
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
    if LEGACY_VARIABLE in ds and VARIABLE not in ds:
        ds = ds.rename({LEGACY_VARIABLE: VARIABLE})
    ds.encoding["source"] = str(path)
    validate(ds, str(path))
    return ds


def check_store(path: str | Path, progress: bool = False) -> list[tuple[str, str]]:
    """Read every frame of a store: the ``(time, problem)`` of each frame whose chunk is
    missing (zarr would read it as NaN) or cannot be decoded; empty when all are sound.

    Raises:
        StoreError: when the store cannot be opened at all.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    times = open_store(path)["time"].values
    group = zarr.open_group(path, mode="r", use_consolidated=True)
    array = group[on_disk_variable(group)]
    bad = []
    for i in tqdm(range(len(times)), desc=f"check {path.name}", unit="frame",
                  disable=not progress):
        when = str(np.datetime_as_string(times[i], unit="m"))
        key = array.metadata.encode_chunk_key((i, *([0] * (array.ndim - 1))))
        if not (path / array.path / key).exists():
            bad.append((when, f"chunk {array.path}/{key} is missing"))
            continue
        try:
            array[i]
        except Exception as err:  # codecs raise anything from ValueError to RuntimeError
            bad.append((when, f"chunk {array.path}/{key} cannot be decoded "
                              f"({type(err).__name__}: {err})"))
    return bad


def validate(ds: xr.Dataset, name: str = "store") -> None:
    """Raise :class:`StoreError` unless ``ds`` follows the store contract."""
    if VARIABLE not in ds:
        raise StoreError(f"{name}: missing variable {VARIABLE!r}")
    var = ds[VARIABLE]
    if var.dims != ("time", "y", "x"):
        raise StoreError(f"{name}: {VARIABLE} has dims {var.dims}, expected ('time', 'y', 'x')")
    if var.dtype != np.float32:
        raise StoreError(f"{name}: {VARIABLE} is {var.dtype}, expected float32")
    if var.attrs.get("units") not in ACCEPTED_UNITS:
        raise StoreError(f"{name}: {VARIABLE} units are {var.attrs.get('units')!r}, not "
                         f"{UNITS} (= mm/h)")
    version = int(ds.attrs.get("metnet_store_version", 1))
    if version > STORE_VERSION:
        raise StoreError(f"{name}: store format version {version} is newer than this metnet "
                         f"reads ({STORE_VERSION}); upgrade metnet")
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
