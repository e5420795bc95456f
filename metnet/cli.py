"""The single ``metnet`` command.

Every sub-command speaks the grammar of LightningCLI (jsonargparse): options are spelled
with underscores (``--ckpt_path``, ``--lead_times``), lists are written ``[15,30,60]``,
a yes/no option is ``--name`` or ``--name true|false``, and ``--config FILE.yaml`` gives
any option from a file. The same thing has the same name in every command: a checkpoint is
``--ckpt_path``, a store ``--store``, the datamodule of a training configuration ``--data``.

``fit``, ``validate`` and ``test`` are LightningCLI's (:mod:`metnet.lightning_cli`);
``calibrate`` takes their configuration plus ``--ckpt_path``. Each failure the data and
inference commands anticipate ends in one line on stderr naming the file and the problem,
and a non-zero exit status. The spellings of earlier releases (``--ckpt``, ``--data STORE``,
``--init-time A B``) still work, with a deprecation note, until the next release.
"""

from __future__ import annotations

import logging
import sys
import warnings
from argparse import ArgumentError
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from metnet.io.sources import PRESETS
from metnet.runtime import inference_device, keep_freed_memory

if TYPE_CHECKING:
    import xarray as xr
    from torch import nn

    from metnet.calibration import Calibration
    from metnet.checkpoint import Checkpoint
    from metnet.data.inputs import StoreContext
    from metnet.io.forecast_file import ForecastOutput

USAGE_ERRORS = (ValueError, RuntimeError, OSError)
#: What LightningCLI commands report in one line (a RuntimeError there is a bug: traceback).
LIGHTNING_ERRORS = (ValueError, OSError)
#: Commands besides Lightning's that run the network.
MODEL_COMMANDS = ("calibrate", "forecast", "evaluate")
LIGHTNING_COMMANDS = {
    "fit": "train a model (LightningCLI; `metnet fit --help` lists every option)",
    "validate": "score a checkpoint on the validation split, next to the baselines",
    "test": "score a checkpoint on the test split, next to the baselines",
}
CALIBRATE_HELP = "fit a checkpoint's post-hoc calibration on the validation split"
#: Spellings of earlier releases, accepted with a deprecation note: old -> new.
RENAMED = {
    "--ckpt": "--ckpt_path", "--init-time": "--init_time", "--lead-times": "--lead_times",
    "--batch-tiles": "--batch_tiles", "--bin-probabilities": "--bin_probabilities",
    "--step-minutes": "--step_minutes", "--event-threshold": "--event_threshold",
    "--steps-members": "--steps_members", "--steps-seed": "--steps_seed",
}
#: Commands of earlier releases that are gone, with what to use instead.
REMOVED = {"predict": "`metnet predict` is gone (its output was thrown away): `metnet "
                      "forecast` writes CF forecast files of a whole domain"}
#: Commands whose ``--data`` was a store (now ``--store``; ``--data`` is the datamodule).
STORE_WAS_DATA = ("forecast", "evaluate")
LIST_OPTIONS = ("--init_time", "--lead_times", "--thresholds", "--quantiles", "--scales")
THRESHOLDS = [0.1, 1.0, 4.0, 8.0]
#: Seconds between polls of a watched store (``forecast --watch``).
DEFAULT_POLL_SECONDS = 10.0


def _synth(a: Namespace) -> None:
    from metnet.io.store import write_store
    from metnet.io.synthetic import synthesize

    if Path(a.out).exists():
        raise FileExistsError(f"{a.out}: already exists; remove it or choose another --out")
    ds = synthesize(frames=a.frames, height=a.height, width=a.width,
                    step_minutes=a.step_minutes, seed=a.seed, progress=True)
    write_store(ds, a.out)
    print(f"wrote {a.out}: {a.frames} frames of {a.height}x{a.width} px")


