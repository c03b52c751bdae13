"""`cgml evaluate` end to end on tiny real OpenMM polymer runs.

The "rollouts" here are independent OpenMM runs of the same polymer mapped
to beads and written with OpenMM's DCDFile (the writer DCDReporter uses), so
the evaluation pipeline is exercised on real files without a trained model.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest

from openmm_cgml import cli, systems
from openmm_cgml.evaluation import report, trajectories
from openmm_cgml.mapping import Mapping
from openmm_cgml.trajectory import FineTrajectory

STRIDE = 25        # MD steps between frames (0.25 ps at 0.01 ps)
FRAMES = 300
INTERVAL_PS = 0.01 * STRIDE


def run_polymer(length: int, seed: int, frames: int = FRAMES):
    """Atom positions (frames, n, 3) nm of a polymer-chain Langevin run, and its ReferenceSystem."""
    ref = systems.load("polymer-chain", length=length, sequence_seed=length)
    integrator = openmm.LangevinMiddleIntegrator(ref.temperature, ref.friction, ref.timestep)
    integrator.setRandomNumberSeed(seed + 1)
    platform = openmm.Platform.getPlatformByName("Reference")
    context = openmm.Context(ref.system, integrator, platform)
    context.setPositions(ref.positions)
    context.setVelocitiesToTemperature(ref.temperature, seed + 1)
    integrator.step(500)
    positions = np.empty((frames, ref.topology.getNumAtoms(), 3))
    velocities = np.empty_like(positions)
    energies = np.empty(frames)
    for frame in range(frames):
        integrator.step(STRIDE)
        state = context.getState(positions=True, velocities=True, energy=True)
        positions[frame] = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        velocities[frame] = state.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond)
        energies[frame] = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    return ref, positions, velocities, energies, context.createCheckpoint()


def write_fine(path, length, seed):
    ref, positions, velocities, energies, checkpoint = run_polymer(length, seed)
    masses = [ref.system.getParticleMass(i).value_in_unit(u.dalton) for i in range(ref.system.getNumParticles())]
    attrs = {"cgml_system": ref.name, "cgml_params": ref.params, "cgml_timestep_ps": 0.01, "cgml_stride": STRIDE,
             "cgml_temperature_K": 300.0, "cgml_friction_per_ps": 1.0, "cgml_seed": seed, "cgml_replica": 0}
    with FineTrajectory.create(path, topology=ref.topology, masses=masses, atom_types=ref.atom_types,
                               charges=ref.charges, attrs=attrs, periodic=False) as fine:
        fine.append(positions, velocities, INTERVAL_PS * np.arange(1, len(positions) + 1), energies)
        fine.commit(checkpoint)
        fine.mark_complete()
    return ref, masses


def write_bead_dcd(dcd_path, pdb_path, mapping, bead_xyz, interval_steps=STRIDE, timestep=0.01):
    """Bead frames as DCD + bead PDB, written by OpenMM's own writers."""
    topology = mapping.bead_topology()
    with open(pdb_path, "w") as handle:
        app.PDBFile.writeFile(topology, bead_xyz[0] * u.nanometer, handle)
    with open(dcd_path, "wb") as handle:
        dcd = app.DCDFile(handle, topology, timestep * u.picosecond, interval=interval_steps)
        for frame in bead_xyz:
            dcd.writeModel(frame * u.nanometer)


@pytest.fixture(scope="module")
def polymer_set(tmp_path_factory):
    """Three chain lengths: fine reference HDF5 + an independent bead rollout (DCD) of each."""
    root = tmp_path_factory.mktemp("polymers")
    pairs = []
    for length in (3, 5, 8):
        fine_path = root / f"fine{length}.h5"
        ref, masses = write_fine(fine_path, length, seed=length)
        mapping = Mapping.metis(ref.topology, masses, atoms_per_bead=2, atom_types=ref.atom_types)
        _, positions, *_ = run_polymer(length, seed=100 + length)
        dcd, pdb = root / f"roll{length}.dcd", root / f"roll{length}.pdb"
        write_bead_dcd(dcd, pdb, mapping, mapping.bead_positions(positions))
        pairs.append((fine_path, dcd, pdb, mapping))
    return root, pairs


