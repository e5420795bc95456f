"""Lead-time conditioning: a learned lead-time embedding driving FiLM, and one-hot planes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LeadTimeEmbedding(nn.Module):
    """Embedding (N, dim) of lead times (N,) in minutes.

    Sinusoidal features of the lead time, with periods from ``2 * max_lead_minutes`` halving
    down to ``2 * max_lead_minutes / 2**(dim/2 - 1)``, followed by a two-layer MLP.

    Args:
        dim: embedding size (even).
        max_lead_minutes: longest lead time the model is meant for, in minutes.
    """

    def __init__(self, dim: int, max_lead_minutes: float) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"lead embedding dim must be even and >= 2, got {dim}")
        freqs = math.pi / max_lead_minutes * 2.0 ** torch.arange(dim // 2, dtype=torch.float64)
        self.register_buffer("freqs", freqs.float(), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, minutes: Tensor) -> Tensor:
        """(N,) lead times in minutes (int or float) -> (N, dim) embedding."""
        angles = minutes.to(self.freqs.dtype).unsqueeze(-1) * self.freqs
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


class FiLM(nn.Module):
    """Per-channel scale and shift for ``sites`` modulation points, from an embedding.

    The projection is zero-initialised, so at initialisation every site is the identity
    (scale 1, shift 0) and the model starts lead-time agnostic.

    Args:
        cond_dim: size of the conditioning embedding.
        channels: channels C to modulate.
        sites: number of modulation points fed by this module.
    """

    def __init__(self, cond_dim: int, channels: int, sites: int = 1) -> None:
        super().__init__()
        self.sites = sites
        self.proj = nn.Linear(cond_dim, 2 * sites * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, cond: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(N, cond_dim) -> per site (scale, shift), each (N, 1, 1, C) for channels-last maps."""
        params = self.proj(cond)[:, None, None, :].chunk(2 * self.sites, dim=-1)
        return [(1.0 + params[2 * i], params[2 * i + 1]) for i in range(self.sites)]


def modulate(x: Tensor, film: tuple[Tensor, Tensor] | None) -> Tensor:
    """Apply FiLM ``x * scale + shift`` to channels-last ``x`` (N, h, w, C); None = identity."""
    if film is None:
        return x
    scale, shift = film
    return x * scale + shift


def one_hot_lead_planes(
    lead_minutes: Tensor, step_minutes: int, num_leads: int, like: Tensor
) -> Tensor:
    """One-hot lead-time planes, the MetNet paper's form of lead-time input.

    Args:
        lead_minutes: (N,) lead times in minutes, multiples of ``step_minutes``.
        step_minutes: spacing of the possible lead times (lead index = minutes / step - 1).
        num_leads: number of possible lead times (one-hot channels).
        like: (N, T, C, H, W) input whose frames receive the planes.

    Returns:
        (N, T, num_leads, H, W) constant planes on ``like``'s device and dtype.
    """
    # float32 is exact for these integers (and MPS has no float64)
    index = torch.round(lead_minutes.to(torch.float32) / step_minutes).long() - 1
    onehot = F.one_hot(index, num_leads).to(device=like.device, dtype=like.dtype)
    n, t, _, h, w = like.shape
    return onehot[:, None, :, None, None].expand(n, t, num_leads, h, w)