def _ingest(a: Namespace) -> None:
    from metnet.io.ingest import ingest
    from metnet.io.sources import parse_importer_args, resolve_source

    args = parse_importer_args(a.importer_arg)
    if a.variable is not None:
        args["variable"] = a.variable
    importer = "xarray" if a.format == "xarray" else a.importer
    source = resolve_source(a.source, a.source_file, importer, a.pattern, a.step_minutes, args,
                            a.license, a.identifier)

    def message(kind: str) -> Callable[[str], None]:
        return lambda line: print(f"{kind}: {line}", file=sys.stderr)

    report = ingest(a.src_dir, source, a.out, start=a.start, end=a.end, window=a.window,
                    coarsen=a.coarsen, strict=a.strict, warn=message("warning"),
                    note=message("note"), creator=a.creator, workers=a.workers,
                    scheduler=a.scheduler)
    print(f"{report.store}: {report.written} frames written, "
          f"{report.already_present} already present, {len(report.skipped)} files skipped")


def _check(a: Namespace) -> None:
    from metnet.io.store import check_store

    damaged = 0
    for store in _as_list(a.store):
        bad = check_store(store, progress=True, storage_options=a.storage_options)
        for when, problem in bad:
            print(f"{store}: frame {when}: {problem}", file=sys.stderr)
        damaged += len(bad)
        print(f"{store}: {'every frame reads' if not bad else f'{len(bad)} damaged frame(s)'}")
    if damaged:
        raise RuntimeError(f"{damaged} damaged frame(s): re-ingest them into a new store")


def _forecast(a: Namespace) -> None:
    from metnet.checkpoint import Checkpoint
    from metnet.forecast import (
        ForecastError,
        check_settings,
        complete_init_times,
        iter_forecasts,
        resolve_lead_times,
        store_context,
    )
    from metnet.io.forecast_file import ForecastOutput
    from metnet.io.store import open_store, store_location
    from metnet.times import utc_time

    _check_watch(a)
    if not a.watch and (bool(a.init_time) == bool(a.start) or bool(a.start) != bool(a.end)):
        raise ValueError("give either --init_time or both --start and --end")
    check_settings(a.quantiles, a.batch_tiles)
    device = inference_device(a.device)
    checkpoint = Checkpoint.load(a.ckpt_path)
    calibration = store_calibration(checkpoint, a)
    store = open_store(a.store, a.storage_options)
    checkpoint.check(store)
    net = checkpoint.net.to(device)

    def make_context(ds: xr.Dataset) -> StoreContext:
        return store_context(ds, net, checkpoint.data_settings, a.satellite_stores,
                             a.storage_options)

    context = make_context(store)
    leads = resolve_lead_times(
        net, store, a.lead_times or (calibration.lead_times if calibration else None))
    settings = {
        "checkpoint": Path(a.ckpt_path).resolve(), "store": store_location(a.store),
        "lead_times": list(leads), "quantiles": a.quantiles, "thresholds": a.thresholds,
        "bin_probabilities": a.bin_probabilities, "calibrated": calibration is not None,
        "decision": a.decision}
    if satellites := [store_location(s.satellite.path)
                      for s in context.sources.satellites]:
        settings["satellite_stores"] = satellites  # only then: radar-only outputs resume
    output = ForecastOutput(a.out, settings)
    options = dict(quantiles=a.quantiles, thresholds=a.thresholds,
                   bin_probabilities=a.bin_probabilities, batch_tiles=a.batch_tiles,
                   calibration=calibration, calibrated_decisions=a.decision == "calibrated",
                   warn=_warning("forecast"))
    if a.watch:
        _watch(a, net, leads, output, {**options, "make_context": make_context})
        return
    frames, step = context.past_frames, context.step_minutes
    inits = _as_list(a.init_time) or complete_init_times(store, a.start, a.end, frames,
                                                         context_step_minutes=step)
    if not inits:
        raise ValueError(f"no init time from {a.start} to {a.end} has {frames} past "
                         f"frames every {step} min in {a.store}")
    wanted = sorted({utc_time(t) for t in inits})  # each once, in time order
    todo = [t for t in wanted if t not in output.done]
    if len(todo) < len(wanted):
        print(f"{a.out}: {len(wanted) - len(todo)} init times already written, "
              f"{len(todo)} to go", file=sys.stderr)
    written = 0
    for forecast in iter_forecasts(net, store, todo, leads, context=context, progress=True,
                                   **options):
        written += 1
        output.write(forecast)
        _plot(a.plot, forecast, store)
    if todo and not written:
        raise ForecastError(f"none of the {len(todo)} init times has radar data in its last "
                            f"context frame; nothing written to {a.out}")
    out = output.close()
    print(f"wrote {out}: {len(output.done)} init times x {len(leads)} lead times of "
          f"{store.sizes['y']}x{store.sizes['x']} px")


