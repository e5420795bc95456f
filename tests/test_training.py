"""Training through `metnet fit/test`, the scores it reports, and checkpoint safety."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import metnet_process, run_metnet
from pysteps.verification.detcatscores import det_cat_fct

from metnet.checkpoint import (
    FORMAT_KEY,
    FORMAT_VERSION,
    NET_CLASS_KEY,
    PIXEL_KEY,
    Checkpoint,
    CheckpointError,
)
from metnet.io.store import write_store
from metnet.io.synthetic import synthesize
from metnet.metrics import ContingencyScores, LeadMean
from metnet.training import warmup_cosine

REPO = Path(__file__).resolve().parents[1]


def test_contingency_scores_equal_pysteps():
    rng = np.random.default_rng(0)
    observed = rng.gamma(0.5, 2.0, size=(3, 2, 20, 20)).astype(np.float32)
    observed[0, 0, :3] = np.nan
    forecast = (observed + rng.normal(0, 1.5, size=observed.shape)).astype(np.float32)
    thresholds = [0.1, 1.0, 4.0]
    metric = ContingencyScores(num_leads=2, thresholds=thresholds)
    events = torch.stack([torch.from_numpy(forecast) > t for t in thresholds], dim=2)
    metric.update(events, torch.from_numpy(observed))
    scores = metric.compute()
    for lead in range(2):
        for i, t in enumerate(thresholds):
            expected = det_cat_fct(forecast[:, lead], observed[:, lead], t, ["CSI", "POD", "FAR"])
            for name in ("CSI", "POD", "FAR"):
                assert scores[name.lower()][lead, i].item() == pytest.approx(expected[name])


def test_scores_accumulated_in_parts_equal_scores_on_all_data():
    """What DDP's sum-reduction of the states relies on."""
    rng = np.random.default_rng(1)
    observed = torch.from_numpy(rng.gamma(0.5, 2.0, size=(4, 3, 8, 8)).astype(np.float32))
    events = torch.from_numpy(rng.random((4, 3, 2, 8, 8)) > 0.5)
    whole = ContingencyScores(3, [0.5, 2.0])
    whole.update(events, observed)
    parts = [ContingencyScores(3, [0.5, 2.0]) for _ in range(2)]
    parts[0].update(events[:2], observed[:2])
    parts[1].update(events[2:], observed[2:])
    for name in ("hits", "misses", "false_alarms"):
        torch.testing.assert_close(getattr(parts[0], name) + getattr(parts[1], name),
                                   getattr(whole, name))
    mean = LeadMean(3)
    mean.update(observed, ~torch.isnan(observed))
    torch.testing.assert_close(mean.compute()["lead"], observed.double().mean((0, 2, 3)))


