"""Geometry: latitude/longitude planes and satellite frames aligned to a radar grid.

Satellite alignment (the choice: the satellite is resampled onto the radar
grid, so every channel of a sample shares one grid and the model needs no
second encoder):

* space: each radar pixel centre is transformed with pyproj into the
  satellite CRS and located on the satellite grid; ``nearest`` takes the
  nearest satellite pixel, ``bilinear`` interpolates the four around it (NaN
  if any of them is NaN). Radar pixels that fall outside the satellite grid
  (or off the Earth's disc of a geostationary view) get NaN.
* time: each radar frame takes the latest satellite frame at or before its
  time, if that frame is at most ``tolerance_minutes`` older; otherwise NaN.

The per-pixel lookup is computed once per (radar store, satellite store);
a sample gathers only its patch from the satellite frames it needs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyproj

from metnet.data.frames import StoreFrames

Interpolation = Literal["nearest", "bilinear"]


def lonlat(x: np.ndarray, y: np.ndarray, crs: str) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (H, W) float32 in degrees of the pixel centres ``y`` x ``x``."""
    to_lonlat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    xx, yy = np.meshgrid(x, y)
    lon, lat = to_lonlat.transform(xx, yy)
    return lon.astype(np.float32), lat.astype(np.float32)


class SatelliteAlignment:
    """Satellite rain rate sampled on a radar grid at the radar's frame times.

    Attributes:
        frame_for: (T_radar,) int64 satellite frame used for each radar frame, -1 if none.
        row, col: (H, W) int64 satellite pixel (nearest, or top-left of the bilinear four).
        weight: (2, H, W) float32 fractional offsets (row, col) for bilinear; unused for nearest.
        inside: (H, W) bool, whether the radar pixel has satellite pixels around it.
    """

    def __init__(
        self,
        radar: StoreFrames,
        satellite: StoreFrames,
        tolerance_minutes: int = 15,
        interpolation: Interpolation = "nearest",
    ) -> None:
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"satellite_interpolation must be nearest or bilinear, not "
                             f"{interpolation!r}")
        self.satellite = satellite
        self.bilinear = interpolation == "bilinear"
        self.frame_for = _latest_before(radar.times, satellite.times, tolerance_minutes)
        fy, fx = _fractional_index(radar, satellite)
        height, width = satellite.shape
        if self.bilinear:
            row, col = np.floor(fy), np.floor(fx)
            self.inside = (row >= 0) & (row < height - 1) & (col >= 0) & (col < width - 1)
            self.weight = np.stack([fy - row, fx - col]).astype(np.float32)
        else:
            row, col = np.rint(fy), np.rint(fx)
            self.inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
        self.row = np.where(self.inside, row, 0).astype(np.int64)
        self.col = np.where(self.inside, col, 0).astype(np.int64)

    def sample(self, radar_frames: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        """Satellite rain rate (n, h, w) float32 mm/h on radar pixels ``rows`` x ``cols``.

        Args:
            radar_frames: (n,) indices of radar frames (into the radar ``times``).
            rows, cols: the radar patch.
        """
        row, col, inside = self.row[rows, cols], self.col[rows, cols], self.inside[rows, cols]
        sat_frames = self.frame_for[radar_frames]
        out = np.full((len(sat_frames), *row.shape), np.nan, dtype=np.float32)
        present = sat_frames >= 0
        if not present.any() or not inside.any():
            return out
        pad = 1 if self.bilinear else 0
        r0, c0 = row[inside].min(), col[inside].min()
        box = self.satellite.read(
            sat_frames[present], slice(r0, row[inside].max() + 1 + pad),
            slice(c0, col[inside].max() + 1 + pad),
        )
        r, c = np.where(inside, row - r0, 0), np.where(inside, col - c0, 0)
        if self.bilinear:
            wy, wx = self.weight[0][rows, cols], self.weight[1][rows, cols]
            values = ((1 - wy) * ((1 - wx) * box[:, r, c] + wx * box[:, r, c + 1])
                      + wy * ((1 - wx) * box[:, r + 1, c] + wx * box[:, r + 1, c + 1]))
        else:
            values = box[:, r, c]
        out[present] = np.where(inside, values, np.nan)
        return out


def _latest_before(times: np.ndarray, candidates: np.ndarray, tolerance_minutes: int) -> np.ndarray:
    """For each of ``times``, the index of the latest candidate at or before it within tolerance."""
    index = np.searchsorted(candidates, times, side="right") - 1
    found = index >= 0
    age = times - candidates[np.clip(index, 0, None)]
    found &= age <= np.timedelta64(tolerance_minutes, "m")
    return np.where(found, index, -1).astype(np.int64)


def _fractional_index(radar: StoreFrames, satellite: StoreFrames) -> tuple[np.ndarray, np.ndarray]:
    """Fractional satellite (row, col) (H, W) of each radar pixel centre; NaN off the grid."""
    transform = pyproj.Transformer.from_crs(radar.crs, satellite.crs, always_xy=True)
    xx, yy = np.meshgrid(radar.x, radar.y)
    with np.errstate(invalid="ignore"):
        sx, sy = transform.transform(xx, yy, errcheck=False)
    sx = np.where(np.isfinite(sx), sx, np.nan)
    sy = np.where(np.isfinite(sy), sy, np.nan)
    fx = (sx - satellite.x[0]) / (satellite.x[1] - satellite.x[0])
    fy = (sy - satellite.y[0]) / (satellite.y[1] - satellite.y[0])
    return fy, fx
