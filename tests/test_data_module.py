"""NowcastDataModule on synthetic stores: samples, masks, gaps, determinism, ranks, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from metnet.data.datamodule import NowcastDataModule
from metnet.data.dataset import collate
from metnet.data.motion import VELOCITY_SCALE
from metnet.data.windows import DataConfigError
from metnet.io.store import StoreError, make_dataset, open_store, write_store
from metnet.io.synthetic import SYNTHETIC_CRS, synthesize
from metnet.transforms import input_to_rate

SMALL = dict(context_frames=3, context_size=64, target_size=16, lead_times=[5, 10, 15, 20],
             split_fractions=(0.6, 0.2, 0.2), batch_size=4)
OFFSET = (64 - 16) // 2


def _dm(*stores: Path, stage: str | None = "fit", **overrides) -> NowcastDataModule:
    dm = NowcastDataModule([str(s) for s in stores], **{**SMALL, **overrides})
    dm.setup(stage)
    return dm


def _write(path: Path, rain: np.ndarray, step: int = 5, pixel: float = 1000.0,
           start: str = "2024-06-01T12:00") -> Path:
    """A store of ``rain`` (T, H, W) mm/h on a ``pixel``-metre grid."""
    _, height, width = rain.shape
    x = (np.arange(width) - width / 2 + 0.5) * pixel
    y = (height / 2 - 0.5 - np.arange(height)) * pixel
    times = pd.date_range(start, periods=len(rain), freq=f"{step}min")
    ds = make_dataset(rain, times, x, y, crs=SYNTHETIC_CRS, source="test", step_minutes=step)
    return write_store(ds, path)


def _frame_index(store: Path, init_time: int) -> int:
    times = open_store(store)["time"].values.astype("datetime64[ns]").astype(np.int64)
    return int(np.flatnonzero(times == init_time)[0])


def test_sample_keys_shapes_and_dtypes(synthetic_store):
    dm = _dm(synthetic_store)
    batch = next(iter(dm.train_dataloader()))
    b, t, c, s, st, n_lead = 4, 3, dm.num_channels, 64, 16, 4
    assert dm.num_channels == 2 and dm.channel_names == ["rain", "rain_mask"]
    assert batch["context"].shape == (b, t, c, s, s) and batch["context"].dtype == torch.float32
    assert batch["target"].shape == (b, n_lead, st, st) and batch["target"].dtype == torch.float32
    assert batch["target_mask"].shape == (b, n_lead, st, st)
    assert batch["target_mask"].dtype == torch.bool
    assert batch["lead_times"].tolist() == [[5, 10, 15, 20]] * b
    assert batch["init_time"].dtype == torch.int64 and batch["row"].shape == (b,)
    assert batch["store"] == ["synthetic"] * b
    assert not torch.isnan(batch["context"]).any()


def test_context_and_target_are_the_store_values_with_masks(synthetic_store):
    dm = _dm(synthetic_store)
    rain = open_store(synthetic_store)["rain_rate"].values
    unobserved = 0
    for index in range(len(dm.datasets["val"])):
        sample = dm.datasets["val"][index]
        init = _frame_index(synthetic_store, sample["init_time"])
        r, c = sample["row"], sample["col"]
        context = rain[init - 2:init + 1, r:r + 64, c:c + 64]
        target = rain[init + 1:init + 5, r + OFFSET:r + OFFSET + 16, c + OFFSET:c + OFFSET + 16]
        np.testing.assert_array_equal(sample["target"].numpy(), target)
        np.testing.assert_array_equal(sample["target_mask"].numpy(), ~np.isnan(target))
        np.testing.assert_array_equal(sample["context"][:, 1].numpy(), ~np.isnan(context))
        np.testing.assert_allclose(input_to_rate(sample["context"][:, 0]).numpy(),
                                   np.nan_to_num(context), rtol=1e-5, atol=1e-6)
        unobserved += int((~sample["target_mask"]).sum() + (sample["context"][:, 1] == 0).sum())
    assert unobserved > 0  # the patches reach outside the circular coverage


def test_context_step_wider_than_the_lead_step(synthetic_store):
    dm = _dm(synthetic_store, context_step_minutes=15, lead_times=[5, 10])
    rain = open_store(synthetic_store)["rain_rate"].values
    sample = dm.datasets["val"][0]
    init = _frame_index(synthetic_store, sample["init_time"])
    r, c = sample["row"], sample["col"]
    np.testing.assert_array_equal(sample["context"][:, 1].numpy(),
                                  ~np.isnan(rain[[init - 6, init - 3, init], r:r + 64, c:c + 64]))
    np.testing.assert_array_equal(sample["target"][1].numpy(),
                                  rain[init + 2, r + OFFSET:r + OFFSET + 16,
                                       c + OFFSET:c + OFFSET + 16])


def test_unphysical_rates_become_unobserved_and_negatives_zero(tmp_path):
    rain = np.full((12, 64, 64), 1.0, dtype=np.float32)
    rain[:, 30, 30] = 500.0
    rain[:, 31, 31] = -2.0
    dm = _dm(_write(tmp_path / "s.zarr", rain), stage=None, split_fractions=(1, 0, 0),
             context_frames=2, lead_times=[5])
    sample = dm.datasets["train"][0]
    assert sample["row"] == sample["col"] == 0
    target, mask = sample["target"][0], sample["target_mask"][0]
    assert torch.isnan(target[30 - OFFSET, 30 - OFFSET]) and not mask[30 - OFFSET, 30 - OFFSET]
    assert target[31 - OFFSET, 31 - OFFSET] == 0 and mask[31 - OFFSET, 31 - OFFSET]
    assert sample["context"][-1, 1, 30, 30] == 0 and sample["context"][-1, 0, 30, 30] == 0


def test_no_sampled_window_spans_a_gap(tmp_path):
    full = synthesize(frames=60, height=64, width=64, seed=5)
    gappy = full.drop_isel(time=[20, 21, 40])
    store = write_store(gappy, tmp_path / "gappy.zarr")
    dm = _dm(store, split_fractions=(0.5, 0.25, 0.25))
    step = np.timedelta64(5, "m")
    times = open_store(store)["time"].values
    for dataset in dm.datasets.values():
        for windows in dataset.windows:
            frames = np.concatenate([windows.context, windows.target], axis=1)
            offsets = (times[frames] - times[frames[:, [2]]]) // step
            np.testing.assert_array_equal(offsets, np.tile([-2, -1, 0, 1, 2, 3, 4],
                                                           (len(frames), 1)))
    missing = full["time"].values[[20, 21, 40]]
    for sample in dm.datasets["train"]:
        init = np.datetime64(sample["init_time"], "ns")
        assert not ((missing >= init - 2 * step) & (missing <= init + 4 * step)).any()


def test_same_seed_same_samples_new_epoch_new_patches_val_fixed(synthetic_store):
    a, b = _dm(synthetic_store, seed=7), _dm(synthetic_store, seed=7)
    keys = [(0, i) for i in range(10)] + [(3, i) for i in range(10)]
    for key in keys:
        sa, sb = a.datasets["train"][key], b.datasets["train"][key]
        assert torch.equal(sa["context"], sb["context"]) and (sa["row"], sa["col"]) == (
            sb["row"], sb["col"])
    corners = [[(a.datasets["train"][(e, i)]["row"], a.datasets["train"][(e, i)]["col"])
                for i in range(10)] for e in (0, 1)]
    assert corners[0] != corners[1]
    other = _dm(synthetic_store, seed=8)
    assert [(other.datasets["train"][(0, i)]["row"]) for i in range(10)] != [
        r for r, _ in corners[0]]

    def val_corners(dm: NowcastDataModule, epoch: int) -> list:
        loader = dm.val_dataloader()
        loader.sampler.set_epoch(epoch)
        return [(int(r), int(c)) for batch in loader for r, c in zip(batch["row"], batch["col"],
                                                                      strict=True)]
    assert val_corners(a, 0) == val_corners(a, 5) == val_corners(b, 0)


def test_ranks_get_disjoint_shares_that_cover_the_split(synthetic_store):
    dm = _dm(synthetic_store)
    n = len(dm.datasets["train"])
    for epoch in (0, 1):
        shares = []
        for rank in (0, 1):
            sampler = dm.dataloader("train", num_replicas=2, rank=rank).sampler
            assert isinstance(sampler, DistributedSampler)  # so Lightning does not re-wrap it
            sampler.set_epoch(epoch)
            keys = list(sampler)
            assert {e for e, _ in keys} == {epoch}
            shares.append({i for _, i in keys})
        assert not shares[0] & shares[1]
        assert len(shares[0]) == len(shares[1]) == n // 2
    val = [{i for _, i in dm.dataloader("val", num_replicas=2, rank=r).sampler} for r in (0, 1)]
    assert val[0] | val[1] == set(range(len(dm.datasets["val"])))


def test_two_workers_give_the_same_batches_as_none(synthetic_store):
    dm = _dm(synthetic_store)
    serial = list(dm.train_dataloader())
    dm.hparams.num_workers = 2
    loader = dm.train_dataloader()
    assert loader.num_workers == 2
    parallel = list(loader)
    assert len(parallel) == len(serial)
    for x, y in zip(serial, parallel, strict=True):
        assert torch.equal(x["context"], y["context"]) and torch.equal(x["row"], y["row"])


@pytest.mark.parametrize("lazy_cache_mb", [256, 0.5, 0])
def test_lazy_reads_equal_the_memory_cache(synthetic_store, lazy_cache_mb):
    """Whether frames are kept decoded (256 MB), too big for the cache (0.5 MB: read past
    it) or not kept at all (0), a lazy batch is the memory cache's, value for value."""
    memory = _dm(synthetic_store)
    lazy = _dm(synthetic_store, cache="lazy", lazy_cache_mb=lazy_cache_mb)
    keys = [(0, 0), (1, 5), (2, 11), (0, 1), (0, 0)]
    a, b = memory.datasets["train"].__getitems__(keys), lazy.datasets["train"].__getitems__(keys)
    torch.testing.assert_close(a["context"], b["context"], rtol=0, atol=0)
    torch.testing.assert_close(a["target"], b["target"], rtol=0, atol=0, equal_nan=True)


