"""The assembled MetNet network: configurations, shapes, receptive field, conditioning."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from metnet.distribution import RainRateDistribution, masked_cross_entropy
from metnet.models import ConvLSTM, MetNet

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
#: The input shape each network piece is tested with (in a run, the data settings give it).
SHAPES = {
    "tiny": dict(input_channels=1, context_frames=3, input_size=32, target_size=16),
    "paper": dict(input_channels=1, context_frames=7, input_size=1024, target_size=64),
}


def load_config(name: str, **overrides) -> dict:
    """MetNet arguments: the input shape of :data:`SHAPES`, the piece's ``init_args``."""
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["init_args"]
    return {**SHAPES[name], **cfg, **overrides}


def tiny(**overrides) -> MetNet:
    torch.manual_seed(0)
    return MetNet(**load_config("tiny", **overrides))


def inputs(model: MetNet, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, model.context_frames, model.input_channels, *model.input_size)
    return torch.randn(*shape, generator=gen)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_config_forward_on_reduced_input() -> None:
    # paper architecture, context reduced from 1024 to 128 px (an 8x8 latent) to fit a test
    model = MetNet(**load_config("paper", input_size=128)).eval()
    with torch.no_grad():
        logits = model(inputs(model, batch=1), torch.tensor([120]))
    assert logits.shape == (1, 1, 512, 64, 64)
    assert torch.isfinite(logits).all()
    print(f"paper config: {n_params(model):,} parameters")


SHAPE_CASES = {
    "axial-film": {},
    "criss_cross-film": {"attention": "criss_cross"},
    "axial-onehot": {"conditioning": "onehot"},
    "criss_cross-onehot": {"attention": "criss_cross", "conditioning": "onehot"},
    "non_square-unpacked": {"input_size": [24, 40], "target_size": [8, 16], "pack_factor": 1},
    "non_square-cc-2layers": {
        "input_size": [48, 32],
        "target_size": [16, 16],
        "attention": "criss_cross",
        "lstm_layers": 2,
        "num_blocks": 3,
        "conditioned_from": 0,
    },
    "all-context-uniform-bins": {"conditioned_from": 2, "num_bins": 10, "bin_width": 1.0},
    "pack4-checkpointing": {"input_size": 64, "target_size": 32, "pack_factor": 4,
                            "gradient_checkpointing": True},
}  # fmt: skip


@pytest.mark.parametrize("overrides", SHAPE_CASES.values(), ids=SHAPE_CASES.keys())
def test_output_shape(overrides: dict) -> None:
    model = tiny(**overrides)
    x = inputs(model, batch=3)
    leads = torch.tensor([10, 20, 40, 60])
    logits = model(x, leads)
    ht, wt = model.target_size
    assert logits.shape == (3, 4, model.num_bins, ht, wt)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # per-sample lead times (B, L) give the same result as shared (L,) ones
    torch.testing.assert_close(model(x, leads.expand(3, 4)), logits)


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_config_round_trip(name: str) -> None:
    # model.config holds every constructor argument as plain values (for checkpoints)
    model = MetNet(**load_config(name))
    assert set(model.config) == set(inspect.signature(MetNet).parameters)
    rebuilt = MetNet(**model.config)
    assert rebuilt.config == model.config
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes


def test_input_validation() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="expected input"):
        model(torch.zeros(1, 3, 1, 32, 24), [10])
    with pytest.raises(ValueError, match="lead_times"):
        model(inputs(model), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="multiples"):
        tiny(input_size=36)
    with pytest.raises(ValueError):
        tiny(attention="global")


def test_encode_decode_equals_forward() -> None:
    model = tiny().eval()
    x, leads = inputs(model), torch.tensor([10, 50])
    latent = model.encode(x)
    assert latent.shape == (2, 16, 4, 4)
    torch.testing.assert_close(model.decode(latent, leads), model(x, leads))
    onehot = tiny(conditioning="onehot")
    with pytest.raises(RuntimeError):
        onehot.encode(x)
    with pytest.raises(RuntimeError):
        onehot.decode(latent, leads)


# --- any input size ----------------------------------------------------------------------


