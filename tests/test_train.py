"""Training end to end on a tiny real dataset: OpenMM polymer MD -> coarse dataset -> Lightning."""
import csv
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from openmm_cgml.cli import main
from openmm_cgml.data import CoarseDataset, coarse_grain
from openmm_cgml.generate import generate
from openmm_cgml.model.propagator import CGPropagator, PropagatorConfig
from openmm_cgml.model_file import load, propagator_from_checkpoint
from openmm_cgml.train import build_propagator, dataset_summary, hard_core_distance, train
from openmm_cgml.train_config import DEFAULT_CONFIG, TrainConfig


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, chain_dataset):
    """Three 10-bead polymer trajectories (150 frames, 0.5 ps apart) as a k=3 dataset, model step 1 ps."""
    return chain_dataset(tmp_path_factory.mktemp("polymer"), 150, 3, (0.67, 0.33, 0.0), 500)


def tiny_config(dataset, out_dir, **train):
    config = TrainConfig.from_yaml(DEFAULT_CONFIG)
    config.data, config.out_dir = str(dataset), str(out_dir)
    config.model.update(hidden=24, score_hidden=16, embed_hidden=16, embed_layers=2)
    options = dict(max_epochs=4, batch_size=16, limit_train_batches=12, threads=1, warmup_steps=5, lr=3e-3)
    options.update(train)
    for key, value in options.items():
        setattr(config.train, key, value)
    config.trainer.enable_progress_bar = False
    return config


def mean_nll(model, dataset, seed=0):
    """Validation NLL of the scaled acceleration (fixed noise seed), averaged over all val windows."""
    from torch_geometric.loader import DataLoader

    torch.manual_seed(seed)
    loader = DataLoader(CoarseDataset(dataset, "val", k=model.k), batch_size=64)
    values = []
    with torch.no_grad():
        for batch in loader:
            features = model._embed(batch.atom_types, batch.fine_edge_index, batch.bead_of_atom, batch.num_nodes)
            sigma = torch.full((batch.num_nodes, 1), 0.01)
            terms = model.losses(batch.pos_history.transpose(0, 1), batch.pos_target, features,
                                 batch.coarse_edge_index, batch.batch, batch.box, sigma, sigma)
            values.append(float(terms["nll"]))
    return float(np.mean(values))


def test_default_config_is_documented_and_valid():
    config = TrainConfig.from_yaml(DEFAULT_CONFIG)
    assert config.resume == "auto" and config.trainer.devices == 1 and config.train.lr_schedule == "cosine"
    with pytest.raises(ValueError, match="unknown option.*'lrr'"):
        TrainConfig.from_dict({"data": "x.h5", "train": {"lrr": 1}})
    with pytest.raises(ValueError, match="needs 'data'"):
        TrainConfig.from_dict({})
    with pytest.raises(ValueError, match="unknown model option"):
        TrainConfig.from_dict({"data": "x.h5", "model": {"hiddden": 3}})


def test_dataset_summary_reads_scales_and_mapping(dataset):
    summary = dataset_summary(dataset)
    assert summary["attrs"]["k"] == 3 and summary["attrs"]["md_steps_per_model_step"] == 100
    assert summary["single_mapping"].n_beads == 10
    assert summary["type_masses"][0] == pytest.approx(72.0)


def test_chirality_auto_follows_the_molecules_stereocentres(dataset, tmp_path):
    """Training's default chirality 'auto': off for a polymer chain (no stereocentre), on for a chiral one."""
    config = tiny_config(dataset, tmp_path / "run")
    summary = dataset_summary(dataset)
    assert summary["stereocentres"] == 0 and "chirality" not in config.model
    assert build_propagator(config, summary).chirality is False
    assert build_propagator(config, dict(summary, stereocentres=1)).chirality is True
    config.model["chirality"] = False
    assert build_propagator(config, dict(summary, stereocentres=1)).chirality is False
    with pytest.raises(ValueError, match="resolved"):
        CGPropagator(PropagatorConfig(chirality="auto"), torch.ones(3))


