#!/bin/bash
# metnet fit on a SLURM cluster: --nodes machines x --ntasks-per-node GPUs, one process
# (rank) per GPU, training samples streamed from a remote zarr store through a node-local
# cache. A job that reaches its time limit or is preempted is requeued; any job that stops
# (a node or a rank lost) continues from the run's last.ckpt when it starts again (requeued
# or submitted anew), with nothing lost.
#
# Submit from the repository's folder (configurations and .venv are found from there):
#   sbatch pipelines/slurm_fit.sh                       # the defaults below
#   sbatch --nodes 4 pipelines/slurm_fit.sh --trainer.max_epochs 50 \
#     --data.splits '{train: [[2001-01-01, 2019-01-01]], val: [[2019-01-01, 2020-01-01]],
#                     test: [[2020-01-01, 2021-01-01]]}'
#   STORE=https://host/radar.zarr STORAGE_OPTIONS='{}' sbatch pipelines/slurm_fit.sh
#
# Arguments go to `metnet fit` as they are (after the script's own, so they override them).
# The environment variables below (sbatch passes yours on) choose the store and folders:
#   STORE            the store's URL (s3://, gs://, https://) or a path every node sees
#   STORAGE_OPTIONS  fsspec options of the store (--data.storage_options)
#   CONFIG           the training configuration (--config)
#   OUTPUTS          logs and checkpoints (--trainer.default_root_dir): on a file system
#                    that every node sees, since every rank reads last.ckpt when resuming
#   CACHE            what metnet derives from the store (sample index, motion caches,
#                    --data.cache_dir): on each node's local disk, built by the first job
#                    on the node (reading every frame of the store once) and kept for the
#                    next; a per-job folder ($TMPDIR on some clusters) would be built anew
#                    at every requeue
#   WORKERS          DataLoader worker processes per rank (--data.num_workers)
#   METNET           the metnet command (default: the repository's .venv)
#
# Lightning does the cluster's work, this script only starts it (see Lightning's pages on
# SLURM clusters and SLURMEnvironment). Under srun, each process takes its rank,
# the world size and the rendezvous (the job's first node) from SLURM (SLURMEnvironment:
# SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURM_NODELIST, SLURM_JOB_ID), and checks that
# --trainer.devices is --ntasks-per-node. With --signal below, SLURM warns the job 120 s
# before its time limit and Lightning's auto-requeue has it requeued (`scontrol requeue`):
# the same job, same job ID, starts again when it gets its nodes. With --requeue, SLURM
# itself requeues the job when a node fails, and when it is preempted on a cluster whose
# preemption requeues.
#
# Resuming: metnet keeps the run's last.ckpt current every --checkpoint_every_n_steps
# (and at every epoch's end), with the position in the epoch of every rank's share of the
# samples. Whenever $OUTPUTS/checkpoints/last.ckpt exists, this script adds
# `--ckpt_path last`, so a requeued job, or the same script submitted again after a rank
# died (the job then fails: srun --kill-on-bad-exit ends the other ranks at once), continues
# that run with the same step, optimiser and scheduler state and the samples each rank
# would have had; only the steps since the last save are trained again. To start a new run,
# give another OUTPUTS. The checkpoint Lightning writes at the requeue signal
# ($OUTPUTS/hpc_ckpt_N.ckpt) is removed, not resumed from: it is taken wherever in a step
# the signal lands, when the loader's position can be a batch ahead of the weights.
#
# Tested on two local CPU processes (tests/test_distributed.py): each rank's disjoint share
# of every epoch from a store served over HTTP with a local cache folder, a rank that dies,
# and this script under a stand-in for srun that starts the tasks on one machine with
# SLURM's variables, resuming with `--ckpt_path last`. Not tested here (no cluster): sbatch,
# several nodes, GPUs and NCCL, the requeue signal.
#
#SBATCH --job-name=metnet-fit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4        # one task (rank) per GPU: the same number as --gpus-per-node
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=9          # the rank's process and its DataLoader workers
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@120       # Lightning's requeue signal, 120 s before the time limit
#SBATCH --requeue                  # may be requeued: by Lightning, on preemption, on node failure
#SBATCH --open-mode=append         # a requeued job appends to its log
#SBATCH --output=metnet-fit-%j.log

set -euo pipefail

STORE=${STORE:-s3://mlcast-source-datasets/radklim/v0.1.1/5_minutes.zarr}
STORAGE_OPTIONS=${STORAGE_OPTIONS:-'{anon: true, endpoint_url: "https://object-store.os-api.cci2.ecmwf.int"}'}
CONFIG=${CONFIG:-configs/radar.yaml}
OUTPUTS=${OUTPUTS:-outputs/slurm}
CACHE=${CACHE:-/tmp/metnet-cache}
WORKERS=${WORKERS:-$((${SLURM_CPUS_PER_TASK:-9} - 1))}
METNET=${METNET:-.venv/bin/metnet}

resume=()
if [[ -f "$OUTPUTS/checkpoints/last.ckpt" ]]; then
    resume=(--ckpt_path last)
    echo "resuming the run of $(readlink -f "$OUTPUTS/checkpoints") from its last.ckpt" \
         "(restart ${SLURM_RESTART_COUNT:-0} of job ${SLURM_JOB_ID})"
fi
rm -f "$OUTPUTS"/hpc_ckpt_*.ckpt

srun --kill-on-bad-exit=1 "$METNET" fit --config "$CONFIG" \
    --trainer configs/trainer/ddp.yaml \
    --trainer.num_nodes "$SLURM_NNODES" --trainer.devices "$SLURM_NTASKS_PER_NODE" \
    --trainer.default_root_dir "$OUTPUTS" \
    --data.stores "[$STORE]" --data.storage_options "$STORAGE_OPTIONS" \
    --data.cache lazy --data.cache_dir "$CACHE" --data.num_workers "$WORKERS" \
    ${resume[@]+"${resume[@]}"} "$@"
