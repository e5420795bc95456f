"""Per-lead inputs (e.g. the field extrapolated to each lead) into the lead-conditioned decoder:
their channels, and how they enter the latent."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from metnet.models.downsampler import packed_conv


def lead_channel_names(velocity: bool = False, error: bool = False) -> list[str]:
    """The per-lead input channels in order: extrapolated rain (input transform, 0 where
    unknown), its validity mask, with ``error`` the last step's extrapolation error
    (:func:`metnet.data.motion.extrapolation_error`, the same for every lead), and with
    ``velocity`` the motion (u, v) / :data:`metnet.data.motion.VELOCITY_SCALE` (what
    :mod:`metnet.data.motion` builds)."""
    return (["extrapolated_rain", "extrapolated_mask"]
            + (["extrapolation_error"] if error else [])
            + (["motion_u", "motion_v"] if velocity else []))


def lead_layout(channels: int) -> tuple[bool, bool]:
    """``(velocity, error)`` of a number of per-lead channels, as laid out by
    :func:`lead_channel_names` (2, 3, 4 and 5 channels tell them apart).

    Raises:
        ValueError: a number of channels no layout has.
    """
    layouts = {len(lead_channel_names(v, e)): (v, e) for v in (False, True) for e in (False, True)}
    if channels not in layouts:
        raise ValueError(f"{channels} per-lead input channels: this version builds "
                         f"{sorted(layouts)} (extrapolation, + error, + motion, + both)")
    return layouts[channels]


#: Per-lead channel of the last step's extrapolation error, when there is one.
ERROR_CHANNEL = lead_channel_names(error=True).index("extrapolation_error")


def vector_channels(channels: int) -> tuple[int, int] | None:
    """Indices of the motion (u, v) among ``channels`` per-lead channels, or None."""
    names = lead_channel_names(*lead_layout(channels))
    return (names.index("motion_u"), names.index("motion_v")) if "motion_u" in names else None


class LeadInputEncoder(nn.Module):
    """Per-lead input planes at input resolution -> a latent-resolution term to add.

    3x3 conv, GELU, space-to-depth by ``factor`` (every input pixel under a latent pixel
    keeps its own weights, so sub-latent-pixel positions such as an advected rain edge
    survive), then a 1x1 projection to the latent width. The projection starts at zero, so
    a freshly built network with lead inputs computes what one without them does.

    With ``pack`` > 1 the 3x3 conv reads the planes packed ``pack`` x ``pack`` into
    channels (space-to-depth, made by :func:`~metnet.models.downsampler.packed_conv`), so
    it runs at 1 / ``pack`` of the input resolution.

    Args:
        channels: per-lead input channels Cl.
        dim: latent channels C.
        factor: input pixels per latent pixel (the downsampler's factor).
        width: channels of the 3x3 conv.
        pack: input pixels packed into channels before the 3x3 conv (a divisor of
            ``factor``).
    """

    def __init__(self, channels: int, dim: int, factor: int, width: int = 16,
                 pack: int = 1) -> None:
        super().__init__()
        if factor % pack:
            raise ValueError(f"pack {pack} must divide the downsampling factor {factor}")
        self.pack = pack
        self.stem = nn.Sequential(nn.Conv2d(channels * pack * pack, width, 3, padding=1),
                                  nn.GELU())
        self.stride = factor // pack  # stem pixels per latent pixel
        self.project = nn.Conv2d(width * self.stride**2, dim, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(N, Cl, H, W) -> channels-last (N, H / factor, W / factor, C)."""
        conv = self.stem[0]
        stem = self.stem[1](packed_conv(conv.weight, conv.bias, x, self.pack))
        # space-to-depth, then the 1x1 projection, as one strided convolution with the same
        # weights: no copy that rearranges the planes (half the time)
        weight = self.project.weight
        kernel = weight.view(weight.shape[0], -1, self.stride, self.stride)
        out = F.conv2d(stem, kernel, self.project.bias, stride=self.stride)
        return out.permute(0, 2, 3, 1)
