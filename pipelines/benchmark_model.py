"""Benchmark the MetNet network: 12-lead inference, training step, attention scaling.

Prints, for one model configuration on CPU or GPU: the parameter count, the median time of
a multi-lead inference and of a training step (forward + backward + AdamW step, masked
cross-entropy loss), and their peak memory; then time and peak memory of axial,
criss-cross and full global attention against the image side. Every measurement runs in a
fresh process, so the CPU peak (``ru_maxrss``) belongs to that measurement alone.

Reference setting (:data:`REFERENCE`, the figures of BENCHMARKS.md): batch 1, 6 frames x
1 channel x 256x256 px, packed 4x and downsampled 4x to a 16x16 latent of 64 channels,
12 leads, the central 64x64 px predicted. Packing off: ``--set pack_factor=1`` (64x64
latent). ``--config`` takes a network piece of ``configs/model/`` (its ``init_args``
replace the reference network's; the input shape stays the reference's unless ``--set``).

    python pipelines/benchmark_model.py
    python pipelines/benchmark_model.py --set pack_factor=1 --skip-attention
    python pipelines/benchmark_model.py --config configs/model/paper.yaml --set input_size=1024
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from metnet.data.motion import lead_planes
from metnet.distribution import masked_cross_entropy
from metnet.io.synthetic import synthesize
from metnet.models import AxialAttention, CrissCrossAttention, FullAttention, MetNet
from metnet.nowcasts.extrapolation import MOTION_FRAMES
from metnet.nowcasts.model import motion_layout

#: The network and input shape of the benchmark's figures in BENCHMARKS.md.
REFERENCE: dict[str, Any] = dict(
    input_channels=1, context_frames=6, input_size=256, target_size=64, pack_factor=4,
    downsampler_channels=[32, 64], lstm_hidden=64, lstm_layers=1, attention="axial",
    num_blocks=4, conditioned_from=2, heads=4, mlp_ratio=2.0, lead_embedding_dim=32,
    conditioning="film", max_lead_minutes=120, lead_step_minutes=5,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, help="network YAML of configs/model/ (default: the "
                   "reference network)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides")
    p.add_argument("--device", default=default_device)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--leads", type=int, default=12, help="lead times, every 5 min")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--sides", type=int, nargs="*", default=[64, 128, 256])
    p.add_argument("--attention-channels", type=int, default=64)
    p.add_argument("--attention-heads", type=int, default=4)
    p.add_argument(
        "--full-max-gb",
        type=float,
        default=8.0,
        help="skip full attention whose score matrix exceeds this",
    )
    p.add_argument("--skip-model", action="store_true")
    p.add_argument("--skip-attention", action="store_true")
    return p.parse_args(argv)


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    """Model init args: the reference, the ``--config`` network's init args, then
    ``--set KEY=VALUE`` overrides (YAML values)."""
    cfg = dict(REFERENCE)
    if args.config is not None:
        cfg |= yaml.safe_load(args.config.read_text())["init_args"]
    for item in args.set:
        key, value = item.split("=", 1)
        cfg[key] = yaml.safe_load(value)
    return cfg


# --- measurement helpers (run inside the worker process) ----------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> dict:
    """Median and minimum of ``fn`` in ms after warm-up, and the peak memory it needs (MB).

    The memory baseline is taken before the warm-up, so the peak covers everything the
    measured step allocates (activations, gradients, optimiser state).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _current_rss()
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - start))
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base / 2**20
    return {"median_ms": statistics.median(times), "min_ms": min(times), "peak_mb": peak_mb}


def _current_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc; else the peak so far)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _setup(device: str, threads: int | None) -> torch.device:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch.device(device)


def measure_model(
    cfg: dict,
    device: str,
    batch: int,
    leads: int,
    warmup: int,
    repeats: int,
    threads: int | None,
    mode: str,
) -> dict:
    """One model measurement: ``mode`` is "inference" or "train"."""
    dev = _setup(device, threads)
    model = MetNet(**cfg).to(dev)
    x = torch.randn(
        batch, model.context_frames, model.input_channels, *model.input_size, device=dev
    )
    lead_times = 5 * torch.arange(1, leads + 1, device=dev)
    planes = _lead_inputs(model, batch, leads)
    planes = planes.to(dev) if planes is not None else None
    if mode == "inference":
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(x, lead_times, planes)

    else:
        model.train()
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
        target = 5 * torch.rand(batch, leads, *model.target_size, device=dev)
        target[..., :4, :] = float("nan")  # some unobserved pixels, as in real radar

        def step() -> None:
            optimiser.zero_grad(set_to_none=True)
            loss = masked_cross_entropy(model(x, lead_times, planes), target, model.bin_edges,
                                        dim=2)
            loss.backward()
            optimiser.step()

    result = _timed(step, dev, warmup, repeats)
    result["params"] = sum(p.numel() for p in model.parameters())
    result["latent"] = model.latent_size
    return result


