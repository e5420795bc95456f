"""pysteps' STEPS ensemble (Bowler et al. 2006, Seed et al. 2013) as a nowcast method."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
from pysteps import nowcasts
from pysteps.utils import transformation

from metnet.nowcasts.extrapolation import DB_THRESHOLD, MOTION_FRAMES, motion_field, to_db

MEMBERS = 20
CASCADE_LEVELS = 6  # pysteps' default (its issue #385)


def forecast(rate: np.ndarray, lead_times: Sequence[int], *, step_minutes: int,
             km_per_pixel: float, members: int = MEMBERS, seed: int = 0,
             velocity: np.ndarray | None = None, **_: object) -> np.ndarray:
    """pysteps STEPS ensemble (M, L, H, W) float32 mm/h of context rates (T >= 3, H, W).

    ``pysteps.nowcasts.get_method("steps")`` as in pysteps' examples, on the dB fields of the
    last 3 frames (:func:`metnet.nowcasts.extrapolation.to_db`; no-rain threshold -10 dB =
    0.1 mm/h): 6 cascade levels, nonparametric noise, BPS motion perturbations, incremental
    mask, CDF matching, one worker and numpy's FFT; back-transformed to mm/h (below
    0.1 mm/h: 0). Rain advected in from outside the domain is 0; pixels NaN in the last
    frame are NaN. The nowcast runs every step up to the longest lead and the leads are
    picked from it, so a lead's forecast does not depend on the other leads asked for.

    Args:
        rate: context rain rate in mm/h, oldest first, ``step_minutes`` apart; NaN where
            not observed.
        lead_times: L lead times in minutes, multiples of ``step_minutes``.
        step_minutes: time between frames (the motion's and the nowcast's time step).
        km_per_pixel: grid spacing (km).
        members: ensemble size M (>= 1).
        seed: seed of the noise and motion perturbations.
        velocity: (2, H, W) motion in pixels per step (default: Lucas-Kanade of ``rate``).
    """
    if members < 1:
        raise ValueError(f"a STEPS ensemble needs at least 1 member, got {members}")
    steps = [lead / step_minutes for lead in lead_times]
    if any(s != int(s) or s < 1 for s in steps):
        raise ValueError(f"STEPS lead times must be positive multiples of the "
                         f"{step_minutes}-minute step, got {list(lead_times)}")
    velocity = motion_field(rate) if velocity is None else velocity
    threshold_db = 10.0 * np.log10(DB_THRESHOLD)
    with contextlib.redirect_stdout(io.StringIO()):  # pysteps reports every step
        db = nowcasts.get_method("steps")(
            to_db(rate[-MOTION_FRAMES:]), velocity.astype(np.float64), int(max(steps)),
            n_ens_members=members, n_cascade_levels=CASCADE_LEVELS,
            precip_thr=threshold_db, kmperpixel=km_per_pixel, timestep=step_minutes,
            noise_method="nonparametric", mask_method="incremental",
            probmatching_method="cdf", seed=seed, num_workers=1, fft_method="numpy")
    picked = db[:, [int(s) - 1 for s in steps]]
    field, _ = transformation.dB_transform(picked, threshold=threshold_db, inverse=True)
    field = np.nan_to_num(field, nan=0.0)  # advected in from outside the domain
    return np.where(np.isnan(rate[-1]), np.nan, field).astype(np.float32)