def _check_watch(a: Namespace) -> None:
    """Refuse the options that do not go with ``--watch`` (or go only with it)."""
    extra = [f"--{name}" for name in ("poll_seconds", "watch_max_forecasts", "watch_timeout")
             if getattr(a, name) is not None]
    if not a.watch:
        if extra:
            raise ValueError(f"{', '.join(extra)}: only with --watch")
        return
    if a.init_time or a.end:
        raise ValueError("--watch forecasts init times as their frames arrive: give no "
                         "--init_time or --end (--start: forecast the store's init times "
                         "from then on first)")
    if Path(a.out).suffix == ".nc":
        raise ValueError(f"{a.out}: --watch runs until stopped and cannot assemble one .nc "
                         "at the end: give --out OUT.zarr or a folder (one .nc per init time)")
    for name in ("poll_seconds", "watch_max_forecasts", "watch_timeout"):
        if getattr(a, name) is not None and getattr(a, name) <= 0:
            raise ValueError(f"--{name} must be positive; got {getattr(a, name)}")


def _watch(a: Namespace, net: nn.Module, leads: list[int], output: ForecastOutput,
           options: dict[str, Any]) -> None:
    """``forecast --watch``: forecast each init time of the store as its frame arrives, into
    the output, with a line giving its latency, until Ctrl-C, ``--watch_max_forecasts`` or
    ``--watch_timeout`` (exit status 0)."""
    import time

    from metnet.forecast import deferred_interrupt, watch_forecasts
    from metnet.times import iso

    began, made, why = time.monotonic(), 0, "--watch_timeout reached"
    poll = a.poll_seconds or DEFAULT_POLL_SECONDS
    print(f"metnet forecast: watching {a.store} every {poll:g} s; Ctrl-C stops",
          file=sys.stderr, flush=True)
    watch = watch_forecasts(net, a.store, leads, storage_options=a.storage_options,
                            after=max(output.done, default=None), start=a.start,
                            poll_seconds=poll, timeout=a.watch_timeout, **options)
    try:
        for watched in watch:
            with deferred_interrupt():
                output.write(watched.forecast)
            done = time.time()
            made += 1
            init = iso(watched.forecast["init_time"].values[0])
            if watched.at_start:
                print(f"init {init}: forecast written {done - watched.seen:.1f} s after the "
                      "watch began (the frame was already in the store)", flush=True)
            else:
                store = ("" if watched.written is None else
                         f" ({done - watched.written:.1f} s after the store was written)")
                print(f"init {init}: forecast written {done - watched.seen:.1f} s after the "
                      f"frame arrived{store}", flush=True)
            _plot(a.plot, watched.forecast, watched.store)
            if made == a.watch_max_forecasts:
                why = "--watch_max_forecasts reached"
                break
    except KeyboardInterrupt:
        why = "Ctrl-C"
    finally:
        watch.close()
    print(f"metnet forecast: stopped watching after {time.monotonic() - began:.0f} s "
          f"({why}): {made} forecast(s) written to {output.close()}", flush=True)


def _plot(folder: str | None, forecast: xr.Dataset, store: xr.Dataset) -> None:
    """Draw the map panels of a one-init-time forecast into ``folder`` (None: no plots)."""
    if folder:
        from metnet.plotting import plot_forecast

        init = forecast["init_time"].values[0]
        print(f"wrote {plot_forecast(forecast, store, init, folder)}")


