"""Raw archive sources: which files, at what times, read how.

A source is a small set of settings, the same whether it comes from a preset (``--source
knmi``), a YAML source file kept beside an archive (``--source_file my_radar.yaml``) or the
command line (``--importer odim_hdf5 --pattern '*.h5'``)::

    importer: odim_hdf5          # any pysteps importer, or ``xarray`` (CF netCDF / zarr)
    pattern: "composite_rate_*.h5"   # file name: strftime codes, ? one character, * any run
    step_minutes: 5              # optional: inferred from the files' most common spacing
    importer_args: {qty: RATE}   # keyword arguments of the importer
    description: my national composite
    license: CC-BY-4.0           # SPDX identifier of the data's licence, written to the store
    identifier: nl-knmi-precipitation   # MLCast <country_code>-<entity>-<physical_variable>

Times come from the file name's strftime codes, except for formats that carry their own
valid time, which is read from the file whatever its name: ODIM HDF5 (``what/date`` and
``what/time`` of the product) and CF datasets (their time coordinate; a file may then hold
many frames). :func:`resolve_source` builds a :class:`Source`, :func:`discover` lists its
frames under a folder.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

_CODE_REGEX = {
    "%Y": r"(?P<Y>\d{4})",
    "%y": r"(?P<y>\d{2})",
    "%m": r"(?P<m>\d{2})",
    "%d": r"(?P<d>\d{2})",
    "%j": r"(?P<j>\d{3})",
    "%H": r"(?P<H>\d{2})",
    "%M": r"(?P<M>\d{2})",
    "%S": r"(?P<S>\d{2})",
}
#: The format read with xarray instead of a pysteps importer.
XARRAY = "xarray"
#: pysteps importers of ODIM HDF5 files, whose valid time is read from the file.
ODIM_IMPORTERS = ("odim_hdf5", "opera_hdf5", "mch_hdf5", "dwd_hdf5")
#: The settings a source file (and a preset) may give.
SETTINGS = ("name", "importer", "pattern", "step_minutes", "importer_args", "description",
            "license", "identifier")
#: Shortcuts for the archives of pysteps' example data, in the form of a source file.
PRESETS: dict[str, dict[str, Any]] = {
    "fmi": {
        "importer": "fmi_pgm",
        "pattern": "%Y%m%d%H%M_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz",
        "step_minutes": 5,
        "importer_args": {"gzipped": True},
        "description": "Finnish Meteorological Institute composite, reflectivity (PGM)",
    },
    "mch": {
        "importer": "mch_gif",
        "pattern": "AQC%y%j%H%M?_00005.801.gif",
        "step_minutes": 5,
        "importer_args": {"product": "AQC", "unit": "mm", "accutime": 5.0},
        "description": "MeteoSwiss AQC 5-min accumulation composite (GIF)",
    },
    "knmi": {
        "importer": "knmi_hdf5",
        "pattern": "RAD_NL25_RAP_5min_%Y%m%d%H%M.h5",
        "step_minutes": 5,
        "description": "KNMI 5-min accumulation composite (HDF5)",
    },
    "bom": {
        "importer": "bom_rf3",
        "pattern": "*_%Y%m%d_%H%M%S.prcp-cscn.nc",
        "step_minutes": 6,
        "description": "Australian Bureau of Meteorology Rainfields 3 accumulations (netCDF)",
    },
    "opera": {
        "importer": "opera_hdf5",
        "pattern": "T_PA*_C_EUOC_*.hdf",
        "step_minutes": 15,
        "importer_args": {"qty": "RATE"},
        "description": "EUMETNET OPERA pan-European rain-rate composite (ODIM HDF5)",
    },
    "mrms": {
        "importer": "mrms_grib",
        "pattern": "PrecipRate_00.00_%Y%m%d-%H%M%S.grib2",
        "step_minutes": 2,
        "importer_args": {"window_size": 4},
        "description": "NOAA MRMS PrecipRate, CONUS, block-averaged 4x4 by pysteps (GRIB2)",
    },
    "saf-crr": {
        "importer": "saf_crri",
        "pattern": "S_NWC_CRR_*_%Y%m%dT%H%M%SZ.nc",
        "step_minutes": 15,
        "description": "EUMETSAT NWC SAF Convective Rainfall Rate, satellite (netCDF)",
    },
}


class SourceError(ValueError):
    """A source that cannot be built or read; the message names the setting or file."""


class UnknownSourceError(SourceError):
    """A preset name that does not exist."""


class Frame(NamedTuple):
    """One frame of an archive: its UTC valid time, its file and, for files that hold
    several frames (CF datasets), its index along the file's time axis."""

    time: datetime
    path: Path
    index: int | None = None


