"""Per-lead inputs (e.g. the field extrapolated to each lead) into the lead-conditioned decoder."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class LeadInputEncoder(nn.Module):
    """Per-lead input planes at input resolution -> a latent-resolution term to add.

    3x3 conv, GELU, space-to-depth by ``factor`` (every input pixel under a latent pixel
    keeps its own weights, so sub-latent-pixel positions such as an advected rain edge
    survive), then a 1x1 projection to the latent width. The projection starts at zero, so
    a freshly built network with lead inputs computes what one without them does.

    Args:
        channels: per-lead input channels Cl.
        dim: latent channels C.
        factor: input pixels per latent pixel (the downsampler's factor).
        width: channels of the 3x3 conv.
    """

    def __init__(self, channels: int, dim: int, factor: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.GELU())
        self.factor = factor
        self.project = nn.Conv2d(width * factor * factor, dim, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(N, Cl, H, W) -> channels-last (N, H / factor, W / factor, C)."""
        # space-to-depth, then the 1x1 projection, as one strided convolution with the same
        # weights: no copy that rearranges the planes (half the time)
        weight = self.project.weight
        kernel = weight.view(weight.shape[0], -1, self.factor, self.factor)
        out = F.conv2d(self.stem(x), kernel, self.project.bias, stride=self.factor)
        return out.permute(0, 2, 3, 1)
