"""Pre-norm residual attention blocks, optionally FiLM-conditioned on lead time."""

from __future__ import annotations

from torch import Tensor, nn

from metnet.models.attention import AxialAttention, CrissCrossAttention
from metnet.models.conditioning import FiLM, modulate

ATTENTION_KINDS = ("axial", "criss_cross")


class MLP(nn.Module):
    """Channel MLP ``Linear -> GELU -> Linear`` on channels-last ``(..., C)``."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = max(1, round(dim * ratio))
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        """(..., C) -> (..., C)."""
        return self.net(x)


class AttentionBlock(nn.Module):
    """Residual block on a channels-last map ``(N, H, W, C)``.

    ``axial``: ``x += row_attn(norm(x)); x += col_attn(norm(x)); x += mlp(norm(x))``.
    ``criss_cross``: ``x += cca(norm(x))`` repeated ``passes`` times with the same weights
    (CCNet's recurrence, sharing norm and FiLM too; two passes connect every pixel to
    every other), then the MLP.

    With ``cond_dim`` set, a FiLM layer turns a lead-time embedding into a scale and shift
    applied to each normalised input (identity at initialisation).

    Args:
        dim: channels C.
        heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to C.
        kind: ``"axial"`` or ``"criss_cross"``.
        cond_dim: lead-time embedding size, or None for an unconditioned block.
        passes: recurrent passes of criss-cross attention (ignored for axial).
        window: attention reach along rows and columns in pixels (None: whole axes).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        kind: str = "axial",
        cond_dim: int | None = None,
        passes: int = 2,
        window: int | None = None,
    ) -> None:
        super().__init__()
        if kind == "axial":
            mixers = [AxialAttention(dim, heads, axis, window) for axis in ("row", "column")]
            self.passes = 1
        elif kind == "criss_cross":
            mixers = [CrissCrossAttention(dim, heads, window)]
            self.passes = passes
        else:
            raise ValueError(f"attention kind must be one of {ATTENTION_KINDS}, got {kind!r}")
        self.mixers = nn.ModuleList(mixers)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in mixers)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)
        self.film = FiLM(cond_dim, dim, sites=len(mixers) + 1) if cond_dim else None

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """(N, H, W, C), optional (N, cond_dim) embedding -> (N, H, W, C)."""
        sites = len(self.mixers) + 1
        films = self.film(cond) if self.film is not None else [None] * sites
        for _ in range(self.passes):
            for mixer, norm, film in zip(self.mixers, self.norms, films[:-1], strict=True):
                x = x + mixer(modulate(norm(x), film))
        return x + self.mlp(modulate(self.mlp_norm(x), films[-1]))
