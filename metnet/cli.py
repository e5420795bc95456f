"""The single ``metnet`` command.

Data and inference commands (``synth``, ``ingest``, ``calibrate``, ``forecast``,
``evaluate``) are plain argparse sub-commands; each failure they anticipate ends in one
line on stderr naming the file and the problem, and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from metnet.io.sources import SOURCES

USAGE_ERRORS = (ValueError, RuntimeError, OSError)
LIGHTNING_COMMANDS = {
    "fit": "train a model (LightningCLI; `metnet fit --help` lists every option)",
    "validate": "score a checkpoint on the validation split, next to the baselines",
    "test": "score a checkpoint on the test split, next to the baselines",
    "predict": "run a checkpoint over the test split",
}


def _synth(args: argparse.Namespace) -> None:
    from metnet.io.store import write_store
    from metnet.io.synthetic import synthesize

    if Path(args.out).exists():
        raise FileExistsError(f"{args.out}: already exists; remove it or choose another --out")
    ds = synthesize(
        frames=args.frames,
        height=args.height,
        width=args.width,
        step_minutes=args.step_minutes,
        seed=args.seed,
        progress=True,
    )
    write_store(ds, args.out)
    print(f"wrote {args.out}: {args.frames} frames of {args.height}x{args.width} px")


def _ingest(args: argparse.Namespace) -> None:
    from metnet.io.ingest import ingest

    report = ingest(
        args.src_dir,
        args.source,
        args.out,
        start=args.start,
        end=args.end,
        window=args.window,
        coarsen=args.coarsen,
        strict=args.strict,
        warn=lambda line: print(f"warning: {line}", file=sys.stderr),
    )
    print(
        f"{report.store}: {report.written} frames written, "
        f"{report.already_present} already present, {len(report.skipped)} files skipped"
    )
    for path, reason in report.skipped:
        print(f"  skipped {path}: {reason}", file=sys.stderr)


def _forecast(args: argparse.Namespace) -> None:
    from metnet.forecast import (
        check_data_settings,
        complete_init_times,
        forecast_dataset,
        frames_needed,
        write_forecast,
    )
    from metnet.io.store import open_store
    from metnet.training import load_calibration, load_checkpoint, load_data_settings

    if args.start and not args.end:
        raise ValueError("--start needs --end")
    out = Path(args.out)
    if out.suffix not in (".nc", ".zarr"):
        raise ValueError(f"{out}: --out must end in .nc (netCDF-4) or .zarr (zarr v3)")
    if out.exists():
        raise FileExistsError(f"{out}: already exists; remove it or choose another --out")
    net, _ = load_checkpoint(args.ckpt)
    calibration = None if args.uncalibrated else load_calibration(args.ckpt)
    store = open_store(args.data)
    check_data_settings(load_data_settings(args.ckpt), store)
    frames = frames_needed(net)
    inits = args.init_time or complete_init_times(store, args.start, args.end, frames)
    if not inits:
        raise ValueError(f"no init time from {args.start} to {args.end} has {frames} past "
                         f"frames in {args.data}")
    leads = args.lead_times or (calibration.lead_times if calibration else None)
    ds = forecast_dataset(net, store, inits, leads, quantiles=args.quantiles,
                          thresholds=args.thresholds, bin_probabilities=args.bin_probabilities,
                          batch_tiles=args.batch_tiles, calibration=calibration,
                          calibrated_decisions=args.decision == "calibrated", progress=True)
    write_forecast(ds, out)
    print(f"wrote {out}: {ds.sizes['init_time']} init times x {ds.sizes['lead_time']} lead "
          f"times of {ds.sizes['y']}x{ds.sizes['x']} px")
    if args.plot:
        from metnet.verification import plot_forecast

        for init in ds["init_time"].values:
            print(f"wrote {plot_forecast(ds, store, init, args.plot)}")


def _evaluate(args: argparse.Namespace) -> None:
    from metnet.forecast import (
        check_data_settings,
        complete_init_times,
        frames_needed,
        resolve_lead_times,
    )
    from metnet.io.store import open_store
    from metnet.training import load_calibration, load_checkpoint, load_data_settings
    from metnet.verification import MOTION_FRAMES, evaluate, write_evaluation

    net, _ = load_checkpoint(args.ckpt)
    calibration = None if args.uncalibrated else load_calibration(args.ckpt)
    store = open_store(args.data)
    check_data_settings(load_data_settings(args.ckpt), store)
    wanted = args.lead_times or (calibration.lead_times if calibration else None)
    leads = resolve_lead_times(net, store, wanted)
    frames = max(frames_needed(net), MOTION_FRAMES)
    inits = complete_init_times(store, args.start, args.end, frames, leads)
    if not inits:
        raise ValueError(f"no init time from {args.start} to {args.end} has {frames} past "
                         f"frames and every target up to +{leads[-1]} min in {args.data}")
    result = evaluate(net, store, inits, leads, thresholds=args.thresholds,
                      scales_km=args.scales, event_threshold=args.event_threshold,
                      batch_tiles=args.batch_tiles, progress=True,
                      steps_members=args.steps_members, steps_seed=args.steps_seed,
                      calibration=calibration)
    for path in write_evaluation(result, args.out):
        print(f"wrote {path}")


def _calibrate(args: argparse.Namespace) -> None:
    from metnet.calibration import fit_calibration
    from metnet.lightning_cli import datamodule_from_config
    from metnet.training import load_checkpoint, save_calibration

    net, hparams = load_checkpoint(args.ckpt)
    dm = datamodule_from_config(args.lightning_args)
    _check_fits(net, dm, args.ckpt)
    dm.setup("validate")
    calibration = fit_calibration(
        net, dm.dataloader("val", num_replicas=1, rank=0), dm.spec.lead_times,
        hparams.get("thresholds", (0.1, 1.0, 4.0, 8.0)), progress=True)
    save_calibration(args.ckpt, calibration)
    table = calibration.table()
    columns = ["lead_time_min", "threshold", "temperature", "probability_threshold",
               "csi_raw", "csi_calibrated", "reliability_raw", "reliability_calibrated"]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"stored the calibration in {args.ckpt}")


def _check_fits(net, dm, ckpt: str) -> None:
    """Refuse a datamodule whose samples do not fit the checkpoint's network."""
    config = net.config
    wanted = {"input_channels": dm.num_channels, "lead_channels": dm.num_lead_channels,
              "context_frames": dm.spec.context_frames, "input_size": dm.spec.context_size,
              "target_size": dm.spec.target_size}
    bad = [f"{name}={config.get(name, 0)} (data gives {value})" for name, value
           in wanted.items() if config.get(name, 0) not in (value, [value, value])]
    if bad:
        raise ValueError(f"{ckpt}: the configured data do not fit the checkpoint: "
                         + ", ".join(bad))


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic radar store (the embedded default)")
    p.add_argument("--out", required=True, help="store to create (STORE.zarr)")
    p.add_argument("--frames", type=int, default=96, help="number of frames (default 96)")
    p.add_argument("--height", type=int, default=256, help="rows in pixels (default 256)")
    p.add_argument("--width", type=int, default=256, help="columns in pixels (default 256)")
    p.add_argument("--step-minutes", type=int, default=5, help="time step (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(handler=_synth)


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    sources = "\n".join(f"  {s.name:8s} {s.description}" for s in SOURCES.values())
    p = sub.add_parser(
        "ingest",
        help="turn a raw radar/satellite archive into a rain-rate store",
        description=f"Sources:\n{sources}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src_dir", help="folder searched recursively for the source's files")
    p.add_argument("--source", required=True, help="source name (see above)")
    p.add_argument("--out", required=True, help="store to create or extend (STORE.zarr)")
    p.add_argument("--start", help="first time to ingest, ISO, UTC")
    p.add_argument("--end", help="last time to ingest, ISO, UTC")
    p.add_argument(
        "--window",
        help="crop before coarsening: rows=R0:R1,cols=C0:C1 (pixels) or x=X0:X1,y=Y0:Y1",
    )
    p.add_argument("--coarsen", type=int, default=1, help="NaN-aware K x K block mean")
    p.add_argument("--strict", action="store_true", help="fail on the first bad file")
    p.set_defaults(handler=_ingest)


def _add_forecast(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "forecast",
        help="forecast a store's whole domain with a checkpoint (netCDF or zarr)",
        description="Context: the checkpoint's context_frames consecutive frames on the "
        "store's step grid ending at each init time (radar channels [rain, rain_mask]); "
        "a checkpoint trained with motion inputs gets them computed on the whole domain; "
        "the checkpoint's calibration (temperature per lead) is applied unless "
        "--uncalibrated.",
    )
    _add_checkpoint_and_store(p)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--init-time", nargs="+", metavar="ISO", help="init times, ISO, UTC")
    when.add_argument("--start", metavar="ISO",
                      help="first init time (with --end: every store time with a full context)")
    p.add_argument("--end", metavar="ISO", help="last init time (with --start)")
    p.add_argument("--out", required=True, help="output to create: OUT.nc or OUT.zarr")
    p.add_argument("--plot", metavar="DIR", help="also draw map panels per init time here")
    _add_forecast_options(p)
    p.add_argument("--quantiles", nargs="+", type=float, default=[0.1, 0.5, 0.9],
                   help="quantile levels of the rain rate (default 0.1 0.5 0.9)")
    p.add_argument("--bin-probabilities", action="store_true",
                   help="also write every bin's probability and the bin edges")
    p.add_argument("--uncalibrated", action="store_true",
                   help="ignore the checkpoint's calibration (`metnet calibrate`)")
    p.add_argument("--decision", choices=["calibrated", "0.5"], default="calibrated",
                   help="probability cut of rain_forecast: the checkpoint's calibrated cut "
                   "per lead and threshold (default; 0.5 without a calibration) or 0.5")
    p.set_defaults(handler=_forecast)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a checkpoint's post-hoc calibration on the validation split",
        description="Fits, on the validation split of the training configuration, a "
        "temperature per lead time (lowest cross-entropy) and a probability threshold per "
        "lead and rain threshold (highest CSI), and stores them in the checkpoint; "
        "forecast and evaluate then use them. Any other option (--config, --data.*) is the "
        "training configuration, as for `metnet fit`.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint of `metnet fit` (CKPT.ckpt)")
    p.set_defaults(handler=_calibrate, lightning_args=[])