def evaluate_set(polymer_set, out, **kwargs):
    root, pairs = polymer_set
    return report.evaluate([p[0] for p in pairs], [p[1] for p in pairs], out, topology=[p[2] for p in pairs],
                           mapping_method="metis", mapping_params={"atoms_per_bead": 2}, **kwargs)


def test_evaluate_set_of_polymers_writes_report(polymer_set, tmp_path):
    out = tmp_path / "report"
    result = evaluate_set(polymer_set, out, reference_ns_per_day=100.0, rollout_ns_per_day=5000.0)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["summary"] == result["summary"]
    assert result["summary"]["n_systems"] == 3
    for system in result["systems"]:
        assert system["reference"]["frame_interval_ps"] == pytest.approx(INTERVAL_PS)
        assert system["rollout"]["frame_interval_ps"] == pytest.approx(INTERVAL_PS, rel=1e-5)  # from the DCD header
        m = system["metrics"]
        assert m["replicas"] == 1
        # the same physics sampled twice: same size, same structure, no collisions
        assert m["rg_nm"]["rollout"]["mean"] == pytest.approx(m["rg_nm"]["reference"]["mean"], rel=0.15)
        assert m["js_divergence"]["bond_length_nm"] < 0.1
        assert m["collisions"]["rollout"]["total"] == 0
        assert m["relaxation_time_ps"]["reference"] > 0 and m["relaxation_time_ps"]["rollout"] > 0
        assert m["speed"]["speedup"] == pytest.approx(50.0)
    # longer chains are bigger in both: the across-system correlation holds
    assert result["summary"]["rg_r2"] > 0.9
    assert result["across_systems"]["rg"]["n"] == 3
    assert result["summary"]["relaxation_r2"] is not None
    files = {p.name for p in out.iterdir()}
    assert {"report.md", "report.html", "r2_rg.png", "r2_relaxation_time.png", "system00_rg.png",
            "system02_distributions.png", "system02_acf.png", "system02_tica.png"} <= files
    markdown = (out / "report.md").read_text()
    assert "system02_tica.png" in markdown and "Pearson r^2" in markdown


def test_identical_rollout_scores_perfectly(polymer_set, tmp_path):
    root, pairs = polymer_set
    fine_path, _, _, mapping = pairs[2]
    with FineTrajectory(fine_path) as fine:
        beads = mapping.bead_positions(np.asarray(fine.positions[:]))
    dcd, pdb = tmp_path / "same.dcd", tmp_path / "same.pdb"
    write_bead_dcd(dcd, pdb, mapping, beads)
    result = report.evaluate([fine_path], [dcd], tmp_path / "out", topology=pdb, mapping_method="metis",
                             mapping_params={"atoms_per_bead": 2}, plots=False)
    m = result["systems"][0]["metrics"]
    assert max(m["js_divergence"].values()) < 1e-3
    assert m["relaxation_time_ps"]["rollout"] == pytest.approx(m["relaxation_time_ps"]["reference"], rel=1e-4)
    assert m["rg_nm"]["rollout"]["mean"] == pytest.approx(m["rg_nm"]["reference"]["mean"], rel=1e-5)
    assert result["across_systems"]["rg"].startswith("needs >= 2 systems")
    assert not (tmp_path / "out" / "system00_rg.png").exists()


