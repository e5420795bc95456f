"""Ingest raw radar/satellite archives into a rain-rate store.

Frames are discovered by the source's pattern (:mod:`metnet.io.sources`), read by pysteps'
importers or xarray, converted to mm/h, optionally cropped (``window``) and block-averaged
(``coarsen``), and written in time order in batches. The step is the source's, else the
store's, else the most common spacing of the frames' times.

Faults: an unreadable file, or one whose grid differs from the store's, is skipped with a
warning naming it (or stops the run with ``strict``); frames between steps and repeated
times likewise, one warning per kind naming every file; a spacing that changes within the
archive is warned about. A new store is built at a hidden ``.NAME.partial`` path and
renamed into place when complete, so a killed run leaves either no store or,
when appending to an existing store, the store with every committed batch; a
second run resumes where the first stopped.

Parallel ingest (``workers`` > 1, or the ``scheduler`` of a running ``dask.distributed``
cluster): the files are read and converted on the cluster's workers, ``BATCH_FRAMES`` per
task and a bounded number of tasks ahead, and the frames are written by the workers holding
them, each to its own region of the store (one chunk per frame: writes of different frames
never touch the same chunk). Which frames are kept, in which order, and the commits (the
store's times, gaps and consolidated metadata; ``BATCH_FRAMES`` per worker thread) are
decided in this process as in the in-process path, so the rules above hold unchanged. The
source files and the store must be at paths the workers see.

After frames are written, the store's sample indexes (:mod:`metnet.io.sample_index`) are
extended by reading the new frames only; one that was not (a run killed before, a failed
write) is extended by the next datamodule setup that uses it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyproj
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from metnet.atomic import atomic_write, remove
from metnet.io.sample_index import extend_sample_indexes
from metnet.io.sources import Frame, Source, SourceError, discover, get_source
from metnet.io.store import (
    StoreError,
    append_frames,
    make_dataset,
    open_store,
    provenance,
    write_store,
)
from metnet.times import utc_time

if TYPE_CHECKING:
    from distributed import Client, Future

BATCH_FRAMES = 8  # frames per commit in process; per task and per worker thread on Dask
#: The environment of a local cluster's worker processes: one thread per numerical library,
#: as Dask sets, without the glibc MALLOC_TRIM_THRESHOLD_ that Dask also sets: every frame's
#: arrays then come from fresh pages, which made reading a frame 25 % slower.
_WORKER_ENVIRONMENT = {"distributed.nanny.pre-spawn-environ": {
    "OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}}


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
    step_minutes: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    already_present: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Workers:
    """Where frames are read, converted and written: in this process (``count`` 1, no
    ``scheduler``), on a local Dask cluster of ``count`` single-threaded worker processes, or
    on the workers of the running ``dask.distributed`` cluster whose scheduler is at
    ``scheduler``."""

    count: int = 1
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise IngestError(f"--workers must be >= 1, got {self.count}")
        if self.count > 1 and self.scheduler is not None:
            raise IngestError("give --workers N (a local cluster) or --scheduler ADDRESS (a "
                              "running cluster's workers), not both")

    @property
    def parallel(self) -> bool:
        return self.count > 1 or self.scheduler is not None

    @contextmanager
    def client(self) -> Iterator[Client]:
        """A Dask client of the cluster, the default scheduler of Dask computations made in
        this thread while the block runs; a local cluster is started for the block and
        closed after it.

        Raises:
            IngestError: naming a scheduler address that no scheduler answers at, or whose
                cluster has no worker.
        """
        # never the process's default client: one that failed to connect stays alive until
        # garbage collection, and every later Dask computation in the process would wait
        # for it
        with self._client() as client, client.as_current():
            yield client

    @contextmanager
    def _client(self) -> Iterator[Client]:
        import dask
        from distributed import Client, LocalCluster

        if self.scheduler is None:  # its HTTP server on a free port (8787 may be taken)
            with dask.config.set(_WORKER_ENVIRONMENT), LocalCluster(
                    n_workers=self.count, threads_per_worker=1, processes=True,
                    dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
                    Client(cluster, set_as_default=False) as client:
                yield client
            return
        try:
            client = Client(self.scheduler, set_as_default=False)
        except (OSError, ValueError) as err:
            raise IngestError(f"--scheduler {self.scheduler}: no Dask scheduler answers at "
                              f"this address ({err})") from None
        with client:
            if not client.nthreads():
                raise IngestError(f"--scheduler {self.scheduler}: the cluster has no worker")
            yield client


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
        """Row and column slices of the window on a grid with centres ``y`` (rows), ``x``.

        Raises:
            IngestError: for a pixel range that is empty or leaves the grid, or coordinates
                that select no pixel, giving the grid's size.
        """
        size = f"the grid has {len(y)} rows x {len(x)} columns"
        for name, bounds, n in (("rows", self.rows, len(y)), ("cols", self.cols, len(x))):
            if bounds is not None and not 0 <= bounds[0] < bounds[1] <= n:
                raise IngestError(f"--window {name}={bounds[0]}:{bounds[1]} is not a range "
                                  f"within 0:{n} ({size}; pixel ranges count from 0)")
        rows = slice(*self.rows) if self.rows else _coordinate_slice(y, self.y)
        cols = slice(*self.cols) if self.cols else _coordinate_slice(x, self.x)
        if len(y[rows]) == 0 or len(x[cols]) == 0:
            raise IngestError(f"--window {self} selects no pixel of the grid ({size}, x from "
                              f"{x.min():g} to {x.max():g}, y from {y.min():g} to {y.max():g})")
        return rows, cols


def _coordinate_slice(centres: np.ndarray, bounds: tuple[float, float] | None) -> slice:
    if bounds is None:
        return slice(None)
    lo, hi = sorted(bounds)
    inside = np.flatnonzero((centres >= lo) & (centres <= hi))
    return slice(int(inside[0]), int(inside[-1]) + 1) if len(inside) else slice(0, 0)


def ingest(
    src_dir: str | Path,
    source: str | Source,
    out: str | Path,
    start: str | datetime | None = None,
    end: str | datetime | None = None,
    window: str | Window | None = None,
    coarsen: int = 1,
    strict: bool = False,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
    note: Callable[[str], None] | None = None,
    creator: str | None = None,
    workers: int = 1,
    scheduler: str | None = None,
) -> IngestReport:
    """Ingest the frames of ``source`` under ``src_dir`` into the store ``out``.

    Args:
        src_dir: folder searched recursively for the source's file-name pattern.
        source: a preset name (see :data:`metnet.io.sources.PRESETS`) or a :class:`Source`.
        out: the store path; created, or extended with the times it lacks.
        start, end: inclusive time bounds, ISO (naive = UTC, or with an offset).
        window: a crop applied before ``coarsen`` (see :meth:`Window.parse`).
        coarsen: block size of a NaN-aware block mean (1: none).
        strict: stop at the first bad file instead of skipping it.
        progress: show a progress bar.
        warn: called with each warning: one per unreadable file, one per kind of time
            problem naming its files (default: nothing).
        note: called with facts worth a line, such as an inferred step (default: nothing).
        creator: ``Name <email>`` of who makes the store (its ``mlcast_created_by``).
        workers: read, convert and write the frames in this many processes of a local Dask
            cluster (1: in this process, without Dask).
        scheduler: the address of a running ``dask.distributed`` scheduler whose workers
            read, convert and write the frames (instead of ``workers``).

    Raises:
        IngestError: one line naming the file or folder and the problem.
    """
    spec = get_source(source) if isinstance(source, str) else source
    src_dir, out = Path(src_dir), Path(out)
    if coarsen < 1:
        raise IngestError(f"--coarsen must be >= 1, got {coarsen}")
    if isinstance(window, str):
        window = Window.parse(window)
    cluster = Workers(workers, scheduler)
    report = IngestReport(store=out)
    warn, note = warn or (lambda _: None), note or (lambda _: None)
    with writer_lock(out):
        _remove_leftovers(out)
        frames = _candidate_frames(src_dir, spec, start, end, report, strict, warn, progress)
        spec = _with_step(spec, frames, out, report, note)
        frames = _on_the_step(frames, spec, _phase_times(out, frames), report, strict, warn)
        _warn_spacing_changes(frames, spec, warn)
        if out.exists():
            _extend(out, frames, spec, window, coarsen, strict, report, warn, progress, cluster)
            if report.skipped and not report.written and len(frames) > report.already_present:
                raise IngestError(_nothing_written(out, report))
            if report.written:
                _extend_indexes(out, progress, warn, note)
            return report
        if spec.license is None:
            note("no license given: the store gets no license attribute; give the data's "
                 "SPDX identifier (--license CC-BY-4.0, ...) for a store others may use")
        # A new store is built at a fixed hidden path, so a killed run's frames are resumed.
        report.provenance = provenance(
            spec.license, creator, spec.identifier,
            history=f"ingest of {spec.name} ({spec.importer}) files under {src_dir}")
        with atomic_write(out, staging=_partial_path(out)) as target:
            _extend(target, frames, spec, window, coarsen, strict, report, warn, progress,
                    cluster)
        if out.exists():  # indexes left by an earlier store at this path are removed
            _extend_indexes(out, progress, warn, note)
    if not out.exists():
        raise IngestError(f"{src_dir}: no readable {spec.name} file; nothing written to {out}")
    return report


def _extend_indexes(out: Path, progress: bool, warn: Callable[[str], None],
                    note: Callable[[str], None]) -> None:
    """Extend the store's sample indexes by the frames just written; a failure is a warning
    (the frames are committed, and the next setup extends the index)."""
    try:
        extend_sample_indexes(out, progress, note)
    except (OSError, StoreError) as err:
        warn(f"{out}: its sample index was not extended ({err}); the next training setup "
             "extends it")


@contextmanager
def writer_lock(out: Path) -> Iterator[None]:
    """Hold the store's writer lock (a lock file beside it, released by the system if the
    process dies) for the block.

    Raises:
        IngestError: naming the process that holds it.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out.with_name(f".{out.name}.lock"))
    holder = out.with_name(f".{out.name}.lock.holder")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = holder.read_text().strip() if holder.exists() else "another process"
        raise IngestError(f"{out}: another ingest is writing this store ({who}); wait for "
                          "it to finish or stop it") from None
    try:
        holder.write_text(f"pid {os.getpid()} on {socket.gethostname()}, since "
                          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _remove_leftovers(out: Path) -> None:
    """Remove the temporary folders a killed or failed ingest into ``out`` left (hidden
    ``.NAME.<random>.tmp.zarr`` beside the store, or beside its ``.NAME.partial``); only
    called under the writer lock, so none belongs to a running ingest."""
    patterns = (f".{out.stem}.*.tmp{out.suffix}", f".{_partial_path(out).stem}.*.tmp.partial")
    for pattern in patterns:
        for path in out.parent.glob(pattern):
            remove(path)


def _nothing_written(out: Path, report: IngestReport) -> str:
    """Why an extend wrote nothing: the reasons of the skipped files, against the store."""
    reasons = pd.Series([reason for _, reason in report.skipped]).str.replace(
        r"^time .*? (falls|a second)", r"time \1", regex=True).value_counts()
    ds = open_store(out)
    held = (f"the store holds {ds.attrs.get('source')} frames on a {ds.sizes['y']} x "
            f"{ds.sizes['x']} px grid of {ds.attrs.get('pixel_size_x'):g} "
            f"{ds['x'].attrs.get('units', 'm')} ({ds.attrs.get('crs')})")
    listed = "; ".join(f"{n} x {reason}" for reason, n in reasons.items())
    return f"{out}: none of the {len(report.skipped)} frames was written ({listed}); {held}"


def _extend(
    target: Path, frames: list[Frame], spec: Source, window: Window | None,
    coarsen: int, strict: bool, report: IngestReport, warn: Callable[[str], None],
    progress: bool, cluster: Workers,
) -> None:
    """Write the frames that ``target`` (a store, or nothing yet) lacks."""
    existing = _existing_times(target)
    todo = [f for f in frames if pd.Timestamp(f.time) not in existing]
    report.already_present = len(frames) - len(todo)
    older = [f for f in todo if len(existing) and pd.Timestamp(f.time) < existing[-1]]
    if older:
        _skip_group(report, [(f.path, f"time {f.time:%Y-%m-%d %H:%M} is before the store's "
                              f"last frame ({existing[-1]:%Y-%m-%d %H:%M}), in a recorded gap")
                             for f in older], strict, warn,
                    f"{len(older)} frame(s) fall in the store's recorded gaps, before its last "
                    "frame, and are skipped (frames are only appended; to include them, "
                    "ingest the whole period into a new store)")
        todo = todo[len(older):]
    reference = _store_grid(target) if len(existing) else None
    _write_batches(todo, spec, target, reference, window, coarsen, strict, report, warn, progress,
                   cluster)


def _candidate_frames(
    src_dir: Path, spec: Source, start: Any, end: Any, report: IngestReport, strict: bool,
    warn: Callable[[str], None], progress: bool,
) -> list[Frame]:
    if not src_dir.is_dir():
        raise IngestError(f"{src_dir}: no such folder")
    frames = discover(src_dir, spec, skip=lambda path, reason: _skip(
        report, path, reason, strict, warn), progress=progress)
    if not frames:
        raise IngestError(f"{src_dir}: no file matches the {spec.name} pattern "
                          f"{spec.pattern!r}" + (" with a readable time" if report.skipped
                                                 else ""))
    try:
        lo = pd.Timestamp(utc_time(start)) if start is not None else None
        hi = pd.Timestamp(utc_time(end)) if end is not None else None
    except ValueError as err:
        raise IngestError(f"--start/--end: {err}") from None
    frames = [f for f in frames if (lo is None or f.time >= lo) and (hi is None or f.time <= hi)]
    if not frames:
        raise IngestError(f"{src_dir}: no {spec.name} frame between {start} and {end}")
    return frames


def _with_step(spec: Source, frames: list[Frame], out: Path, report: IngestReport,
               note: Callable[[str], None]) -> Source:
    """The source with its step: given, else the store's, else the files' most common
    spacing."""
    stored = _store_step(out)
    if spec.step_minutes is not None:
        if stored is not None and stored != spec.step_minutes:
            raise IngestError(f"{out}: the store's step is {stored} min, the source's "
                              f"{spec.step_minutes} min; ingest into a new store")
        step = spec.step_minutes
    elif stored is not None:
        step = stored
    else:
        step = infer_step([f.time for f in frames])
        if step is None:
            raise IngestError(f"{spec.name}: one frame time only, so no step to infer; give "
                              "--step_minutes")
        note(f"step {step} min: the most common spacing of the {len(frames)} frames' times")
    report.step_minutes = step
    return replace(spec, step_minutes=step)


def infer_step(times: Sequence[datetime]) -> int | None:
    """The most common spacing of distinct times, in whole minutes (``None`` with fewer
    than two times)."""
    minutes = np.round(np.diff(_seconds(sorted(set(times)))) / 60).astype(int)
    minutes = minutes[minutes > 0]
    if not len(minutes):
        return None
    values, counts = np.unique(minutes, return_counts=True)
    return int(values[np.argmax(counts)])


def _seconds(times: Sequence) -> np.ndarray:
    """Times as whole seconds since 1970 (int64)."""
    return np.asarray(times, dtype="datetime64[s]").astype(np.int64)


def _phase_times(out: Path, frames: list[Frame]) -> Sequence[datetime]:
    """The times that fix the step grid's phase: the store's, else the files'."""
    existing = _existing_times(out)
    return list(existing) if len(existing) else [f.time for f in frames]


def _on_the_step(
    frames: list[Frame], spec: Source, phase_times: Sequence[datetime], report: IngestReport,
    strict: bool, warn: Callable[[str], None],
) -> list[Frame]:
    """The frames on the step grid, one per time: the grid's phase is the most common offset
    of ``phase_times`` from whole steps (midnight, for round archives). Frames between steps
    and repeated times are skipped with one warning per kind naming every file."""
    step_s = spec.step_minutes * 60
    offsets = list(_seconds(phase_times) % step_s)
    phase = max(set(offsets), key=offsets.count)
    between, repeated, kept, seen = [], [], [], {}
    for frame, offset in zip(frames, _seconds([f.time for f in frames]) % step_s, strict=True):
        if offset != phase:
            between.append(frame)
        elif frame.time in seen:
            repeated.append((frame, seen[frame.time]))
        else:
            seen[frame.time] = frame
            kept.append(frame)
    if between:
        reason = f"falls between the {spec.step_minutes}-minute steps"
        _skip_group(report, [(f.path, f"time {f.time:%Y-%m-%d %H:%M:%S} {reason}")
                             for f in between], strict, warn,
                    f"{len(between)} frame(s) fall between the {spec.step_minutes}-minute "
                    "steps of the store and are skipped")
    if repeated:
        _skip_group(report, [(f.path, f"a second frame for {f.time:%Y-%m-%d %H:%M}, after "
                              f"{first.path}") for f, first in repeated], strict, warn,
                    f"{len(repeated)} frame(s) repeat a time already given by another file "
                    "and are skipped (the first file of each time is kept)")
    return kept


def _warn_spacing_changes(frames: list[Frame], spec: Source, warn: Callable[[str], None],
                          min_run: int = 6) -> None:
    """One warning when the files' spacing changes within the archive (runs of at least
    ``min_run`` equal spacings, gaps aside)."""
    if len(frames) < 2:
        return
    times = pd.DatetimeIndex([f.time for f in frames])
    minutes = np.round(np.diff(_seconds(times)) / 60).astype(int)
    runs: list[tuple[int, int, int]] = []  # spacing, first index, last index
    start = 0
    for i in range(1, len(minutes) + 1):
        if i == len(minutes) or minutes[i] != minutes[start]:
            if i - start >= min_run and (not runs or runs[-1][0] != minutes[start]):
                runs.append((int(minutes[start]), start, i))
            elif i - start >= min_run:
                runs[-1] = (runs[-1][0], runs[-1][1], i)
            start = i
    if len({spacing for spacing, _, _ in runs}) > 1:
        parts = ", ".join(f"every {m} min from {times[a]:%Y-%m-%d %H:%M} to "
                          f"{times[b]:%Y-%m-%d %H:%M}" for m, a, b in runs)
        warn(f"the files' spacing changes within the archive: {parts}; the store keeps a "
             f"{spec.step_minutes}-minute step, and steps without a frame are recorded as "
             "missing")


def _skip_group(report: IngestReport, items: list[tuple[Path, str]], strict: bool,
                warn: Callable[[str], None], summary: str) -> None:
    if strict:
        path, reason = items[0]
        raise IngestError(f"{path}: {reason}")
    report.skipped.extend(items)
    warn(summary + ":" + "".join(f"\n  {path}: {reason}" for path, reason in items))


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


def _store_step(path: Path) -> int | None:
    """The step of an existing store (``None`` when there is none yet)."""
    if not path.exists():
        return None
    try:
        return int(open_store(path).attrs["step_minutes"])
    except StoreError as err:
        raise IngestError(str(err)) from err


def _store_grid(path: Path) -> Grid:
    ds = open_store(path)
    return Grid(ds["x"].values, ds["y"].values, ds.attrs["crs"], ds["x"].attrs.get("units", "m"))


def _write_batches(
    todo: list[Frame],
    spec: Source,
    target: Path,
    reference: Grid | None,
    window: Window | None,
    coarsen: int,
    strict: bool,
    report: IngestReport,
    warn: Callable[[str], None],
    progress: bool,
    cluster: Workers,
) -> None:
    batch: list[tuple[datetime, Path, Any]] = []
    with _converted(todo, spec, window, coarsen, cluster) as (converted, batch_frames):
        bar = tqdm(converted, total=len(todo), desc=f"ingest {spec.name}", unit="frame",
                   disable=not progress)
        for frame, result in bar:
            if result.problem is not None:
                _skip(report, frame.path, result.problem, strict, warn)
                continue
            if reference is None:
                reference = result.grid
            elif not result.grid.same_as(reference):
                _skip(report, frame.path, "grid or projection differs from the rest of the store",
                      strict, warn)
                continue
            batch.append((frame.time, frame.path, result.rate))
            if len(batch) == batch_frames:
                _commit_or_explain(batch, spec, target, reference, window, coarsen, report)
                batch = []
        if batch:
            _commit_or_explain(batch, spec, target, reference, window, coarsen, report)


@dataclass
class _Converted:
    """A frame read, converted and regridded: its rain rate and grid, or why it was skipped."""

    rate: Any = None  # an array, or a Dask array of one chunk on the worker that made it
    grid: Grid | None = None
    problem: str | None = None


def _convert(frame: Frame, spec: Source, window: Window | None, coarsen: int) -> _Converted:
    """Read a frame's file and regrid it; an unreadable file gives the reason to skip it."""
    try:
        rate, metadata = spec.read(frame)
    except SourceError as err:
        return _Converted(problem=str(err).removeprefix(f"{frame.path}: "))
    except Exception as err:  # importers raise anything from OSError to KeyError
        return _Converted(problem=f"unreadable ({type(err).__name__}: {err})")
    rate, grid = _regrid(rate, metadata, window, coarsen)
    return _Converted(np.asarray(rate, dtype=np.float32), grid)


@contextmanager
def _converted(
    todo: list[Frame], spec: Source, window: Window | None, coarsen: int, cluster: Workers,
) -> Iterator[tuple[Iterator[tuple[Frame, _Converted]], int]]:
    """The frames converted, in order, and the frames per commit: in this process, or on the
    cluster's workers, whose client is the default scheduler of the writes made in the block.
    On a cluster a commit holds a task's frames per worker thread: its frames are read and
    written by every worker at once, and the cost of a commit is shared by more frames."""
    if not cluster.parallel:
        yield ((frame, _convert(frame, spec, window, coarsen)) for frame in todo), BATCH_FRAMES
        return
    with cluster.client() as client:
        threads = sum(client.nthreads().values())
        yield (_converted_on_workers(client, todo, spec, window, coarsen, 2 * threads),
               BATCH_FRAMES * threads)


def _converted_on_workers(
    client: Client, todo: list[Frame], spec: Source, window: Window | None, coarsen: int,
    ahead: int,
) -> Iterator[tuple[Frame, _Converted]]:
    """The frames converted on the workers, in order, each with its rate left on the worker
    that has it. A task converts ``BATCH_FRAMES`` frames (with a task per frame, scheduling
    cost a quarter of the time of reading them); ``ahead`` tasks are submitted ahead of the one
    yielded (what bounds the workers' memory)."""
    pending: deque[tuple[list[Frame], Future, Future]] = deque()
    for first in range(0, len(todo), BATCH_FRAMES):
        batch = todo[first:first + BATCH_FRAMES]
        absolute = [f._replace(path=f.path.absolute()) for f in batch]  # workers' own cwd
        # below the writes' priority: a batch is written before more frames are read
        future = client.submit(_convert_all, absolute, spec, window, coarsen, pure=False,
                               priority=-1)
        pending.append((batch, future, client.submit(_without_rates, future)))
        if len(pending) > ahead:
            yield from _collected(*pending.popleft())
    while pending:
        yield from _collected(*pending.popleft())


def _collected(batch: list[Frame], future: Future,
               summary: Future) -> Iterator[tuple[Frame, _Converted]]:
    """A batch's frames converted on a worker: each with its grid or problem, its rate a Dask
    array of the worker's result."""
    import dask
    import dask.array as da

    for i, (frame, converted) in enumerate(zip(batch, summary.result(), strict=True)):
        if converted.problem is None:
            shape = (len(converted.grid.y), len(converted.grid.x))
            rate = da.from_delayed(dask.delayed(_rate)(future, i), shape, dtype=np.float32)
            converted = replace(converted, rate=rate)
        yield frame, converted


def _convert_all(frames: list[Frame], spec: Source, window: Window | None,
                 coarsen: int) -> list[_Converted]:
    return [_convert(frame, spec, window, coarsen) for frame in frames]


def _without_rates(converted: list[_Converted]) -> list[_Converted]:
    return [replace(c, rate=None) for c in converted]


def _rate(converted: list[_Converted], i: int) -> np.ndarray:
    return converted[i].rate


def _commit_or_explain(
    batch: list[tuple[datetime, Path, Any]], spec: Source, target: Path, grid: Grid,
    window: Window | None, coarsen: int, report: IngestReport,
) -> None:
    """Commit a batch; a failed write (a full disk) names the store, not its hidden path."""
    try:
        _commit(batch, spec, target, grid, window, coarsen, report.provenance)
    except OSError as err:
        kept = ("no store is left" if target != report.store else
                f"the {report.written} frames committed before are kept, and a rerun resumes")
        raise IngestError(f"{report.store}: cannot write ({err.strerror or err}); "
                          f"{kept}") from None
    report.written += len(batch)


def _commit(
    batch: list[tuple[datetime, Path, Any]],
    spec: Source,
    target: Path,
    grid: Grid,
    window: Window | None,
    coarsen: int,
    provenance: dict[str, Any],
) -> None:
    new_store = not target.exists()
    ds = make_dataset(
        _stack([rate for _, _, rate in batch]),
        [when for when, _, _ in batch],
        grid.x,
        grid.y,
        crs=grid.crs,
        source=spec.name,
        step_minutes=spec.step_minutes,
        xy_units=grid.xy_units,
        source_files=[str(path) for _, path, _ in batch],
        provenance=provenance,
        geolocate=new_store,
    )
    if new_store:
        ds.attrs.update(importer=spec.importer, window=str(window or ""), coarsen=int(coarsen))
        write_store(ds, target)
    else:
        append_frames(target, ds)


def _stack(rates: list[Any]) -> Any:
    """Frames as one (time, y, x) array: a Dask array when they are on a cluster's workers."""
    if all(isinstance(rate, np.ndarray) for rate in rates):
        return np.stack(rates)
    import dask.array as da

    return da.stack(rates)


def _regrid(
    rate: np.ndarray, metadata: dict[str, Any], window: Window | None, coarsen: int
) -> tuple[np.ndarray, Grid]:
    """Attach coordinates to an importer's field, then crop and block-average it."""
    x, y, crs, units = grid_from_metadata(metadata, rate.shape)
    if window is not None:
        rows, cols = window.slices(x, y)
        rate, x, y = rate[rows, cols], x[cols], y[rows]
    if coarsen > min(rate.shape):
        raise IngestError(f"--coarsen {coarsen} is larger than the grid "
                          f"({rate.shape[0]} rows x {rate.shape[1]} columns)")
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
