"""Self-attention over a channels-last latent map ``(B, H, W, C)``.

* :class:`AxialAttention` attends along one axis (rows or columns), through
  ``torch.nn.functional.scaled_dot_product_attention`` so fused kernels serve on a GPU.
* :class:`CrissCrossAttention` (CCNet): every pixel attends with one softmax over the
  H + W - 1 pixels of its row and column (its own pixel counted once), in pure PyTorch
  with memory O(B heads H W (H + W)).
* :class:`FullAttention`: global attention over all H W pixels, a reference for benchmarks.

All take and return ``(B, H, W, C)``; none carries positional information (see
:class:`AxialPositionalEmbedding`, added once in front of the attention stack).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _MultiHead(nn.Module):
    """Shared q/k/v and output projections of the attention modules below.

    Args:
        dim: channels C (divisible by ``heads``).
        heads: number of attention heads.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"channels {dim} not divisible by heads {heads}")
        self.heads = heads
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
    """

    def __init__(self, dim: int, heads: int, axis: str) -> None:
        super().__init__(dim, heads)
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
        y = F.scaled_dot_product_attention(q, k, v)  # (B H, n, W, d)
        return self.merge_heads(y.reshape(b, h, n, w, d).transpose(1, 2))


class CrissCrossAttention(_MultiHead):
    """One pass of multi-head criss-cross attention on a ``(B, H, W, C)`` map.

    Pixel (i, j) attends with a single softmax to its row {(i, j')} and its column
    {(i', j), i' != i}: the centre belongs to the row part and is masked out of the column
    part. Energies are built as row ``(B, heads, H, W, W)`` and column
    ``(B, heads, H, W, H)`` tensors, concatenated for the softmax, then split again.
    """

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        q, k, v = self.split_heads(x)  # (B, n, H, W, d)
        h = q.shape[2]
        q = q * q.shape[-1] ** -0.5
        row = torch.einsum("bnijd,bnikd->bnijk", q, k)  # (B, n, H, W, W): key (i, k)
        col = torch.einsum("bnijd,bnkjd->bnijk", q, k)  # (B, n, H, W, H): key (k, j)
        centre = torch.eye(h, dtype=torch.bool, device=x.device)[:, None, :]  # (H, 1, H)
        col = col.masked_fill(centre, float("-inf"))
        weights = torch.softmax(torch.cat([row, col], dim=-1), dim=-1)
        a_row, a_col = weights.split([row.shape[-1], h], dim=-1)
        y = torch.einsum("bnijk,bnikd->bnijd", a_row, v)
        y = y + torch.einsum("bnijk,bnkjd->bnijd", a_col, v)
        return self.merge_heads(y)


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