def test_a_lazy_batch_of_one_block_decodes_each_frame_once(synthetic_store, monkeypatch):
    """The default lazy training batch is a block of neighbouring windows: its frames are
    decoded once for the whole batch, not once per sample."""
    dm = _dm(synthetic_store, cache="lazy", patches_per_window=2)
    decoded = []
    frames = dm.datasets["train"].domains[0].frames
    decode = type(frames)._decode

    def counting(self, which: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        decoded.extend(which)
        return decode(self, which, rows, cols)
    monkeypatch.setattr(type(frames), "_decode", counting)
    batch = next(iter(dm.train_dataloader()))
    windows = dm.datasets["train"].windows[0]
    needed = set()
    for init_time in batch["init_time"].tolist():
        window = int(np.flatnonzero(windows.init_time.astype(np.int64) == init_time)[0])
        needed |= set(windows.context[window]) | set(windows.target[window])
    assert sorted(decoded) == sorted(needed)
    assert len(set(batch["init_time"].tolist())) == SMALL["batch_size"] // 2


def test_two_lazy_workers_each_serve_whole_blocks_and_together_the_epoch(synthetic_store):
    dm = _dm(synthetic_store, cache="lazy")  # blocks of 4 batches of 4 samples
    serial = list(dm.train_dataloader())
    dm.hparams.num_workers = 2
    loader = dm.train_dataloader()
    keys = [i for _, i in loader.sampler]
    batches = [keys[k:k + 4] for k in range(0, len(keys), 4)]
    first_worker = [i for batch in batches[0::2] for i in batch]  # batch k: worker k % 2
    block = min(16, len(dm.datasets["train"]) - first_worker[0])
    assert first_worker[:block] == list(range(first_worker[0], first_worker[0] + block))

    def samples(batches: list[dict]) -> list[tuple[int, int, int]]:
        return sorted((int(t), int(r), int(c)) for b in batches
                      for t, r, c in zip(b["init_time"], b["row"], b["col"], strict=True))
    assert samples(list(loader)) == samples(serial)


@pytest.mark.parametrize("replicas", [1, 2])
def test_block_shuffle_keeps_blocks_whole_and_shares_disjoint(synthetic_store, replicas):
    dm = _dm(synthetic_store, shuffle_block=3)
    n = len(dm.datasets["train"])
    orders = []
    for epoch in (0, 1):
        shares = []
        for rank in range(replicas):
            sampler = dm.dataloader("train", num_replicas=replicas, rank=rank).sampler
            sampler.set_epoch(epoch)
            shares.append([i for _, i in sampler])
        taken = [i for share in shares for i in share]
        assert len(taken) == len(set(taken)) == n - n % replicas
        # blocks of 3 consecutive samples, in shuffled order, each entered at its start
        assert taken[0] % 3 == 0
        assert all(now % 3 == 0 or now == before + 1
                   for before, now in zip(taken[:-1], taken[1:], strict=True))
        orders.append(taken)
    assert orders[0] != orders[1]


def test_training_patches_are_drawn_where_it_rains(tmp_path):
    rain = np.zeros((20, 128, 128), dtype=np.float32)
    rain[:, :, :40] = 2.0  # only the western third is wet
    store = _write(tmp_path / "west.zarr", rain)

    def wet_share(eps: float) -> float:
        dm = _dm(store, stage=None, split_fractions=(1, 0, 0), rain_weight_eps=eps,
                 patches_per_window=20)
        dataset = dm.datasets["train"]
        return float(np.mean([dataset[i]["target"].mean() > 0 for i in range(len(dataset))]))

    assert wet_share(0.01) > 0.9
    assert wet_share(1e6) < 0.5


def test_static_and_time_channels(synthetic_store):
    dm = _dm(synthetic_store, static_channels=True, time_channels=True)
    assert dm.channel_names == ["rain", "rain_mask", "lat", "lon", "sin_tod", "cos_tod",
                                "sin_doy", "cos_doy"]
    sample = dm.datasets["val"][0]
    assert sample["context"].shape[1] == dm.num_channels == 8
    ds = open_store(synthetic_store)
    r, c = sample["row"] + 5, sample["col"] + 9
    to_lonlat = pyproj.Transformer.from_crs(ds.attrs["crs"], "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(ds["x"].values[c], ds["y"].values[r])
    context = sample["context"][-1]
    assert context[2, 5, 9] * 90 == pytest.approx(lat, abs=1e-4)
    assert context[3, 5, 9] * 180 == pytest.approx(lon, abs=1e-4)
    init = pd.Timestamp(sample["init_time"])
    day = (init.hour * 60 + init.minute) / 1440
    assert context[4].unique().tolist() == pytest.approx([np.sin(2 * np.pi * day)], abs=1e-6)
    assert context[5, 0, 0] == pytest.approx(np.cos(2 * np.pi * day), abs=1e-6)
    year = (init.day_of_year - 1 + day) / 365.2425
    assert context[6, 0, 0] == pytest.approx(np.sin(2 * np.pi * year), abs=1e-6)


def test_several_stores_each_window_from_one_store(synthetic_store, tmp_path):
    second = write_store(synthesize(frames=40, height=80, width=80, seed=9,
                                    start="2024-07-01T00:00"), tmp_path / "second.zarr")
    dm = _dm(synthetic_store, second)
    train = dm.datasets["train"]
    assert [len(w) for w in train.windows] == [36 - 7 + 1, 24 - 7 + 1]
    ranges = {"synthetic": open_store(synthetic_store)["time"].values,
              "second": open_store(second)["time"].values}
    for index in (0, 28, 29, len(train) - 1):
        sample = train[index]
        times = ranges[sample["store"]]
        assert times[0] <= np.datetime64(sample["init_time"], "ns") <= times[-1]
    assert {train[0]["store"], train[len(train) - 1]["store"]} == {"synthetic", "second"}


def test_two_minute_store_is_resampled_to_ten_minutes(tmp_path):
    store = write_store(synthesize(frames=80, height=64, width=64, step_minutes=2, seed=2),
                        tmp_path / "mrms_like.zarr")
    dm = _dm(store, stage=None, step_minutes=10, context_frames=2, lead_times=[10, 20])
    windows = dm.datasets["train"].windows[0]
    times = dm.datasets["train"].domains[0].frames.times
    assert (np.diff(times) == np.timedelta64(10, "m")).all() and len(times) == 16
    lead = (times[windows.target] - windows.init_time[:, None]).astype("timedelta64[m]")
    assert len(lead) == 6 and (lead == np.array([10, 20], "timedelta64[m]")).all()


BAD_CONFIGS = [
    ({"context_size": 128}, "context_size=128 is larger than its 96 x 96 grid"),
    ({"lead_times": [5, 7]}, "lead time 7 min is not a positive multiple of step_minutes=5"),
    ({"lead_times": [120]}, "no complete window in the val split"),
    ({"target_size": 80}, "target_size=80 must be between 1 and context_size=64"),
    ({"cache": "disk"}, "cache='disk'"),
    ({"shuffle_block": 0}, "shuffle_block=0 must be >= 1"),
    ({"context_step_minutes": 7}, "context_step_minutes=7 is not a multiple of step_minutes=5"),
    ({"train_fraction": 0}, "train_fraction=0 must be in"),
    ({"motion_error": True}, "motion_error adds channels to motion_inputs, which is off"),
    ({"splits": {"train": [["2024-06-01T12:00", "2024-06-01T15:00"]],
                 "test": [["2024-06-01T14:00", "2024-06-01T17:00"]]}},
     "the train and test ranges overlap"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIGS)
def test_bad_configuration_is_named_in_one_line(synthetic_store, overrides, message):
    with pytest.raises(DataConfigError, match=message) as error:
        _dm(synthetic_store, **overrides)
    assert "\n" not in str(error.value)


def test_missing_and_mismatched_stores_are_refused(synthetic_store, tmp_path):
    with pytest.raises(DataConfigError, match="nowhere.zarr: no such store"):
        _dm(tmp_path / "nowhere.zarr")
    fine = write_store(synthesize(frames=30, height=96, width=96, pixel_size=500.0),
                       tmp_path / "fine.zarr")
    with pytest.raises(DataConfigError, match="different pixel sizes.*1000 m.*500 m"):
        _dm(synthetic_store, fine)
    half_hourly = write_store(synthesize(frames=30, height=64, width=64, step_minutes=30),
                              tmp_path / "half_hourly.zarr")
    with pytest.raises(DataConfigError, match="30-minute step is more than twice the longest "
                       "lead time \\(10 min\\).*add a lead time of 30 min"):
        _dm(half_hourly, lead_times=[5, 10])
    (tmp_path / "broken.zarr").mkdir()
    with pytest.raises(StoreError, match="broken.zarr"):
        _dm(tmp_path / "broken.zarr")


def test_lightning_sets_the_epoch_and_trains_a_tiny_model(synthetic_store):
    import lightning as L

    seen: dict[int, list] = {}

    class Probe(L.LightningModule):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(channels, 1, 1)

        def training_step(self, batch, _):
            seen.setdefault(self.current_epoch, []).extend(batch["row"].tolist())
            out = self.conv(batch["context"][:, -1])[:, :, OFFSET:OFFSET + 16, OFFSET:OFFSET + 16]
            target, mask = batch["target"][:, :1], batch["target_mask"][:, :1]
            return ((out - target.nan_to_num()) ** 2)[mask].mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = NowcastDataModule([str(synthetic_store)], **SMALL)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(Probe(dm.num_channels), datamodule=dm)
    assert len(seen[0]) == len(seen[1]) == 12 and seen[0] != seen[1]


def test_dataloader_without_the_sampler_takes_plain_indices(synthetic_store):
    dm = _dm(synthetic_store)
    batch = next(iter(DataLoader(dm.datasets["test"], batch_size=2, collate_fn=collate)))
    assert batch["context"].shape[0] == 2
    with pytest.raises(IndexError):
        dm.datasets["test"][len(dm.datasets["test"])]


def test_a_train_fraction_keeps_the_earliest_training_windows_and_the_rest(synthetic_store):
    whole, quarter = _dm(synthetic_store), _dm(synthetic_store, train_fraction=0.25)
    inits = {name: dm.datasets["train"].windows[0].init_time for name, dm in
             (("whole", whole), ("quarter", quarter))}
    assert len(inits["quarter"]) == int(np.ceil(0.25 * len(inits["whole"])))
    np.testing.assert_array_equal(inits["quarter"], inits["whole"][:len(inits["quarter"])])
    for split in ("val", "test"):
        np.testing.assert_array_equal(quarter.datasets[split].windows[0].init_time,
                                      whole.datasets[split].windows[0].init_time)


def test_splits_by_date_ranges(synthetic_store):
    """60 frames from 12:00: train on the first 2 h, validate on the next hour, test on
    the last hour; every window's frames lie inside its split's range."""
    dm = _dm(synthetic_store, splits={
        "train": [["2024-06-01T12:00", "2024-06-01T14:00"]],
        "val": [["2024-06-01T14:00", "2024-06-01T15:00"]],
        "test": [["2024-06-01T15:00Z", "2024-06-01T17:00Z"]]})
    for split, (lo, hi) in {"train": ("12:00", "14:00"), "val": ("14:00", "15:00"),
                            "test": ("15:00", "17:00")}.items():
        windows = dm.datasets[split].windows[0]
        times = dm.datasets[split].domains[0].frames.times
        assert len(windows) > 0, split
        assert times[windows.context[:, 0]].min() >= np.datetime64(f"2024-06-01T{lo}")
        assert times[windows.target.max(axis=1)].max() < np.datetime64(f"2024-06-01T{hi}")


def test_storage_options_stay_out_of_checkpoints_and_hparams(synthetic_store, tmp_path):
    """They may hold credentials (an s3 key and secret, a gcs token)."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            return (self.weight - batch["target"].nan_to_num().mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = NowcastDataModule([str(synthetic_store)], storage_options={"key": "secret"}, **SMALL)
    assert dm.storage_options == {"key": "secret"}
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=CSVLogger(tmp_path),
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(Probe(), datamodule=dm)
    trainer.save_checkpoint(tmp_path / "probe.ckpt")
    (hparams,) = tmp_path.glob("lightning_logs/*/hparams.yaml")
    assert "batch_size" in hparams.read_text()
    leaked = [str(f) for f in (tmp_path / "probe.ckpt", hparams) if b"secret" in f.read_bytes()]
    assert not leaked


def test_a_store_at_another_step_trains_at_its_own_leads_padded_to_the_slots(synthetic_store,
                                                                            tmp_path, capsys):
    """A 6-minute store beside a 5-minute one: its windows only train, at 6, 12, 18 min (the
    configured 5-20 min rounded), the fourth lead slot repeats 18 min with no observed
    target, and its extrapolation inputs fill the first three slots."""
    six = write_store(synthesize(frames=40, height=96, width=96, step_minutes=6, seed=5),
                      tmp_path / "six.zarr")
    dm = _dm(synthetic_store, six, motion_inputs=True, motion_velocity=True,
             cache_dir=str(tmp_path / "cache"))
    assert "six: sampled every 6 min" in capsys.readouterr().err
    alone = _dm(synthetic_store, motion_inputs=True, motion_velocity=True,
                cache_dir=str(tmp_path / "cache"))
    for split in ("val", "test"):  # the 6-minute store scores nothing
        assert len(dm.datasets[split]) == len(alone.datasets[split])
    with pytest.raises(DataConfigError, match="six only train, as their step differs"):
        _dm(six)
    train = dm.datasets["train"]
    assert train.windows[1].init_time.size == 40 - (2 * 1 + 3)  # every complete window
    sample = train[int(train.offsets[1])]
    assert sample["store"] == "six" and sample["lead_times"].tolist() == [6, 12, 18, 18]
    observed = sample["target_mask"].flatten(1).any(1).tolist()
    assert observed[:3] == [True, True, True] and observed[3] is False
    assert torch.isnan(sample["target"][3]).all()
    planes = sample["lead_inputs"]
    assert torch.equal(planes[3], planes[2]) and not torch.equal(planes[2], planes[1])
    _, velocity = train.domains[1].motion.fields(int(train.windows[1].context[0, -1]))
    patch = (slice(None), slice(sample["row"], sample["row"] + 64),
             slice(sample["col"], sample["col"] + 64))
    np.testing.assert_allclose(planes[0, -2:].numpy() * VELOCITY_SCALE,
                               np.asarray(velocity)[patch] * 5 / 6, atol=0.02)  # px per 5 min
    batch = next(iter(DataLoader(train, batch_size=len(train), collate_fn=collate,
                                 sampler=[(0, i) for i in range(len(train))])))
    assert set(map(tuple, batch["lead_times"].tolist())) == {(5, 10, 15, 20), (6, 12, 18, 18)}