def test_collapsed_rollout_is_flagged(polymer_set, tmp_path):
    _, pairs = polymer_set
    fine_path, _, _, mapping = pairs[1]
    with FineTrajectory(fine_path) as fine:
        beads = mapping.bead_positions(np.asarray(fine.positions[:]))
    collapsed = beads.mean(axis=1, keepdims=True) + 0.1 * (beads - beads.mean(axis=1, keepdims=True))
    dcd, pdb = tmp_path / "bad.dcd", tmp_path / "bad.pdb"
    write_bead_dcd(dcd, pdb, mapping, collapsed)
    result = report.evaluate([fine_path], [dcd], tmp_path / "out", topology=pdb, mapping_method="metis",
                             mapping_params={"atoms_per_bead": 2}, plots=False)
    m = result["systems"][0]["metrics"]
    assert m["collisions"]["rollout"]["total"] > 0 and m["collisions"]["reference"]["total"] == 0
    assert m["js_divergence"]["bond_length_nm"] > 0.9
    assert m["rg_nm"]["rollout"]["mean"] == pytest.approx(0.1 * m["rg_nm"]["reference"]["mean"], rel=1e-3)


def test_replicas_in_one_rollout_are_analysed_per_replica(polymer_set, tmp_path):
    _, pairs = polymer_set
    fine_path, _, _, mapping = pairs[0]
    _, a, *_ = run_polymer(3, seed=7, frames=200)
    _, b, *_ = run_polymer(3, seed=8, frames=200)
    two = np.concatenate([mapping.bead_positions(a), mapping.bead_positions(b) + 5.0], axis=1)
    h5 = tmp_path / "replicas.h5"
    import mdtraj

    top = mdtraj.Topology.from_openmm(mapping.bead_topology())
    both = top.join(top)
    mdtraj.Trajectory(two.astype(np.float32), both, time=np.arange(200) * INTERVAL_PS).save_hdf5(str(h5))
    result = report.evaluate([fine_path], [h5], tmp_path / "out", mapping_method="metis",
                             mapping_params={"atoms_per_bead": 2}, plots=False)
    m = result["systems"][0]["metrics"]
    assert m["replicas"] == 2
    assert result["systems"][0]["rollout"]["frame_interval_ps"] == pytest.approx(INTERVAL_PS)
    assert m["collisions"]["rollout"]["total"] == 0
    assert m["js_divergence"]["bond_length_nm"] < 0.1


