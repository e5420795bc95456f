"""``metnet forecast --watch``: the operational loop over a store that an ingest-like writer
extends in a background thread, locally and at a URL, stopped by its limits or Ctrl-C."""

from __future__ import annotations

import _thread
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import run_metnet, serve_folder

from metnet.forecast import deferred_interrupt, watch_forecasts
from metnet.io.store import append_frames, write_store
from metnet.io.synthetic import synthesize

#: The frames of the watched store: the first 4 are there when the watch begins, then the
#: writer appends these groups of frame indices (12:35, index 7, never comes: a gap).
FRAMES = 12
APPENDS = ([4], [5, 6], [8], [9], [10])
LATENCY = r"forecast written (-?\d+\.\d) s after the frame arrived"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP by a server on 127.0.0.1, and its base URL."""
    with serve_folder(tmp_path) as url:
        yield tmp_path, url


def start_store(path: Path) -> xr.Dataset:
    """Write the first 4 frames (12:00 to 12:15) of :data:`FRAMES` synthetic ones as a
    store; return all of them."""
    frames = synthesize(frames=FRAMES, height=40, width=36, seed=5)
    write_store(frames.isel(time=slice(0, 4)), path)
    return frames


def written_inits(out: Path) -> list[np.datetime64]:
    """The init times a forecast output (OUT.zarr or a folder) holds, in time order."""
    if out.suffix != ".zarr":
        files = sorted(p for p in out.glob("*.nc") if not p.name.startswith("."))
        return [np.datetime64(f"{p.stem[:4]}-{p.stem[4:6]}-{p.stem[6:8]}T{p.stem[9:11]}:"
                              f"{p.stem[11:]}", "ns") for p in files]
    if not out.exists():
        return []
    with xr.open_zarr(out, consolidated=True) as ds:
        return list(ds["init_time"].values)


def wait_for_forecasts(out: Path, count: int) -> None:
    """Wait (30 s at most) until the output holds ``count`` init times."""
    deadline = time.monotonic() + 30
    while len(written_inits(out)) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def ingest_like(store: Path, frames: xr.Dataset, out: Path, appends: Sequence[list[int]],
                then: Callable[[], None] = lambda: None) -> threading.Thread:
    """A background writer, as `metnet ingest` run periodically: once the watch has written
    its first forecast, it appends each group of frames (``append_frames``: readers see all
    of a group or none), then calls ``then``."""
    def write() -> None:
        wait_for_forecasts(out, 1)
        for group in appends:
            append_frames(store, frames.isel(time=group))
            time.sleep(0.3)  # frames may also arrive while a forecast is in progress
        then()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def times(*hh_mm: str) -> list[np.datetime64]:
    return [np.datetime64(f"2024-06-01T{t}", "ns") for t in hh_mm]


def test_watch_forecasts_each_new_complete_init_time_once(tmp_path, tiny_checkpoint):
    store, out = tmp_path / "live.zarr", tmp_path / "watched.zarr"
    frames = start_store(store)
    writer = ingest_like(store, frames, out, APPENDS)
    result = run_metnet("forecast", "--ckpt_path", tiny_checkpoint, "--store", store,
                        "--out", out, "--lead_times", "[5,15]", "--watch", "--poll_seconds",
                        "0.1", "--watch_max_forecasts", 5, "--watch_timeout", 60, cwd=tmp_path)
    writer.join()
    assert result.returncode == 0, result.stderr
    # the store's last time when the watch began, then every new init time whose 3-frame
    # context is complete: 12:40 and 12:45 lack 12:35
    inits = times("12:15", "12:20", "12:25", "12:30", "12:50")
    assert written_inits(out) == inits
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"init 2024-06-01T12:15: forecast written \d+\.\d s after the watch "
                        r"began \(the frame was already in the store\)", lines[0]), lines
    for line, hh_mm in zip(lines[1:5], ("12:20", "12:25", "12:30", "12:50"), strict=True):
        match = re.fullmatch(rf"init 2024-06-01T{hh_mm}: {LATENCY} \((-?\d+\.\d) s after the "
                             r"store was written\)", line)
        assert match, line
        arrived, stored = map(float, match.groups())
        assert 0 <= arrived < 30 and arrived <= stored + 0.1  # seen after it was written
    assert re.fullmatch(r"metnet forecast: stopped watching after \d+ s \(--watch_max_forecasts "
                        rf"reached\): 5 forecast\(s\) written to {re.escape(str(out))}",
                        lines[5]), lines
    for skipped in ("12:40", "12:45"):
        assert (f"init time 2024-06-01T{skipped}: its context lacks frames 2024-06-01T12:35; "
                "skipped") in result.stderr
    # the same forecasts as a plain `metnet forecast` of those init times
    plain = tmp_path / "plain.zarr"
    stamps = ",".join(np.datetime_as_string(t, "m") for t in inits)
    assert run_metnet("forecast", "--ckpt_path", tiny_checkpoint, "--store", store,
                      "--out", plain, "--lead_times", "[5,15]", "--init_time", f"[{stamps}]",
                      cwd=tmp_path).returncode == 0
    with xr.open_zarr(out) as watched, xr.open_zarr(plain) as reference:
        watched.attrs.pop("history"), reference.attrs.pop("history")  # each run stamps it
        xr.testing.assert_identical(watched.load(), reference.load())


def test_watch_of_a_url_store_stops_on_ctrl_c_and_resumes(served, tiny_checkpoint):
    root, base = served
    store, out = root / "live.zarr", root / "watched"
    frames = start_store(store)
    args = ("forecast", "--ckpt_path", tiny_checkpoint, "--store", f"{base}/live.zarr",
            "--out", out, "--lead_times", "[5]", "--watch", "--poll_seconds", "0.1",
            "--watch_timeout", 60)

    def ctrl_c() -> None:
        wait_for_forecasts(out, 2)
        _thread.interrupt_main()  # what Ctrl-C does

    writer = ingest_like(store, frames, out, [[4]], then=ctrl_c)
    result = run_metnet(*args, cwd=root)
    writer.join()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    # HTTP tells no modification time: the latency from the frame's arrival only
    assert re.fullmatch(rf"init 2024-06-01T12:20: {LATENCY}", lines[1]), lines
    assert re.fullmatch(r"metnet forecast: stopped watching after \d+ s \(Ctrl-C\): "
                        rf"2 forecast\(s\) written to {re.escape(str(out))}", lines[-1]), lines
    assert written_inits(out) == times("12:15", "12:20")
    # started again, it forecasts what arrived meanwhile, after the last init time written
    append_frames(store, frames.isel(time=[5, 6]))
    again = run_metnet(*args, "--watch_max_forecasts", 2, cwd=root)
    assert again.returncode == 0, again.stderr
    assert re.search(r"init 2024-06-01T12:25: forecast written \d+\.\d s after the watch "
                     r"began", again.stdout), again.stdout
    assert written_inits(out) == times("12:15", "12:20", "12:25", "12:30")


def test_a_failed_poll_is_warned_about_and_tried_again(tmp_path, tiny_net):
    store = tmp_path / "live.zarr"
    frames = start_store(store)
    warnings: list[str] = []
    watch = watch_forecasts(tiny_net, str(store), [5], poll_seconds=0.05, timeout=20,
                            warn=warnings.append)
    first = next(watch)  # the watch waits until asked for the next forecast
    assert first.at_start and first.forecast["init_time"].values[0] == times("12:15")[0]
    append_frames(store, frames.isel(time=[4]))
    metadata = store / "zarr.json"
    metadata.rename(tmp_path / "away.json")  # the store cannot be read for a while
    threading.Timer(0.3, (tmp_path / "away.json").rename, [metadata]).start()
    second = next(watch)
    assert second.forecast["init_time"].values[0] == times("12:20")[0]
    assert not second.at_start and second.written is not None
    assert warnings and all(f"{store}: polling failed" in w and "trying again in 0.05 s" in w
                            for w in warnings), warnings
    watch.close()


def test_a_poll_failing_with_any_error_is_warned_about_and_tried_again(tmp_path, tiny_net,
                                                                      monkeypatch):
    """An HTTP 5xx reaches the poll as aiohttp's ClientResponseError, not an OSError."""
    from metnet.forecast import MetadataPoll

    class ServerError(Exception):
        """What an fsspec file system raises for a response it did not expect."""

    store = tmp_path / "live.zarr"
    frames = start_store(store)
    calls, original = [], MetadataPoll.changed

    def fails_once(self: MetadataPoll) -> bool:
        calls.append(1)
        if len(calls) == 2:  # the first poll after the watch began
            raise ServerError("503, message='Service Unavailable'")
        return original(self)

    monkeypatch.setattr(MetadataPoll, "changed", fails_once)
    warnings: list[str] = []
    watch = watch_forecasts(tiny_net, str(store), [5], poll_seconds=0.05, timeout=20,
                            warn=warnings.append)
    next(watch)
    append_frames(store, frames.isel(time=[4]))
    assert next(watch).forecast["init_time"].values[0] == times("12:20")[0]
    assert warnings == [f"{store}: polling failed (ServerError: 503, message='Service "
                        "Unavailable'); trying again in 0.05 s"]
    watch.close()