def _evaluate(a: Namespace) -> None:
    from metnet.checkpoint import Checkpoint
    from metnet.forecast import check_settings, resolve_lead_times, store_context
    from metnet.io.store import open_store
    from metnet.verification import (
        check_evaluation_out,
        evaluate,
        evaluation_init_times,
        write_evaluation,
    )

    check_settings(batch_tiles=a.batch_tiles)
    check_evaluation_out(a.out)
    device = inference_device(a.device)
    checkpoint = Checkpoint.load(a.ckpt_path)
    calibration = store_calibration(checkpoint, a)
    store = open_store(a.store, a.storage_options)
    checkpoint.check(store)
    net = checkpoint.net.to(device)
    context = store_context(store, net, checkpoint.data_settings, a.satellite_stores,
                            a.storage_options)
    wanted = a.lead_times or (calibration.lead_times if calibration else None)
    leads = resolve_lead_times(net, store, wanted)
    inits = evaluation_init_times(store, a.start, a.end, leads, context)
    if not inits:
        raise ValueError(f"no init time from {a.start} to {a.end} has the model's "
                         f"{context.past_frames} past frames every {context.step_minutes} "
                         f"min and every target up to +{leads[-1]} min in {a.store}")
    result = evaluate(net, store, inits, leads, thresholds=a.thresholds,
                      scales_km=a.scales, event_threshold=a.event_threshold,
                      batch_tiles=a.batch_tiles, progress=True,
                      steps_members=a.steps_members, steps_seed=a.steps_seed,
                      calibration=calibration, context=context, warn=_warning("evaluate"))
    for path in write_evaluation(result, a.out):
        print(f"wrote {path}")


def store_calibration(checkpoint: Checkpoint, a: Namespace) -> Calibration | None:
    """The calibration that ``forecast``/``evaluate`` apply to ``a.store``: none with
    ``--uncalibrated``, else the checkpoint's fit for that store, or its pooled one."""
    from metnet.io.store import store_name

    if a.uncalibrated or checkpoint.calibration is None:
        return None
    return checkpoint.calibration.for_store(store_name(a.store))