def test_training_lowers_nll_resumes_and_exports(dataset, tmp_path):
    config = tiny_config(dataset, tmp_path / "run")
    torch.manual_seed(0)
    initial = build_propagator(config, dataset_summary(dataset))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        best = train(config)  # with threads: 1
        assert torch.get_num_threads() == 2  # restored: later rollouts in this process keep their threads
    finally:
        torch.set_num_threads(previous_threads)
    assert best.name == "best.ckpt"
    trained, hparams, _ = propagator_from_checkpoint(best)
    before, after = mean_nll(initial, dataset), mean_nll(trained.eval(), dataset)
    assert after < before - 0.5, (before, after)

    run = tmp_path / "run"
    assert (run / "loss.png").stat().st_size > 1000
    with open(run / "logs" / "version_0" / "metrics.csv") as handle:
        first_log = handle.read()
    assert "train_nll" in first_log and "val_nll" in first_log
    steps_before = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]

    # `cgml train` resumes automatically with one more epoch: earlier logs kept, a new log version written
    yaml_path = tmp_path / "config.yaml"
    yaml_path.write_text(yaml.safe_dump(config.to_dict()))
    assert main(["train", str(yaml_path), "--max-epochs", "5"]) == 0
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] > steps_before and last["epoch"] == 4
    assert (run / "logs" / "version_0" / "metrics.csv").read_text() == first_log
    assert list(csv.DictReader(open(run / "logs" / "version_1" / "metrics.csv")))

    # export through the CLI, then the exported file reproduces the checkpoint's predictions
    out = tmp_path / "model.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert main(["export", str(run), "--out", str(out)]) == 2  # refuses to overwrite
    model = load(out)
    assert model.k == 3 and model.n_beads == 10 and model.md_steps_per_model_step == 100
    minima = CoarseDataset(dataset, "train").min_distances()
    assert model.hard_core and model.metadata["hard_core"]["enabled"]
    assert model.min_distances["bonded"] == pytest.approx(hard_core_distance(minima["bonded_nm"]), rel=1e-6)
    assert model.min_distances["nonbonded"] == pytest.approx(hard_core_distance(minima["nonbonded_nm"]), rel=1e-6)
    assert model.metadata["training"]["epochs"] >= 1
    window = CoarseDataset(dataset, "val", k=3)[0]
    features = model.embed(window.atom_types, window.fine_edge_index, window.bead_of_atom, 10)
    history = window.pos_history.transpose(0, 1).contiguous()
    args = (history, features, window.coarse_edge_index, torch.zeros(10, dtype=torch.long), torch.zeros(3, 3))
    eager, _, _ = propagator_from_checkpoint(run)
    with torch.no_grad():
        torch.testing.assert_close(model.predict(*args)[0], eager.eval().predict(*args)[0], atol=1e-6, rtol=1e-5)


def test_reference_min_distances_match_brute_force(dataset):
    import h5py

    bonded, other = np.inf, np.inf
    with h5py.File(dataset) as handle:
        for group in handle["traj"].values():
            if group.attrs["split"] != "train":
                continue
            x = group["positions"][:].astype(np.float64)
            d = np.linalg.norm(x[:, :, None] - x[:, None], axis=-1)
            is_bond = np.zeros(d.shape[1:], bool)
            for a, b in group["coarse_bonds"][:]:
                is_bond[a, b] = is_bond[b, a] = True
            bonded = min(bonded, d[:, is_bond].min())
            other = min(other, d[:, ~is_bond & ~np.eye(len(is_bond), dtype=bool)].min())
    minima = CoarseDataset(dataset, "train").min_distances()
    assert minima["bonded_nm"] == pytest.approx(bonded) and minima["nonbonded_nm"] == pytest.approx(other)
    assert 0.1 < minima["bonded_nm"] < minima["nonbonded_nm"] + 0.2 and minima["frames"] > 0
    # 5 % below the data, never below the 0.1 nm collision threshold unless the data is
    assert hard_core_distance(0.4) == pytest.approx(0.38)
    assert hard_core_distance(0.102) == pytest.approx(0.1) and hard_core_distance(0.08) == pytest.approx(0.076)
    assert hard_core_distance(0.0) == 0.0
    with pytest.raises(ValueError, match="no 'test' frames"):
        CoarseDataset(dataset, "test").min_distances()


def test_fresh_run_refuses_existing_checkpoints(dataset, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "best.ckpt").write_bytes(b"precious")
    config = tiny_config(dataset, tmp_path / "run")
    config.resume = "never"
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        train(config)
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").read_bytes() == b"precious"


