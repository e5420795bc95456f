"""Ingest raw radar/satellite archives into a rain-rate store.

Files are discovered by the source's naming pattern, read by pysteps'
importers, converted to mm/h, optionally cropped (``window``) and
block-averaged (``coarsen``), and written in time order in batches.

Faults: an unreadable file, or one whose grid differs from the store's, is
skipped and reported (or stops the run with ``strict``); a time off the step
grid likewise. A new store is built at a hidden ``.NAME.partial`` path and
renamed into place when complete, so a killed run leaves either no store or,
when appending to an existing store, the store with every committed batch; a
second run resumes where the first stopped.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyproj
from tqdm.auto import tqdm

from metnet.atomic import atomic_write
from metnet.io.sources import Source, discover, get_source
from metnet.io.store import (
    TIME_CHUNK,
    StoreError,
    append_frames,
    make_dataset,
    open_store,
    write_store,
)
from metnet.times import utc_time

BATCH_FRAMES = 2 * TIME_CHUNK


class IngestError(RuntimeError):
    """An ingest that cannot go on; the message names the file and the problem."""


@dataclass
class Grid:
    """Pixel-centre coordinates and projection of a frame (after window/coarsen)."""

    x: np.ndarray
    y: np.ndarray
    crs: str
    xy_units: str

    def same_as(self, other: Grid) -> bool:
        return (
            self.x.shape == other.x.shape
            and self.y.shape == other.y.shape
            and np.allclose(self.x, other.x, rtol=0, atol=1e-6 * _spacing(self.x))
            and np.allclose(self.y, other.y, rtol=0, atol=1e-6 * _spacing(self.y))
            and pyproj.CRS.from_user_input(self.crs) == pyproj.CRS.from_user_input(other.crs)
        )


def _spacing(values: np.ndarray) -> float:
    return float(abs(values[1] - values[0])) if len(values) > 1 else 1.0


@dataclass
class IngestReport:
    """What an ingest did."""

    store: Path
    written: int = 0
    already_present: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Window:
    """A crop: pixel ranges (``rows``/``cols``) or coordinate ranges (``x``/``y``)."""

    rows: tuple[int, int] | None = None
    cols: tuple[int, int] | None = None
    x: tuple[float, float] | None = None
    y: tuple[float, float] | None = None

    @classmethod
    def parse(cls, spec: str) -> Window:
        """Parse ``rows=R0:R1,cols=C0:C1`` (pixels) or ``x=X0:X1,y=Y0:Y1`` (projection units)."""
        parts: dict[str, Any] = {}
        try:
            for item in spec.split(","):
                key, value = item.split("=")
                lo, hi = value.split(":")
                key = key.strip()
                if key not in ("rows", "cols", "x", "y"):
                    raise ValueError(key)
                cast = int if key in ("rows", "cols") else float
                parts[key] = (cast(lo), cast(hi))
        except ValueError:
            raise IngestError(
                f"bad --window {spec!r}: use rows=R0:R1,cols=C0:C1 or x=X0:X1,y=Y0:Y1"
            ) from None
        return cls(**parts)

    def slices(self, x: np.ndarray, y: np.ndarray) -> tuple[slice, slice]:
        """Row and column slices of the window on a grid with centres ``y`` (rows), ``x``."""
        rows = slice(*self.rows) if self.rows else _coordinate_slice(y, self.y)
        cols = slice(*self.cols) if self.cols else _coordinate_slice(x, self.x)
        if len(y[rows]) == 0 or len(x[cols]) == 0:
            raise IngestError(f"--window {self} selects no pixel of the grid")
        return rows, cols


def _coordinate_slice(centres: np.ndarray, bounds: tuple[float, float] | None) -> slice:
    if bounds is None:
        return slice(None)
    lo, hi = sorted(bounds)
    inside = np.flatnonzero((centres >= lo) & (centres <= hi))
    return slice(int(inside[0]), int(inside[-1]) + 1) if len(inside) else slice(0, 0)


def ingest(
    src_dir: str | Path,
    source: str,
    out: str | Path,
    start: str | datetime | None = None,
    end: str | datetime | None = None,
    window: str | Window | None = None,
    coarsen: int = 1,
    strict: bool = False,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> IngestReport:
    """Ingest the files of ``source`` under ``src_dir`` into the store ``out``.

    Args:
        src_dir: folder searched recursively for the source's file-name pattern.
        source: a registered source name (see :data:`metnet.io.sources.SOURCES`).
        out: the store path; created, or extended with the times it lacks.
        start, end: inclusive UTC time bounds.
        window: a crop applied before ``coarsen`` (see :meth:`Window.parse`).
        coarsen: block size of a NaN-aware block mean (1: none).
        strict: stop at the first bad file instead of skipping it.
        progress: show a progress bar.
        warn: called with one line per skipped file (default: nothing).

    Raises:
        IngestError: one line naming the file or folder and the problem.
    """
    spec = get_source(source)
    src_dir, out = Path(src_dir), Path(out)
    if coarsen < 1:
        raise IngestError(f"--coarsen must be >= 1, got {coarsen}")
    if isinstance(window, str):
        window = Window.parse(window)
    report = IngestReport(store=out)
    warn = warn or (lambda _: None)
    files = _candidate_files(src_dir, spec, start, end)
    files = _drop_off_step(files, spec, report, strict, warn)

    if out.exists():
        _extend(out, files, spec, window, coarsen, strict, report, warn, progress)
        return report
    # A new store is built at a fixed hidden path, so a killed run's frames are resumed.
    with atomic_write(out, staging=_partial_path(out)) as target:
        _extend(target, files, spec, window, coarsen, strict, report, warn, progress)
    if not out.exists():
        raise IngestError(f"{src_dir}: no readable {source} file; nothing written to {out}")
    return report


def _extend(
    target: Path, files: list[tuple[datetime, Path]], spec: Source, window: Window | None,
    coarsen: int, strict: bool, report: IngestReport, warn: Callable[[str], None],
    progress: bool,
) -> None:
    """Write the files' frames that ``target`` (a store, or nothing yet) lacks."""
    existing = _existing_times(target)
    todo = [(t, p) for t, p in files if pd.Timestamp(t) not in existing]
    report.already_present = len(files) - len(todo)
    if len(existing) and todo and pd.Timestamp(todo[0][0]) < existing[-1]:
        raise IngestError(
            f"{report.store}: frames from {todo[0][0]:%Y-%m-%d %H:%M} are older than the "
            f"store's last frame ({existing[-1]:%Y-%m-%d %H:%M}); ingest them into a new store"
        )
    reference = _store_grid(target) if len(existing) else None
    _write_batches(todo, spec, target, reference, window, coarsen, strict, report, warn, progress)


