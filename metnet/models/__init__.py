"""Plain ``nn.Module`` building blocks of the MetNet network and the assembled model."""

from metnet.models.attention import (
    AxialAttention,
    AxialPositionalEmbedding,
    CrissCrossAttention,
    FullAttention,
)
from metnet.models.blocks import AttentionBlock
from metnet.models.conditioning import FiLM, LeadTimeEmbedding
from metnet.models.convlstm import ConvLSTM
from metnet.models.downsampler import Downsampler
from metnet.models.head import Head
from metnet.models.metnet import MetNet

__all__ = [
    "AttentionBlock",
    "AxialAttention",
    "AxialPositionalEmbedding",
    "ConvLSTM",
    "CrissCrossAttention",
    "Downsampler",
    "FiLM",
    "FullAttention",
    "Head",
    "LeadTimeEmbedding",
    "MetNet",
]
