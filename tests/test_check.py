"""`metnet check` names every damaged frame of a store; reads of a damaged frame name the
store and the frame instead of reading NaN or failing in a codec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metnet.data.frames import StoreFrames
from metnet.forecast import read_context
from metnet.io.store import StoreError, check_store, make_dataset, open_store, write_store
from tests.conftest import run_metnet


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    """A 6-frame store whose frame 2 chunk is deleted and frame 4 chunk is garbage."""
    times = pd.date_range("2024-06-01T12:00", periods=6, freq="5min")
    rain = np.random.default_rng(0).gamma(0.5, 2.0, (6, 20, 30)).astype(np.float32)
    path = write_store(make_dataset(rain, times, np.arange(30) * 1e3, -np.arange(20) * 1e3,
                                    crs="EPSG:3035", source="t", step_minutes=5),
                       tmp_path / "s.zarr")
    (path / "rain_rate/c/2/0/0").unlink()
    (path / "rain_rate/c/4/0/0").write_bytes(b"not zstd")
    return path


def test_check_names_missing_and_undecodable_frames(damaged: Path) -> None:
    bad = check_store(damaged)
    assert [when for when, _ in bad] == ["2024-06-01T12:10", "2024-06-01T12:20"]
    assert "missing" in bad[0][1] and "cannot be decoded" in bad[1][1]


@pytest.mark.parametrize(("chunks", "damaged_frames"), [((1, 10, 15), ["12:15"]),
                                                       ((2, 10, 15), ["12:10", "12:15"])])
def test_check_reads_every_chunk_of_a_store_chunked_in_space_and_time(
        tmp_path: Path, chunks: tuple[int, int, int], damaged_frames: list[str]) -> None:
    """MLCast stores of other makers may split a frame in chunks, or a chunk hold frames."""
    times = pd.date_range("2024-06-01T12:00", periods=6, freq="5min")
    rain = np.random.default_rng(0).gamma(0.5, 2.0, (6, 20, 30)).astype(np.float32)
    path = tmp_path / "s.zarr"
    make_dataset(rain, times, np.arange(30) * 1e3, -np.arange(20) * 1e3, crs="EPSG:3035",
                 source="t", step_minutes=5).to_zarr(
        path, zarr_format=3, consolidated=True, encoding={"rain_rate": {"chunks": chunks}})
    key = f"rain_rate/c/{3 // chunks[0]}/1/1"  # the lower right quarter of frame 3
    (path / key).unlink()
    bad = check_store(path)
    assert bad == [(f"2024-06-01T{when}", f"chunk {key} is missing") for when in damaged_frames]


def test_check_command_exits_1_naming_each_frame(damaged: Path, tmp_path: Path) -> None:
    result = run_metnet("check", damaged, cwd=tmp_path)
    assert result.returncode == 1
    assert f"{damaged}: frame 2024-06-01T12:10: chunk rain_rate/c/2/0/0 is missing" \
        in result.stderr
    assert "2 damaged frame(s)" in result.stderr


def test_check_command_on_a_sound_store(tiny_store: Path, tmp_path: Path) -> None:
    result = run_metnet("check", tiny_store, cwd=tmp_path)
    assert result.returncode == 0 and "every frame reads" in result.stdout


def test_training_and_forecast_reads_name_the_store_and_frame(damaged: Path) -> None:
    frames = StoreFrames(damaged, cache="lazy")
    with pytest.raises(StoreError, match=r"s.zarr: frames at 2024-06-01T12:20 cannot be read"):
        frames.read(np.array([4]), slice(None), slice(None))
    with pytest.raises(StoreError, match=r"s.zarr: frames at .*12:20.* cannot be read"):
        read_context(open_store(damaged), np.datetime64("2024-06-01T12:25"), 3)
