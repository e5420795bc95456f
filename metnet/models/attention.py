"""Self-attention over a channels-last latent map ``(B, H, W, C)``.

* :class:`AxialAttention` attends along one axis (rows or columns), through
  ``torch.nn.functional.scaled_dot_product_attention`` so fused kernels serve on a GPU.
* :class:`CrissCrossAttention` (CCNet): every pixel attends with one softmax over the
  H + W - 1 pixels of its row and column (its own pixel counted once), in pure PyTorch
  with memory O(B heads H W (H + W)).
* :class:`FullAttention`: global attention over all H W pixels, a reference for benchmarks.

All take and return ``(B, H, W, C)``; none carries positional information (see
:class:`AxialPositionalEmbedding`, added once in front of the attention stack, or not at
all in a network that forecasts a whole domain in one pass). Axial and criss-cross
attention take an optional ``window``: each pixel then attends only to the pixels of its
row (column) at most ``window`` pixels away, so that a pixel's output depends on a bounded
neighbourhood whatever the map's size: on a whole domain it sees what it saw in a training
patch, not the whole row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def band(size: int, window: int | None, device: torch.device) -> Tensor | None:
    """(size, size) boolean mask of the pairs at most ``window`` apart (None: no limit, or a
    window that spans the whole axis anyway)."""
    if window is None or window >= size - 1:
        return None
    index = torch.arange(size, device=device)
    return (index[:, None] - index[None, :]).abs() <= window


class _MultiHead(nn.Module):
    """Shared q/k/v and output projections of the attention modules below.

    Args:
        dim: channels C (divisible by ``heads``).
        heads: number of attention heads.
        window: attention reach along an axis in pixels (None: the whole axis).
    """

    def __init__(self, dim: int, heads: int, window: int | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"channels {dim} not divisible by heads {heads}")
        if window is not None and window < 0:
            raise ValueError(f"the attention window must be >= 0 pixels, got {window}")
        self.heads = heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def split_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, H, W, C) -> q, k, v each (B, heads, H, W, C / heads)."""
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h, w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)
        return q, k, v

    def merge_heads(self, x: Tensor) -> Tensor:
        """(B, heads, H, W, d) -> output projection of (B, H, W, heads * d)."""
        b, n, h, w, d = x.shape
        return self.out(x.permute(0, 2, 3, 1, 4).reshape(b, h, w, n * d))


class AxialAttention(_MultiHead):
    """Multi-head self-attention along one axis of a ``(B, H, W, C)`` map.

    Args:
        dim: channels C.
        heads: number of heads.
        axis: ``"row"`` (each pixel attends to the W pixels of its row) or ``"column"``
            (to the H pixels of its column).
        window: attend only to pixels at most this far along the axis (None: all).
    """

    def __init__(self, dim: int, heads: int, axis: str, window: int | None = None) -> None:
        super().__init__(dim, heads, window)
        if axis not in ("row", "column"):
            raise ValueError(f"axis must be 'row' or 'column', got {axis!r}")
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        if self.axis == "column":
            return self._rows(x.transpose(1, 2)).transpose(1, 2)
        return self._rows(x)

    def _rows(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        q, k, v = self.split_heads(x)  # (B, n, H, W, d)
        n, d = q.shape[1], q.shape[-1]
        q, k, v = (t.transpose(1, 2).reshape(b * h, n, w, d) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, band(w, self.window, x.device))
        return self.merge_heads(y.reshape(b, h, n, w, d).transpose(1, 2))


class CrissCrossAttention(_MultiHead):
    """One pass of multi-head criss-cross attention on a ``(B, H, W, C)`` map.

    Pixel (i, j) attends with a single softmax to its row {(i, j')} and its column
    {(i', j), i' != i}: the centre belongs to the row part and is masked out of the column
    part. Row energies are a ``(B, heads, H, W, W)`` tensor; column energies are kept in
    the transposed layout ``(B, heads, W, H, H)`` so that no energy tensor is ever copied
    into another layout: the joint softmax is assembled from the two parts' maxima and
    sums, which are only ``(B, heads, H, W)``. Memory O(B heads H W (H + W)). With a
    ``window``, row and column keys further than it are masked out.
    """

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        q, k, v = self.split_heads(x)  # (B, n, H, W, d)
        q = q * q.shape[-1] ** -0.5
        qt, kt, vt = (t.transpose(2, 3) for t in (q, k, v))  # (B, n, W, H, d)
        row = q @ k.transpose(-1, -2)  # (B, n, H, W, W): query (i, j), key (i, j')
        col = qt @ kt.transpose(-1, -2)  # (B, n, W, H, H): query (i, j), key (i', j)
        centre = torch.eye(col.shape[-1], dtype=torch.bool, device=x.device)
        col = col.masked_fill_(centre, float("-inf"))
        for energies in (row, col):
            if (near := band(energies.shape[-1], self.window, x.device)) is not None:
                energies.masked_fill_(~near, float("-inf"))
        # softmax over the concatenated H + W - 1 energies (in place: no extra energy
        # tensors); the shift by the joint maximum cancels out exactly
        peak = torch.maximum(row.amax(-1), col.amax(-1).transpose(2, 3)).detach()
        row = row.sub_(peak.unsqueeze(-1)).exp_()
        col = col.sub_(peak.transpose(2, 3).unsqueeze(-1)).exp_()
        # the denominator in at least float32, and in the input's precision above it
        acc = torch.promote_types(row.dtype, torch.float32)
        total = row.sum(-1, dtype=acc) + col.sum(-1, dtype=acc).mT
        y = (row @ v + (col @ vt).transpose(2, 3)) / total.unsqueeze(-1)
        return self.merge_heads(y.to(v.dtype))


class FullAttention(_MultiHead):
    """Global multi-head self-attention over all H W pixels (benchmark reference)."""

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, _ = x.shape
        q, k, v = (t.flatten(2, 3) for t in self.split_heads(x))  # (B, n, H W, d)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.merge_heads(y.unflatten(2, (h, w)))


class AxialPositionalEmbedding(nn.Module):
    """Learned axial positional embedding: a row vector plus a column vector per pixel.

    Adds ``row[i] + col[j]`` (each C channels) to pixel (i, j) of a ``(B, H, W, C)`` map;
    H + W vectors instead of H W, and it works for non-square maps.
    """

    def __init__(self, dim: int, height: int, width: int) -> None:
        super().__init__()
        self.row = nn.Parameter(torch.randn(height, 1, dim) * 0.02)
        self.col = nn.Parameter(torch.randn(1, width, dim) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C) with the embedding added."""
        return x + self.row + self.col