@dataclass(frozen=True)
class Source:
    """How to find and read one kind of archive (see the module docstring).

    Attributes:
        name: a short name, recorded in the store.
        importer: a pysteps importer name (``pysteps.io.get_method(NAME, "importer")``) or
            ``xarray``.
        pattern: file-name pattern (basename only), e.g. ``RAD_NL25_RAP_5min_%Y%m%d%H%M.h5``.
        step_minutes: nominal time between frames; ``None``: inferred at ingest.
        importer_args: keyword arguments of the importer (for ``xarray``: ``variable``,
            and optionally ``accumulation_minutes``, ``zr_a``, ``zr_b``).
        description: one line for ``metnet ingest --help``.
        license: SPDX identifier of the data's licence (the store's ``license``).
        identifier: the store's ``mlcast_dataset_identifier``.
    """

    name: str
    importer: str
    pattern: str = "*"
    step_minutes: int | None = None
    importer_args: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    license: str | None = None
    identifier: str | None = None

    def __post_init__(self) -> None:
        known = importer_names()
        if self.importer not in known:
            raise SourceError(f"source {self.name!r}: unknown importer {self.importer!r}; "
                              f"known: {', '.join(known)}")
        if self.step_minutes is not None and (
                not isinstance(self.step_minutes, int) or self.step_minutes < 1):
            raise SourceError(f"source {self.name!r}: step_minutes must be a positive whole "
                              f"number of minutes, got {self.step_minutes!r}")
        if not self.times_from_file and not re.search(r"%[YyjmdHM]", self.pattern):
            raise SourceError(
                f"source {self.name!r}: the pattern {self.pattern!r} has no time code (%Y, "
                f"%m, %d, %H, %M, ...) and {self.importer} files carry no time metadata that "
                "metnet reads; put the time codes of the file names in --pattern")
        if self.importer == XARRAY and "variable" not in self.importer_args:
            raise SourceError(f"source {self.name!r}: the xarray format needs the variable "
                              "to read (--variable NAME)")

    @property
    def times_from_file(self) -> bool:
        """Whether valid times are read from the files rather than from their names."""
        return self.importer in ODIM_IMPORTERS or self.importer == XARRAY

    @property
    def regex(self) -> re.Pattern[str]:
        """The file-name pattern as an anchored regular expression with named time fields."""
        parts = re.split(r"(%[YymdjHMS]|\?|\*)", self.pattern)
        body = "".join(
            _CODE_REGEX.get(p) or {"?": ".", "*": ".*?"}.get(p) or re.escape(p) for p in parts
        )
        return re.compile(f"^{body}$")

    def time_of(self, path: Path) -> datetime | None:
        """UTC time encoded in a file name, or ``None`` if the name does not match."""
        match = self.regex.match(path.name)
        if match is None:
            return None
        g = match.groupdict()
        hour, minute, second = int(g.get("H") or 0), int(g.get("M") or 0), int(g.get("S") or 0)
        year = int(g["Y"]) if g.get("Y") else 2000 + int(g["y"])
        if g.get("j"):
            day = datetime.strptime(f"{year} {g['j']}", "%Y %j")
            return day.replace(hour=hour, minute=minute, second=second)
        return datetime(year, int(g.get("m") or 1), int(g.get("d") or 1), hour, minute, second)

    def frames_in(self, path: Path) -> list[Frame]:
        """The frames of one file that matches the pattern.

        Raises:
            SourceError: naming the file, when its time cannot be read.
        """
        if self.importer == XARRAY:
            from metnet.io.cf_source import frame_times

            return [Frame(t, path, i) for i, t in enumerate(frame_times(path, self.importer_args))]
        if self.importer in ODIM_IMPORTERS:
            return [Frame(odim_time(path), path)]
        return [Frame(self.time_of(path), path)]

    def read(self, frame: Frame) -> tuple[np.ndarray, dict[str, Any]]:
        """Read one frame as rain rate (H, W) float32 in mm/h, NaN where unobserved.

        Returns the field with the row order of ``metadata["yorigin"]`` and pysteps-style
        metadata (projection, corners, pixel sizes, units).
        """
        if self.importer == XARRAY:
            from metnet.io.cf_source import read_frame

            return read_frame(frame.path, frame.index, self.importer_args, self.step_minutes)
        from pysteps.io import get_method
        from pysteps.utils import to_rainrate

        importer = get_method(self.importer, "importer")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            field_, _, metadata = importer(str(frame.path), **self.importer_args)
            field_ = np.ma.filled(np.ma.asarray(field_, dtype=float), np.nan)
            if metadata.get("accutime") is None:
                metadata["accutime"] = float(self.step_minutes or 0) or None
            rate, metadata = to_rainrate(field_, dict(metadata))
        return np.asarray(rate, dtype=np.float32), metadata

    def settings(self) -> dict[str, Any]:
        """The source as the settings of a source file."""
        return {"name": self.name, "importer": self.importer, "pattern": self.pattern,
                "step_minutes": self.step_minutes, "importer_args": dict(self.importer_args),
                "description": self.description, "license": self.license,
                "identifier": self.identifier}


def importer_names() -> list[str]:
    """Every importer of the installed pysteps, and ``xarray``."""
    from pysteps.io import interface

    return sorted([*interface._importer_methods, XARRAY])