def _lead_inputs(model: MetNet, batch: int, leads: int) -> torch.Tensor | None:
    """Per-lead inputs (B, L, Cl, H, W) for a network that takes them (``lead_channels``):
    the motion planes of synthetic rain over the input (leads every 5 min), so that a prior
    works on a share of wet pixels like a radar domain's rather than on noise; None
    otherwise."""
    if not model.config.get("lead_channels"):
        return None
    height, width = model.input_size
    rate = synthesize(frames=MOTION_FRAMES, height=height, width=width,
                      seed=1)["rain_rate"].values
    planes = lead_planes(rate, list(range(1, leads + 1)), *motion_layout(model))
    return torch.from_numpy(planes)[None].expand(batch, *planes.shape)


ATTENTION = {
    "axial": lambda c, h: torch.nn.Sequential(
        AxialAttention(c, h, "row"), AxialAttention(c, h, "column")
    ),
    "criss_cross": lambda c, h: _Recurrent(CrissCrossAttention(c, h), passes=2),
    "full": FullAttention,
}


class _Recurrent(torch.nn.Module):
    """A module applied ``passes`` times with shared weights (CCNet's R = 2)."""

    def __init__(self, module: torch.nn.Module, passes: int) -> None:
        super().__init__()
        self.module, self.passes = module, passes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.passes):
            x = self.module(x)
        return x


def measure_attention(
    kind: str,
    side: int,
    channels: int,
    heads: int,
    device: str,
    warmup: int,
    repeats: int,
    threads: int | None,
    mode: str,
) -> dict:
    """Time and memory of one attention kind on a (1, side, side, channels) map."""
    dev = _setup(device, threads)
    module = ATTENTION[kind](channels, heads).to(dev)
    x = torch.randn(1, side, side, channels, device=dev, requires_grad=mode == "train")
    if mode == "inference":

        def step() -> None:
            with torch.inference_mode():
                module(x)

    else:

        def step() -> None:
            module(x).square().mean().backward()

    return _timed(step, dev, warmup, repeats)


def in_fresh_process(fn: Callable[..., dict], *args: Any) -> dict:
    """Run ``fn(*args)`` in a new spawned process (clean peak memory) and return its result."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


# --- report -------------------------------------------------------------------------------


def report_model(args: argparse.Namespace) -> None:
    cfg = model_config(args)
    common = (cfg, args.device, args.batch, args.leads, args.warmup, args.repeats, args.threads)
    infer = in_fresh_process(measure_model, *common, "inference")
    train = in_fresh_process(measure_model, *common, "train")
    h, w = infer["latent"]
    name = args.config.name if args.config else "reference"
    print(
        f"model {name} {' '.join(args.set)} on {args.device}: "
        f"{infer['params']:,} parameters, {h}x{w} latent, batch {args.batch}, "
        f"{args.leads} leads"
    )
    print("| step | median ms | min ms | peak memory MB (above setup) |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in (("inference", infer), ("training step", train)):
        print(f"| {name} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['peak_mb']:.0f} |")


def report_attention(args: argparse.Namespace) -> None:
    c, heads = args.attention_channels, args.attention_heads
    print(
        f"\nattention on a (1, S, S, {c}) map, {heads} heads, on {args.device} "
        "(axial: row + column; criss-cross: 2 passes; full: all S^2 pixels)"
    )
    print("| side | kind | inference ms | inference MB | fwd+bwd ms | fwd+bwd MB |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for side in args.sides:
        for kind in ATTENTION:
            scores_gb = heads * side**4 * 4 / 2**30  # float32 (heads, S^2, S^2) score matrix
            if kind == "full" and scores_gb > args.full_max_gb:
                print(f"| {side} | {kind} | skipped ({scores_gb:.0f} GB needed) | | | |")
                continue
            warmup, repeats = (1, 3) if kind == "full" or side >= 256 else (2, 5)
            common = (kind, side, c, heads, args.device, warmup, repeats, args.threads)
            inf = in_fresh_process(measure_attention, *common, "inference")
            trn = in_fresh_process(measure_attention, *common, "train")
            print(
                f"| {side} | {kind} | {inf['median_ms']:.1f} | {inf['peak_mb']:.0f} | "
                f"{trn['median_ms']:.1f} | {trn['peak_mb']:.0f} |",
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    threads = args.threads or torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {threads} CPU threads, python {sys.version.split()[0]}, "
        f"load average {load} (1, 5, 15 min) on {os.cpu_count()} cores"
    )
    if not args.skip_model:
        report_model(args)
    if not args.skip_attention:
        report_attention(args)


if __name__ == "__main__":
    main()
