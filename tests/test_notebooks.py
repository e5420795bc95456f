"""The exploratory notebooks: committed without outputs, and each runs top to bottom.

Execution works on in-memory copies: nothing is written back to ``notebooks/``. The kernel
is this interpreter (``sys.executable -m ipykernel_launcher``, from a kernel spec written
to a temporary folder), so it sees the same environment as the tests whatever kernels are
installed elsewhere on the machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
KERNEL = "metnet-test"
CELL_TIMEOUT_S = 300


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: outputs or execution counts in cells {dirty}; clear them"


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """A kernel spec running this interpreter, in a folder of its own."""
    folder = tmp_path_factory.mktemp("kernels")
    (folder / KERNEL).mkdir()
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "metnet tests", "language": "python"}
    (folder / KERNEL / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(folder)])


def execute(path: Path, specs: KernelSpecManager) -> None:
    """Run every cell of an in-memory copy of ``path`` from ``notebooks/``, as Jupyter would;
    the notebooks write only to temporary folders, so that folder must stay unchanged."""
    nb = nbformat.read(path, as_version=4)
    before = sorted(path.parent.iterdir())
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    assert sorted(path.parent.iterdir()) == before, f"{path.name} wrote into notebooks/"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, kernel_specs: KernelSpecManager, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("METNET_NOTEBOOK_OUT", str(tmp_path))  # the kernel inherits it
    monkeypatch.delenv("METNET_CHECKPOINT", raising=False)
    execute(path, kernel_specs)


@pytest.mark.slow
def test_radar_notebook_runs_without_the_real_samples(kernel_specs: KernelSpecManager,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("METNET_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("METNET_SHARED_DATA", str(tmp_path / "absent"))
    path = next(p for p in NOTEBOOKS if p.name.startswith("01_"))
    execute(path, kernel_specs)
    assert not (tmp_path / "absent").exists()
    store = next(tmp_path.glob("metnet-01-*/radar.zarr"))
    assert json.loads((store / "zarr.json").read_text())["attributes"]["source"] == "synthetic"