def whole_domain_net(half_resolution: bool = False) -> MetNet:
    """A network without positional embedding (any input size), with motion inputs and the
    prior, whose learned corrections are made non-zero so that the network matters."""
    torch.manual_seed(0)
    net = MetNet(input_channels=2, context_frames=2, input_size=128, target_size=32,
                 pack_factor=2, downsampler_channels=(8, 16), lstm_hidden=16, num_blocks=2,
                 conditioned_from=1, heads=2, lead_embedding_dim=8, max_lead_minutes=30,
                 lead_step_minutes=10, lead_channels=4, prior=True, dry_bin=True,
                 position="none", attention_window=2, half_resolution=half_resolution)
    for param in (*net.head.logits.parameters(), *net.lead_encoder.project.parameters()):
        torch.nn.init.normal_(param, std=0.1)
    return net.eval()


def whole_domain_inputs(height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs (1, 2, 2, H, W) of :func:`whole_domain_net` and its per-lead inputs
    (1, 3, 4, H, W) for 3 leads, every pixel known (channel 1)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2, 2, height, width, generator=gen)
    lead_inputs = torch.randn(1, 3, 4, height, width, generator=gen)
    lead_inputs[:, :, 1] = 1.0
    return x, lead_inputs


@pytest.mark.parametrize("half_resolution", [False, True])
def test_a_network_without_positions_forecasts_a_domain_as_its_patches(
        half_resolution: bool) -> None:
    """One pass over a 224 px domain predicts its central 128 px; in the interior of each
    32 px target (8 px in from its edges: the head's seams) that equals what the network
    predicts from that target's own 128 px patch."""
    net = whole_domain_net(half_resolution)
    x, lead_inputs = whole_domain_inputs(224, 224, seed=3)
    leads = torch.tensor([10, 20, 30])
    with torch.no_grad():
        whole = net(x, leads, lead_inputs)
        assert whole.shape == (1, 3, 25, 128, 128)
        for row, col in [(0, 0), (40, 56), (96, 96)]:
            patch = net(x[..., row:row + 128, col:col + 128], leads,
                        lead_inputs[..., row:row + 128, col:col + 128])
            interior = (..., slice(8, 24), slice(8, 24))
            torch.testing.assert_close(patch[interior],
                                       whole[..., row:row + 32, col:col + 32][interior],
                                       atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("half_resolution", [False, True])
def test_decoded_probabilities_are_the_softmax_of_the_logits(half_resolution: bool,
                                                             monkeypatch) -> None:
    """A forecast asks the decoder for probabilities, which the prior's kernel makes from
    its mixture and the exponentials of the head's corrections, without a log: the softmax
    of the logits, also where corrections are so large that the mixture times their
    exponential overflows (+200 on one bin) or vanishes (-200 on every bin), where the head
    takes the logits' way. Given a forecast's buffer, the prior's kernel writes them into
    it (a buffer of the wrong shape is refused: the kernel checks no bounds)."""
    net = whole_domain_net(half_resolution)
    x, lead_inputs = whole_domain_inputs(160, 160, seed=4)
    leads = torch.tensor([10, 20, 30])
    fast = []  # what the kernel gave where it was to correct the mixture
    mixture = net.head.prior.mixture

    def corrected(*args: torch.Tensor) -> torch.Tensor | None:
        result = mixture(*args)
        if len(args) == 5:  # given the corrections' exponentials
            fast.append(result)
        return result

    monkeypatch.setattr(net.head.prior, "mixture", corrected)
    bias, bins = net.head.logits.bias, torch.arange(25).repeat(net.head.pack**2)
    original = bias.detach().clone()
    buffer = torch.empty(1, 3, 64, 64, 25)  # a forecast's (B, L, Ht, Wt, K), bins last
    in_buffer = []
    with torch.inference_mode():
        latent = net.encode(x)
        for shift in (torch.zeros(()), 200.0 * (bins == 3), torch.full((), -200.0)):
            bias[:len(bins)] = original[:len(bins)] + shift
            logits = net.decode(latent, leads, lead_inputs)
            probs = net.decode(latent, leads, lead_inputs, probabilities=True)
            assert probs.isfinite().all()
            torch.testing.assert_close(probs, torch.softmax(logits, dim=2), rtol=1e-4,
                                       atol=1e-6)
            assert probs[0].permute(0, 2, 3, 1).is_contiguous()  # bins last, as the logits
            into = net.decode(latent, leads, lead_inputs, probabilities=True, out=buffer)
            torch.testing.assert_close(into, probs)
            in_buffer.append(into.data_ptr() == buffer.data_ptr())
    assert [result is not None for result in fast] == [True, True, False, False, False, False]
    assert in_buffer == [True, False, False]  # the logits' way makes a buffer of its own
    with torch.inference_mode(), pytest.raises(
            ValueError, match=r"buffer \(3, 64, 64, 25\), got torch.float32 \(3, 64, 63, 25\)"):
        net.decode(latent, leads, lead_inputs, probabilities=True, out=buffer[..., 1:, :])


class _IdentityBlock(torch.nn.Module):
    def forward(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return z


@pytest.mark.parametrize("half_resolution", [False, True])
def test_without_conditioned_blocks_the_lead_encoder_reads_only_what_the_head_needs(
        half_resolution: bool) -> None:
    """With no conditioned block the lead encoder runs on the target region only (and the
    latent pixel around it): the logits are those of the encoder run on the whole context,
    which a conditioned block that changes nothing makes the network run."""
    net = whole_domain_net(half_resolution)
    net.conditioned_blocks = torch.nn.ModuleList()
    x, planes = whole_domain_inputs(160, 192, seed=5)
    with torch.no_grad():
        cropped = net(x, [10, 20, 30], planes)
        net.conditioned_blocks.append(_IdentityBlock())
        whole = net(x, [10, 20, 30], planes)
    torch.testing.assert_close(cropped, whole, atol=1e-4, rtol=1e-4)
    assert cropped.shape == (1, 3, 25, 64, 96)


def test_a_half_resolution_network_convolves_nothing_at_full_resolution() -> None:
    """With ``half_resolution`` every convolution outputs at most half the input's rows and
    columns (the per-lead planes read 2 x 2 at a time, a sub-pixel head), yet the four output
    pixels of a 2 x 2 block get logits of their own; without it, the head and the lead
    encoder convolve at full resolution."""
    x = torch.randn(1, 2, 2, 128, 128)
    planes = torch.rand(1, 3, 4, 128, 128)
    for half_resolution, widest in [(True, 64), (False, 128)]:
        net = whole_domain_net(half_resolution)
        with torch.no_grad(), _ConvolutionSizes() as sizes:
            logits = net(x, [10, 20, 30], planes)
        assert max(sizes) == widest
    blocks = logits.unfold(-2, 2, 2).unfold(-2, 2, 2).flatten(-2)  # (..., 16, 16, 4)
    assert (blocks.std(-1) > 1e-3).float().mean() > 0.9


@pytest.mark.parametrize(("pack", "kernel"), [(1, 3), (2, 1), (2, 3), (4, 3)])
def test_packed_conv_is_the_convolution_of_the_packed_planes(pack: int, kernel: int) -> None:
    """The lead encoder's and the head's convolutions of packed planes run on the planes as
    they are: the same values and gradients as convolving their space-to-depth copy."""
    from metnet.models.downsampler import packed_conv, space_to_depth

    gen = torch.Generator().manual_seed(pack * 10 + kernel)
    x = torch.randn(2, 3, 24, 32, generator=gen, requires_grad=True)
    weight = torch.randn(5, 3 * pack**2, kernel, kernel, generator=gen, requires_grad=True)
    bias = torch.randn(5, generator=gen)
    expected = F.conv2d(space_to_depth(x, pack), weight, bias, padding=kernel // 2)
    got = packed_conv(weight, bias, x, pack)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    grads = torch.autograd.grad((got * expected.detach()).sum(), (x, weight))
    expected_grads = torch.autograd.grad((expected * expected.detach()).sum(), (x, weight))
    for grad, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-4)


class _ConvolutionSizes(torch.overrides.TorchFunctionMode):
    """The widest output side of every 2-d convolution run inside it."""

    def __enter__(self) -> list[int]:
        self.sizes: list[int] = []
        super().__enter__()
        return self.sizes

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.nn.functional.conv2d:
            self.sizes.append(max(out.shape[-2:]))
        return out


def test_only_a_network_without_positions_takes_any_size() -> None:
    net = whole_domain_net()
    assert net.any_size and not any("position" in name for name, _ in net.named_parameters())
    with pytest.raises(ValueError, match="expected input"):  # margins leave no target
        net(torch.zeros(1, 2, 2, 96, 96), [10], torch.zeros(1, 1, 4, 96, 96))
    with pytest.raises(ValueError, match="expected input"):  # not whole latent pixels
        net(torch.zeros(1, 2, 2, 140, 140), [10], torch.zeros(1, 1, 4, 140, 140))
    with pytest.raises(ValueError, match="expected input"):
        tiny()(torch.zeros(1, 3, 1, 48, 48), [10])
    with pytest.raises(ValueError, match="position"):
        tiny(position="relative")
    with pytest.raises(ValueError, match="needs conditioning='film'"):
        tiny(position="none", conditioning="onehot")


# --- receptive field ---------------------------------------------------------------------


@pytest.mark.parametrize("conditioning", ["film", "onehot"])
def test_output_depends_on_own_sample_and_all_frames(conditioning: str) -> None:
    model = tiny(conditioning=conditioning).double()
    x = inputs(model).double().requires_grad_(True)
    model(x, torch.tensor([20, 60]))[0, 1].sum().backward()
    grad = x.grad.abs()
    assert torch.all(grad[1] == 0), "output of sample 0 depends on its batch neighbour"
    assert torch.all(grad[0].sum(dim=(1, 2, 3)) > 0), "some input frame is ignored"


def test_output_pixel_sees_whole_context() -> None:
    # the attention stack gives one output pixel a global receptive field: all four
    # corner regions of the 64 px context influence the top-left pixel of the 32 px target
    model = tiny(input_size=64, target_size=32).double()
    x = inputs(model, batch=1).double().requires_grad_(True)
    model(x, torch.tensor([30]))[0, 0, :, 0, 0].sum().backward()
    reach = x.grad[0].abs().sum(dim=(0, 1))  # (H, W)
    for corner in (reach[:8, :8], reach[:8, -8:], reach[-8:, :8], reach[-8:, -8:]):
        assert corner.sum() > 0


@pytest.mark.parametrize("layers", [1, 2])
def test_convlstm_is_causal(layers: int) -> None:
    lstm = ConvLSTM(3, 4, num_layers=layers).double()
    x = torch.randn(2, 5, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    seq = lstm(x, return_sequence=True)
    assert seq.shape == (2, 5, 4, 6, 7)
    torch.testing.assert_close(lstm(x), seq[:, -1])
    for t in range(5):
        (grad,) = torch.autograd.grad(seq[:, t].sum(), x, retain_graph=True)
        per_frame = grad.abs().sum(dim=(0, 2, 3, 4))
        assert torch.all(per_frame[: t + 1] > 0) and torch.all(per_frame[t + 1 :] == 0)


# --- lead-time conditioning ---------------------------------------------------------------


def test_identity_film_at_init_and_encoder_runs_once() -> None:
    model = tiny().eval()
    calls: list[int] = []
    model.downsampler.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    x, leads = inputs(model), torch.tensor([10, 20, 30, 40, 50, 60])
    with torch.no_grad():
        logits = model(x, leads)
    assert calls == [2], "the encoder must run once per sample, not once per lead"
    # FiLM starts as the identity: every lead gives the same forecast
    torch.testing.assert_close(logits, logits[:, :1].expand_as(logits), rtol=0, atol=0)


def test_onehot_runs_encoder_per_lead() -> None:
    model = tiny(conditioning="onehot").eval()
    calls: list[int] = []
    model.downsampler.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        model(inputs(model), torch.tensor([10, 20, 30]))
    assert calls == [2 * 3]


def test_training_makes_forecast_lead_dependent() -> None:
    # toy task: the rain rate to predict is lead / 5 mm/h everywhere
    model = tiny()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, leads = inputs(model, batch=2), torch.tensor([10, 60])
    target = (leads / 5.0)[None, :, None, None].expand(2, 2, *model.target_size)
    for _ in range(30):
        optimiser.zero_grad()
        masked_cross_entropy(model(x, leads), target, model.bin_edges, dim=2).backward()
        optimiser.step()
    with torch.no_grad():
        mean = RainRateDistribution(model(x, leads), model.bin_edges, dim=2).mean()
    early, late = mean[:, 0].mean().item(), mean[:, 1].mean().item()
    assert late - early > 4.0, f"lead-dependent targets not learnt: {early:.2f} vs {late:.2f}"


# --- numerics and performance features ----------------------------------------------------


@pytest.mark.parametrize("attention", ["axial", "criss_cross"])
def test_bf16_autocast_forward(attention: str) -> None:
    model = tiny(attention=attention)
    x, leads = inputs(model), torch.tensor([10, 30])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x, leads)
        loss = masked_cross_entropy(logits, torch.rand(2, 2, 16, 16), model.bin_edges, dim=2)
    loss.backward()
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    with torch.no_grad():
        reference = model(x, leads)
    torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.1)


@pytest.mark.parametrize("attention", ["axial", "criss_cross"])
def test_gradient_checkpointing_same_gradients(attention: str) -> None:
    plain = tiny(attention=attention, conditioned_from=1).double()
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing = True
    x, leads = inputs(plain).double(), torch.tensor([10, 40])
    target = 5 * torch.rand(2, 2, 16, 16, dtype=torch.float64)
    for model in (plain, checkpointed):
        masked_cross_entropy(model(x, leads), target, model.bin_edges, dim=2).backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.slow
@pytest.mark.slow
def test_torch_compile_tiny() -> None:
    # works with the CPU inductor toolchain (a C++ compiler); about a minute with a cold cache
    model = tiny().eval()
    x, leads = inputs(model), torch.tensor([10, 30])
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, leads), model(x, leads), atol=1e-5, rtol=1e-5)


