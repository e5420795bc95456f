"""Training across machines, tested as across processes: two CPU ranks (DDP over gloo) train
from a store served over HTTP with a local cache folder, as the ranks of a cluster job
read a remote store to node-local disk. Each rank reads its own share of every epoch, and
a rank that dies leaves a job that resumes from ``last.ckpt`` with nothing lost, whether
Lightning started the ranks or ``pipelines/slurm_fit.sh`` did, under a stand-in for srun.

The ranks are given the callbacks of ``tests/rank_probe.py`` on the command line, as a
user gives any callback: one logs what each rank trains on, one ends a rank's process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import metnet_process, serve_folder

from metnet.data.datamodule import NowcastDataModule
from metnet.io.store import write_store
from metnet.io.synthetic import synthesize

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
RANKS = 2
BATCH = 4
EPOCHS = 2
#: Steps in an epoch: 34 training samples, 17 per rank, in batches of 4.
STEPS_PER_EPOCH = 5
#: last.ckpt every 3 steps: mid-epoch.
EVERY = 3
#: The settings of the data (configs/data/synthetic.yaml) that differ for these tests.
DATA = dict(context_size=48, target_size=16, context_frames=3, lead_times=[5, 15, 30],
            batch_size=BATCH, patches_per_window=1, cache="lazy")

Log = dict[int, list[dict]]


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a synthetic store (60 frames of 96 x 96 px) on a server on 127.0.0.1."""
    root = tmp_path_factory.mktemp("served")
    write_store(synthesize(frames=60, height=96, width=96, seed=2), root / "radar.zarr")
    with serve_folder(root) as base:
        yield f"{base}/radar.zarr"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runs' cache folder (``--data.cache_dir``), as a node's local disk would be."""
    return tmp_path_factory.mktemp("node_local_cache")


def fit_options(cwd: Path, callbacks: tuple[dict, ...] = ()) -> list[str]:
    """Options of a tiny ``metnet fit`` of :data:`EPOCHS` epochs on CPU, lazily reading, with
    every batch of each rank logged in ``cwd/samples/rank<R>.jsonl``."""
    log = {"class_path": "rank_probe.SampleLog", "init_args": {"folder": str(cwd / "samples")}}
    data = [item for key, value in DATA.items() for item in (f"--data.{key}", str(value))]
    return [
        *data, "--model.net", str(REPO / "configs/model/tiny.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
        "--trainer.max_epochs", str(EPOCHS), "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--checkpoint_every_n_steps", str(EVERY),
        "--trainer.callbacks", json.dumps([*callbacks, log]),
    ]


def probe_path() -> str:
    """``PYTHONPATH`` with this folder first, so that every rank imports ``rank_probe``."""
    return os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))


def ddp_fit(url: str, cache: Path, cwd: Path, *options: str,
            callbacks: tuple[dict, ...] = ()) -> subprocess.CompletedProcess:
    """``metnet fit`` on 2 CPU processes that Lightning starts (DDP) from the store at
    ``url``; see :func:`fit_options`."""
    args = ["fit", "--config", REPO / "configs/synthetic.yaml", "--data.stores", f"[{url}]",
            "--data.cache_dir", cache, "--trainer.devices", RANKS, "--trainer.strategy", "ddp",
            *fit_options(cwd, callbacks), *options]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", probe_path())
        return metnet_process(*args, cwd=cwd)


def read_log(cwd: Path) -> Log:
    """Each rank's batches, in order, as :class:`rank_probe.SampleLog` wrote them."""
    return {rank: [json.loads(line) for line in
                   (cwd / "samples" / f"rank{rank}.jsonl").read_text().splitlines()]
            for rank in range(RANKS)}


