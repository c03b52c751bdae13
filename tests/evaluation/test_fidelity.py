"""Fidelity metrics on synthetic chains, and the benchmark end to end on a tiny definition."""
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from openmm_cgml.evaluation import fidelity
from openmm_cgml.evaluation.benchmark import BENCHMARKS_DIR, run_benchmark


def chain(rng, n_frames=3000, n_beads=6, scale=1.0, name="c"):
    """A wobbly straight chain: beads 0.47 nm apart along x, Gaussian jitter, slow breathing."""
    base = np.zeros((n_beads, 3))
    base[:, 0] = 0.47 * np.arange(n_beads)
    breathing = 1.0 + 0.05 * np.sin(np.arange(n_frames) / 30.0)[:, None, None]
    positions = scale * base[None] * breathing + rng.normal(0, 0.03, size=(n_frames, n_beads, 3))
    bonds = np.stack([np.arange(n_beads - 1), np.arange(1, n_beads)], axis=1)
    return fidelity.Chain(name, positions, 1.0, np.full(n_beads, 72.0), bonds, np.zeros(n_beads, dtype=int),
                          np.array([0.5, 0.5, np.log(n_beads)]))


def test_a_perfect_rollout_scores_like_the_reference_and_a_wrong_one_does_not():
    rng = np.random.default_rng(0)
    sizes = np.linspace(0.8, 1.3, 6)
    reference = [fidelity.observe(chain(rng, scale=s), n_boot=50) for s in sizes]
    replica = [fidelity.observe(chain(rng, scale=s), n_boot=50) for s in sizes]
    wrong = [fidelity.observe(chain(rng, scale=1.05), n_boot=50) for _ in sizes]  # one size for all
    perfect = fidelity.across_chains(reference, replica, reference, None, n_boot=100)
    assert perfect["rg_R2"]["model"] == pytest.approx(1.0)
    assert perfect["rg_R2"]["ceiling"] > 0.95
    # The CI resamples the reference's own noise too, so even a perfect copy's interval ends just short of 1.
    assert 0.9 < perfect["rg_R2"]["ci95"][0] <= perfect["rg_R2"]["ci95"][1] <= 1.0
    assert perfect["rg_R2"]["ci95"][1] > 0.99
    bad = fidelity.across_chains(reference, replica, wrong, None, n_boot=100)
    assert bad["rg_R2"]["model"] < 0.5 < bad["rg_R2"]["ceiling"]
    distributions, rows = fidelity.distribution_metrics(reference, replica, wrong, n_boot=100)
    assert distributions["bond_js"]["model"] > 5 * distributions["bond_js"]["ceiling"]
    assert len(rows) == len(sizes)
    same, _ = fidelity.distribution_metrics(reference, replica, reference, n_boot=100)
    assert same["rg_js"]["model"] == 0.0 and same["bond_over_max_fraction"]["model"] == 0.0


def test_collisions_and_at_limit_counts():
    rng = np.random.default_rng(1)
    c = chain(rng, n_frames=10)
    c.positions[3, 2] = c.positions[3, 4] + 0.05  # one pair under 1 A in one frame
    counts = fidelity.collision_metrics([c], fidelity.type_pair_minima([chain(rng, n_frames=100)]))
    assert counts["under_1_angstrom"] == 1
    assert counts["under_reference_minimum"] >= 1
    pinned = chain(rng, n_frames=10)
    pinned.positions[:, 1] = pinned.positions[:, 0] + [0.3, 0.0, 0.0]  # a bonded pair held at 0.3 nm
    assert fidelity.at_limit_fraction([pinned], 0.3, 0.0) == pytest.approx(1 / 5)


def test_cli_names_an_unknown_benchmark_in_one_line():
    result = subprocess.run([sys.executable, "-m", "openmm_cgml.cli", "benchmark", "nonesuch", "--out", "x"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("cgml benchmark: error: unknown benchmark 'nonesuch'")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path):
    definition = yaml.safe_load((BENCHMARKS_DIR / "polymer.yaml").read_text())
    definition["chains_per_context"] = 4
    definition["refine_candidates"] = [[], [0.15]]
    definition["scales"] = {"tiny": dict(
        model_step_md_steps=1000, frame_stride=500, equilibration_steps=2000,
        train=dict(seed=1, n=6, lengths=[6, 8], reference_ns=0.5),
        validation=dict(seed=2, n=2, length=8, reference_ns=0.5),
        test=dict(seed=3, n=4, length=8, reference_ns=2.0), test_long=dict(seed=4, n=2, length=12, reference_ns=1.0),
        rollout_min_model_steps=200, tune_model_steps=50, timing=dict(rounds=3, md_steps=2000, model_steps=100),
        bootstrap=100)}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(definition))
    document = run_benchmark(path, "tiny", tmp_path / "out", model="polymer-chain", log=lambda *_: None)
    written = json.loads((tmp_path / "out" / "fidelity.json").read_text())
    assert written["splits_disjoint"] is True and written["tuned_on"] == "validation"
    assert (written["n_train"], written["n_val"], written["n_test"], written["n_test_long"]) == (6, 2, 4, 2)
    for name in ("rg_R2", "rg_r2", "logtau_r2", "logtau_R2", "rouse1_ratio", "com_diffusion_ratio", "bond_js",
                 "angle_js", "rg_js", "end_to_end_js", "pair_js", "bond_over_max_fraction",
                 "length_transfer_rg_R2"):
        metric = written["metrics"][name]
        assert {"model", "ceiling", "ci95"} <= set(metric), name
    assert "baseline" in written["metrics"]["rg_R2"]
    assert written["speedup"]["interleaved"] is True and len(written["speedup"]["rounds"]) == 3
    assert written["choices"]["refine_sigmas"]["split"] == "validation"
    for key in ("collisions_raw", "hard_core_rate", "at_limit_fraction", "nan_rollouts"):
        assert key in written
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Fidelity benchmark")
    assert document["metrics"]["bond_js"]["model"] == written["metrics"]["bond_js"]["model"]
    # a second run with a new output folder reuses the cached references (no new MD): same reference numbers
    again = run_benchmark(path, "tiny", tmp_path / "again", model="polymer-chain",
                          cache=tmp_path / "out" / "references", log=lambda *_: None)
    assert again["metrics"]["rg_R2"]["ceiling"] == written["metrics"]["rg_R2"]["ceiling"]
