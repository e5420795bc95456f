"""Convolutional LSTM over the input time axis."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvLSTMLayer(nn.Module):
    """One ConvLSTM layer: gates from 3x3 convolutions of the input and the hidden state.

    The input-to-gate convolution runs once over all frames (one large batched conv); only
    the hidden-to-gate convolution runs step by step.

    Args:
        in_channels: channels of each input frame.
        hidden: hidden and cell state channels.
        kernel_size: odd convolution kernel size.
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.hidden = hidden
        self.input_conv = nn.Conv2d(in_channels, 4 * hidden, kernel_size, padding=pad)
        self.hidden_conv = nn.Conv2d(hidden, 4 * hidden, kernel_size, padding=pad, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C, h, w) frames -> (B, T, hidden, h, w) hidden states, step t seeing <= t."""
        b, t, _, h, w = x.shape
        x_gates = self.input_conv(x.flatten(0, 1)).unflatten(0, (b, t))
        state = torch.zeros(b, self.hidden, h, w, device=x.device, dtype=x.dtype)
        state = state.contiguous(memory_format=torch.channels_last)  # as the convolutions
        cell = torch.zeros_like(state)
        outputs = []
        for step in range(t):
            gates = x_gates[:, step] + self.hidden_conv(state)
            i, f, g, o = gates.chunk(4, dim=1)
            cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
            state = torch.sigmoid(o) * torch.tanh(cell)
            outputs.append(state)
        return torch.stack(outputs, dim=1)


class ConvLSTM(nn.Module):
    """Stack of :class:`ConvLSTMLayer`, each reading the hidden sequence of the one below.

    Args:
        in_channels: channels of each input frame.
        hidden: hidden channels of every layer.
        num_layers: number of stacked layers.
        kernel_size: odd convolution kernel size.
    """

    def __init__(
        self, in_channels: int, hidden: int, num_layers: int = 1, kernel_size: int = 3
    ) -> None:
        super().__init__()
        widths = [in_channels] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(ConvLSTMLayer(c, hidden, kernel_size) for c in widths)

    def forward(self, x: Tensor, return_sequence: bool = False) -> Tensor:
        """(B, T, C, h, w) -> last layer's final hidden state (B, hidden, h, w).

        With ``return_sequence`` the last layer's hidden state at every step,
        (B, T, hidden, h, w), is returned instead.
        """
        for layer in self.layers:
            x = layer(x)
        return x if return_sequence else x[:, -1]
