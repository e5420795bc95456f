"""Fixtures shared by the test modules: synthetic stores, the real-data folder, ingested stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from metnet.io.store import write_store
from metnet.io.synthetic import synthesize

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
