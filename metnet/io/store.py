"""The zarr v3 rain-rate store: one CF dataset per source and domain, laid out as the MLCast
source-data specification for radar precipitation asks (``mlcast.validate_dataset
source_data radar_precipitation STORE``).

Layout (store format version 3, attribute ``metnet_store_version``)::

    rain_rate     (time, y, x) float32, kg m-2 h-1 (= mm/h of water), NaN outside coverage;
                  standard_name rainfall_flux, grid_mapping crs; one zstd chunk per frame
    crs           the CF grid mapping (grid_mapping_name, projection parameters, crs_wkt,
                  spatial_ref)
    time          UTC instants, one per frame, strictly increasing
    source_file   (time) the raw file each frame was read from ("" when none), a coordinate
    missing_times the steps of the time grid without a frame (never filled)
    y, x          pixel centres: projection coordinates in metres, or latitude/longitude in
                  degrees for lon/lat grids
    lat, lon      (y, x) pixel-centre latitude and longitude, degrees

Global attributes: ``source``, ``crs`` (PROJ string), ``crs_wkt``, ``pixel_size_x``/
``pixel_size_y`` (projection units), ``step_minutes``, ``license`` (SPDX, when given),
``history`` and the ``mlcast_*`` provenance attributes. The 1-D arrays along time (``time``,
``source_file``) are chunked by :data:`TIME_CHUNK` frames, so that an append rewrites one
chunk and opening a year-long store reads a few objects, not one per commit.

Older stores are read and appended to as they are: version 2 stores (the raw files in a
``source_files`` attribute, which every append rewrote whole, and the times in chunks of
one commit), and version 1 stores (``precip_rate`` in ``mm/h``, gaps in a ``time_gaps``
attribute, no grid-mapping variable or lat/lon), their rain rate under the name
``rain_rate``.

Writes are crash-safe: a new store is built beside its final path and renamed
into place, and frames appended to an existing store become visible only when
the consolidated metadata (one atomically replaced file) is rewritten last.
A reader therefore sees either the frames before an append or all of them.

Stores are read from a local path or from any URL fsspec opens (``https://``, ``s3://``,
``gs://``, ...; :func:`open_store`). Stores of other makers laid out per the MLCast
specification are read too, whatever their radar variable is called and in whichever units
the specification allows (rain rate, precipitation amount per step, or reflectivity in dBZ
through Marshall-Palmer): the rate is converted when frames are read (:class:`RateSource`),
and the attributes metnet needs (``crs``, ``step_minutes``, pixel sizes, ``source``) are
derived from the grid mapping and the coordinates. What metnet derives from a store (motion
caches, the sample index) goes to a local folder (:func:`cache_folder`).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyproj
import xarray as xr
import zarr
from xarray.backends import BackendArray
from xarray.core import indexing
from zarr.codecs import ZstdCodec

from metnet.atomic import atomic_write
from metnet.io.cf_source import DEPTH_UNITS, RATE_UNITS, REFLECTIVITY_UNITS
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
STORE_VERSION = 3
#: Frames per chunk of the arrays along time (``time``, ``source_file``): 57 days of
#: 5-minute frames in one object of at most 128 kB of times.
TIME_CHUNK = 2**14
#: The MLCast validator release whose specification the stores follow.
MLCAST_VALIDATOR_VERSION = "0.4.0"
TIME_UNITS = "minutes since 1970-01-01 00:00:00"
#: Standard names of the radar variable the MLCast specification allows, in order of
#: preference when a store holds several.
MLCAST_STANDARD_NAMES = ("rainfall_flux", "precipitation_flux", "equivalent_reflectivity_factor",
                         "precipitation_amount", "rainfall_amount")
#: Marshall-Palmer Z = a R^b, for reflectivity stores that state no ``zr_a``/``zr_b``.
MARSHALL_PALMER = (200.0, 1.6)
#: The folder beside a local store that holds what metnet derives from it.
CACHE_DIR = ".metnet-cache"
#: The root metadata documents that hold every array's metadata (zarr v3, consolidated v2),
#: in the order they are looked for: what a remote store is fingerprinted by and a watch
#: polls.
METADATA_DOCUMENTS = ("zarr.json", ".zmetadata")


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
        precip: rain rate (T, H, W) in mm/h, NaN where nothing was observed: an array, or a
            Dask array, kept lazy (its chunks are computed where they are written).
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
    precip = precip.astype(np.float32) if _is_dask(precip) else np.asarray(precip, np.float32)
    time_index = utc_index(times)
    crs_obj = pyproj.CRS.from_user_input(crs)
    x, y = np.asarray(x, float), np.asarray(y, float)
    ds = xr.Dataset(
        {VARIABLE: (("time", "y", "x"), precip), "crs": ((), np.int32(0), grid_mapping(crs_obj))},
        coords={"time": time_index.values, "y": y, "x": x,
                "source_file": ("time", _file_names(source_files, len(time_index)),
                                {"long_name": "the raw file each frame was read from"}),
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
        **(provenance or {}),
    }
    if len(time_index):  # the step is regular from the first frame, missing times included
        ds.attrs["consistent_timestep_start"] = time_index[0].isoformat()
    return ds


def _file_names(files: Sequence[str], frames: int) -> np.ndarray:
    """The raw file of each of ``frames`` frames as strings (empty when none is given)."""
    names = [str(f) for f in files]
    if names and len(names) != frames:
        raise ValueError(f"{len(names)} source files for {frames} frames")
    return np.array(names or [""] * frames, dtype=object)


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
    """A store's missing times, from ``missing_times`` (versions 2 and 3) or the ``time_gaps``
    attribute (version 1)."""
    if "missing_times" in ds:
        return pd.DatetimeIndex(ds["missing_times"].values)
    step = int(ds.attrs["step_minutes"])
    stretches = [pd.date_range(a, b, freq=f"{step}min")
                 for a, b in ds.attrs.get("time_gaps", [])]
    return utc_index([t for stretch in stretches for t in stretch])


#: Entries per chunk of the ``missing_times`` array.
MISSING_TIMES_CHUNK = 2**17


def _encoding(ds: xr.Dataset) -> dict:
    """One zstd chunk per frame, as the MLCast specification asks (``BENCHMARKS.md``
    compares it with a shard per frame of 256 x 256 inner chunks)."""
    _, height, width = ds[VARIABLE].shape
    encoding = {
        VARIABLE: {"chunks": (1, height, width), "compressors": [ZstdCodec(level=3)]},
        "time": {"units": TIME_UNITS, "dtype": "int64", "chunks": (TIME_CHUNK,)},
    }
    if "source_file" in ds:
        encoding["source_file"] = {"chunks": (TIME_CHUNK,)}
    if "missing_times" in ds:
        # one chunk for a year of 5-minute gaps: sized by the first write, a two-event store
        # got one chunk per missing time (10^5 files)
        encoding["missing_times"] = {"units": TIME_UNITS, "dtype": "int64",
                                     "chunks": (MISSING_TIMES_CHUNK,)}
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
        # an absolute path: the workers of a Dask cluster write a Dask array's chunks
        ds.to_zarr(tmp.absolute(), mode="w-", zarr_format=3, consolidated=True,
                   encoding=_encoding(ds))
    return path


def append_frames(path: str | Path, new: xr.Dataset) -> None:
    """Append frames (later than the store's last) to an existing store, crash-safely.

    The data and per-array metadata are written first; the consolidated
    metadata that readers use is rewritten last, so a kill before that leaves
    the store exactly as it was.
    """
    path = Path(path)
    group = zarr.open_group(path.absolute(), mode="r+", use_consolidated=True)
    # Hold the array objects: each group[...] lookup rebuilds one from the stale consolidated
    # metadata, which would silently drop writes beyond the old shape.
    try:
        variable = on_disk_variable(group)
    except StoreError as err:
        raise StoreError(f"{path}: {err}") from None
    time_array, precip = group["time"], group[variable]
    files = group.get("source_file")
    n_old, n_new = time_array.shape[0], new.sizes["time"]
    if precip.shape[1:] != new[VARIABLE].shape[1:]:
        raise StoreError(
            f"{path}: new frames are {new[VARIABLE].shape[1:]}, store is {precip.shape[1:]}"
        )
    encoded_time = _encode_times(time_array, new["time"].values)
    precip.resize((n_old + n_new, *precip.shape[1:]))
    _write_frames(precip, n_old, new[VARIABLE].data)
    time_array.resize((n_old + n_new,))
    time_array[n_old:] = encoded_time
    all_times = _decode_times(time_array)
    attrs = dict(group.attrs)
    new_files = new["source_file"].values if "source_file" in new else np.full(n_new, "", object)
    if files is not None:
        files.resize((n_old + n_new,))
        files[n_old:] = new_files
    else:  # a version 1 or 2 store
        attrs["source_files"] = list(attrs.get("source_files", [])) + new_files.tolist()
    missing = missing_times(all_times, int(attrs["step_minutes"]))
    if "missing_times" in group:
        missing_array = group["missing_times"]
        missing_array.resize((len(missing),))
        missing_array[:] = _encode_times(missing_array, missing.values)
    else:  # a version 1 store
        attrs["time_gaps"] = _stretches(missing, int(attrs["step_minutes"]))
    group.attrs.update(attrs)
    zarr.consolidate_metadata(path)


def _write_frames(array: zarr.Array, first: int, values: Any) -> None:
    """Write frames into ``array[first:]``. A Dask array, into an array of one frame per
    stored object, is written chunk by chunk where its chunks are (on a cluster's workers;
    writes of different frames touch different objects); anything else is computed here and
    written at once."""
    if _is_dask(values) and (array.shards or array.chunks)[0] == 1:
        import dask.array as da

        da.store(values.astype(np.float32), array, regions=(slice(first, None),), lock=False)
    else:
        array[first:] = np.asarray(values, dtype=np.float32)


def _is_dask(values: Any) -> bool:
    """Whether ``values`` is a Dask collection (there is none before Dask is imported)."""
    dask = sys.modules.get("dask")
    return dask is not None and dask.is_dask_collection(values)


def on_disk_variable(group: zarr.Group) -> str:
    """The name of the rain-rate array in the zarr group of a store metnet wrote (version 1,
    2 or 3).

    Raises:
        StoreError: for a store metnet did not write (no rain-rate array of its own).
    """
    for name in (VARIABLE, LEGACY_VARIABLE):
        if name in group:
            return name
    raise StoreError(f"no {VARIABLE!r} array: metnet appends only to stores it wrote")


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


def is_remote(store: str | Path) -> bool:
    """Whether ``store`` is a URL of a remote file system (``https://``, ``s3://``, ...)
    rather than a local path (``file://`` URLs are local)."""
    return fsspec.utils.get_protocol(str(store)) not in ("file", "local")


def local_path(store: str | Path) -> Path:
    """The local path of a store given as a path or a ``file://`` URL."""
    text = str(store)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def store_location(store: str | Path) -> str:
    """A store's URL, or its local path made absolute: what names it wherever it is opened
    from."""
    return str(store) if is_remote(store) else str(local_path(store).resolve())


def store_name(store: str | Path) -> str:
    """A store's short name: its folder's stem (``radar`` for ``s3://bucket/radar.zarr``)."""
    return PurePosixPath(str(store).rstrip("/")).stem


def open_store(store: str | Path, storage_options: dict[str, Any] | None = None) -> xr.Dataset:
    """Open a store lazily from a local path or an fsspec URL, and check it against the
    store contract.

    A store of another maker laid out per the MLCast specification is returned as a metnet
    store: its radar variable, converted to mm/h as it is read, as ``rain_rate``, and the
    attributes metnet reads derived (:func:`_as_metnet_store`). How ``rain_rate`` is stored
    on disk is ``ds.encoding["rate_source"]`` (:class:`RateSource`).

    Args:
        store: a local path, or a URL (``https://host/radar.zarr``, ``s3://bucket/radar.zarr``,
            ``gs://bucket/radar.zarr``) with consolidated metadata or a listable folder.
        storage_options: fsspec options of a URL's file system (``{"anon": true,
            "endpoint_url": "https://..."}`` for a public bucket of a non-AWS object store);
            credentials otherwise come from the usual places (environment, ``~/.aws``, ...).

    Raises:
        StoreError: with a one-line message naming the store and the problem.
    """
    name = str(store)
    try:
        if is_remote(name):
            _reach(name, storage_options or {})
            ds = xr.open_zarr(name, consolidated=None, storage_options=storage_options or {})
        else:
            path = local_path(name)
            if not path.exists():
                raise StoreError(f"{path}: no such store")
            # a metnet store always has consolidated metadata: its appends commit through it
            ds = xr.open_zarr(path, consolidated=True)
    except StoreError:
        raise
    except Exception as err:  # zarr, xarray and fsspec raise many types for a bad store
        raise StoreError(f"{name}: not a readable zarr store ({_one_line(err)})") from None
    if LEGACY_VARIABLE in ds and VARIABLE not in ds:
        ds = ds.rename({LEGACY_VARIABLE: VARIABLE})
        ds.encoding["rate_source"] = RateSource(LEGACY_VARIABLE, "mm/h",
                                                **cf_packing(ds[VARIABLE].encoding))
    elif VARIABLE in ds:
        ds.encoding["rate_source"] = RateSource(VARIABLE, UNITS,
                                                **cf_packing(ds[VARIABLE].encoding))
    else:
        ds = _as_metnet_store(ds, name)
    ds.encoding["source"] = name
    validate(ds, name)
    return ds


def _reach(url: str, storage_options: dict[str, Any]) -> None:
    """Ask for a URL store's root metadata document before zarr does (zarr asks for several
    at once, and a failing remote file system then leaves a traceback per request on
    stderr).

    Raises:
        StoreError: naming the URL, when it cannot be reached or holds no zarr store.
    """
    fs, root = fsspec.core.url_to_fs(url, **storage_options)
    documents = (*METADATA_DOCUMENTS, ".zgroup")  # an unconsolidated zarr v2 store too
    for document in documents:
        try:
            fs.info(f"{root.rstrip('/')}/{document}")
            return
        except FileNotFoundError as err:
            cause = err.__cause__  # fsspec's HTTP file system reports any failure as not found
            missing = isinstance(cause, FileNotFoundError) or getattr(cause, "status", 0) == 404
            if cause is not None and not missing:
                raise StoreError(f"{url}: cannot be read ({_one_line(cause)})") from None
            continue
        except Exception as err:  # each file system raises its own connection errors
            raise StoreError(f"{url}: cannot be read ({_one_line(err)})") from None
    raise StoreError(f"{url}: no zarr store there (none of {', '.join(documents)})")


def _one_line(err: BaseException) -> str:
    """An exception as ``Type: message`` on one line."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}".rstrip(": ")


@dataclass(frozen=True)
class RateSource:
    """The on-disk radar variable of a store and how its values become rain rate in mm/h.

    Attributes:
        variable: the array's name in the store's zarr group.
        units: its units: a rate (``mm/h``, ``kg m-2 s-1``, ...), a depth per step (``mm``,
            ``kg m-2``) or reflectivity (``dBZ``).
        step_minutes: the store's step (the accumulation period of a depth).
        zr: ``(a, b)`` of Z = a R^b, for reflectivity.
        scale_factor, add_offset, fill_value: the variable's CF packing (``_FillValue``:
            None where there is none or it is NaN), which xarray undoes itself and a raw
            zarr read must undo (:meth:`raw_to_rate`).
    """

    variable: str
    units: str
    step_minutes: int = 0
    zr: tuple[float, float] = MARSHALL_PALMER
    scale_factor: float = 1.0
    add_offset: float = 0.0
    fill_value: float | None = None

    def __post_init__(self) -> None:
        known = (*RATE_UNITS, *DEPTH_UNITS, *REFLECTIVITY_UNITS)
        if self.units not in known:
            raise StoreError(f"{self.variable} has units {self.units!r}; metnet reads "
                             f"{', '.join(known)}")

    def to_rate(self, values: np.ndarray) -> np.ndarray:
        """Rain rate (float32, mm/h, NaN where ``values`` is NaN) of raw store values."""
        values = np.asarray(values, dtype=np.float32)
        if self.units in RATE_UNITS:
            factor = RATE_UNITS[self.units]
            return values if factor == 1.0 else values * np.float32(factor)
        if self.units in DEPTH_UNITS:
            return values * np.float32(DEPTH_UNITS[self.units] * 60.0 / self.step_minutes)
        a, b = self.zr  # dBZ -> Z (mm6 m-3) -> R = (Z / a)^(1 / b)
        return ((10.0 ** (values / 10.0)) / a) ** (1.0 / b)

    @property
    def packing(self) -> dict[str, float]:
        """The CF packing fields that differ from no packing (empty for most stores): what
        derived caches add to their keys, so that caches made before the packing was undone
        are rebuilt and all others kept."""
        unpacked = {"scale_factor": 1.0, "add_offset": 0.0, "fill_value": None}
        return {k: getattr(self, k) for k, v in unpacked.items() if getattr(self, k) != v}

    def raw_to_rate(self, raw: np.ndarray) -> np.ndarray:
        """Rain rate (float32, mm/h) of values read from the zarr array itself, not through
        xarray: CF-decoded first as xarray decodes them (the fill value -> NaN, then times
        ``scale_factor`` plus ``add_offset``)."""
        if self.fill_value is None and (self.scale_factor, self.add_offset) == (1.0, 0.0):
            return self.to_rate(raw)
        raw = np.asarray(raw)
        values = raw * np.float64(self.scale_factor) + self.add_offset  # float64, as xarray's
        if self.fill_value is not None:
            values = np.where(raw == self.fill_value, np.nan, values)
        return self.to_rate(values)


def cf_packing(encoding: dict[str, Any]) -> dict[str, Any]:
    """The :class:`RateSource` CF packing fields of a variable xarray opened, from its
    ``encoding``."""
    fill = encoding.get("_FillValue")
    fill = None if fill is None or np.isnan(float(fill)) else float(fill)
    return {"scale_factor": float(encoding.get("scale_factor", 1.0)),
            "add_offset": float(encoding.get("add_offset", 0.0)), "fill_value": fill}


def rate_source(ds: xr.Dataset) -> RateSource:
    """How an opened store's ``rain_rate`` is stored (set by :func:`open_store`)."""
    return ds.encoding.get("rate_source", RateSource(VARIABLE, UNITS))


class _RateArray(BackendArray):
    """A store's radar variable as rain rate in mm/h, converted as it is indexed."""

    def __init__(self, variable: xr.Variable, source: RateSource) -> None:
        self.variable, self.source = variable, source
        self.shape, self.dtype = variable.shape, np.dtype(np.float32)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape,
                                                  indexing.IndexingSupport.OUTER, self._read)

    def _read(self, key: tuple) -> np.ndarray:
        return self.source.to_rate(np.asarray(self.variable[key].values))


def _as_metnet_store(ds: xr.Dataset, name: str) -> xr.Dataset:
    """An MLCast-layout store of another maker as metnet reads stores: its radar variable
    (the first by :data:`MLCAST_STANDARD_NAMES`) as ``rain_rate`` in mm/h, converted lazily,
    and ``crs`` (from the grid mapping), ``step_minutes`` (from the times and
    ``missing_times``), ``pixel_size_x``/``pixel_size_y`` and ``source`` derived."""
    candidates = {str(v.attrs.get("standard_name")): k for k, v in ds.data_vars.items()
                  if v.dims == ("time", "y", "x")}
    found = next((candidates[s] for s in MLCAST_STANDARD_NAMES if s in candidates), None)
    if found is None:
        raise StoreError(f"{name}: missing variable {VARIABLE!r} (nor a (time, y, x) variable "
                         f"whose standard_name is one of {', '.join(MLCAST_STANDARD_NAMES)})")
    source_var = ds[found]
    attrs = dict(ds.attrs)
    attrs.setdefault("step_minutes", _step_minutes(ds, name))
    attrs.setdefault("source", attrs.get("mlcast_dataset_identifier") or store_name(name))
    for axis in ("x", "y"):
        values = ds[axis].values
        attrs.setdefault(f"pixel_size_{axis}",
                         float(abs(values[1] - values[0])) if len(values) > 1 else float("nan"))
    mapping = ds.get(str(source_var.attrs.get("grid_mapping", "crs")))
    wkt = None if mapping is None else (mapping.attrs.get("crs_wkt")
                                        or mapping.attrs.get("spatial_ref"))
    if "crs" not in attrs and wkt:
        attrs["crs"] = wkt
    zr = (float(source_var.attrs.get("zr_a", MARSHALL_PALMER[0])),
          float(source_var.attrs.get("zr_b", MARSHALL_PALMER[1])))
    try:
        source = RateSource(found, str(source_var.attrs.get("units", "")).strip(),
                            int(attrs["step_minutes"]), zr, **cf_packing(source_var.encoding))
    except StoreError as err:
        raise StoreError(f"{name}: {err}") from None
    rate = xr.Variable(source_var.dims, indexing.LazilyIndexedArray(
        _RateArray(source_var.variable, source)), {
        "units": UNITS, "standard_name": "rainfall_flux", "grid_mapping":
        source_var.attrs.get("grid_mapping", "crs"),
        "long_name": f"surface precipitation rate from {found} ({source.units})"})
    out = ds.drop_vars(found).assign({VARIABLE: rate})
    out.attrs = attrs
    out.encoding = dict(ds.encoding, rate_source=source)
    return out


def _step_minutes(ds: xr.Dataset, name: str) -> int:
    """The step of a store without ``step_minutes``: the smallest spacing of its times and
    missing times, from ``consistent_timestep_start`` on."""
    times = pd.DatetimeIndex(ds["time"].values)
    if "missing_times" in ds:
        times = times.union(pd.DatetimeIndex(ds["missing_times"].values))
    start = ds.attrs.get("consistent_timestep_start")
    if start:
        times = times[times >= pd.Timestamp(start).tz_localize(None)]
    steps = np.diff(times.values) // np.timedelta64(1, "m")
    if not len(steps) or steps.min() < 1:
        raise StoreError(f"{name}: no step_minutes attribute and too few times to infer it")
    return int(steps.min())


def store_fingerprint(store: str | Path, storage_options: dict[str, Any] | None = None) -> str:
    """A hash that changes whenever a store is written: of its file names, sizes and
    modification times for a local store; of its root metadata document (``zarr.json`` or
    ``.zmetadata``, holding every array's shape and the consolidated metadata) for a remote
    one."""
    digest = hashlib.sha1()
    if not is_remote(store):
        root = local_path(store)
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        return digest.hexdigest()
    fs, root = fsspec.core.url_to_fs(str(store), **(storage_options or {}))
    for document in METADATA_DOCUMENTS:
        try:
            digest.update(fs.cat_file(f"{root.rstrip('/')}/{document}"))
            return digest.hexdigest()
        except FileNotFoundError:
            continue
    raise StoreError(f"{store}: no {' or '.join(METADATA_DOCUMENTS)} to fingerprint the store "
                     "by")


def cache_folder(store: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The local folder, created, for what metnet derives from a store (motion caches, the
    sample index).

    ``cache_dir`` when given (its sub-folder named after the store's URL or absolute path:
    stores of one name elsewhere must not share a folder);
    otherwise ``.metnet-cache`` beside a local store, or, for a remote store or a local one
    whose folder cannot be written, ``$XDG_CACHE_HOME/metnet/<store path or URL>`` (default
    ``~/.cache/metnet/...``).

    Raises:
        StoreError: naming every folder tried, when none can be written.
    """
    problems = []
    for folder in cache_folders(store, cache_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                return folder
        except OSError as err:
            problems.append(f"{folder} ({err.strerror or type(err).__name__})")
    raise StoreError(f"{store}: no writable cache folder for what metnet derives from it: "
                     f"tried {', '.join(problems)}; give a writable one (--data.cache_dir)")


def cache_folders(store: str | Path, cache_dir: str | Path | None = None) -> list[Path]:
    """The folders :func:`cache_folder` tries for a store, in order, neither created nor
    checked (for finding what was derived from a store without creating anything)."""
    key = store_location(store)
    user = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "metnet"
            / _folder_name(key))
    if cache_dir:
        return [Path(cache_dir).expanduser() / _folder_name(key)]
    if is_remote(store):
        return [user]
    return [local_path(store).parent / CACHE_DIR, user]


def _folder_name(key: str) -> str:
    """A file-system-safe folder name for a store path or URL, unique to it."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_.")[-80:]
    return f"{safe}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def open_group(store: str | Path, storage_options: dict[str, Any] | None = None) -> zarr.Group:
    """A store's zarr group, read-only, from a local path or a URL (for reads that bypass
    xarray)."""
    if is_remote(store):
        return zarr.open_group(str(store), mode="r", storage_options=storage_options or {},
                               use_consolidated=None)
    return zarr.open_group(local_path(store), mode="r", use_consolidated=True)


def check_store(store: str | Path, progress: bool = False,
                storage_options: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """Read every frame of a store: the ``(time, problem)`` of each frame with a chunk that
    is missing (zarr would read it as the fill value) or cannot be decoded; empty when all
    are sound. Every chunk (or shard) a frame touches is checked, however the store is
    chunked in time and space.

    Raises:
        StoreError: when the store cannot be opened at all.
    """
    from tqdm.auto import tqdm

    ds = open_store(store, storage_options)
    times = ds["time"].values
    array = open_group(store, storage_options)[rate_source(ds).variable]
    fs, root = fsspec.core.url_to_fs(str(store), **(storage_options or {}))
    stored = array.shards or array.chunks  # the shape of one stored object
    grid = [range(-(-n // c)) for n, c in zip(array.shape[1:], stored[1:], strict=True)]
    exists: dict[str, bool] = {}  # a chunk of several frames is looked for once
    bad = []
    for i in tqdm(range(len(times)), desc=f"check {store_name(store)}", unit="frame",
                  disable=not progress):
        when = str(np.datetime_as_string(times[i], unit="m"))
        keys = [f"{array.path}/{array.metadata.encode_chunk_key((i // stored[0], *spatial))}"
                for spatial in itertools.product(*grid)]
        for key in keys:
            if key not in exists:
                exists[key] = fs.exists(f"{root.rstrip('/')}/{key}")
        if missing := [key for key in keys if not exists[key]]:
            bad.append((when, f"{_chunks(missing)} {'is' if len(missing) == 1 else 'are'} "
                              "missing"))
            continue
        try:
            array[i]
        except Exception as err:  # codecs raise anything from ValueError to RuntimeError
            which = _chunks(keys) if len(keys) == 1 else f"one of its {_chunks(keys)}"
            bad.append((when, f"{which} cannot be decoded "
                              f"({type(err).__name__}: {err})"))
    return bad


def _chunks(keys: Sequence[str]) -> str:
    """``chunk KEY``, or ``chunks KEY, KEY, ...`` (the first few and how many more)."""
    if len(keys) == 1:
        return f"chunk {keys[0]}"
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"chunks {', '.join(keys[:3])}{more}"


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