def _calibrate(argv: Sequence[str]) -> None:
    """``metnet calibrate``: the training configuration's validation split, one pass."""
    from metnet.calibration import fit_calibration
    from metnet.checkpoint import Checkpoint
    from metnet.lightning_cli import calibration_cli

    cli = calibration_cli(argv)
    device = inference_device(cli.config.device)
    checkpoint = Checkpoint.load(cli.config.ckpt_path)
    dm = cli.datamodule
    checkpoint.check(dm)
    dm.setup("validate")
    net = checkpoint.net.to(device)
    before = checkpoint.calibration
    calibration = fit_calibration(net, dm.dataloader("val", num_replicas=1, rank=0),
                                  dm.spec.lead_times, checkpoint.thresholds, progress=True,
                                  criterion=checkpoint.loss, stores=dm.store_names)
    if before is not None and (dropped := sorted(set(before.stores) - set(calibration.stores))):
        _warning("calibrate")(f"the calibrations of {', '.join(dropped)} in "
                              f"{checkpoint.path} are replaced by this fit, which does not "
                              "see their validation windows")
    checkpoint.save_calibration(calibration)
    columns = ["lead_time_min", "threshold", "temperature", "probability_threshold",
               "csi_raw", "csi_calibrated", "reliability_raw", "reliability_calibrated",
               "crps_raw", "crps_calibrated"]
    table = calibration.table()
    for name, rows in table.groupby("store", sort=False):
        print(f"store {name}:" if name else "all stores:")
        print(rows[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    own = f" (and one per store: {', '.join(calibration.stores)})" if calibration.stores else ""
    print(f"stored the calibration{own} in {checkpoint.path}")


def _warning(command: str) -> Callable[[str], None]:
    """Print a command's warning as one line on stderr."""
    return lambda line: print(f"metnet {command}: warning: {line}", file=sys.stderr)


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# -- parsers -------------------------------------------------------------------------------


def _command(description: str) -> ArgumentParser:
    parser = ArgumentParser(description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="a YAML file of any of these options")
    return parser


def _synth_parser() -> ArgumentParser:
    p = _command("Write a synthetic radar store: the embedded default, in the format of an "
                 "ingested archive.")
    p.add_argument("--out", type=str, required=True, help="store to create (STORE.zarr)")
    p.add_argument("--frames", type=int, default=96, help="number of frames")
    p.add_argument("--height", type=int, default=256, help="rows in pixels")
    p.add_argument("--width", type=int, default=256, help="columns in pixels")
    p.add_argument("--step_minutes", type=int, default=5, help="time step in minutes")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    return p


def _ingest_parser() -> ArgumentParser:
    from metnet.io.sources import importer_names

    presets = "; ".join(f"{name}: {settings['description']}"
                        for name, settings in PRESETS.items())
    p = _command(
        "Turn a raw radar/satellite archive into a rain-rate store. Name the source by a "
        "preset (--source), a YAML source file kept beside the archive (--source_file, keys "
        "importer, pattern, step_minutes, importer_args, description), or on the command "
        "line (--importer and --pattern); options given override the preset's or the "
        "file's. ODIM HDF5 and CF (xarray) files give their own valid times, any file name "
        f"works; other formats need the time codes in --pattern. Presets: {presets}. "
        f"Importers: {', '.join(importer_names())}.")
    p.add_argument("src_dir", type=str, help="folder searched recursively for the source's "
                   "files")
    p.add_argument("--source", type=str | None, default=None, help="a preset (see above)")
    p.add_argument("--source_file", type=str | None, default=None,
                   help="a YAML source file (see above)")
    p.add_argument("--importer", type=str | None, default=None,
                   help="a pysteps importer (see above), e.g. odim_hdf5")
    p.add_argument("--format", type=Literal["pysteps", "xarray"], default="pysteps",
                   help="xarray: a CF netCDF/zarr dataset read by xarray (with --variable)")
    p.add_argument("--variable", type=str | None, default=None,
                   help="with --format xarray: the rain rate, amount or reflectivity variable")
    p.add_argument("--pattern", type=str | None, default=None,
                   help="file-name pattern: strftime codes (%%Y %%m %%d %%j %%H %%M %%S), ? one "
                   "character, * any run; e.g. 'composite_rate_%%Y%%m%%d%%H%%M.h5'")
    p.add_argument("--step_minutes", type=int | None, default=None,
                   help="time between frames (default: the source's, else the store's, else "
                   "the most common spacing of the files' times)")
    p.add_argument("--importer_arg", type=str, default=[], action="append",
                   help="KEY=VALUE keyword argument of the importer, repeatable, e.g. qty=RATE "
                   "(xarray: accumulation_minutes=N, zr_a=A, zr_b=B)")
    p.add_argument("--out", type=str, required=True, help="store to create or extend "
                   "(STORE.zarr)")
    p.add_argument("--start", type=str | None, default=None, help="first time to ingest, ISO "
                   "(naive = UTC, or with an offset)")
    p.add_argument("--end", type=str | None, default=None, help="last time to ingest, ISO "
                   "(naive = UTC, or with an offset)")
    p.add_argument("--window", type=str | None, default=None, help="crop before coarsening: "
                   "rows=R0:R1,cols=C0:C1 (pixels) or x=X0:X1,y=Y0:Y1 (projection units)")
    p.add_argument("--coarsen", type=int, default=1, help="NaN-aware K x K block mean")
    p.add_argument("--license", type=str | None, default=None,
                   help="SPDX identifier of the data's licence, e.g. CC-BY-4.0 (the store's "
                   "license attribute; default: the source file's)")
    p.add_argument("--identifier", type=str | None, default=None,
                   help="the store's MLCast identifier <country_code>-<entity>-<variable>, "
                   "e.g. nl-knmi-rainfall (mlcast_dataset_identifier)")
    p.add_argument("--creator", type=str | None, default=None,
                   help="'Name <email>' of who makes the store (mlcast_created_by)")
    _flag(p, "--strict", "fail on the first bad file instead of skipping it")
    p.add_argument("--workers", type=int, default=1, help="read and convert files in N "
                   "processes of a local Dask cluster, which write them to the store (1: in this "
                   "process, without Dask)")
    p.add_argument("--scheduler", type=str | None, default=None, help="address of a running "
                   "dask.distributed scheduler (tcp://HOST:8786) whose workers read, convert and "
                   "write the frames; they must see the files and the store at these paths")
    return p


def _check_parser() -> ArgumentParser:
    p = _command("Read every frame of one or more stores and name each whose chunk is missing "
                 "(it would read as no rain data) or cannot be decoded; exit 1 if any.")
    p.add_argument("store", type=list[str] | str, help="store(s): STORE.zarr or [A,B]; paths "
                   "or URLs (https://, s3://, gs://)")
    _storage_options(p)
    return p


def _storage_options(p: ArgumentParser) -> None:
    """The fsspec options of a store given as a URL."""
    p.add_argument("--storage_options", type=dict[str, Any] | None, default=None,
                   help="fsspec options of a URL store's file system, e.g. '{\"anon\": true, "
                   "\"endpoint_url\": \"https://...\"}' for a public bucket of a non-AWS "
                   "object store (credentials otherwise come from the usual places)")


def _model_and_store(p: ArgumentParser) -> None:
    """The options naming the model and the data of ``forecast`` and ``evaluate``."""
    p.add_argument("--ckpt_path", type=str, required=True, help="checkpoint of `metnet fit`")
    p.add_argument("--store", type=str, required=True, help="radar store: STORE.zarr, or a "
                   "URL (https://, s3://, gs://)")
    _storage_options(p)
    p.add_argument("--satellite_stores", type=list[str] | None, default=None,
                   help="satellite stores of a model trained with them, in training order, "
                   "e.g. [sat.zarr] (default: the paths its data settings record)")
    p.add_argument("--lead_times", type=list[int] | None, default=None,
                   help="lead times in minutes, e.g. [15,30,60] (default: the calibrated "
                   "ones, else every store step up to the checkpoint's longest lead)")
    p.add_argument("--thresholds", type=list[float], default=THRESHOLDS,
                   help="rain-rate thresholds in mm/h")
    p.add_argument("--batch_tiles", type=int, default=8,
                   help="tiles per network call (networks with a positional embedding)")
    p.add_argument("--device", type=str, default="auto",
                   help="where the network runs: auto (a CUDA GPU if there is one, else the "
                   "CPU), cpu, cuda, cuda:N, mps")
    _flag(p, "--uncalibrated", "ignore the checkpoint's calibration (`metnet calibrate`)")


def _forecast_parser() -> ArgumentParser:
    p = _command(
        "Forecast a store's whole domain with a checkpoint, into a CF netCDF or zarr file. "
        "Context: the checkpoint's context_frames frames ending at each init time, as far "
        "apart as in training, with every channel of its training samples (satellite "
        "stores, lat/lon, time); a checkpoint trained with motion inputs gets them "
        "computed on the whole domain; the checkpoint's calibration (temperature per lead) "
        "is applied unless --uncalibrated.")
    _model_and_store(p)
    p.add_argument("--init_time", type=list[str] | str | None, default=None,
                   help="init time(s), ISO (naive = UTC): 2024-06-01T12:00 or [T1,T2]")
    p.add_argument("--start", type=str | None, default=None,
                   help="first init time (with --end: every store time with a full context)")
    p.add_argument("--end", type=str | None, default=None, help="last init time")
    p.add_argument("--out", type=str, required=True, help="OUT.zarr (init times appended as "
                   "they complete), OUT.nc (one file, assembled at the end) or a folder (one "
                   ".nc per init time); an existing output of the same settings is resumed")
    p.add_argument("--plot", type=str | None, default=None,
                   help="folder for map panels of each init time")
    p.add_argument("--quantiles", type=list[float], default=[0.1, 0.5, 0.9],
                   help="quantile levels of the rain rate")
    _flag(p, "--bin_probabilities", "also write every bin's probability and the bin edges")
    p.add_argument("--decision", type=Literal["calibrated", "0.5"], default="calibrated",
                   help="probability cut of rain_forecast: the checkpoint's calibrated cut "
                   "per lead and threshold (0.5 without a calibration), or 0.5")
    _flag(p, "--watch", "keep running: poll --store (which `metnet ingest` extends) and "
          "forecast each new init time as soon as its context is complete, into --out "
          "(OUT.zarr or a folder), with a line per forecast giving its latency; starts with "
          "the store's last time (or --start, or after the output's last init time); "
          "Ctrl-C stops it")
    p.add_argument("--poll_seconds", type=float | None, default=None,
                   help=f"with --watch: seconds between polls of the store's metadata "
                   f"(default {DEFAULT_POLL_SECONDS:g})")
    p.add_argument("--watch_max_forecasts", type=int | None, default=None,
                   help="with --watch: stop after this many forecasts")
    p.add_argument("--watch_timeout", type=float | None, default=None,
                   help="with --watch: stop after this many seconds")
    return p


def _evaluate_parser() -> ArgumentParser:
    p = _command(
        "Score a checkpoint against persistence, optical-flow extrapolation and a STEPS "
        "ensemble, at every init time in [--start, --end] with a full context and every "
        "target: CSI/POD/FAR, FSS, MAE, CRPS, Brier score and reliability.")
    _model_and_store(p)
    p.add_argument("--start", type=str, required=True, help="first init time, ISO")
    p.add_argument("--end", type=str, required=True, help="last init time, ISO")
    p.add_argument("--out", type=str, required=True,
                   help="folder for scores.csv, reliability.csv and the figures")
    p.add_argument("--scales", type=list[float], default=[1.0, 5.0, 10.0, 20.0],
                   help="FSS scales in km")
    p.add_argument("--event_threshold", type=float, default=1.0,
                   help="threshold (mm/h) of FSS, Brier score and reliability")
    p.add_argument("--steps_members", type=int, default=20,
                   help="members of the STEPS ensemble (0: no STEPS)")
    p.add_argument("--steps_seed", type=int, default=0, help="seed of the STEPS noise")
    return p


def _flag(p: ArgumentParser, name: str, help_text: str) -> None:
    p.add_argument(name, type=bool, nargs="?", const=True, default=False, help=help_text)


COMMANDS: dict[str, tuple[str, Callable[[], ArgumentParser], Callable[[Namespace], None]]] = {
    "synth": ("write a synthetic radar store (the embedded default)", _synth_parser, _synth),
    "ingest": ("turn a raw radar/satellite archive into a rain-rate store", _ingest_parser,
               _ingest),
    "check": ("read every frame of a store and name the damaged ones", _check_parser, _check),
    "forecast": ("forecast a store's whole domain with a checkpoint (netCDF or zarr)",
                 _forecast_parser, _forecast),
    "evaluate": ("score a checkpoint against persistence, optical-flow extrapolation and "
                 "STEPS", _evaluate_parser, _evaluate),
}


def build_parser(command: str | None = None) -> ArgumentParser:
    """``metnet``: every sub-command (LightningCLI's and ``calibrate`` listed, parsed by
    LightningCLI). Only ``command``'s own options are built (every command's when None):
    the others are listed by their summaries, and ``ingest``'s list of pysteps' importers
    costs a pysteps import (about 2 s) that other commands need not wait for."""
    parser = ArgumentParser(
        prog="metnet", exit_on_error=False,
        description="Probabilistic precipitation nowcasting from radar and satellite archives.")
    sub = parser.add_subcommands(required=True, dest="command")
    for name, summary in {**LIGHTNING_COMMANDS, "calibrate": CALIBRATE_HELP}.items():
        sub.add_subcommand(name, ArgumentParser(add_help=False), help=summary)
    for name, (summary, make, _) in COMMANDS.items():
        built = command is None or name == command
        sub.add_subcommand(name, make() if built else ArgumentParser(add_help=False),
                           help=summary)
    return parser


# -- the old spellings -----------------------------------------------------------------------


def modernise(command: str, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``argv`` in today's grammar, and a deprecation note per old spelling found.

    Renamed options (:data:`RENAMED`), ``--data STORE`` of ``forecast``/``evaluate``, and
    space-separated values of list options (``--lead_times 15 30``: ``[15,30]``).
    """
    out, notes, args = [], [], list(argv)
    i = 0
    while i < len(args):
        token = args[i]
        name, eq, value = token.partition("=")
        new = RENAMED.get(name) or ("--store" if name == "--data" and command in
                                    STORE_WAS_DATA else None)
        if new:
            notes.append(f"{name} is deprecated and will be removed: use {new}")
            name = new
        values = [value] if eq else []
        if name in LIST_OPTIONS and not eq:
            while i + 1 < len(args) and not args[i + 1].startswith("--"):
                values.append(args[i + 1])
                i += 1
            if len(values) > 1 or (values and new and not values[0].startswith("[")):
                notes.append(f"space-separated values are deprecated: use {name} "
                             f"[{','.join(values)}]")
                values = [f"[{','.join(values)}]"]
        out += [f"{name}={values[0]}"] if eq else [name, *values]
        i += 1
    return out, notes


# -- entry point -----------------------------------------------------------------------------


def _one_line(message: str) -> str:
    """A parser's message in one line (jsonargparse explains type errors over several)."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    given = next((line for line in lines if line.startswith("Given value:")), None)
    return lines[0] + (f" ({given[0].lower()}{given[1:]})" if given and len(lines) > 1 else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metnet`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    if command in (*LIGHTNING_COMMANDS, *MODEL_COMMANDS):
        keep_freed_memory()  # large tensors reuse freed memory: faster training and forecasts
    if command in REMOVED:
        print(f"metnet {command}: error: {REMOVED[command]}", file=sys.stderr)
        return 2
    if command in (*LIGHTNING_COMMANDS, "calibrate"):
        rest, notes = modernise(command, argv[1:])
        for note in notes:
            print(f"metnet {command}: {note}", file=sys.stderr)
        quiet_lightning()
        try:
            return _run(command, lambda: _lightning(command, rest), LIGHTNING_ERRORS)
        except ArgumentError as err:  # a mistyped option or configuration key
            print(f"metnet {command}: error: {_one_line(err)} (see `metnet {command} --help`)",
                  file=sys.stderr)
            return 2
    if command in COMMANDS:
        rest, notes = modernise(command, argv[1:])
        for note in notes:
            print(f"metnet {command}: {note}", file=sys.stderr)
        argv = [command, *rest]
    parser = build_parser(command)
    try:
        args = parser.parse_args(argv)
    except Exception as err:  # jsonargparse's ArgumentError, or a bad --config file
        where = f"metnet {command}" if command in COMMANDS else "metnet"
        print(f"{where}: error: {_one_line(err)} (see `{where} --help`)", file=sys.stderr)
        return 2
    return _run(command, lambda: COMMANDS[command][2](args[command]))


def quiet_lightning() -> None:
    """Keep Lightning's notices (accelerators found, seeds set, product tips) off the
    terminal; its warnings still show."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed",
                 "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # a deprecation inside Lightning itself, printed on every run; nothing a user can change
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def _lightning(command: str, argv: list[str]) -> int:
    if command == "calibrate":
        _calibrate(argv)
        return 0
    from metnet.lightning_cli import run_lightning

    return run_lightning([command, *argv])


def _run(command: str, job: Callable[[], int | None],
         errors: tuple[type[Exception], ...] = USAGE_ERRORS) -> int:
    """Run a command's job; an anticipated failure (``errors``) is one line on stderr."""
    try:
        return job() or 0
    except errors as err:
        print(f"metnet {command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"metnet {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