def test_cli_errors_are_one_line(tmp_path, capsys, dataset):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: nothing.h5\ntrain: {batch_size: 0}\n")
    assert main(["train", str(bad)]) == 2
    assert "batch_size" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x80\x04garbage")
    assert main(["export", str(corrupt), "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "corrupt.ckpt" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


# ---------------------------------------------------------------------------------------- slow
ROLLOUT_CASES = {
    # system, generate() options, mapping resolution, MD steps per model step
    "polymer-chain": dict(params={"length": 10}, frames=2000, stride=100, atoms_per_bead=1, model_steps=500),
    "alanine-dipeptide": dict(params={}, frames=2500, stride=50, atoms_per_bead=4, model_steps=1000),
}


@pytest.mark.slow
@pytest.mark.parametrize("system", sorted(ROLLOUT_CASES))
def test_trained_rollout_is_stable_for_10000_steps(system, tmp_path):
    """Generate, coarse-grain, train a small model in minutes, export; 10,000 model steps stay finite and,
    with the hard core learned from the data, never bring two beads closer than 0.1 nm (with or without
    the Score refinement); the refined rollout keeps the reference bond lengths and size."""
    from openmm_cgml.geometry import count_collisions

    case = ROLLOUT_CASES[system]
    fine = generate(system, tmp_path / "fine", frames=case["frames"], stride=case["stride"], replicas=4,
                    params=case["params"], progress=False, seed=1)
    coarse = coarse_grain(fine, tmp_path / "coarse.h5", mapping="metis", atoms_per_bead=case["atoms_per_bead"],
                          k=4, model_steps=case["model_steps"], split=(0.75, 0.25, 0.0))
    config = TrainConfig.from_dict({
        "data": str(coarse), "out_dir": str(tmp_path / "run"),
        "train": {"max_epochs": 10, "threads": 1, "batch_size": 32, "limit_train_batches": 150,
                  "limit_val_batches": 10, "warmup_steps": 50},
        "trainer": {"enable_progress_bar": False}})
    assert main(["export", str(train(config)), "--out", str(tmp_path / "model.safetensors")]) == 0
    model = load(tmp_path / "model.safetensors")
    assert model.hard_core

    data = CoarseDataset(coarse, "val", k=4)
    window = data[0]
    features = model.embed(window.atom_types, window.fine_edge_index, window.bead_of_atom, window.num_nodes)
    n = window.num_nodes
    batch, box = torch.zeros(n, dtype=torch.long), torch.zeros(3, 3)
    bonds = torch.as_tensor(model.mapping.coarse_bonds)
    reference = torch.stack([data[i].pos_target for i in range(0, len(data), 10)])

    def bond_length(x):
        return float((x[..., bonds[:, 0], :] - x[..., bonds[:, 1], :]).norm(dim=-1).mean())

    def gyration_radius(x):
        return float((x - x.mean(-2, keepdim=True)).pow(2).sum(-1).mean(-1).sqrt().mean())

    results = {}
    for refine, hard_core in ((True, True), (False, True), (True, False)):
        model.hard_core = hard_core
        history = window.pos_history.transpose(0, 1).contiguous()
        generator = torch.Generator().manual_seed(0)
        steps_with_collision, frames = 0, []
        with torch.no_grad():
            for step in range(10_000):
                noise = torch.randn(model.noise_draws(refine), n, 3, generator=generator)
                x = model.module.step(history, features, window.coarse_edge_index, batch, box, noise, refine)
                assert bool(torch.isfinite(x).all()), f"NaN at model step {step} (refine={refine})"
                history = torch.cat([history[1:], x[None]])
                steps_with_collision += int(count_collisions(x, 0.1) > 0)
                if step % 10 == 0:
                    frames.append(x)
        frames = torch.stack(frames)
        results[refine, hard_core] = (steps_with_collision, bond_length(frames),
                                      gyration_radius(frames) / gyration_radius(reference))
    print(f"{system}: (refine, hard_core): (steps with a collision, bond nm, Rg / reference Rg) {results}; "
          f"reference bond {bond_length(reference):.4f} nm")
    assert results[True, True][0] == 0 and results[False, True][0] == 0
    assert results[True, True][1] == pytest.approx(bond_length(reference), rel=0.2)
    assert results[True, True][2] == pytest.approx(1.0, abs=0.2)


def test_sigkill_during_training_then_resume_completes(dataset, tmp_path, kill_after):
    """Killed at seeded moments (SIGKILL, also mid-checkpoint), `cgml train` resumes to the end: every
    checkpoint loads, the merged log has each step once, and the result exports."""
    from openmm_cgml.train import _read_metrics

    config = tiny_config(dataset, tmp_path / "run", max_epochs=12, limit_train_batches=6)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    argv = [sys.executable, "-m", "openmm_cgml.cli", "train", str(path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    rng = random.Random(3)
    # each SIGKILL comes a moment after ``last`` is (re)written
    codes = [kill_after(argv, last, rng.uniform(0.0, 1.5), env, until="rewritten", deadline=120) for _ in range(3)]
    assert any(code != 0 for code in codes), "no run was killed"
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert torch.load(last, weights_only=True)["epoch"] == 11
    assert not list(last.parent.glob(".*"))                   # no half-written temporaries left
    rows = [row for row in _read_metrics(tmp_path / "run") if row.get("train_loss")]
    steps = [int(row["step"]) for row in rows]
    assert steps == sorted(set(steps)) and steps[-1] >= 12 * 6 - 10   # each logged step once, up to the end
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model.safetensors")]) == 0
    assert load(tmp_path / "model.safetensors").metadata["training"]["epochs"] >= 1


def test_internal_noise_refuses_a_molecule_without_three_beads_in_a_row(dataset, tmp_path):
    """A star of four beads (one centre, three leaves) has no bond angle chain to anchor the internal coordinates."""
    from openmm_cgml.mapping import Mapping

    config = tiny_config(dataset, tmp_path / "run")
    config.model["noise"] = "internal"
    summary = dataset_summary(dataset)
    assert build_propagator(config, summary).dynamics_draws == 3     # the polymer chains are fine
    star = Mapping(np.arange(4), np.full(4, 12.0), np.full(4, 6), np.array([[0, 1], [0, 2], [0, 3]]))
    with pytest.raises(ValueError, match="three bonded beads in a row"):
        build_propagator(config, dict(summary, mappings=[star]))