def test_learning_rate_warms_up_then_decays_to_zero():
    factors = [warmup_cosine(step, 10, 100) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "synthetic.zarr"
    write_store(synthesize(frames=60, height=96, width=96, seed=2), path)
    return path


def tiny_overrides(store: Path) -> list[str]:
    return [
        "--config", str(REPO / "configs/synthetic.yaml"),
        "--data.stores", f"[{store}]", "--data.context_size", "48", "--data.target_size", "16",
        "--data.context_frames", "3", "--data.lead_times", "[5, 15, 30]",
        "--data.batch_size", "4", "--data.patches_per_window", "1",
        "--model.net.init_args.lstm_hidden", "16", "--model.net.init_args.num_blocks", "2",
        "--model.net.init_args.conditioned_from", "1", "--model.net.init_args.heads", "2",
        "--model.net.init_args.downsampler_channels", "[8, 16]",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "6",
        "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
    ]


@pytest.fixture(scope="module")
def trained(synthetic_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    result = run_metnet("fit", *tiny_overrides(synthetic_store), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_fit_writes_best_and_last_checkpoints_and_csv_logs(trained):
    assert (trained / "outputs/checkpoints/best.ckpt").is_file()
    assert (trained / "outputs/checkpoints/last.ckpt").is_file()
    header = next((trained / "outputs/csv").glob("version_*/metrics.csv")).read_text()
    for key in ("val/model/csi_1", "val/persistence/csi_1", "val/model/crps/lead_30",
                "val/persistence/brier_1", "val/model/ce/lead_5", "lr-AdamW"):
        assert key in header


def test_test_reports_model_and_persistence_scores(trained, synthetic_store):
    result = run_metnet("test", *tiny_overrides(synthetic_store), "--ckpt_path",
                    "outputs/checkpoints/best.ckpt", cwd=trained)
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ("test/model/csi_1", "test/persistence/csi_1", "test/model/crps",
                "test/persistence/crps", "test/model/far_8/lead_30"):
        assert key in result.stdout


def test_checkpoint_rebuilds_the_network_safely(trained):
    checkpoint = Checkpoint.load(trained / "outputs/checkpoints/best.ckpt")
    net, hparams = checkpoint.net, checkpoint.hparams
    assert hparams["lr"] == pytest.approx(0.002)
    x = torch.zeros(2, 3, 2, 48, 48)
    planes = torch.zeros(2, 2, net.lead_channels, 48, 48)  # motion inputs
    with torch.no_grad():
        assert net(x, [5, 30], planes).shape == (2, 2, net.num_bins, 16, 16)


def test_bad_checkpoints_are_refused_with_a_clear_message(trained, tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        Checkpoint.load(garbage)
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(CheckpointError, match="not a metnet checkpoint"):
        Checkpoint.load(plain)
    checkpoint = torch.load(trained / "outputs/checkpoints/best.ckpt", weights_only=True)
    checkpoint["metnet_net_config"]["lstm_hidden"] = 32
    mismatched = tmp_path / "mismatched.ckpt"
    torch.save(checkpoint, mismatched)
    with pytest.raises(CheckpointError, match="do not fit the configuration"):
        _ = Checkpoint.load(mismatched).net
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Checkpoint.load(tmp_path / "absent.ckpt")


def test_checkpoint_records_its_format_and_network_class(trained, tmp_path):
    contents = torch.load(trained / "outputs/checkpoints/best.ckpt", weights_only=True)
    assert contents[FORMAT_KEY] == FORMAT_VERSION
    assert contents[NET_CLASS_KEY] == "metnet.models.MetNet"
    assert contents[PIXEL_KEY] == {"size": 1000.0, "unit": "m"}  # the stores' pixel size

    newer = tmp_path / "newer.ckpt"
    torch.save({**contents, FORMAT_KEY: FORMAT_VERSION + 1}, newer)
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1} is newer than "
                       f"this metnet reads \\({FORMAT_VERSION}\\); upgrade metnet"):
        Checkpoint.load(newer)

    foreign = tmp_path / "foreign.ckpt"
    torch.save({**contents, NET_CLASS_KEY: "os.system"}, foreign)
    with pytest.raises(CheckpointError, match="network class os.system is unknown"):
        _ = Checkpoint.load(foreign).net

    unversioned = tmp_path / "unversioned.ckpt"  # written before formats were recorded
    torch.save({k: v for k, v in contents.items() if k not in (FORMAT_KEY, NET_CLASS_KEY)},
               unversioned)
    assert Checkpoint.load(unversioned).net.config == contents["metnet_net_config"]


def test_bf16_mixed_precision_trains_on_cpu(synthetic_store, tmp_path):
    result = run_metnet("fit", *tiny_overrides(synthetic_store), "--trainer.precision",
                    "bf16-mixed", "--trainer.limit_train_batches", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    net = Checkpoint.load(tmp_path / "outputs/checkpoints/last.ckpt").net
    assert all(torch.isfinite(p).all() for p in net.parameters())


def _validate_scores(args: list[str], cwd: Path, devices: int) -> dict[str, float]:
    result = metnet_process("validate", *args, "--trainer.accelerator", "cpu",
                            "--trainer.devices", str(devices), "--trainer.strategy",
                            "ddp" if devices > 1 else "auto", "--trainer.limit_val_batches",
                            "1.0", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = next((cwd / "outputs/csv").glob(f"version_{_last_version(cwd)}/metrics.csv"))
    lines = metrics.read_text().splitlines()
    header, values = lines[0].split(","), lines[-1].split(",")
    return {k: float(v) for k, v in zip(header, values, strict=True) if v}


def _last_version(cwd: Path) -> int:
    return max(int(p.name.split("_")[1]) for p in (cwd / "outputs/csv").glob("version_*"))


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_fits_and_reduces_scores_across_ranks(trained, synthetic_store):
    result = metnet_process("fit", *tiny_overrides(synthetic_store), "--trainer.accelerator",
                            "cpu",
                    "--trainer.devices", "2", "--trainer.strategy", "ddp",
                    "--trainer.limit_train_batches", "2", cwd=trained)
    assert result.returncode == 0, result.stderr[-3000:]
    args = [*tiny_overrides(synthetic_store), "--data.eval_patches_per_window", "2",
            "--ckpt_path", "outputs/checkpoints/last.ckpt"]
    single = _validate_scores(args, trained, devices=1)
    double = _validate_scores(args, trained, devices=2)
    for key in ("val/model/csi_1", "val/persistence/csi_1", "val/model/crps",
                "val/persistence/crps/lead_30", "val/model/ce"):
        assert double[key] == pytest.approx(single[key], rel=1e-5), key


def _global_step(checkpoint: Path) -> int:
    try:
        return int(torch.load(checkpoint, weights_only=True)["global_step"])
    except Exception:  # absent, or being written
        return -1


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_exactly_where_it_stopped(synthetic_store, tmp_path):
    args = [*tiny_overrides(synthetic_store), "--trainer.limit_train_batches", "12",
            "--trainer.limit_val_batches", "1", "--checkpoint_every_n_steps", "4"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    reference.mkdir()
    killed.mkdir()
    assert metnet_process("fit", *args, cwd=reference).returncode == 0
    last = killed / "outputs/checkpoints/last.ckpt"
    process = subprocess.Popen([sys.executable, "-m", "metnet.cli", "fit", *args], cwd=killed,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while _global_step(last) < 4 and process.poll() is None:
        pass
    process.kill()
    process.wait()
    killed_at = _global_step(last)
    result = metnet_process("fit", *args, "--ckpt_path", "last", cwd=killed)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = torch.load(reference / "outputs/checkpoints/last.ckpt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert 4 <= killed_at < expected["global_step"], "the run was not killed mid-epoch"
    assert resumed["global_step"] == expected["global_step"]
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, msg=key)
    assert resumed["lr_schedulers"][0]["last_epoch"] == expected["lr_schedulers"][0]["last_epoch"]


def test_checkpoint_of_another_network_is_refused_in_one_line(trained, synthetic_store):
    result = run_metnet("test", *tiny_overrides(synthetic_store), "--ckpt_path",
                    "outputs/checkpoints/best.ckpt", "--model.net.init_args.lstm_hidden", "24",
                    cwd=trained)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("metnet test: error: the checkpoint's network does not match")
    assert "lstm_hidden=16 (configured 24)" in last_line


def test_bad_data_configuration_is_one_line(tmp_path):
    result = run_metnet("fit", "--config", str(REPO / "configs/synthetic.yaml"), "--data.stores",
                        f"[{tmp_path / 'absent.zarr'}]", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("metnet fit: error: ")
    assert "absent.zarr" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "outputs").exists()  # no empty log or checkpoint folder


# -- runs that never mislead ----------------------------------------------------------------


def test_each_fit_has_its_own_folder_and_checkpoints_is_the_latest(synthetic_store, tmp_path):
    first = run_metnet("fit", *tiny_overrides(synthetic_store), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    best = tmp_path / "outputs/checkpoints/best.ckpt"
    first_weights = torch.load(best, weights_only=True)["state_dict"]
    second = run_metnet("fit", *tiny_overrides(synthetic_store), "--model.lr", "0.02",
                        cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    runs = tmp_path / "outputs/runs"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    assert best.resolve().parent == (runs / "version_1").resolve()  # the newest run's best
    assert not list(best.parent.glob("best-v*.ckpt"))
    kept = torch.load(runs / "version_0/best.ckpt", weights_only=True)["state_dict"]
    for key, value in first_weights.items():  # the first run's best is kept as it was
        torch.testing.assert_close(kept[key], value)
    assert Checkpoint.load(best).hparams["lr"] == pytest.approx(0.02)


def test_a_checkpoints_folder_of_an_earlier_release_is_kept_as_a_run(synthetic_store,
                                                                     tmp_path):
    old = tmp_path / "outputs/checkpoints"
    old.mkdir(parents=True)
    (old / "best.ckpt").write_bytes(b"an earlier run")
    assert run_metnet("fit", *tiny_overrides(synthetic_store), cwd=tmp_path).returncode == 0
    runs = tmp_path / "outputs/runs"
    assert (runs / "version_0/best.ckpt").read_bytes() == b"an earlier run"
    assert old.is_symlink() and old.resolve() == (runs / "version_1").resolve()


def test_resuming_without_a_last_checkpoint_is_refused(synthetic_store, tmp_path):
    result = run_metnet("fit", *tiny_overrides(synthetic_store), "--ckpt_path", "last",
                        cwd=tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("metnet fit: error: --ckpt_path last: there is no ")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("command", ["fit", "test"])
def test_bad_checkpoint_files_are_one_line_in_fit_and_test(command, synthetic_store, tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")

    class Payload:
        def __reduce__(self):
            return (print, ("code in a checkpoint ran",))

    torch.save({"state_dict": {}, "payload": Payload()}, tmp_path / "code.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "whole.ckpt")
    whole = (tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(whole[:len(whole) // 2])
    for path, reason in ((garbage, "not a torch checkpoint, or a damaged one"),
                         (tmp_path / "code.ckpt", "it holds objects that would run code (print)"),
                         (tmp_path / "truncated.ckpt", "damaged or truncated")):
        result = run_metnet(command, *tiny_overrides(synthetic_store), "--ckpt_path", path,
                            cwd=tmp_path)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith(f"metnet {command}: error: {path}: not a readable "
                                    f"checkpoint ({reason}")
        assert "weights_only" not in result.stderr and "Traceback" not in result.stderr
        assert "code in a checkpoint ran" not in result.stdout


def test_a_mistyped_option_is_named_in_one_line(tmp_path):
    result = run_metnet("fit", "--config", str(REPO / "configs/synthetic.yaml"),
                        "--data.batchsize", "4", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "metnet fit: error: unrecognized arguments: --data.batchsize 4 "
        "(see `metnet fit --help`)"]


def test_standard_output_is_quiet_and_progress_is_plain_lines_in_a_log(synthetic_store,
                                                                      tmp_path):
    """Run as a cluster job would be: standard output to a file."""
    log = tmp_path / "fit.log"
    with log.open("w") as out:
        subprocess.run([sys.executable, "-m", "metnet.cli", "fit",
                        *map(str, tiny_overrides(synthetic_store)),
                        "--trainer.log_every_n_steps", "1"], cwd=tmp_path, stdout=out,
                       stderr=subprocess.PIPE, check=True, timeout=600)
    text = log.read_text()
    assert "Pysteps configuration file found" not in text
    assert "\x1b[" not in text and "\r" not in text  # no terminal control sequences
    lines = text.splitlines()
    assert any(line.startswith("epoch 0 step") and "train/loss" in line for line in lines)
    assert any("end of epoch" in line for line in lines)


def test_the_crps_loss_is_the_mean_exact_crps_and_trains():
    from metnet.distribution import RainRateDistribution
    from metnet.models import MetNet
    from metnet.training import NowcastModule

    torch.manual_seed(0)
    net = MetNet(input_channels=2, context_frames=3, input_size=32, target_size=16,
                 pack_factor=2, downsampler_channels=(8, 16), lstm_hidden=16, num_blocks=2,
                 conditioned_from=1, heads=2, max_lead_minutes=30, lead_step_minutes=5,
                 dry_bin=True)
    module = NowcastModule(net, loss="crps")
    batch = {"context": torch.rand(2, 3, 2, 32, 32), "lead_times": torch.tensor([[5, 30]] * 2),
             "target": 3 * torch.rand(2, 2, 16, 16)}
    batch["target"][0, 0, :4] = torch.nan
    loss = module.training_step(batch, 0)
    crps = RainRateDistribution(module.logits(batch), net.bin_edges, dim=2).crps(
        batch["target"].nan_to_num(0.0))
    torch.testing.assert_close(loss, crps[~torch.isnan(batch["target"])].mean())
    loss.backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="loss must be one of"):
        NowcastModule(net, loss="brier")


def test_test_scores_each_sample_with_its_stores_calibration():
    from dataclasses import replace

    from metnet.calibration import Calibration
    from metnet.models import MetNet
    from metnet.training import NowcastModule

    net = MetNet(input_channels=2, context_frames=3, input_size=32, target_size=16,
                 pack_factor=2, downsampler_channels=(8, 16), lstm_hidden=16, num_blocks=2,
                 conditioned_from=1, heads=2, max_lead_minutes=30, lead_step_minutes=5)
    module = NowcastModule(net)
    thresholds = list(module.hparams.thresholds)
    own = Calibration([5, 30], thresholds, [2.0, 4.0], [[0.3] * 4, [0.2] * 4])
    module.calibration = replace(Calibration.identity([5, 30], thresholds), stores={"fmi": own})
    batch = {"lead_times": torch.tensor([[5, 30]] * 2), "store": ["fmi", "knmi"]}
    logits = torch.randn(2, 2, len(net.bin_edges) - 1, 16, 16)
    forecasts = module._model_forecasts(logits, batch, "test")
    tempered, cuts = forecasts["model_calibrated"]
    temperature = torch.tensor([2.0, 4.0])[:, None, None, None]
    torch.testing.assert_close(tempered[0], logits[0] / temperature)
    torch.testing.assert_close(tempered[1], logits[1])  # knmi: the pooled calibration
    torch.testing.assert_close(cuts[:, :, 1], torch.tensor([[0.3, 0.2], [0.5, 0.5]]))
    assert forecasts["model"][1].shape == (2, 2, 4)
    assert "model_calibrated" not in module._model_forecasts(logits, batch, "val")