def test_bad_inputs_give_clear_errors_and_keep_existing_reports(polymer_set, tmp_path, capsys):
    _, pairs = polymer_set
    fine3, dcd3, pdb3, _ = pairs[0]
    fine8, dcd8, pdb8, _ = pairs[2]
    base = ["evaluate", "--mapping", "metis", "--atoms-per-bead", "2"]
    # bead counts that do not match
    code = cli.main(base + ["--reference", str(fine8), "--rollout", str(dcd3), "--topology", str(pdb3),
                            "--out", str(tmp_path / "a")])
    assert code == 2 and "beads but reference" in capsys.readouterr().err
    # DCD without its topology
    code = cli.main(base + ["--reference", str(fine3), "--rollout", str(dcd3), "--out", str(tmp_path / "a")])
    assert code == 2 and "--topology" in capsys.readouterr().err
    # missing and corrupted files
    code = cli.main(base + ["--reference", str(tmp_path / "nope.h5"), "--rollout", str(dcd3),
                            "--topology", str(pdb3), "--out", str(tmp_path / "a")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken.dcd"
    broken.write_bytes(dcd3.read_bytes()[:150])
    code = cli.main(base + ["--reference", str(fine3), "--rollout", str(broken), "--topology", str(pdb3),
                            "--out", str(tmp_path / "a")])
    assert code == 2 and "broken.dcd" in capsys.readouterr().err
    # NaN in a rollout
    import mdtraj

    traj = mdtraj.load(str(dcd3), top=str(pdb3))
    traj.xyz[5, 1, 0] = np.nan
    nan_file = tmp_path / "nan.h5"
    traj.save_hdf5(str(nan_file))
    code = cli.main(base + ["--reference", str(fine3), "--rollout", str(nan_file), "--out", str(tmp_path / "a")])
    assert code == 2 and "frame 5" in capsys.readouterr().err
    # an existing report is kept unless --overwrite
    out = tmp_path / "kept"
    args = base + ["--reference", str(fine3), "--rollout", str(dcd3), "--topology", str(pdb3), "--out", str(out),
                   "--no-plots"]
    assert cli.main(args) == 0
    before = (out / "metrics.json").read_text()
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n_systems"] == 1
    assert cli.main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before
    assert cli.main(args + ["--overwrite"]) == 0


def test_bead_only_pair_from_xtc_and_wrong_mapping(polymer_set, tmp_path):
    import mdtraj

    _, pairs = polymer_set
    fine5, dcd5, pdb5, _ = pairs[1]
    traj = mdtraj.load(str(dcd5), top=str(pdb5))
    traj.time = np.arange(traj.n_frames) * 2.0  # XTC keeps times: 2 ps per frame
    xtc = tmp_path / "ref.xtc"
    traj.save_xtc(str(xtc))
    result = report.evaluate([xtc], [dcd5], tmp_path / "out", topology=pdb5, plots=False)
    system = result["systems"][0]
    assert system["reference"]["frame_interval_ps"] == pytest.approx(2.0)
    assert any("equal masses" in note for note in system["metrics"]["notes"])
    assert system["metrics"]["js_divergence"]["bond_length_nm"] < 1e-3  # same frames (XTC precision)
    # a mapping that gives the same bead count but other beads is caught by the bonds
    wrong = trajectories.load_rollout(dcd5, topology=pdb5)
    wrong.bonds = wrong.bonds[:-1]
    with pytest.raises(ValueError, match="bead bonds"):
        trajectories._fill_from_mapping(wrong, pairs[1][3], 1)


def test_periodic_beads_get_an_rdf(tmp_path):
    import mdtraj

    top = mdtraj.Topology()
    residue = top.add_residue("GAS", top.add_chain())
    for i in range(40):
        top.add_atom(f"G{i}", mdtraj.element.argon, residue)
    files = []
    for seed in (0, 1):
        xyz = np.random.default_rng(seed).uniform(0, 2.5, size=(120, 40, 3)).astype(np.float32)
        traj = mdtraj.Trajectory(xyz, top, time=np.arange(120) * 1.0,
                                 unitcell_lengths=np.full((120, 3), 2.5), unitcell_angles=np.full((120, 3), 90.0))
        files.append(tmp_path / f"gas{seed}.h5")
        traj.save_hdf5(str(files[-1]))
    result = report.evaluate([files[0]], [files[1]], tmp_path / "out")
    m = result["systems"][0]["metrics"]
    assert result["systems"][0]["reference"]["periodic"]
    assert m["rdf_mean_abs_difference"] < 0.2  # two ideal gases: g(r) = 1 on both sides
    assert any("no Rg" in note for note in m["notes"])
    assert (tmp_path / "out" / "system00_distributions.png").exists()


MODEL_STEPS = 1000  # MD steps per model step in the example run (its small configuration's value)


@pytest.mark.slow
def test_polymer_example_runs_end_to_end(tmp_path):
    """examples/polymer_chains.py with a tiny configuration, run as a script: every stage, then a report."""
    settings = ("train_sequences=2", "test_sequences=2", "frames=220", "rollout_steps=30", "train.max_epochs=1",
                "train.limit_train_batches=4", "train.limit_val_batches=2", f"model_steps={MODEL_STEPS}")
    root = Path(__file__).resolve().parents[2]
    # the package from this checkout, installed or not (a script's own folder comes first on sys.path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(root / "examples" / "polymer_chains.py"), "--small", "--out",
                           str(tmp_path), "--set", *settings], capture_output=True, text=True, timeout=1200, env=env,
                          cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["n_systems"] == 2 and summary["speedup"] > 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert all(s["rollout"]["n_frames"] >= 2 for s in metrics["systems"])
    model_step_ps = MODEL_STEPS * 0.01  # the polymer-chain MD time step is 10 fs
    assert metrics["systems"][0]["rollout"]["frame_interval_ps"] == pytest.approx(model_step_ps, rel=1e-5)