def _candidate_files(
    src_dir: Path, spec: Source, start: Any, end: Any
) -> list[tuple[datetime, Path]]:
    if not src_dir.is_dir():
        raise IngestError(f"{src_dir}: no such folder")
    files = discover(src_dir, spec)
    if not files:
        raise IngestError(f"{src_dir}: no file matches the {spec.name} pattern {spec.pattern!r}")
    lo = pd.Timestamp(utc_time(start)) if start is not None else None
    hi = pd.Timestamp(utc_time(end)) if end is not None else None
    files = [(t, p) for t, p in files if (lo is None or t >= lo) and (hi is None or t <= hi)]
    if not files:
        raise IngestError(f"{src_dir}: no {spec.name} file between {start} and {end}")
    return files


def _drop_off_step(
    files: list[tuple[datetime, Path]],
    spec: Source,
    report: IngestReport,
    strict: bool,
    warn: Callable[[str], None],
) -> list[tuple[datetime, Path]]:
    """Keep files on the source's step grid (minutes since midnight a multiple of the step)."""
    kept, seen = [], set()
    for when, path in files:
        minutes = when.hour * 60 + when.minute
        if when.second or minutes % spec.step_minutes:
            _skip(
                report,
                path,
                f"time {when:%H:%M:%S} is off the {spec.step_minutes}-minute step",
                strict,
                warn,
            )
        elif when in seen:
            _skip(report, path, f"a second file for {when:%Y-%m-%d %H:%M}", strict, warn)
        else:
            seen.add(when)
            kept.append((when, path))
    return kept


def _skip(
    report: IngestReport, path: Path, reason: str, strict: bool, warn: Callable[[str], None]
) -> None:
    if strict:
        raise IngestError(f"{path}: {reason}")
    report.skipped.append((path, reason))
    warn(f"skipped {path}: {reason}")


def _partial_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def _existing_times(path: Path) -> pd.DatetimeIndex:
    if not path.exists():
        return pd.DatetimeIndex([])
    try:
        ds = open_store(path)
    except StoreError as err:
        if path.name.endswith(".partial"):  # an unusable leftover of a killed first batch
            shutil.rmtree(path)
            return pd.DatetimeIndex([])
        raise IngestError(str(err)) from err
    return pd.DatetimeIndex(ds["time"].values)


def _store_grid(path: Path) -> Grid:
    ds = open_store(path)
    return Grid(ds["x"].values, ds["y"].values, ds.attrs["crs"], ds["x"].attrs.get("units", "m"))