def test_the_watch_timeout_begins_no_forecast_of_a_backlog(tmp_path, tiny_net):
    store = tmp_path / "live.zarr"
    start_store(store)
    watch = watch_forecasts(tiny_net, str(store), [5], start="2024-06-01T12:10",
                            poll_seconds=0.05, timeout=1.0)
    first = next(watch)  # 12:15 is left
    assert first.forecast["init_time"].values[0] == times("12:10")[0]
    time.sleep(1.1)
    assert list(watch) == []


def test_ctrl_c_waits_for_the_write_in_progress():
    finished = False
    with pytest.raises(KeyboardInterrupt), deferred_interrupt():
        _thread.interrupt_main()
        time.sleep(0.1)  # a KeyboardInterrupt would be raised here without the deferral
        finished = True
    assert finished


@pytest.mark.parametrize(("args", "message"), [
    (["--watch", "--init_time", "2024-06-01T12:15"], "give no --init_time or --end"),
    (["--watch", "--out", "f.nc"], "cannot assemble one .nc at the end"),
    (["--watch", "--poll_seconds", "0"], "--poll_seconds must be positive"),
    (["--init_time", "2024-06-01T12:15", "--watch_timeout", "5"], "--watch_timeout: only with "
                                                                  "--watch"),
])
def test_watch_options_that_do_not_fit_are_one_line(args, message, tmp_path, tiny_checkpoint,
                                                    tiny_store):
    result = run_metnet("forecast", "--ckpt_path", tiny_checkpoint, "--store", tiny_store,
                        "--out", tmp_path / "o.zarr", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not any(tmp_path.iterdir())