def _add_checkpoint_and_store(p: argparse.ArgumentParser) -> None:
    """The model and the data: arguments of ``forecast`` and ``evaluate``."""
    p.add_argument("--ckpt", required=True, help="checkpoint of `metnet fit` (CKPT.ckpt)")
    p.add_argument("--data", required=True, help="radar store (STORE.zarr)")


def _add_forecast_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``forecast`` and ``evaluate``."""
    p.add_argument("--lead-times", nargs="+", type=int, metavar="MIN",
                   help="lead times in minutes (default: the calibrated ones, else every "
                   "store step up to the checkpoint's longest lead)")
    p.add_argument("--thresholds", nargs="+", type=float, default=[0.1, 1.0, 4.0, 8.0],
                   help="rain-rate thresholds in mm/h (default 0.1 1 4 8)")
    p.add_argument("--batch-tiles", type=int, default=8, help="tiles per network call")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a checkpoint against persistence, optical-flow extrapolation and STEPS",
        description="Scores every init time in [--start, --end] with a full context and "
        "every target: CSI/POD/FAR, FSS, MAE, CRPS, Brier score and reliability, for the "
        "model (and, with the checkpoint's calibration, the calibrated model), Eulerian "
        "persistence, Lucas-Kanade extrapolation and a pysteps STEPS ensemble.",
    )
    _add_checkpoint_and_store(p)
    p.add_argument("--start", required=True, metavar="ISO", help="first init time, ISO, UTC")
    p.add_argument("--end", required=True, metavar="ISO", help="last init time, ISO, UTC")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for scores.csv, reliability.csv and the figures")
    _add_forecast_options(p)
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 5.0, 10.0, 20.0],
                   metavar="KM", help="FSS scales in km (default 1 5 10 20)")
    p.add_argument("--event-threshold", type=float, default=1.0,
                   help="threshold (mm/h) of FSS, Brier score and reliability (default 1)")
    p.add_argument("--steps-members", type=int, default=20,
                   help="members of the STEPS ensemble (default 20; 0: no STEPS)")
    p.add_argument("--steps-seed", type=int, default=0, help="seed of the STEPS noise")
    p.add_argument("--uncalibrated", action="store_true",
                   help="ignore the checkpoint's calibration (no model_calibrated rows)")
    p.set_defaults(handler=_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metnet",
        description="Probabilistic precipitation nowcasting from radar and satellite archives.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in LIGHTNING_COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)  # dispatched to LightningCLI
    _add_synth(sub)
    _add_ingest(sub)
    _add_calibrate(sub)
    _add_forecast(sub)
    _add_evaluate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metnet`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from metnet.lightning_cli import run_lightning

        try:
            return run_lightning(argv)
        except (ValueError, OSError) as err:  # bad data configuration, checkpoint, path
            print(f"metnet {argv[0]}: error: {err}", file=sys.stderr)
            return 1
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "calibrate":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.lightning_args = rest
    handler: Callable[[argparse.Namespace], None] = args.handler
    try:
        handler(args)
    except USAGE_ERRORS as err:
        print(f"metnet {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"metnet {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