def odim_time(path: Path) -> datetime:
    """The nominal valid time of an ODIM HDF5 product (``/what/date`` + ``/what/time``).

    Raises:
        SourceError: naming the file, when it is not ODIM HDF5 or lacks the time.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            what = f["what"].attrs
            text = _text(what["date"]) + _text(what["time"])
        return datetime.strptime(text[:14], "%Y%m%d%H%M%S")
    except (OSError, KeyError, ValueError) as err:
        raise SourceError(f"{path}: no ODIM valid time (what/date, what/time): {err}") from None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | np.bytes_) else str(value)


def get_source(name: str) -> Source:
    """The preset called ``name``.

    Raises:
        UnknownSourceError: naming the presets.
    """
    if name not in PRESETS:
        known = ", ".join(sorted(PRESETS))
        raise UnknownSourceError(f"unknown source {name!r}; known sources: {known}")
    return _from_settings({"name": name, **PRESETS[name]}, f"preset {name!r}")


def load_source_file(path: str | Path) -> dict[str, Any]:
    """The settings of a YAML source file (see the module docstring).

    Raises:
        SourceError: naming the file and the problem.
    """
    path = Path(path)
    try:
        settings = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SourceError(f"{path}: not a readable YAML source file ({err})") from None
    if not isinstance(settings, dict):
        raise SourceError(f"{path}: a source file is a mapping of {', '.join(SETTINGS)}")
    return {"name": path.stem, **settings}


def resolve_source(
    preset: str | None = None,
    source_file: str | Path | None = None,
    importer: str | None = None,
    pattern: str | None = None,
    step_minutes: int | None = None,
    importer_args: dict[str, Any] | None = None,
    license: str | None = None,
    identifier: str | None = None,
) -> Source:
    """The source of a preset or a source file, with the given settings overriding theirs.

    Raises:
        SourceError: naming the setting that is missing or wrong.
    """
    if preset and source_file:
        raise SourceError("give a preset (--source) or a source file (--source_file), not both")
    if preset:
        get_source(preset)  # a clear error for an unknown name
        settings, origin = {"name": preset, **PRESETS[preset]}, f"preset {preset!r}"
    elif source_file:
        settings, origin = load_source_file(source_file), str(source_file)
    else:
        settings, origin = {"name": importer or ""}, "the command line"
    for key, value in (("importer", importer), ("pattern", pattern),
                       ("step_minutes", step_minutes), ("license", license),
                       ("identifier", identifier)):
        if value is not None:
            settings[key] = value
    if not isinstance(settings.get("importer_args") or {}, dict):
        raise SourceError(f"{origin}: importer_args must be a mapping of keyword arguments")
    settings["importer_args"] = {**(settings.get("importer_args") or {}),
                                 **(importer_args or {})}
    if not settings.get("importer"):
        raise SourceError("name a source: --source PRESET, --source_file FILE.yaml or "
                          "--importer NAME (with --pattern)")
    return _from_settings(settings, origin)


def _from_settings(settings: dict[str, Any], origin: str) -> Source:
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise SourceError(f"{origin}: unknown setting(s) {', '.join(unknown)}; a source has "
                          f"{', '.join(SETTINGS)}")
    try:
        return Source(**{k: v for k, v in settings.items() if v is not None})
    except TypeError as err:
        raise SourceError(f"{origin}: {err}") from None


def parse_importer_args(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as keyword arguments, values read as YAML scalars
    (``qty=RATE`` -> ``"RATE"``, ``gzipped=true`` -> ``True``, ``accutime=5`` -> ``5``).

    Raises:
        SourceError: naming an item without ``=``.
    """
    args = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SourceError(f"importer argument {item!r} is not KEY=VALUE")
        args[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return args


def discover(
    src_dir: Path,
    source: Source,
    skip: Callable[[Path, str], None] | None = None,
    progress: bool = False,
) -> list[Frame]:
    """Every frame of the files under ``src_dir`` (recursively) that match the source's
    pattern, by time.

    Folders are listed rather than derived from expected times, because archives file some
    frames under the previous day's folder. A matching file whose time cannot be read is
    passed to ``skip`` with the reason (or raises :class:`SourceError` without ``skip``).
    A zarr folder that matches the pattern is one file.
    """
    from tqdm.auto import tqdm

    matches = _matching_paths(src_dir, source)
    frames: list[Frame] = []
    for path in tqdm(matches, desc="reading times", unit="file",
                     disable=not (progress and source.times_from_file)):
        try:
            frames.extend(source.frames_in(path))
        except SourceError as err:
            if skip is None:
                raise
            skip(path, str(err).removeprefix(f"{path}: "))
    return sorted(frames)


def _matching_paths(src_dir: Path, source: Source) -> list[Path]:
    regex, found, taken = source.regex, [], []
    for path in sorted(src_dir.rglob("*")):
        if any(parent in taken for parent in path.parents):
            continue
        if not regex.match(path.name):
            continue
        if path.is_dir():
            if source.importer == XARRAY and _is_zarr(path):
                found.append(path)
                taken.append(path)
        elif path.is_file():
            found.append(path)
    return found


def _is_zarr(path: Path) -> bool:
    return (path / "zarr.json").exists() or (path / ".zgroup").exists()
