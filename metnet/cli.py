"""The single ``metnet`` command.

Data commands (``synth``, ``ingest``) are plain argparse sub-commands; each
failure they anticipate ends in one line on stderr naming the file and the
problem, and a non-zero exit status.
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
    "validate": "score a checkpoint on the validation split, next to persistence",
    "test": "score a checkpoint on the test split, next to persistence",
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metnet`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from metnet.lightning_cli import run_lightning

        return run_lightning(argv)
    args = build_parser().parse_args(argv)
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
