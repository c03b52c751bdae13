"""The peptide benchmark: statistics on synthetic data with known answers, and a whole tiny run."""
import json

import numpy as np
import pytest
import torch
import yaml

from openmm_cgml.cli import main
from openmm_cgml.evaluation import peptide
from openmm_cgml.evaluation.benchmark import BENCHMARKS_DIR, load_definition
from openmm_cgml.model.chirality import pseudo_scalars


def test_basin_populations_of_known_points():
    phi = np.array([-60.0, -60.0, -150.0, -80.0, 60.0, 170.0, -100.0, -60.0])
    psi = np.array([-40.0, 140.0, 160.0, -170.0, 40.0, -170.0, 49.0, 50.0])
    # alpha-R: (-60,-40), (-100,49); C7eq/C5: (-60,140), (-150,160), (-80,-170), (-60,50); alpha-L: phi >= 0
    assert peptide.basin_populations(phi, psi) == {"c7eq_c5": 0.5, "alpha_r": 0.25, "alpha_l": 0.25}
    assert peptide.basin_labels(phi, psi).tolist() == [1, 0, 0, 0, 2, 2, 1, 0]   # the order of BASINS


def two_state_ensemble(p: float, frames: int, replicas: int, seed: int, dt_ps: float = 1.0):
    """Replicas of a two-state Markov chain (phi -60 or +60 degrees, psi fixed): known slowest timescale."""
    rng = np.random.default_rng(seed)
    phis, psis = [], []
    for _ in range(replicas):
        flips = rng.random(frames) < p
        state = np.cumsum(flips) % 2
        phis.append((np.where(state == 0, -60.0, 60.0) + rng.normal(0, 5, frames))[:, None])
        psis.append(np.full((frames, 1), 150.0) + rng.normal(0, 5, (frames, 1)))
    return peptide._Ensemble(dt_ps, phi=phis, psi=psis, beads=[None] * replicas)


def test_msm_recovers_the_implied_timescale_of_a_two_state_chain():
    p = 0.05
    ensemble = two_state_ensemble(p, 5000, 4, seed=1)
    kinetics = peptide._Kinetics(ensemble, clusters=2, lag_ps=2.0)
    expected = -2.0 / np.log((1 - 2 * p) ** 2)            # lag 2 frames: eigenvalue (1 - 2p)^2
    assert kinetics.slowest_its_ps(ensemble) == pytest.approx(expected, rel=0.1)
    # the same chain saved every 2 ps (flip probability q per frame, 1 - 2q = (1 - 2p)^2): the same timescale
    # in ps, the lag now one frame
    coarser = two_state_ensemble(2 * p - 2 * p * p, 5000, 4, seed=2, dt_ps=2.0)
    assert kinetics.slowest_its_ps(coarser) == pytest.approx(expected, rel=0.15)
    with pytest.raises(ValueError, match="whole number"):
        kinetics.slowest_its_ps(two_state_ensemble(p, 100, 2, seed=3, dt_ps=3.0))


def test_finite_pieces_cut_trajectories_at_frames_without_torsions():
    x = np.arange(12.0).reshape(6, 2)
    x[2, 1] = np.nan
    x[5, 0] = np.inf
    pieces = peptide._finite_pieces([x, np.full((2, 2), np.nan), np.ones((3, 2))])
    assert [p.tolist() for p in pieces] == [[[0, 1], [2, 3]], [[6, 7], [8, 9]], [[1, 1], [1, 1], [1, 1]]]


def test_torsion_steps_of_a_libration_and_across_the_wrap():
    # phi alternates 170, -170 (a 20 degree move across +-180 each frame); psi walks 0, 5, 10, ...
    frames = 9
    phi = np.where(np.arange(frames) % 2 == 0, 170.0, -170.0)[:, None]
    psi = (5.0 * np.arange(frames))[:, None]
    ensemble = peptide._Ensemble(1.0, phi=[phi], psi=[psi])
    now, after = peptide._torsion_steps(ensemble, 1.0)
    assert np.allclose(np.abs(now[now != 5.0]), 20.0)          # wrapped, not 340
    assert peptide._step_rms(ensemble, 1.0) == pytest.approx(np.sqrt((20.0 ** 2 + 5.0 ** 2) / 2))
    libration = peptide._Ensemble(1.0, phi=[phi], psi=[phi])
    assert peptide._step_lag1(libration, 1.0) == pytest.approx(-1.0)
    # over a 2 ps step the same libration returns to its start: no change at all
    assert peptide._step_rms(libration, 2.0) == 0.0


