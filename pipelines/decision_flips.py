"""Where a trained model decides otherwise than extrapolation at 1 mm/h, and how surely.

For the init times of a store (``metnet evaluate``'s, whole domain), per lead time: CSI at
1 mm/h of the model (P(R > 1 mm/h) >= 0.5) and of extrapolation, then the pixels where only
one of them says rain: how many, how many of those were observed above 1 mm/h, and the
medians of extrapolation's rate and of the model's probability there. A median probability
of 0.50 means noise-sized corrections overturned extrapolation's decision::

    python pipelines/decision_flips.py outputs/radar/checkpoints/best.ckpt \\
        outputs/stores/fmi.zarr 2017-05-09T12:50 2017-05-09T13:00
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from metnet.checkpoint import Checkpoint
from metnet.forecast import read_context, read_observations, store_context
from metnet.io.store import open_store
from metnet.nowcasts import get_method
from metnet.nowcasts.extrapolation import MOTION_FRAMES, motion_field
from metnet.verification import evaluation_init_times, model_distribution

LEADS = (5, 10, 15, 30, 60)
THRESHOLD = 1.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt")
    p.add_argument("store")
    p.add_argument("start", help="first init time, ISO")
    p.add_argument("end", help="last init time, ISO")
    args = p.parse_args()
    checkpoint = Checkpoint.load(args.ckpt)
    store, net = open_store(args.store), checkpoint.net.eval()
    context = store_context(store, net, checkpoint.data_settings)
    counts = np.zeros((2, len(LEADS), 3))  # (model, extrapolation): hits, misses, false alarms
    flips: dict[str, list[list[np.ndarray]]] = {
        side: [[] for _ in LEADS] for side in ("model only", "extrapolation only")}
    for init in evaluation_init_times(store, args.start, args.end, LEADS, context):
        rate = read_context(store, init, max(context.past_frames, MOTION_FRAMES))
        obs = read_observations(store, init, LEADS)
        with torch.inference_mode():
            dist = model_distribution(net, context, init, LEADS, batch_tiles=32)
            probability = dist.exceedance(THRESHOLD).numpy()
        field = np.nan_to_num(get_method("extrapolation")(
            rate, LEADS, step_minutes=context.step_minutes, velocity=motion_field(rate)))
        valid = np.isfinite(obs) & np.isfinite(rate[-1])
        for j in range(len(LEADS)):
            observed, v = obs[j] > THRESHOLD, valid[j]
            model, extrapolation = probability[j] >= 0.5, field[j] > THRESHOLD
            for i, said in enumerate((model, extrapolation)):
                counts[i, j] += [(said & observed & v).sum(), (~said & observed & v).sum(),
                                 (said & ~observed & v).sum()]
            for side, only in (("model only", model & ~extrapolation & v),
                               ("extrapolation only", extrapolation & ~model & v)):
                flips[side][j].append(np.stack([observed[only], field[j][only],
                                                probability[j][only]]))
    csi = counts[..., 0] / counts.sum(-1)
    print("| lead (min) | CSI model | CSI extrapolation | rain said by | pixels "
          "| observed > 1 mm/h | median extrapolated rate (mm/h) | median P(R > 1 mm/h) |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for j, lead in enumerate(LEADS):
        for side, per_lead in flips.items():
            rained, rates, probabilities = np.concatenate(per_lead[j], axis=1)
            medians = (f"{np.median(rates):.2f} | {np.median(probabilities):.3f}"
                       if len(rates) else "- | -")
            print(f"| {lead} | {csi[0, j]:.3f} | {csi[1, j]:.3f} | {side} | {len(rates)} "
                  f"| {int(rained.sum())} | {medians} |")


if __name__ == "__main__":
    main()
