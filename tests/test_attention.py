"""Attention modules against naive per-pixel references, and their receptive fields."""

from __future__ import annotations

import math

import pytest
import torch

from metnet.models import AttentionBlock, AxialAttention, CrissCrossAttention, FullAttention

H, W, C, HEADS = 5, 7, 8, 2


def _naive_attention(module, x: torch.Tensor, keys_of) -> torch.Tensor:
    """Per-pixel, per-head softmax attention over the pixels ``keys_of(i, j)``, by loops."""
    b, h, w, c = x.shape
    d = c // HEADS
    qkv = module.qkv(x)
    q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
    out = torch.zeros_like(x)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                keys = keys_of(i, j)
                heads = []
                for head in range(HEADS):
                    sl = slice(head * d, (head + 1) * d)
                    qi = q[n, i, j, sl]
                    scores = torch.stack([qi @ k[n, a, e, sl] for a, e in keys]) / math.sqrt(d)
                    weights = torch.softmax(scores, dim=0)
                    heads.append(
                        sum(wt * v[n, a, e, sl] for wt, (a, e) in zip(weights, keys, strict=True))
                    )
                out[n, i, j] = torch.cat(heads)
    return module.out(out)


def _row(i: int, j: int) -> list[tuple[int, int]]:
    return [(i, e) for e in range(W)]


def _column(i: int, j: int) -> list[tuple[int, int]]:
    return [(a, j) for a in range(H)]


def _criss_cross(i: int, j: int) -> list[tuple[int, int]]:
    return _row(i, j) + [(a, j) for a in range(H) if a != i]  # centre counted once


def _everything(i: int, j: int) -> list[tuple[int, int]]:
    return [(a, e) for a in range(H) for e in range(W)]


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, H, W, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize(
    ("make", "keys_of"),
    [
        (lambda: AxialAttention(C, HEADS, "row"), _row),
        (lambda: AxialAttention(C, HEADS, "column"), _column),
        (lambda: CrissCrossAttention(C, HEADS), _criss_cross),
        (lambda: FullAttention(C, HEADS), _everything),
    ],
    ids=["row", "column", "criss_cross", "full"],
)
def test_attention_equals_naive_reference(make, keys_of, x: torch.Tensor) -> None:
    torch.manual_seed(1)
    module = make().double()
    with torch.no_grad():
        expected = _naive_attention(module, x, keys_of)
        # float64 throughout: every kind agrees to float64 round-off, not just float32's
        torch.testing.assert_close(module(x), expected, atol=1e-12, rtol=0)


def test_criss_cross_counts_centre_once(x: torch.Tensor) -> None:
    # counting the centre twice (row and column) would give a different, wrong answer
    torch.manual_seed(1)
    module = CrissCrossAttention(C, HEADS).double()
    with torch.no_grad():
        twice = _naive_attention(module, x, lambda i, j: _row(i, j) + _column(i, j))
        assert (module(x) - twice).abs().max() > 1e-3


def _input_gradient(module, i: int, j: int, shape=(1, H, W, C)) -> torch.Tensor:
    """(H, W) mask of input pixels the output pixel (i, j) depends on (gradient != 0)."""
    torch.manual_seed(2)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    module(x)[0, i, j].sum().backward()
    return x.grad[0].abs().sum(-1) > 0


def test_one_criss_cross_pass_reaches_row_and_column() -> None:
    module = CrissCrossAttention(C, HEADS).double()
    reach = _input_gradient(module, 2, 3)
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[2, :] = True
    expected[:, 3] = True
    assert torch.equal(reach, expected)


@pytest.mark.parametrize("kind", ["axial", "criss_cross"])
def test_block_reaches_whole_image(kind: str) -> None:
    # two recurrent criss-cross passes, or rows then columns, connect every pixel pair
    block = AttentionBlock(C, HEADS, 2.0, kind).double()
    assert _input_gradient(block, 2, 3).all()


def test_attention_non_square_and_batched() -> None:
    x = torch.randn(3, 4, 9, C)
    for module in (
        AxialAttention(C, HEADS, "row"),
        AxialAttention(C, HEADS, "column"),
        CrissCrossAttention(C, HEADS),
        FullAttention(C, HEADS),
    ):
        y = module(x)
        assert y.shape == x.shape
        # batch elements are independent
        torch.testing.assert_close(module(x[1:2]), y[1:2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("make", "keys_of"),
    [
        (lambda: AxialAttention(C, HEADS, "row", window=2),
         lambda i, j: [(i, e) for e in range(W) if abs(e - j) <= 2]),
        (lambda: AxialAttention(C, HEADS, "column", window=1),
         lambda i, j: [(a, j) for a in range(H) if abs(a - i) <= 1]),
        (lambda: CrissCrossAttention(C, HEADS, window=2),
         lambda i, j: [(i, e) for e in range(W) if abs(e - j) <= 2]
         + [(a, j) for a in range(H) if a != i and abs(a - i) <= 2]),
    ],
    ids=["row", "column", "criss_cross"],
)
def test_windowed_attention_equals_naive_reference(make, keys_of, x: torch.Tensor) -> None:
    """A window limits each pixel's keys to those at most that far along the axis."""
    torch.manual_seed(1)
    module = make().double()
    torch.testing.assert_close(module(x), _naive_attention(module, x, keys_of))


def test_a_window_as_long_as_the_axis_changes_nothing(x: torch.Tensor) -> None:
    torch.manual_seed(1)
    whole = AxialAttention(C, HEADS, "row").double()
    windowed = AxialAttention(C, HEADS, "row", window=W - 1).double()
    windowed.load_state_dict(whole.state_dict())
    torch.testing.assert_close(windowed(x), whole(x))


@pytest.mark.parametrize(("kind", "rows", "cols"),
                         [("axial", (1, 4), (2, 5)), ("criss_cross", (0, 5), (1, 6))])
def test_a_windowed_block_reaches_only_its_window(kind: str, rows, cols) -> None:
    """Rows then columns of reach 1 connect exactly the 3 x 3 square around a pixel; two
    criss-cross passes of reach 1 stay within 2 pixels along each axis."""
    block = AttentionBlock(C, HEADS, 2.0, kind, window=1).double()
    reach = _input_gradient(block, 2, 3)
    inside = torch.zeros(H, W, dtype=torch.bool)
    inside[slice(*rows), slice(*cols)] = True
    assert reach[1:4, 2:5].all() and not reach[~inside].any()