def _write_batches(
    todo: list[tuple[datetime, Path]],
    spec: Source,
    target: Path,
    reference: Grid | None,
    window: Window | None,
    coarsen: int,
    strict: bool,
    report: IngestReport,
    warn: Callable[[str], None],
    progress: bool,
) -> None:
    batch: list[tuple[datetime, Path, np.ndarray]] = []
    bar = tqdm(todo, desc=f"ingest {spec.name}", unit="frame", disable=not progress)
    for when, path in bar:
        try:
            rate, metadata = spec.read(path)
        except Exception as err:  # importers raise anything from OSError to KeyError
            _skip(report, path, f"unreadable ({type(err).__name__}: {err})", strict, warn)
            continue
        rate, grid = _regrid(rate, metadata, window, coarsen)
        if reference is None:
            reference = grid
        elif not grid.same_as(reference):
            _skip(
                report, path, "grid or projection differs from the rest of the store", strict, warn
            )
            continue
        batch.append((when, path, rate))
        if len(batch) == BATCH_FRAMES:
            _commit(batch, spec, target, reference, window, coarsen)
            report.written += len(batch)
            batch = []
    if batch:
        _commit(batch, spec, target, reference, window, coarsen)
        report.written += len(batch)


def _commit(
    batch: list[tuple[datetime, Path, np.ndarray]],
    spec: Source,
    target: Path,
    grid: Grid,
    window: Window | None,
    coarsen: int,
) -> None:
    ds = make_dataset(
        np.stack([rate for _, _, rate in batch]),
        [when for when, _, _ in batch],
        grid.x,
        grid.y,
        crs=grid.crs,
        source=spec.name,
        step_minutes=spec.step_minutes,
        xy_units=grid.xy_units,
        source_files=[str(path) for _, path, _ in batch],
    )
    if target.exists():
        append_frames(target, ds)
    else:
        ds.attrs.update(importer=spec.importer, window=str(window or ""), coarsen=int(coarsen))
        write_store(ds, target)


def _regrid(
    rate: np.ndarray, metadata: dict[str, Any], window: Window | None, coarsen: int
) -> tuple[np.ndarray, Grid]:
    """Attach coordinates to an importer's field, then crop and block-average it."""
    x, y, crs, units = grid_from_metadata(metadata, rate.shape)
    if window is not None:
        rows, cols = window.slices(x, y)
        rate, x, y = rate[rows, cols], x[cols], y[rows]
    if coarsen > 1:
        rate, x, y = (
            block_mean(rate, coarsen),
            _block_centres(x, coarsen),
            _block_centres(y, coarsen),
        )
    return rate, Grid(x, y, crs, units)


def grid_from_metadata(
    metadata: dict[str, Any], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Pixel centres (x, y), PROJ string and coordinate units of a pysteps field.

    Grids in kilometres (KNMI) are converted to metres with an equivalent
    projection, so that every projected store is in metres.
    """
    height, width = shape
    dx, dy = float(metadata["xpixelsize"]), float(metadata["ypixelsize"])
    x = float(metadata["x1"]) + (np.arange(width) + 0.5) * dx
    if metadata.get("yorigin", "upper") == "upper":
        y = float(metadata["y2"]) - (np.arange(height) + 0.5) * dy
    else:
        y = float(metadata["y1"]) + (np.arange(height) + 0.5) * dy
    crs = metadata["projection"].strip()
    unit = metadata.get("cartesian_unit", "m")
    if unit == "km":
        return x * 1000.0, y * 1000.0, _proj_km_to_m(crs), "m"
    return x, y, crs, "degrees" if unit in ("degrees", "deg") else "m"


def _proj_km_to_m(proj4: str) -> str:
    """The same projection with lengths in metres instead of kilometres."""
    with warnings.catch_warnings():  # to_dict warns that PROJ strings are lossy; this one isn't
        warnings.simplefilter("ignore", UserWarning)
        params = pyproj.CRS.from_proj4(proj4).to_dict()
    for key in ("a", "b", "R", "x_0", "y_0"):
        if key in params:
            params[key] = float(params[key]) * 1000.0
    params["units"] = "m"
    params.pop("type", None)
    return " ".join(f"+{k}" if v in (True, None) else f"+{k}={v}" for k, v in params.items())


def block_mean(field_: np.ndarray, k: int) -> np.ndarray:
    """NaN-aware mean over k x k blocks of (H, W); trailing rows/columns that don't fill a
    block are dropped; a block with no valid pixel is NaN."""
    height, width = (field_.shape[0] // k) * k, (field_.shape[1] // k) * k
    blocks = field_[:height, :width].reshape(height // k, k, width // k, k)
    valid = np.isfinite(blocks)
    total = np.where(valid, blocks, 0.0).sum(axis=(1, 3))
    count = valid.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def _block_centres(centres: np.ndarray, k: int) -> np.ndarray:
    n = (len(centres) // k) * k
    return centres[:n].reshape(-1, k).mean(axis=1)
