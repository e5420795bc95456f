"""Fixtures and builders shared by the test modules: synthetic stores, a tiny trained
checkpoint, the real-data folder, ingested stores."""

from __future__ import annotations

import functools
import http.server
import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import lightning as L
import pytest
import torch

from metnet.checkpoint import Checkpoint
from metnet.cli import main
from metnet.io.store import write_store
from metnet.io.synthetic import synthesize
from metnet.models import MetNet
from metnet.training import NowcastModule

#: The tiny network of the forecast and evaluation tests: 3 frames of 32 x 32 px, leads
#: every 5 min up to 30 min.
TINY = dict(input_channels=2, context_frames=3, input_size=32, target_size=16, pack_factor=2,
            downsampler_channels=(8, 16), lstm_hidden=16, num_blocks=2, conditioned_from=1,
            heads=2, max_lead_minutes=30, lead_step_minutes=5)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        """No request log on stderr."""


@contextmanager
def serve_folder(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP from a real server on 127.0.0.1; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_metnet(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """``metnet ARGS`` run in this process from ``cwd``: its exit status and what it printed
    to stdout and stderr (Python's ``logging`` handlers still write to the real stderr)."""
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit_:  # LightningCLI exits on a usage error
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def metnet_process(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """``metnet ARGS`` in a fresh Python process (for what is about the process: DDP
    launches, kills, exit codes and tracebacks)."""
    return subprocess.run([sys.executable, "-m", "metnet.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def shared_data_or_skip(*parts: str) -> Path:
    """The path ``../shared/data/<parts>``; skips the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real radar samples not found at {path}")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips the requesting test when it is absent."""
    return shared_data_or_skip()


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic radar store: 60 frames of 96 x 96 at 5 min, 1 km pixels."""
    path = tmp_path_factory.mktemp("synthetic") / "synthetic.zarr"
    return write_store(synthesize(frames=60, height=96, width=96, seed=3), path)


@pytest.fixture(scope="session")
def ingested_store(tmp_path_factory: pytest.TempPathFactory):
    """Factory ``(source, folder, start, end, coarsen=1) -> store path`` of real data ingested
    once per session with :func:`metnet.io.ingest.ingest`; skips when the data are absent."""
    from metnet.io.ingest import ingest

    made: dict[tuple, Path] = {}

    def make(source: str, folder: str, start: str | None = None, end: str | None = None,
             coarsen: int = 1) -> Path:
        key = (source, folder, start, end, coarsen)
        if key not in made:
            src = shared_data_or_skip(*folder.split("/"))
            out = tmp_path_factory.mktemp("ingested") / f"{source}.zarr"
            ingest(src, source, out, start=start, end=end, coarsen=coarsen, progress=False)
            made[key] = out
        return made[key]

    return make


def make_store(path: Path, frames: int = 12, height: int = 70, width: int = 62) -> Path:
    """A synthetic store from 2024-06-01T12:00 every 5 min; 70 x 62 px is no multiple of
    the 8-px tile stride of :data:`TINY`."""
    return write_store(synthesize(frames=frames, height=height, width=width, seed=5), path)


def make_checkpoint(path: Path, steps: int = 2) -> Path:
    """A real Lightning checkpoint of the :data:`TINY` MetNet, trained ``steps`` steps on
    noise."""
    torch.manual_seed(0)
    module = NowcastModule(net=MetNet(**TINY), warmup_steps=1)
    g = torch.Generator().manual_seed(0)
    batches = [{"context": torch.rand(2, 3, 2, 32, 32, generator=g),
                "target": 4 * torch.rand(2, 6, 16, 16, generator=g),
                "lead_times": torch.arange(5, 31, 5).expand(2, -1)} for _ in range(steps)]
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`make_store` with its defaults (12 frames of 70 x 62 px)."""
    return make_store(tmp_path_factory.mktemp("tiny_store") / "s.zarr")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`make_checkpoint` of the :data:`TINY` network."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny_ckpt") / "tiny.ckpt")


@pytest.fixture(scope="session")
def tiny_net(tiny_checkpoint: Path) -> MetNet:
    """The network of :func:`tiny_checkpoint`, in eval mode."""
    return Checkpoint.load(tiny_checkpoint).net