def last_checkpoint(cwd: Path) -> dict:
    """The contents of the ``last.ckpt`` of the latest fit in ``cwd``."""
    return torch.load(cwd / "outputs/checkpoints/last.ckpt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(store_url: str, cache_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a 2-rank fit that nothing interrupted."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    result = ddp_fit(store_url, cache_dir, cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd


@pytest.mark.slow
def test_each_rank_reads_its_own_share_of_every_epoch_from_a_url(store_url, cache_dir,
                                                                 uninterrupted):
    settings = yaml.safe_load((REPO / "configs/data/synthetic.yaml").read_text())
    data = NowcastDataModule(**{**settings, **DATA, "stores": [store_url],
                                "cache_dir": str(cache_dir)})
    data.setup("fit")
    train = data.datasets["train"]
    log = read_log(uninterrupted)
    shares_of_epochs = []
    for epoch in range(EPOCHS):
        samples = {(s["store"], s["init_time"], s["row"], s["col"])
                   for s in (train[(epoch, index)] for index in range(len(train)))}
        shares = [[tuple(sample) for line in log[rank] if line["epoch"] == epoch
                   for sample in line["samples"]] for rank in range(RANKS)]
        assert [len(share) for share in shares] == [len(train) // RANKS] * RANKS
        assert all(len(set(share)) == len(share) for share in shares)  # no sample twice
        assert not set(shares[0]) & set(shares[1])  # disjoint
        # together, the epoch's samples, less the len % RANKS that no rank gets
        assert set(shares[0]) | set(shares[1]) <= samples
        assert len(set(shares[0]) | set(shares[1])) == len(train) - len(train) % RANKS
        shares_of_epochs.append(shares)
    assert shares_of_epochs[0] != shares_of_epochs[1]  # each epoch shuffled anew


@pytest.mark.slow
def test_a_rank_that_dies_leaves_a_job_that_resumes_with_nothing_lost(store_url, cache_dir,
                                                                     uninterrupted, tmp_path):
    die = {"class_path": "rank_probe.DieAtStep", "init_args": {"step": EVERY + 1, "rank": 1}}
    killed = ddp_fit(store_url, cache_dir, tmp_path, callbacks=(die,))
    # rank 0 loses its peer in a collective and fails: the job ends, as a scheduler sees it
    assert killed.returncode != 0
    checkpoint = last_checkpoint(tmp_path)
    assert checkpoint["global_step"] == EVERY  # saved mid-epoch 0, before rank 1 died
    before = read_log(tmp_path)
    (tmp_path / "samples").rename(tmp_path / "samples_before")

    resumed = ddp_fit(store_url, cache_dir, tmp_path, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference, after = read_log(uninterrupted), read_log(tmp_path)
    for rank in range(RANKS):
        assert before[rank][:EVERY + 1] == reference[rank][:EVERY + 1]
        # from the checkpoint on, each rank trains on what it would have had
        assert after[rank] == [line for line in reference[rank] if line["step"] >= EVERY]
    expected, got = last_checkpoint(uninterrupted), last_checkpoint(tmp_path)
    assert got["global_step"] == expected["global_step"] == EPOCHS * STEPS_PER_EPOCH
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, msg=key)


#: srun as the tests stand it in: the job step's tasks on this machine, each with the
#: variables srun gives it; srun's own options are ignored; the first failure is the status.
FAKE_SRUN = """#!/bin/bash
while [[ $1 == -* ]]; do shift; done
pids=()
for ((task = 0; task < SLURM_NTASKS; task++)); do
    SLURM_PROCID=$task SLURM_LOCALID=$task SLURM_NODEID=0 "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid"
    code=$?
    if [[ $status == 0 ]]; then status=$code; fi
done
exit $status
"""


def slurm_fit(url: str, cache: Path, cwd: Path,
              callbacks: tuple[dict, ...] = ()) -> subprocess.CompletedProcess:
    """``pipelines/slurm_fit.sh`` run as a one-node job of :data:`RANKS` tasks would run it,
    with srun standing in (:data:`FAKE_SRUN`); see :func:`fit_options`."""
    srun = cwd / "bin" / "srun"
    srun.parent.mkdir(exist_ok=True)
    srun.write_text(FAKE_SRUN)
    srun.chmod(0o755)
    with socket.socket() as free:  # a free port for the ranks' rendezvous
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    outside = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env = {**outside, "PATH": f"{srun.parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": probe_path(), "MASTER_PORT": str(port),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "metnet-fit", "SLURM_NNODES": "1",
           "SLURM_NTASKS": str(RANKS), "SLURM_NTASKS_PER_NODE": str(RANKS),
           "SLURM_NODELIST": "127.0.0.1", "SLURM_CPUS_PER_TASK": "1",
           "STORE": url, "STORAGE_OPTIONS": "{}", "CONFIG": str(REPO / "configs/synthetic.yaml"),
           "OUTPUTS": str(cwd / "outputs"), "CACHE": str(cache),
           "METNET": str(Path(sys.executable).with_name("metnet"))}
    return subprocess.run(["bash", REPO / "pipelines/slurm_fit.sh", *fit_options(cwd, callbacks)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_slurm_script_trains_and_resumes_a_job_whose_rank_died(store_url, cache_dir,
                                                                   uninterrupted, tmp_path):
    """Everything of pipelines/slurm_fit.sh but sbatch: Lightning takes the ranks from
    SLURM's variables, and the script submitted again resumes from last.ckpt."""
    die = {"class_path": "rank_probe.DieAtStep", "init_args": {"step": EVERY + 1, "rank": 1}}
    failed = slurm_fit(store_url, cache_dir, tmp_path, callbacks=(die,))
    assert failed.returncode != 0
    assert "resuming" not in failed.stdout
    assert last_checkpoint(tmp_path)["global_step"] == EVERY
    run = (tmp_path / "outputs/checkpoints").resolve()
    assert run.name == "slurm_4242"  # the job's run folder
    (tmp_path / "samples").rename(tmp_path / "samples_before")  # the new job's log apart

    again = slurm_fit(store_url, cache_dir, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming the run of {run} from its last.ckpt" in again.stdout
    reference, after = read_log(uninterrupted), read_log(tmp_path)
    for rank in range(RANKS):
        assert after[rank] == [line for line in reference[rank] if line["step"] >= EVERY]
    expected, got = last_checkpoint(uninterrupted), last_checkpoint(tmp_path)
    assert got["global_step"] == expected["global_step"]
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, msg=key)
