"""Synthetic radar: the project's embedded default data set.

The generator follows the structure of a STEPS-like stochastic rain field:

* a latent Gaussian field with a power-law spectrum (rain cells embedded in
  bands; the spectral slope controls spatial correlation), slightly
  anisotropic so that structures line up into bands;
* in time, the latent field is advected by a smooth, slowly rotating motion
  field (semi-Lagrangian, backward) and evolves by a scale-dependent AR(1)
  process: large scales persist for hours, small cells for minutes;
* rain is the exponential of the latent field above a threshold whose level
  drifts, so the wet fraction grows and decays during the sequence;
* NaN outside a circular radar coverage.

Everything is drawn from one ``numpy`` generator, so a seed fixes the output.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from scipy.ndimage import map_coordinates
from tqdm.auto import tqdm

from metnet.io.store import make_dataset, provenance

SYNTHETIC_CRS = "+proj=aeqd +lat_0=52.0 +lon_0=5.0 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs"
SPECTRAL_SLOPE = 3.0  # 2-D power spectrum ~ |k|^-3, as fitted to radar rain fields
SPIN_UP_STEPS = 12
RAIN_EDGE_MM_H = 0.1  # rain rate at the edge of a wet area
LOG_GROWTH = 3.0  # rate grows by e^3 per latent standard deviation above the edge
MAX_RATE_MM_H = 150.0  # soft ceiling: convective cores saturate instead of exploding


def synthesize(
    frames: int = 96,
    height: int = 256,
    width: int = 256,
    step_minutes: int = 5,
    seed: int = 0,
    pixel_size: float = 1000.0,
    start: str = "2024-06-01T12:00",
    progress: bool = False,
) -> xr.Dataset:
    """Simulate a radar rain-rate sequence in the store format.

    Args:
        frames: number of time steps T.
        height, width: grid size in pixels.
        step_minutes: time between frames.
        seed: random seed; equal seeds give equal sequences.
        pixel_size: pixel size in metres.
        start: UTC time of the first frame.
        progress: show a progress bar.

    Returns:
        A store-conformant dataset with ``rain_rate`` (T, height, width) in mm/h.
    """
    if frames < 1 or height < 8 or width < 8 or step_minutes < 1:
        raise ValueError("synth needs frames >= 1, height/width >= 8 and step_minutes >= 1")
    rng = np.random.default_rng(seed)
    amplitude, persistence = _spectral_filters(height, width, step_minutes, rng)
    motion = _MotionField(height, width, step_minutes, pixel_size, rng)
    latent = _noise(amplitude, width, rng)
    rain = np.empty((frames, height, width), dtype=np.float32)
    threshold = _threshold_series(frames, rng)
    steps = tqdm(range(-SPIN_UP_STEPS, frames), desc="synth", unit="step", disable=not progress)
    for step in steps:
        latent = _evolve(latent, motion.displacement(step), amplitude, persistence, rng)
        if step >= 0:
            rain[step] = _rain_rate(latent, threshold[step])
    rain[:, ~_coverage(height, width)] = np.nan
    x = (np.arange(width) - width / 2 + 0.5) * pixel_size
    y = (height / 2 - 0.5 - np.arange(height)) * pixel_size
    times = pd.date_range(start, periods=frames, freq=f"{step_minutes}min")
    return make_dataset(
        rain, times, x, y, crs=SYNTHETIC_CRS, source="synthetic", step_minutes=step_minutes,
        provenance=provenance(license="CC0-1.0", history=f"synthetic radar, seed {seed}"),
    )


def _spectral_filters(
    height: int, width: int, step_minutes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude filter (power law, anisotropic) and per-wavenumber AR(1) persistence."""
    ky = np.fft.fftfreq(height)[:, None]
    kx = np.fft.rfftfreq(width)[None, :]
    angle = rng.uniform(0, np.pi)
    stretch = rng.uniform(1.5, 2.5)  # bands: longer along one direction
    ka = kx * np.cos(angle) + ky * np.sin(angle)
    kb = -kx * np.sin(angle) + ky * np.cos(angle)
    k = np.sqrt((ka / stretch) ** 2 + kb**2)
    k_min = 1.0 / max(height, width)
    k = np.maximum(k, k_min)
    amplitude = k ** (-SPECTRAL_SLOPE / 2)
    amplitude[0, 0] = 0.0
    # Lifetime ~ scale^1.5: a 100-pixel structure lives ~ 4 h, a 5-pixel cell ~ 12 min.
    scale = 1.0 / k
    lifetime_minutes = 4.0 * scale**1.5 + 5.0
    persistence = np.exp(-step_minutes / lifetime_minutes)
    return amplitude, persistence


