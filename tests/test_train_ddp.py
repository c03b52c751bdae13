"""Distributed training for real: ``cgml train`` with Lightning DDP, 2 CPU processes on gloo, against 1 process.

The two runs see the same windows per optimiser step: 1 process with ``batch_size: 32``, and 2 processes
with ``batch_size: 16`` each on their half of the training windows (Lightning's ``DistributedSampler``).
They cannot agree bit for bit: the two samplers deal the windows in different orders, and each process
draws its own noise (history noise, score sigmas). So the comparison is statistical, on a deterministic
measure: the validation NLL of each run's last checkpoint, every val window, fixed noise seed.

Measured on this 2-core machine (seeds 0, 1, 2; untrained model 2.17): 1 process 0.283, 0.243, 0.199;
2 processes 0.303, 0.257, 0.209, so |2 processes - 1 process| = 0.020, 0.014, 0.010. For scale, the
1-process runs of seeds 0..3 spread over 0.10, and training lowers the NLL by about 1.9. The tolerance,
5 % of the drop training makes (about 0.095), is as wide as that seed-to-seed spread and 5x the
largest difference measured: a DDP run that learned half as fast, or from half of the data with the
other half's gradients lost, or not at all, fails it.

The runs go through ``cgml train`` in a subprocess (``strategy: ddp``), because Lightning's DDP
launcher starts rank 1 by running the same command line again, as it would under SLURM or torchrun;
``ddp_spawn`` would have to pickle the open HDF5 dataset instead.
"""
import os
import subprocess
import sys

import pytest
import torch
import yaml

from openmm_cgml.cli import main
from openmm_cgml.data import CoarseDataset
from openmm_cgml.model_file import load, propagator_from_checkpoint
from openmm_cgml.train import build_propagator, dataset_summary
from openmm_cgml.train_config import TrainConfig

EPOCHS, BATCH = 3, 32        # 148 windows, 1 x 32 or 2 x 16 per step: 5 steps per epoch either way
TOLERANCE = 0.05             # of the NLL drop that training makes (see the module docstring)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, chain_dataset):
    """Four 10-bead polymer trajectories (80 frames) as a k=3 dataset: 148 training and 148 validation windows."""
    return chain_dataset(tmp_path_factory.mktemp("ddp"), 80, 4, (0.5, 0.5, 0.0), 200)


def write_config(folder, dataset, processes: int):
    """A tiny run's YAML: ``processes`` CPU processes, ``BATCH`` windows per optimiser step in all."""
    path = folder / f"train{processes}.yaml"
    path.write_text(yaml.safe_dump({
        "data": str(dataset), "out_dir": f"run{processes}",
        "model": {"embed_hidden": 16, "embed_layers": 2, "hidden": 24, "n_layers": 1, "score_hidden": 16},
        "train": {"batch_size": BATCH // processes, "max_epochs": EPOCHS, "threads": 1, "warmup_steps": 2,
                  "lr": 3e-3, "seed": 0},
        "trainer": {"accelerator": "cpu", "devices": processes, "strategy": "ddp" if processes > 1 else "auto",
                    "enable_progress_bar": False, "log_every_n_steps": 1}}))
    return path


def cgml_train(config) -> str:
    """Run ``cgml train config`` in a fresh process; its stdout and stderr."""
    # a launcher's rank variables (SLURM, torchrun) would make Lightning join that job instead of starting its own
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SLURM_", "PL_")) and key not in {"RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE",
                                                                    "MASTER_ADDR", "MASTER_PORT"}}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run([sys.executable, "-m", "openmm_cgml.cli", "train", str(config)], cwd=config.parent,
                            env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def val_nll(model, dataset) -> float:
    """NLL of the scaled acceleration over all validation windows in one batch, with a fixed noise seed."""
    from torch_geometric.loader import DataLoader

    windows = CoarseDataset(dataset, "val", k=model.k)
    batch = next(iter(DataLoader(windows, batch_size=len(windows))))
    torch.manual_seed(0)
    with torch.no_grad():
        features = model._embed(batch.atom_types, batch.fine_edge_index, batch.bead_of_atom, batch.num_nodes)
        sigma = torch.full((batch.num_nodes, 1), 0.01)
        terms = model.losses(batch.pos_history.transpose(0, 1), batch.pos_target, features,
                             batch.coarse_edge_index, batch.batch, batch.box, sigma, sigma)
    return float(terms["nll"])


def test_two_process_ddp_matches_one_process_and_only_rank_zero_writes(dataset, tmp_path):
    single_log = cgml_train(write_config(tmp_path, dataset, 1))
    ddp_log = cgml_train(write_config(tmp_path, dataset, 2))
    assert "distributed_backend=gloo" in ddp_log and "GLOBAL_RANK: 1, MEMBER: 2/2" in ddp_log, ddp_log[-3000:]
    assert "GLOBAL_RANK" not in single_log

    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    # rank 0 alone wrote: one log version, the two checkpoints and nothing half-written, one row per step
    assert sorted(p.name for p in run2.iterdir()) == ["checkpoints", "config.yaml", "logs", "loss.png"]
    assert sorted(p.name for p in (run2 / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert [p.name for p in (run2 / "logs").iterdir()] == ["version_0"]
    rows = (run2 / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    train_rows = [row.split(",") for row in rows[1:] if row.split(",")[header.index("train_loss")]]
    steps = [int(row[header.index("step")]) for row in train_rows]
    assert steps == sorted(set(steps)) and len(steps) == EPOCHS * 5
    # each process took half of the windows: as many optimiser steps as the 1-process run, not twice as many
    last1, last2 = (torch.load(run / "checkpoints" / "last.ckpt", weights_only=True) for run in (run1, run2))
    assert last1["global_step"] == last2["global_step"] == EPOCHS * 5

    config = TrainConfig.from_yaml(tmp_path / "train1.yaml")
    torch.manual_seed(0)  # the initial model of both runs (seed 0)
    untrained = val_nll(build_propagator(config, dataset_summary(dataset)).eval(), dataset)
    single, ddp = (val_nll(propagator_from_checkpoint(run / "checkpoints" / "last.ckpt")[0].eval(), dataset)
                   for run in (run1, run2))
    drop = untrained - single
    assert drop > 1.0, (untrained, single)  # training worked, so the comparison means something
    assert abs(ddp - single) < TOLERANCE * drop, (untrained, single, ddp)

    # the DDP run's output exports and loads like any other
    out = tmp_path / "model.safetensors"
    assert main(["export", str(run2), "--out", str(out)]) == 0
    model = load(out)
    assert model.k == 3 and model.n_beads == 10 and model.md_steps_per_model_step == 100
