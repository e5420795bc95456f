"""The assembled MetNet network: encoder once per sample, lead-conditioned decoder per lead."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from metnet.distribution import check_edges, compact_bins, uniform_bins
from metnet.models.attention import AxialPositionalEmbedding
from metnet.models.blocks import ATTENTION_KINDS, AttentionBlock
from metnet.models.conditioning import LeadTimeEmbedding, one_hot_lead_planes
from metnet.models.convlstm import ConvLSTM
from metnet.models.downsampler import Downsampler
from metnet.models.head import Head
from metnet.models.lead_inputs import LeadInputEncoder, lead_layout
from metnet.models.prior import PIN_MARGIN, ExtrapolationPrior

CONDITIONING_KINDS = ("film", "onehot")
POSITION_KINDS = ("axial", "none")


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    """An int side or an (H, W) pair as an (H, W) tuple of ints."""
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)


def _latent_side(size: int, target: int, factor: int) -> tuple[int, int]:
    """(latent side, crop side) for one axis, checking that the crop is exactly central."""
    if size % factor or target % factor or (size - target) % (2 * factor) or target > size:
        raise ValueError(
            f"input side {size} and target side {target} must be multiples of the total "
            f"downsampling {factor}, with the target centred on whole latent pixels"
        )
    return size // factor, target // factor


class MetNet(nn.Module):
    """MetNet-style nowcasting network: rain-rate bin logits for several lead times.

    Encoder (once per sample): per-frame :class:`Downsampler` (optional space-to-depth
    packing by ``pack_factor``, then 4x), :class:`ConvLSTM` over time, a learned axial
    positional embedding (``position="axial"``), and the first ``conditioned_from``
    attention blocks. Decoder (per
    lead time, all leads batched): the remaining attention blocks and the :class:`Head`,
    both FiLM-modulated by a lead-time embedding that starts as the identity.
    With ``conditioning="onehot"`` the network instead takes one-hot lead-time planes as
    extra input channels and runs entirely once per lead, as in the MetNet paper.

    With ``lead_channels`` > 0 (film mode only) the decoder also takes per-lead input planes
    over the context square (B, L, Cl, H, W), e.g. the field extrapolated to each lead by
    optical flow (:mod:`metnet.data.motion`): a :class:`LeadInputEncoder` term is added to
    the latent before the conditioned blocks, and the central target crop joins the head at
    full resolution. The encoder still runs once per sample. With ``prior`` the head
    corrects a probabilistic extrapolation of those planes
    (:class:`~metnet.models.prior.ExtrapolationPrior`) instead of predicting from nothing:
    untrained, the network forecasts the prior.

    With ``position="none"`` nothing in the network depends on where a pixel lies in its
    patch, so it takes inputs of any size (sides multiples of the downsampling, larger than
    the context margins) and predicts everything but the margins: a whole domain in one
    pass (:attr:`any_size`); its attention reaches ``attention_window`` latent pixels, by
    default half the latent context side, as far on a domain as in a training patch.

    Args:
        input_channels: channels C of an input frame (e.g. rain rate and a validity mask).
        context_frames: input frames T the network expects.
        input_size: context patch side(s) in input pixels, int or (H, W).
        target_size: central output patch side(s) in input pixels, int or (Ht, Wt).
        pack_factor: space-to-depth factor in front of the downsampler (1 = none).
        downsampler_channels: (first conv, later convs) widths of the downsampler.
        lstm_hidden: ConvLSTM hidden channels, also the width of the attention stack.
        lstm_layers: stacked ConvLSTM layers.
        attention: ``"axial"`` or ``"criss_cross"`` blocks.
        num_blocks: attention blocks.
        conditioned_from: index of the first lead-conditioned block (film mode); blocks
            before it form the shared context, run once per sample.
        heads: attention heads.
        mlp_ratio: MLP width relative to ``lstm_hidden``.
        bin_edges: K+1 rain-rate bin edges in mm/h; default: ``num_bins`` uniform bins of
            ``bin_width`` if ``num_bins`` is set, else the compact 24-bin set
            (``configs/model/small.yaml`` lists its bins: the compact set with drizzle).
        num_bins: number of uniform bins (with ``bin_width``) when ``bin_edges`` is unset.
        bin_width: uniform bin width in mm/h.
        dry_bin: put a dry bin (a point mass at 0 mm/h) in front of the default bins.
        lead_embedding_dim: size of the lead-time embedding (film mode).
        conditioning: ``"film"`` or ``"onehot"``.
        max_lead_minutes: longest lead time in minutes.
        lead_step_minutes: spacing of the possible lead times (one-hot channel index
            = lead / step - 1; onehot mode has ``max_lead_minutes / step`` channels).
        gradient_checkpointing: recompute attention blocks in the backward pass to save
            activation memory.
        lead_channels: per-lead input channels Cl (0: none).
        prior: correct the probabilistic extrapolation of the per-lead inputs
            (:class:`~metnet.models.prior.ExtrapolationPrior`; needs ``lead_channels`` and a
            context margin of at least its neighbourhood radius at the longest lead).
        prior_radius: (pixels at lead 0, pixels per minute of lead) of the prior's
            neighbourhood half-width.
        prior_error: add the prior's error ensemble, from per-lead input channel 2 (the
            data's ``motion_error``).
        prior_pinned: the prior's median pinned to the pixel's own extrapolated bin,
            instead of a neighbourhood recentred there (``pinned`` of
            :class:`~metnet.models.prior.ExtrapolationPrior`).
        prior_decisions: with ``prior_pinned``, the rain rates (mm/h, bin edges) at which
            the prior keeps extrapolation's decision, its median pinned only to the side of
            each that extrapolation is on; None: every bin edge.
        prior_pin_margin: with ``prior_pinned``, how far from 1/2 the pinned prior puts the
            probability of each decision it keeps (``pin_margin`` of
            :class:`~metnet.models.prior.ExtrapolationPrior`).
        prior_pin_minutes: the lead time (minutes) after which that margin falls as 1 /
            lead; None: the same margin at every lead.
        prior_wide_radius: (pixels at lead 0, pixels per minute of lead) of a second, wider
            neighbourhood the prior mixes in beside the first, the head choosing per pixel
            between them (``wide`` of :class:`~metnet.models.prior.ExtrapolationPrior`);
            None: none.
        position: ``"axial"`` (a learned embedding of each latent row and column: inputs
            of ``input_size`` only) or ``"none"`` (inputs of any size).
        attention_window: attention reach along rows and columns in latent pixels. None:
            whole rows and columns with ``position="axial"``; half the latent context side
            with ``position="none"``, so that on a domain each pixel's attention reaches as
            far as in a training patch.
        half_resolution: the decoder convolves nothing at input resolution: the per-lead
            planes are packed 2 x 2 into channels before the lead encoder's and the head's
            3x3 convolutions, and the head ends in a sub-pixel convolution (:class:`Head`'s
            ``subpixel``). With ``pack_factor`` 2 no convolution of the network does.
    """

    def __init__(
        self,
        input_channels: int = 1,
        context_frames: int = 6,
        input_size: int | tuple[int, int] = 256,
        target_size: int | tuple[int, int] = 64,
        pack_factor: int = 4,
        downsampler_channels: tuple[int, int] = (32, 64),
        lstm_hidden: int = 64,
        lstm_layers: int = 1,
        attention: str = "axial",
        num_blocks: int = 4,
        conditioned_from: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        bin_edges: list[float] | None = None,
        num_bins: int | None = None,
        bin_width: float = 0.2,
        dry_bin: bool = False,
        lead_embedding_dim: int = 32,
        conditioning: str = "film",
        max_lead_minutes: int = 120,
        lead_step_minutes: int = 10,
        gradient_checkpointing: bool = False,
        lead_channels: int = 0,
        prior: bool = False,
        prior_radius: tuple[float, float] = (1.0, 0.1),
        prior_error: bool = False,
        prior_pinned: bool = False,
        prior_decisions: list[float] | None = None,
        prior_pin_margin: float = PIN_MARGIN,
        prior_pin_minutes: float | None = None,
        prior_wide_radius: tuple[float, float] | None = None,
        position: str = "axial",
        attention_window: int | None = None,
        half_resolution: bool = False,
    ) -> None:
        super().__init__()
        # The constructor arguments, plain values only: enough to rebuild the network from a
        # checkpoint without unpickling code.
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if (attention not in ATTENTION_KINDS or conditioning not in CONDITIONING_KINDS
                or position not in POSITION_KINDS):
            raise ValueError(
                f"attention must be in {ATTENTION_KINDS}, conditioning in "
                f"{CONDITIONING_KINDS} and position in {POSITION_KINDS}, got {attention!r}, "
                f"{conditioning!r}, {position!r}"
            )
        if not 0 <= conditioned_from <= num_blocks:
            raise ValueError(f"conditioned_from must be in [0, {num_blocks}]")
        if position == "none" and conditioning != "film":
            raise ValueError("position 'none' (a whole domain in one pass) needs "
                             "conditioning='film': the encoder runs once for every lead")
        if lead_channels and conditioning != "film":
            raise ValueError("lead_channels (per-lead inputs) need conditioning='film'")
        if prior_error and not (prior and lead_channels and lead_layout(lead_channels)[1]):
            raise ValueError(
                "prior_error needs prior: true and the data's motion_error (the per-lead "
                f"channel extrapolation_error), got prior={prior}, lead_channels={lead_channels}")
        if prior_pinned and not prior:
            raise ValueError("prior_pinned needs prior: true")
        if prior_decisions is not None and not prior_pinned:
            raise ValueError("prior_decisions needs prior_pinned: true")
        if max_lead_minutes % lead_step_minutes:
            raise ValueError("max_lead_minutes must be a multiple of lead_step_minutes")
        self.input_channels = input_channels
        self.context_frames = context_frames
        self.input_size = _pair(input_size)
        self.target_size = _pair(target_size)
        self.conditioning = conditioning
        self.lead_step_minutes = lead_step_minutes
        self.num_leads = max_lead_minutes // lead_step_minutes
        self.gradient_checkpointing = gradient_checkpointing
        self.lead_channels = lead_channels
        self.bin_edges = self._resolve_bins(bin_edges, num_bins, bin_width, dry_bin)

        onehot = conditioning == "onehot"
        widths = _pair(downsampler_channels)
        self.downsampler = Downsampler(
            input_channels + (self.num_leads if onehot else 0), widths, pack_factor
        )
        factor = self.downsampler.factor
        (h, ht), (w, wt) = (
            _latent_side(s, t, factor)
            for s, t in zip(self.input_size, self.target_size, strict=True)
        )
        self.latent_size = (h, w)
        self.latent_margin = ((h - ht) // 2, (w - wt) // 2)
        self.lstm = ConvLSTM(widths[1], lstm_hidden, lstm_layers)
        self.any_size = position == "none"
        if attention_window is None and self.any_size:
            attention_window = max(h, w) // 2
        self.position = (nn.Identity() if self.any_size
                         else AxialPositionalEmbedding(lstm_hidden, h, w))
        split = num_blocks if onehot else conditioned_from
        cond_dim = None if onehot else lead_embedding_dim
        self.lead_embedding = None if onehot else LeadTimeEmbedding(cond_dim, max_lead_minutes)

        def block(conditioned: bool) -> AttentionBlock:
            dim = cond_dim if conditioned else None
            return AttentionBlock(lstm_hidden, heads, mlp_ratio, attention, dim,
                                  window=attention_window)

        self.context_blocks = nn.ModuleList(block(False) for _ in range(split))
        self.conditioned_blocks = nn.ModuleList(block(True) for _ in range(num_blocks - split))
        pack = 2 if half_resolution else 1
        self.lead_encoder = (LeadInputEncoder(lead_channels, lstm_hidden, factor, pack=pack)
                             if lead_channels else None)
        extrapolation = (ExtrapolationPrior(self.bin_edges, max_lead_minutes, prior_radius,
                                            prior_error, prior_pinned, prior_decisions,
                                            prior_pin_margin, prior_pin_minutes,
                                            prior_wide_radius)
                         if prior else None)
        self.head = Head(lstm_hidden, len(self.bin_edges) - 1, self.latent_margin, factor,
                         cond_dim,
                         lead_channels=lead_channels, prior=extrapolation,
                         subpixel=half_resolution)
        context_margin = min((s - t) // 2 for s, t in zip(self.input_size, self.target_size,
                                                           strict=True))
        if self.head.margin > context_margin:
            raise ValueError(f"the prior's neighbourhood reaches {self.head.margin} px beyond "
                             f"the target; the context gives {context_margin}")

    @staticmethod
    def _resolve_bins(
        bin_edges: Sequence[float] | None, num_bins: int | None, bin_width: float,
        dry_bin: bool,
    ) -> tuple[float, ...]:
        if bin_edges is not None and (num_bins is not None or dry_bin):
            raise ValueError("give bin_edges (a dry bin as a repeated first edge: 0.0, 0.0, "
                             "...), or num_bins and dry_bin, not both; over a configuration "
                             "that lists bin_edges (configs/model/small.yaml), set bin_edges "
                             "to null to use num_bins or dry_bin")
        if bin_edges is None:
            bin_edges = uniform_bins(num_bins, bin_width) if num_bins else compact_bins()
            bin_edges = [0.0, *bin_edges] if dry_bin else bin_edges
        check_edges(bin_edges)
        return tuple(float(e) for e in bin_edges)

    @property
    def num_bins(self) -> int:
        """Number K of rain-rate bins."""
        return len(self.bin_edges) - 1

    def forward(self, x: Tensor, lead_times: Tensor | Sequence[float],
                lead_inputs: Tensor | None = None, histograms: Tensor | None = None) -> Tensor:
        """Bin logits for every lead time.

        Args:
            x: (B, T, C, H, W) transformed input frames (NaN already replaced); H, W the
                ``input_size``, or any size for an :attr:`any_size` network.
            lead_times: (L,) or (B, L) lead times in minutes (int or float).
            lead_inputs: (B, L, Cl, H, W) per-lead inputs, exactly when ``lead_channels``.
            histograms: with a prior, its histograms (B, L, C, K, Ht, Wt) when already
                computed (a forecast computes them once for the whole domain).

        Returns:
            (B, L, K, Ht, Wt) logits over the K rain-rate bins for the central target patch
            (the input less the context margins on each side).
        """
        leads = self._lead_matrix(lead_times, x)
        if self.conditioning == "onehot":
            self._lead_inputs(lead_inputs, *leads.shape, self.latent_size)  # onehot takes none
            return self._forward_onehot(x, leads)
        return self.decode(self.encode(x), leads, lead_inputs, histograms)

    def encode(self, x: Tensor) -> Tensor:
        """Lead-independent latent (B, C_hidden, h, w) of input (B, T, C, H, W) (film mode).

        Runs the downsampler, ConvLSTM, positional embedding and context blocks once.
        """
        self._require_film()
        return self._encode(x).permute(0, 3, 1, 2)

    def decode(self, latent: Tensor, lead_times: Tensor | Sequence[float],
               lead_inputs: Tensor | None = None, histograms: Tensor | None = None,
               probabilities: bool = False, out: Tensor | None = None) -> Tensor:
        """Logits (B, L, K, Ht, Wt) from a latent (B, C_hidden, h, w) of :meth:`encode`, or
        with ``probabilities`` their softmax over the bins (K), made without the logits where
        the head can (:class:`~metnet.models.head.Head`), in the contiguous (B, L, Ht, Wt, K)
        float32 buffer ``out`` where it can.

        The latent is expanded to (B * L, h, w, C), the per-lead inputs (B, L, Cl, H, W), if
        the network takes them, are added to it, and every lead runs in one batched pass
        through the conditioned blocks and the head.
        """
        self._require_film()
        leads = self._lead_matrix(lead_times, latent)
        b, num = leads.shape
        z = latent.permute(0, 2, 3, 1)  # (B, h, w, C)
        z = z[:, None].expand(b, num, *z.shape[1:]).flatten(0, 1)  # (B L, h, w, C)
        per_lead = self._lead_inputs(lead_inputs, b, num, tuple(z.shape[1:3]))
        if per_lead is not None:
            z = z + self._lead_term(per_lead.to(z.dtype))
        cond = self.lead_embedding(leads.flatten())
        z = self._run_blocks(self.conditioned_blocks, z, cond)
        around_target = self._target_crop(per_lead, self.head.margin)
        flat = histograms.flatten(0, 1) if histograms is not None else None
        buffer = out.flatten(0, 1) if out is not None else None
        decoded = self.head(z, cond, around_target, leads.flatten(), flat, probabilities, buffer)
        return decoded.unflatten(0, (b, num))

    def _lead_inputs(self, lead_inputs: Tensor | None, b: int, num: int,
                     size: tuple[int, int]) -> Tensor | None:
        """Checked per-lead inputs for a latent of ``size`` (h, w), flattened to
        (B L, Cl, H, W), or None."""
        if (lead_inputs is None) != (self.lead_channels == 0):
            raise ValueError(
                f"this network takes {self.lead_channels} per-lead input channels "
                f"(lead_inputs {'missing' if lead_inputs is None else 'given'})"
            )
        if lead_inputs is None:
            return None
        expected = (b, num, self.lead_channels, *(s * self.downsampler.factor for s in size))
        if tuple(lead_inputs.shape) != expected:
            raise ValueError(f"expected lead_inputs {expected}, got {tuple(lead_inputs.shape)}")
        return lead_inputs.flatten(0, 1)

    def _lead_term(self, planes: Tensor) -> Tensor:
        """The lead encoder's term (N, h, w, C) of per-lead planes (N, Cl, H, W), to add to
        the latent. With no conditioned block the head reads only the target region of the
        latent: the encoder then runs on that region and the one latent pixel around it that
        its 3x3 convolution reads, and the term is 0 on the rest of the context margin (40 %
        less of its work on a 256 px domain)."""
        top, left = self.latent_margin
        if len(self.conditioned_blocks) or min(top, left) < 1:
            return self.lead_encoder(planes)
        f = self.downsampler.factor
        h, w = planes.shape[-2] // f, planes.shape[-1] // f
        region = planes[..., (top - 1) * f:(h - top + 1) * f, (left - 1) * f:(w - left + 1) * f]
        return F.pad(self.lead_encoder(region)[:, 1:-1, 1:-1], (0, 0, left, left, top, top))

    def _target_crop(self, planes: Tensor | None, margin: int = 0) -> Tensor | None:
        """The target region and ``margin`` pixels around it, (N, Cl, Ht + 2 margin,
        Wt + 2 margin), of planes (N, Cl, H, W): all but the context margins."""
        if planes is None:
            return None
        top, left = (m * self.downsampler.factor - margin for m in self.latent_margin)
        return planes[..., top:planes.shape[-2] - top, left:planes.shape[-1] - left]

    def _forward_onehot(self, x: Tensor, leads: Tensor) -> Tensor:
        """The paper's form: one-hot lead planes as input channels, whole network per lead."""
        b, num = leads.shape
        x = x[:, None].expand(b, num, *x.shape[1:]).flatten(0, 1)  # (B L, T, C, H, W)
        planes = one_hot_lead_planes(leads.flatten(), self.lead_step_minutes, self.num_leads, x)
        z = self._encode(torch.cat([x, planes], dim=2), extra_channels=self.num_leads)
        return self.head(z).unflatten(0, (b, num))

    def _encode(self, x: Tensor, extra_channels: int = 0) -> Tensor:
        """(N, T, C, H, W) -> channels-last latent (N, h, w, C_hidden) after context blocks."""
        self._check_input(x, extra_channels)
        z = self.lstm(self.downsampler(x)).permute(0, 2, 3, 1)
        return self._run_blocks(self.context_blocks, self.position(z), None)

    def _run_blocks(self, blocks: nn.ModuleList, z: Tensor, cond: Tensor | None) -> Tensor:
        checkpointing = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in blocks:
            z = checkpoint(block, z, cond, use_reentrant=False) if checkpointing else block(z, cond)
        return z

    def _require_film(self) -> None:
        if self.conditioning == "onehot":
            raise RuntimeError("onehot conditioning runs the whole network per lead: use forward")

    def _check_input(self, x: Tensor, extra_channels: int) -> None:
        expected = (self.context_frames, self.input_channels + extra_channels, *self.input_size)
        if self.any_size and x.ndim == 5 and self._fits_any_size(x.shape[-2:]):
            expected = (*expected[:2], *x.shape[-2:])
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected input (B, {', '.join(map(str, expected))}), got {x.shape}")

    def _fits_any_size(self, size: Sequence[int]) -> bool:
        """Whether an (H, W) input leaves a target region of whole latent pixels."""
        factor = self.downsampler.factor
        return all(s % factor == 0 and s // factor > 2 * m
                   for s, m in zip(size, self.latent_margin, strict=True))

    @staticmethod
    def _lead_matrix(lead_times: Tensor | Sequence[float], like: Tensor) -> Tensor:
        """Lead times as a (B, L) tensor on ``like``'s device (B = like.shape[0])."""
        leads = torch.as_tensor(lead_times, device=like.device)
        if leads.ndim == 1:
            leads = leads.expand(like.shape[0], -1)
        if leads.ndim != 2 or leads.shape[0] != like.shape[0]:
            raise ValueError(f"lead_times must be (L,) or (B, L), got {tuple(leads.shape)}")
        return leads