def test_handedness_counts_stereocentres_not_torsion_signs():
    """Known answer: bead 1 is a stereocentre (bonded to 0, 2, 3), bead 4 hangs off 3. Mirrored frames lose its
    handedness; turning bead 4 about the 1-3 bond flips the torsions' signs but keeps it."""
    bonds = np.array([[0, 1], [1, 2], [1, 3], [3, 4]])
    star = np.array([[0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.2, 0.14, 0.0], [0.2, -0.07, 0.12], [0.35, -0.07, 0.12]])
    rng = np.random.default_rng(0)
    reference = [star + rng.normal(0, 0.005, (40, 5, 3))]
    mirrored = [np.concatenate([reference[0][:30], reference[0][30:] * np.array([-1.0, 1.0, 1.0])])]
    turned = reference[0].copy()
    axis = (star[3] - star[1]) / np.linalg.norm(star[3] - star[1])
    arm = turned[:, 4] - turned[:, 3]           # Rodrigues: a half turn of bead 4 about the 1-3 bond
    turned[:, 4] = turned[:, 3] + 2 * (arm @ axis)[:, None] * axis - arm
    edges = torch.as_tensor(np.concatenate([bonds, bonds[:, ::-1]]).T.copy())
    before, after = (pseudo_scalars(torch.as_tensor(x[0]), edges)[:, 1:] for x in (reference[0], turned))
    assert (torch.sign(before) * torch.sign(after) < 0).any()        # the half turn flips a torsion's sign
    a, m, t = (peptide._Ensemble(1.0, beads=x) for x in (reference, mirrored, [turned]))
    signs = {name: peptide._chiral_features(e, bonds) for name, e in (("a", a), ("m", m), ("t", t))}
    sign, chiral = peptide._chiral_reference(peptide._Ensemble(1.0, signs=signs["a"]))
    assert chiral.tolist() == [False, True, False, False, False]       # one stereocentre, no torsion counted
    assert peptide._kept_fraction(signs["m"], sign, chiral) == 0.75
    assert peptide._kept_fraction(signs["t"], sign, chiral) == 1.0
    # a chain has no stereocentre: no handedness to keep
    chain = peptide._Ensemble(1.0, beads=[star[[0, 1, 3, 4]] + rng.normal(0, 0.005, (10, 4, 3))])
    chain_signs = peptide._chiral_features(chain, np.array([[0, 1], [1, 2], [2, 3]]))
    sign, chiral = peptide._chiral_reference(peptide._Ensemble(1.0, signs=chain_signs))
    assert not chiral.any() and np.isnan(peptide._kept_fraction(chain_signs, sign, chiral))


def test_peptide_definition_is_checked_like_the_polymer_one(tmp_path):
    definition = load_definition("peptide", "small")
    assert definition["kind"] == "peptide" and definition["test"]["replicas"] % 2 == 0
    broken = yaml.safe_load((BENCHMARKS_DIR / "peptide.yaml").read_text())
    del broken["scales"]["small"]["msm_lag_ps"]
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(ValueError, match="msm_lag_ps"):
        load_definition(tmp_path / "broken.yaml", "small")


def test_a_tiny_peptide_benchmark_runs_end_to_end(tmp_path, capsys):
    """The shipped alanine-dipeptide model (6 beads with CB, 20 ps step, so a 20 ps MSM lag; its 4-frame history
    takes 60 ps) on 4 replicas of 120 ps: every metric with model, ceiling and CI."""
    definition = yaml.safe_load((BENCHMARKS_DIR / "peptide.yaml").read_text())
    definition["scales"] = {"tiny": {
        "frame_stride": 500, "equilibration_steps": 1000, "library": {"seed": 5, "replicas": 1, "reference_ns": 0.02},
        "validation": {"seed": 7, "replicas": 1, "reference_ns": 0.12},
        "test": {"seed": 6, "replicas": 4, "reference_ns": 0.12}, "msm_lag_ps": 10.0, "msm_clusters": 4,
        "backmap_frames": 3, "timing": {"rounds": 1, "md_steps": 200, "model_steps": 4}, "bootstrap": 10}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(definition))
    out = tmp_path / "bench"
    assert main(["benchmark", str(tmp_path / "tiny.yaml"), "--scale", "tiny", "--out", str(out),
                 "--workers", "1"]) == 0
    document = json.loads((out / "fidelity.json").read_text())
    for name in ("phi_js", "psi_js", "rama_js", "population_max_diff", "slowest_its_ratio",
                 "chirality_kept_fraction", "torsion_step_rms_ratio", "torsion_step_lag1_corr_diff"):
        metric = document["metrics"][name]
        assert set(metric) >= {"model", "ceiling", "ci95"} and len(metric["ci95"]) == 2
    assert 0.0 <= document["metrics"]["rama_js"]["model"] <= 1.0
    # the trivial baseline: the library run (short independent MD) scored like the model
    baseline = document["baseline"]["metrics"]
    assert set(baseline) == {"phi_js", "psi_js", "rama_js", "population_max_diff", "chirality_kept_fraction"}
    assert 0.0 <= baseline["rama_js"] <= 1.0 and "baseline: short MD" in (out / "report.md").read_text()
    assert document["backmap"]["rmsd_nm"]["mean"] < 0.05 and document["backmap"]["chirality_fraction"] == 1.0
    assert document["speedup"]["interleaved"] is True and document["speedup"]["median"] > 0
    assert abs(sum(document["populations"]["reference"].values()) - 1.0) < 1e-9
    assert (out / "report.md").exists() and (out / "ramachandran.png").stat().st_size > 0
    # the refinement levels were chosen on validation, among the definition's candidates
    tuned = document["choices"]["refine_sigmas"]
    assert tuned["split"] == "validation" and len(tuned["scores"]) == len(definition["refine_candidates"])
    assert tuned["value"] in definition["refine_candidates"]
    assert set(tuned["chirality_kept_fraction"]) == set(tuned["scores"])       # handedness beside every score
    # the shipped model's CB bead makes CA a stereocentre of the beads: MD never mirrors it
    assert document["model"]["mapping"] == "backbone" and document["model"]["n_beads"] == 6
    assert all(0.0 <= kept <= 1.0 for kept in tuned["chirality_kept_fraction"].values())
    assert document["metrics"]["chirality_kept_fraction"]["ceiling"] == 1.0
    # the brief on stdout carries the peptide blocks
    brief = json.loads(capsys.readouterr().out)
    assert "backmap" in brief and "speedup" in brief


@pytest.mark.parametrize("lag, step, expected", [(10.0, 1.0, 10.0), (10.0, 10.0, 10.0), (10.0, 20.0, 20.0),
                                                 (4.0, 10.0, 10.0), (15.0, 10.0, 20.0), (10.0, 0.5, 10.0)])
def test_msm_lag_is_rounded_up_to_whole_model_steps(lag, step, expected):
    assert peptide.msm_lag_ps(lag, step) == pytest.approx(expected)
