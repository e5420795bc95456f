"""Raw archive sources: file discovery by naming pattern and reading through pysteps.

Each source names a pysteps importer, the file-name pattern of its archive
(strftime codes, ``?`` for one character, ``*`` for any run), its nominal time
step and the keyword arguments its importer needs. :func:`get_source` is the
registry, in the spirit of ``pysteps.io.get_method``.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

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


@dataclass(frozen=True)
class Source:
    """How to find and read one kind of archive.

    Attributes:
        name: the name used on the command line.
        importer: the pysteps importer name (``pysteps.io.get_method(importer, "importer")``).
        pattern: file-name pattern (basename only), e.g. ``RAD_NL25_RAP_5min_%Y%m%d%H%M.h5``.
        step_minutes: nominal time between frames.
        importer_kwargs: extra keyword arguments for the importer.
        description: one line for ``metnet ingest --help``.
    """

    name: str
    importer: str
    pattern: str
    step_minutes: int
    importer_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""

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
        hour, minute, second = int(g.get("H", 0)), int(g.get("M", 0)), int(g.get("S") or 0)
        if "j" in g:
            year = int(g["Y"]) if "Y" in g else 2000 + int(g["y"])
            day = datetime.strptime(f"{year} {g['j']}", "%Y %j")
            return day.replace(hour=hour, minute=minute, second=second)
        year = int(g["Y"]) if "Y" in g else 2000 + int(g["y"])
        return datetime(year, int(g["m"]), int(g["d"]), hour, minute, second)

    def read(self, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
        """Read one file as rain rate (H, W) float32 in mm/h, NaN where unobserved.

        Returns the field with the row order of the importer (``metadata["yorigin"]``)
        and the importer's metadata (projection, corners, pixel sizes, units).
        """
        from pysteps.io import get_method
        from pysteps.utils import to_rainrate

        importer = get_method(self.importer, "importer")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            field_, _, metadata = importer(str(path), **self.importer_kwargs)
            field_ = np.ma.filled(np.ma.asarray(field_, dtype=float), np.nan)
            if metadata.get("accutime") is None:
                metadata["accutime"] = float(self.step_minutes)
            rate, metadata = to_rainrate(field_, dict(metadata))
        return np.asarray(rate, dtype=np.float32), metadata


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "fmi",
            "fmi_pgm",
            "%Y%m%d%H%M_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz",
            5,
            {"gzipped": True},
            "Finnish Meteorological Institute composite, reflectivity (PGM)",
        ),
        Source(
            "mch",
            "mch_gif",
            "AQC%y%j%H%M?_00005.801.gif",
            5,
            {"product": "AQC", "unit": "mm", "accutime": 5.0},
            "MeteoSwiss AQC 5-min accumulation composite (GIF)",
        ),
        Source(
            "knmi",
            "knmi_hdf5",
            "RAD_NL25_RAP_5min_%Y%m%d%H%M.h5",
            5,
            {},
            "KNMI 5-min accumulation composite (HDF5)",
        ),
        Source(
            "bom",
            "bom_rf3",
            "*_%Y%m%d_%H%M%S.prcp-cscn.nc",
            6,
            {},
            "Australian Bureau of Meteorology Rainfields 3 accumulations (netCDF)",
        ),
        Source(
            "opera",
            "opera_hdf5",
            "T_PA*_C_EUOC_%Y%m%d%H%M%S.hdf",
            15,
            {"qty": "RATE"},
            "EUMETNET OPERA pan-European rain-rate composite (ODIM HDF5)",
        ),
        Source(
            "mrms",
            "mrms_grib",
            "PrecipRate_00.00_%Y%m%d-%H%M%S.grib2",
            2,
            {"window_size": 4},
            "NOAA MRMS PrecipRate, CONUS, block-averaged 4x4 by pysteps (GRIB2)",
        ),
        Source(
            "saf-crr",
            "saf_crri",
            "S_NWC_CRR_*_%Y%m%dT%H%M%SZ.nc",
            15,
            {},
            "EUMETSAT NWC SAF Convective Rainfall Rate, satellite (netCDF)",
        ),
    ]
}


class UnknownSourceError(ValueError):
    """A source name that is not in the registry."""


def get_source(name: str) -> Source:
    """Return the registered source called ``name``.

    Raises:
        UnknownSourceError: naming the known sources.
    """
    try:
        return SOURCES[name]
    except KeyError:
        known = ", ".join(sorted(SOURCES))
        raise UnknownSourceError(f"unknown source {name!r}; known sources: {known}") from None


def discover(src_dir: Path, source: Source) -> list[tuple[datetime, Path]]:
    """All files under ``src_dir`` (recursively) matching the source's pattern, by time.

    Folders are listed rather than derived from expected times, because
    archives file some frames under the previous day's folder.
    """
    found = []
    for path in src_dir.rglob("*"):
        if path.is_file():
            when = source.time_of(path)
            if when is not None:
                found.append((when, path))
    return sorted(found)
