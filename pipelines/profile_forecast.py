"""Where a one-pass 12-lead forecast's time goes, operation by operation: torch.profiler's
self CPU time of each operator and input shape (the largest first) for the network of
``benchmark_forecast.py``, after a warm-up, in a process that keeps freed memory as
``metnet forecast`` does. numba's prior kernel is not an operator: its time is the gap
between the wall time and the operators' sum::

    python pipelines/profile_forecast.py --sides 256 --decoder
    python pipelines/profile_forecast.py --sides 1024 \\
        --store outputs/stores/knmi.zarr@2010-08-26T06:30

``--root WORKTREE`` profiles the code of another revision checked out there (``git worktree
add WORKTREE REV``; the first line printed says which ``metnet`` ran).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, help="a worktree of the revision to profile")
    root = p.parse_known_args()[0].root
    if root is not None:  # before anything imports metnet
        sys.path[:0] = [str(root), str(root / "pipelines")]
    from benchmark_forecast import LEADS, add_domain_arguments, domains, network

    import metnet
    from metnet.nowcasts import get_method
    from metnet.runtime import keep_freed_memory

    if root is not None and not Path(metnet.__file__).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"metnet was imported from {metnet.__file__}, not from {root}")
    add_domain_arguments(p, [256])
    p.add_argument("--decoder", action="store_true",
                   help="profile the decoder alone (all leads at once), not the whole forecast")
    p.add_argument("--top", type=int, default=20, help="operators to list")
    args = p.parse_args()
    keep_freed_memory()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    net = network(True)
    print(f"metnet from {os.path.dirname(metnet.__file__)}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name, rate, _ in domains(args):
        call = decoder(net, rate) if args.decoder else (
            lambda r=rate: get_method("model")(r, LEADS, step_minutes=5, net=net))
        print(f"\n{name}, {'decoder' if args.decoder else 'whole forecast'}\n")
        print(table(call, args.top))


def decoder(net: torch.nn.Module, rate: np.ndarray) -> Callable[[], None]:
    """The decoder of a one-pass forecast of context rates (T, H, W) mm/h, all leads at
    once, its latent and padded per-lead planes made beforehand: to probabilities, as a
    forecast without calibration asks for them, where the revision's decoder makes them
    (before 75c472e it gave only logits)."""
    from benchmark_forecast import DATA, LEADS

    from metnet.data.motion import lead_planes
    from metnet.nowcasts.extrapolation import MOTION_FRAMES
    from metnet.nowcasts.model import one_pass_tiling, pad_planes, padded_input

    per_lead = lead_planes(rate[-MOTION_FRAMES:], [lead / 5 for lead in LEADS], velocity=True,
                           error=True)
    context = rate[-DATA["context_frames"]:]
    tiling = one_pass_tiling(net, context.shape[1:])
    planes = pad_planes(per_lead, tiling)[None]
    with torch.inference_mode():
        latent = net.encode(padded_input(context, tiling)[None])
    leads = torch.tensor(LEADS)
    asked = ({"probabilities": True}
             if "probabilities" in inspect.signature(net.decode).parameters else {})

    def call() -> None:
        with torch.inference_mode():
            net.decode(latent, leads, planes, **asked)

    return call


def table(call: Callable[[], object], top: int) -> str:
    """A markdown table of the ``top`` operators (and input shapes) by self CPU time in one
    profiled ``call`` after a warm-up, with the wall time and the operators' sum."""
    call()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        began = time.perf_counter()
        call()
        wall = time.perf_counter() - began
    events = sorted(prof.key_averages(group_by_input_shape=True),
                    key=lambda e: -e.self_cpu_time_total)
    lines = ["| operator | input shapes | calls | self ms |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {e.key} | {e.input_shapes} | {e.count} | {e.self_cpu_time_total / 1000:.1f} |"
              for e in events[:top]]
    total = sum(e.self_cpu_time_total for e in events) / 1000
    lines.append(f"\nwall {wall * 1000:.0f} ms (profiled), operators {total:.0f} ms")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
