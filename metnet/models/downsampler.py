"""MetNet's spatial downsampler, applied to every input frame."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def space_to_depth(x: Tensor, factor: int) -> Tensor:
    """(N, C, H, W) packed ``factor`` x ``factor`` into channels (``F.pixel_unshuffle``;
    1: as they are), (N, C factor^2, H / factor, W / factor), in channels-last layout:
    oneDNN convolves it several times faster than the contiguous layout on a CPU, and the
    convolutions after it keep the layout."""
    if factor > 1:
        x = F.pixel_unshuffle(x, factor)
    return x.contiguous(memory_format=torch.channels_last)


def packed_conv(weight: Tensor, bias: Tensor | None, x: Tensor, pack: int) -> Tensor:
    """The convolution (``weight`` (O, C pack^2, k, k), odd k, stride 1, padding k // 2) of
    ``space_to_depth(x, pack)``, without the packed copy: one convolution of x (N, C, H, W)
    by the kernel rearranged to (pack k) x (pack k) at stride ``pack``, each packed tap
    becoming the pack x pack input pixels it held. (N, O, H / pack, W / pack), the same up
    to rounding; on a CPU the packing cost more than the convolution."""
    out_channels, packed, k, _ = weight.shape
    if pack == 1:
        return F.conv2d(x, weight, bias, padding=k // 2)
    kernel = (weight.view(out_channels, packed // pack**2, pack, pack, k, k)
              .permute(0, 1, 4, 2, 5, 3).reshape(out_channels, -1, k * pack, k * pack))
    return F.conv2d(x, kernel, bias, stride=pack, padding=(k // 2) * pack)


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv + ReLU, He-initialised so the signal keeps its scale through the stack."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.ReLU(inplace=True))


class Downsampler(nn.Module):
    """Space-to-depth packing, then 3x3 conv -> 2x2 max-pool -> three 3x3 convs -> 2x2 max-pool.

    Reduces each side by ``pack_factor * 4``. MetNet packs the 1 km input 4x (1024 px ->
    256 px with 16x the channels) and downsamples to a 64x64 map.

    Args:
        in_channels: channels C of an input frame.
        channels: ``(c1, c2)``: width of the first conv and of the three later convs.
        pack_factor: space-to-depth factor p (``F.pixel_unshuffle``); 1 disables packing.
    """

    def __init__(self, in_channels: int, channels: tuple[int, int], pack_factor: int) -> None:
        super().__init__()
        c1, c2 = channels
        self.pack_factor = pack_factor
        self.net = nn.Sequential(
            _conv(in_channels * pack_factor**2, c1),
            nn.MaxPool2d(2),
            _conv(c1, c2),
            _conv(c2, c2),
            _conv(c2, c2),
            nn.MaxPool2d(2),
        )

    @property
    def factor(self) -> int:
        """Total reduction of each side (input pixels per output pixel)."""
        return self.pack_factor * 4

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (B, T, c2, H / factor, W / factor), frame by frame."""
        b, t = x.shape[:2]
        y = self.net(space_to_depth(x.flatten(0, 1), self.pack_factor))
        return y.unflatten(0, (b, t))