def test_the_network_imports_neither_lightning_nor_pysteps():
    """Plain nn.Modules stay plain: importing them pulls in no trainer, radar library or
    data pipeline."""
    code = ("import sys, metnet.models; "
            "print(sorted(m for m in ('lightning', 'pysteps', 'metnet.data') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("pack", [1, 2])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_heads_block_logits_are_its_subpixel_convolution(
        layout: torch.memory_format, pack: int) -> None:
    """The logits' 1x1 convolution, made as a matrix product with the outputs of each block
    last (or as planes), equals torch's convolution then pixel shuffle (values and
    gradients) whatever the features' layout: trained weights keep their meaning."""
    from metnet.models.head import _block_logits, _subpixel_planes, _unblocked

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 27 * pack**2, 1)
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(3, 16, 12, 10).contiguous(memory_format=layout).requires_grad_()
    got = _unblocked(_block_logits(conv.weight.flatten(1), conv.bias, x, pack))
    expected = torch.nn.functional.pixel_shuffle(conv(x), pack)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.permute(0, 2, 3, 1).is_contiguous()
    planes = _subpixel_planes(conv.weight.flatten(1), conv.bias, x, pack)
    torch.testing.assert_close(planes, expected, rtol=1e-5, atol=1e-5)
    inputs = (conv.weight, conv.bias, x)
    grads_got = torch.autograd.grad(got.square().sum(), inputs)
    grads_expected = torch.autograd.grad(expected.square().sum(), inputs)
    for grad_got, grad_expected in zip(grads_got, grads_expected, strict=True):
        torch.testing.assert_close(grad_got, grad_expected, rtol=1e-5, atol=1e-4)


def test_listed_bins_beside_a_bin_count_or_dry_bin_say_how_to_change_them() -> None:
    listed = [0.0, 0.0, 0.01, 0.1, 1.0, 10.0]  # as small.yaml lists its bins: a dry bin first
    assert tiny(bin_edges=listed).bin_edges == tuple(listed)
    for change in ({"dry_bin": True}, {"num_bins": 10}):
        with pytest.raises(ValueError, match="set bin_edges to null"):
            tiny(bin_edges=listed, **change)