def _noise(amplitude: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian field (H, width) with the spectrum ``amplitude`` (H, width//2+1)."""
    height = amplitude.shape[0]
    white = np.fft.rfft2(rng.standard_normal((height, width)))
    field = np.fft.irfft2(white * amplitude, s=(height, width))
    return (field - field.mean()) / field.std()


def _evolve(
    latent: np.ndarray,
    displacement: np.ndarray,
    amplitude: np.ndarray,
    persistence: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """One step: advect backwards along ``displacement`` (2, H, W) pixels, then AR(1)."""
    height, width = latent.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(float)
    coords = np.stack([rows - displacement[1], cols - displacement[0]])
    advected = map_coordinates(latent, coords, order=1, mode="wrap")
    spectrum = np.fft.rfft2(advected)
    innovation = np.fft.rfft2(_noise(amplitude, width, rng))
    mixed = persistence * spectrum + np.sqrt(1 - persistence**2) * innovation
    field = np.fft.irfft2(mixed, s=(height, width))
    return (field - field.mean()) / field.std()


class _MotionField:
    """Smooth motion: a uniform drift plus a large-scale rotational part, slowly turning."""

    def __init__(
        self,
        height: int,
        width: int,
        step_minutes: int,
        pixel_size: float,
        rng: np.random.Generator,
    ) -> None:
        speed_m_s = rng.uniform(6.0, 14.0)
        self.speed_px = speed_m_s * step_minutes * 60 / pixel_size
        self.heading = rng.uniform(0, 2 * np.pi)
        self.turn_per_step = rng.uniform(-0.01, 0.01)  # radians per step
        rows, cols = np.mgrid[0:height, 0:width] / max(height, width)
        phase = rng.uniform(0, 2 * np.pi, size=2)
        # Stream function of one large eddy; its curl-free-ness keeps rain area stable.
        psi = np.sin(2 * np.pi * rows + phase[0]) * np.sin(2 * np.pi * cols + phase[1])
        du = np.gradient(psi, axis=0)
        dv = -np.gradient(psi, axis=1)
        norm = max(np.abs(du).max(), np.abs(dv).max(), 1e-12)
        self.eddy = 0.4 * self.speed_px * np.stack([du, dv]) / norm

    def displacement(self, step: int) -> np.ndarray:
        """(2, H, W) displacement in pixels per step: (columns, rows), rows pointing down."""
        heading = self.heading + self.turn_per_step * step
        drift = self.speed_px * np.array([np.cos(heading), np.sin(heading)])
        return drift[:, None, None] + self.eddy


def _threshold_series(frames: int, rng: np.random.Generator) -> np.ndarray:
    """Latent threshold per frame: the wet fraction drifts between ~10% and ~35%."""
    period = rng.uniform(1.5, 3.0) * max(frames, 24)
    phase = rng.uniform(0, 2 * np.pi)
    t = np.arange(frames)
    return 0.7 + 0.35 * np.sin(2 * np.pi * t / period + phase)


def _rain_rate(latent: np.ndarray, threshold: float) -> np.ndarray:
    excess = latent - threshold
    rain = RAIN_EDGE_MM_H * np.exp(LOG_GROWTH * np.clip(excess, 0, None))
    rain = rain * MAX_RATE_MM_H / (MAX_RATE_MM_H + rain)
    return np.where(excess > 0, rain, 0.0).astype(np.float32)


def _coverage(height: int, width: int) -> np.ndarray:
    """Boolean (H, W) mask of a circular radar coverage centred on the grid."""
    rows, cols = np.mgrid[0:height, 0:width]
    radius = 0.5 * min(height, width) - 0.5
    centre_r, centre_c = (height - 1) / 2, (width - 1) / 2
    return (rows - centre_r) ** 2 + (cols - centre_c) ** 2 <= radius**2
