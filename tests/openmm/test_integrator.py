"""CGMLIntegrator driven through OpenMM's public API on tiny bead systems.

Two models: a real (untrained) exported CGPropagator, and a small scripted
damped random walk that follows the same TorchScript contract but can be
told to produce a NaN at a known step (for the guard tests).
"""
import io

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest
import torch
from integrator_support import DT_PS, DampedWalk, EveryStepReporter, chain_molecule, positions_of, walk_model

from openmm_cgml.mapping import Mapping
from openmm_cgml.openmm.bead_system import coarse_grained_system
from openmm_cgml.openmm.integrator import CGMLIntegrator
from openmm_cgml.openmm.rollout import UnstableRolloutError, model_graph, rollout

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def molecule():
    topology, positions = chain_molecule()
    masses = np.array([a.element.mass.value_in_unit(u.dalton) for a in topology.atoms()])
    mapping = Mapping.metis(topology, masses, atoms_per_bead=3)
    return topology, positions, mapping


@pytest.fixture(scope="module")
def walk(molecule):
    return walk_model(molecule[2])


@pytest.fixture(scope="module")
def real_model(molecule, tmp_path_factory):
    """A real exported (untrained, small) CGPropagator, loaded back with openmm_cgml.load."""
    from openmm_cgml import load
    from openmm_cgml.model.propagator import CGPropagator, PropagatorConfig
    from openmm_cgml.model_file import export_model

    mapping = molecule[2]
    config = PropagatorConfig(k=4, embed_hidden=8, embed_layers=1, hidden=16, n_layers=1, score_hidden=8,
                              score_layers=1)
    torch.manual_seed(0)
    module = CGPropagator.from_mapping(mapping, config, model_dt_ps=DT_PS, md_steps_per_model_step=1000,
                                       md_timestep_ps=0.002, temperature_K=300.0, accel_std_nm=1e-3,
                                       velocity_std_nm=1e-2)
    path = export_model(module, tmp_path_factory.mktemp("model") / "model.safetensors", {"mapping": mapping})
    return load(path)


def make_simulation(model, molecule, replicas=1, seed=1, **kwargs):
    topology, positions, _ = molecule
    cg = coarse_grained_system(model, topology, positions * u.nanometer, replicas=replicas)
    integrator = CGMLIntegrator(model, seed=seed, **kwargs)
    simulation = app.Simulation(cg.topology, cg.system, integrator, openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(cg.positions)
    return simulation


# ----------------------------------------------------------------------------- tests


def test_coarse_grained_system_replicas(walk, molecule):
    topology, positions, mapping = molecule
    cg = coarse_grained_system(walk, topology, positions * u.nanometer, replicas=3)
    assert cg.system.getNumParticles() == 3 * mapping.n_beads == cg.topology.getNumAtoms()
    assert cg.topology.getNumBonds() == 3 * len(mapping.coarse_bonds)
    beads = cg.positions.value_in_unit(u.nanometer)
    np.testing.assert_allclose(beads[: mapping.n_beads], mapping.bead_positions(positions), atol=1e-12)
    masses = [cg.system.getParticleMass(i).value_in_unit(u.dalton) for i in range(cg.system.getNumParticles())]
    np.testing.assert_allclose(masses, np.tile(mapping.bead_masses, 3))
    assert cg.bead_features.shape[0] == mapping.n_beads


def test_coarse_grained_system_refuses_wrong_molecule(molecule):
    topology, positions = chain_molecule(9)
    mapping = molecule[2]
    specific = walk_model(mapping, n_beads=mapping.n_beads)  # trained on one molecule: no transfer
    with pytest.raises(ValueError, match="9 atoms.*molecule-specific"):
        coarse_grained_system(specific, topology, positions)
    custom = Mapping(mapping.bead_of_atom, mapping.atom_masses, mapping.atom_types, mapping.fine_bonds)
    with pytest.raises(ValueError, match="9 atoms.*cannot be re-made"):  # a hand-made mapping is no rule
        coarse_grained_system(walk_model(custom), topology, positions)


def test_coarse_grained_system_from_pdb(walk, molecule, tmp_path):
    topology, positions, mapping = molecule
    path = tmp_path / "chain.pdb"
    with open(path, "w") as handle:
        app.PDBFile.writeFile(topology, positions * u.nanometer, handle)
    cg = coarse_grained_system(walk, path)
    np.testing.assert_allclose(cg.positions.value_in_unit(u.nanometer), mapping.bead_positions(positions),
                               atol=1e-3)
    bad = tmp_path / "bad.pdb"
    bad.write_text("ATOM      1  C   CHN A   1    garbage\n")
    with pytest.raises(ValueError, match="bad.pdb"):
        coarse_grained_system(walk, bad)


def test_time_and_reporters_track_model_steps(walk, molecule, tmp_path):
    simulation = make_simulation(walk, molecule)
    assert simulation.integrator.getStepSize().value_in_unit(u.picosecond) == pytest.approx(DT_PS)
    log = io.StringIO()
    dcd = tmp_path / "traj.dcd"
    simulation.reporters.append(app.StateDataReporter(log, 5, step=True, time=True))
    simulation.reporters.append(app.DCDReporter(str(dcd), 5))
    simulation.step(20)
    assert simulation.currentStep == 20
    assert simulation.context.getState().getTime().value_in_unit(u.picosecond) == pytest.approx(20 * DT_PS)
    rows = [line.split(",") for line in log.getvalue().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [5, 10, 15, 20]
    np.testing.assert_allclose([float(r[1]) for r in rows], [5 * DT_PS, 10 * DT_PS, 15 * DT_PS, 20 * DT_PS])
    # the DCD header carries the true time step: frame i is at (first + i * interval) * dt
    import struct

    header = dcd.read_bytes()[:48]
    first, interval = struct.unpack("<2i", header[12:20])
    dt_ps = struct.unpack("<f", header[44:48])[0] * 0.04888821
    assert (first, interval) == (5, 5)
    assert dt_ps == pytest.approx(DT_PS, rel=1e-5)


def test_same_seed_same_trajectory_whatever_the_chunking(walk, molecule):
    a = make_simulation(walk, molecule, seed=7)
    a.step(12)
    b = make_simulation(walk, molecule, seed=7)
    for n in (1, 4, 7):
        b.step(n)
    np.testing.assert_array_equal(positions_of(a), positions_of(b))
    c = make_simulation(walk, molecule, seed=8)
    c.step(12)
    assert not np.allclose(positions_of(a), positions_of(c))


def test_history_survives_a_reporter_calling_get_state_every_step(walk, molecule):
    plain = make_simulation(walk, molecule)
    plain.step(10)
    nosy = make_simulation(walk, molecule)
    reporter = EveryStepReporter()
    nosy.reporters.append(reporter)
    nosy.step(10)
    assert len(reporter.frames) == 10
    np.testing.assert_array_equal(positions_of(plain), positions_of(nosy))


def test_checkpoint_resume_equals_uninterrupted_run(walk, molecule, tmp_path):
    straight = make_simulation(walk, molecule, seed=3)
    straight.step(15)

    first = make_simulation(walk, molecule, seed=3)
    checkpoint = tmp_path / "run.chk"
    first.reporters.append(app.CheckpointReporter(str(checkpoint), 5))
    first.step(5)
    first.step(4)  # moves on past the checkpoint; the resume below must forget this

    resumed = make_simulation(walk, molecule, seed=99)  # the seed comes from the checkpoint
    resumed.loadCheckpoint(str(checkpoint))
    assert resumed.currentStep == 5
    resumed.step(10)
    assert resumed.currentStep == 15
    np.testing.assert_array_equal(positions_of(straight), positions_of(resumed))
    assert resumed.integrator.getSeed() == 3

    # also in place: reload the checkpoint into the Context that moved on
    first.loadCheckpoint(str(checkpoint))
    first.step(10)
    np.testing.assert_array_equal(positions_of(straight), positions_of(first))


def test_save_state_load_state_resumes_exactly(walk, molecule, tmp_path):
    straight = make_simulation(walk, molecule, seed=5)
    straight.step(12)
    run = make_simulation(walk, molecule, seed=5)
    run.step(6)
    state = tmp_path / "state.xml"
    run.saveState(str(state))
    run.step(3)
    run.loadState(str(state))
    run.step(6)
    np.testing.assert_array_equal(positions_of(straight), positions_of(run))
    assert run.context.getState().getTime().value_in_unit(u.picosecond) == pytest.approx(12 * DT_PS)


def test_set_positions_triggers_warm_up(walk, molecule):
    simulation = make_simulation(walk, molecule)
    k = simulation.integrator.getHistoryLength()
    assert simulation.integrator.getWarmupSteps() == k - 1
    simulation.step(k + 2)
    assert simulation.integrator.getWarmupSteps() == 0
    history = simulation.integrator.getHistory().value_in_unit(u.nanometer)
    assert not np.allclose(history[0], history[-1])
    moved = positions_of(simulation) + 0.3
    simulation.context.setPositions(moved)
    history = simulation.integrator.getHistory().value_in_unit(u.nanometer)
    np.testing.assert_allclose(history, np.repeat(moved[None], k, axis=0), atol=1e-6)
    assert simulation.integrator.getWarmupSteps() == k - 1


def test_minimisation_without_forces_keeps_the_history(walk, molecule):
    plain = make_simulation(walk, molecule, seed=6)
    plain.step(8)
    minimised = make_simulation(walk, molecule, seed=6)
    minimised.step(4)
    minimised.minimizeEnergy()  # a bead System has no forces: nothing moves, the history stays
    assert minimised.integrator.getWarmupSteps() == 0
    minimised.step(4)
    np.testing.assert_array_equal(positions_of(plain), positions_of(minimised))


def test_periodic_bead_system(real_model, molecule):
    topology, positions, mapping = molecule
    periodic = app.Topology()
    periodic.setPeriodicBoxVectors(np.eye(3) * 3.0 * u.nanometer)
    copy = {}
    chain = periodic.addChain()
    residue = periodic.addResidue("CHN", chain)
    for atom in topology.atoms():
        copy[atom] = periodic.addAtom(atom.name, atom.element, residue)
    for a, b in topology.bonds():
        periodic.addBond(copy[a], copy[b])
    wrapped = positions + np.array([2.5, 0.0, 0.0])  # the chain crosses the box edge: mapped whole
    cg = coarse_grained_system(real_model, periodic, wrapped % 3.0, replicas=2)
    assert cg.system.usesPeriodicBoundaryConditions()
    beads = cg.positions.value_in_unit(u.nanometer)
    np.testing.assert_allclose(np.linalg.norm(np.diff(beads[: mapping.n_beads], axis=0), axis=1),
                               np.linalg.norm(np.diff(mapping.bead_positions(positions), axis=0), axis=1), atol=1e-6)
    simulation = app.Simulation(cg.topology, cg.system, CGMLIntegrator(real_model, seed=1),
                                openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(cg.positions)
    simulation.step(5)
    assert simulation.currentStep == 5 and np.all(np.isfinite(positions_of(simulation)))


def test_set_history_starts_from_real_frames(molecule):
    simulation = make_simulation(walk_model(molecule[2], sigma=0.0), molecule)
    integrator = simulation.integrator
    k = integrator.getHistoryLength()
    start = positions_of(simulation)
    frames = np.stack([start + 0.01 * i for i in range(k + 2)])  # more frames than needed: last k used
    integrator.setHistory(frames * u.nanometer)
    assert integrator.getWarmupSteps() == 0
    np.testing.assert_allclose(positions_of(simulation), frames[-1])
    # without noise the walk keeps half of the history's velocity: the first step moves every bead by 0.005 nm
    simulation.step(1)
    np.testing.assert_allclose(positions_of(simulation) - frames[-1], 0.005, atol=1e-5)
    with pytest.raises(ValueError, match="k=3"):
        integrator.setHistory(frames[:2])


def test_start_from_a_reference_trajectory_without_warm_up(walk, molecule, tmp_path):
    from openmm_cgml.openmm.bead_system import reference_history
    from openmm_cgml.trajectory import FineTrajectory

    topology, positions, mapping = molecule
    # 9 frames saved every 500 MD steps of 2 fs: one model step (1000 MD steps) = 2 frames
    frames = np.stack([positions + 0.01 * i for i in range(9)])
    path = tmp_path / "fine.h5"
    trajectory = FineTrajectory.create(path, topology=topology, masses=mapping.atom_masses,
                                       atom_types=mapping.atom_types, charges=np.zeros(12), periodic=False,
                                       attrs={"cgml_timestep_ps": 0.002, "cgml_stride": 500,
                                              "cgml_temperature_K": 300.0, "cgml_system": "chain"})
    trajectory.append(frames, np.zeros_like(frames), np.arange(9.0), np.zeros(9))
    trajectory.commit(b"")
    trajectory.close()
    history = reference_history(walk, path, end=-2)   # frames 3, 5, 7
    np.testing.assert_allclose(history.value_in_unit(u.nanometer), mapping.bead_positions(frames[[3, 5, 7]]),
                               atol=1e-6)
    simulation = make_simulation(walk, molecule, replicas=2)
    simulation.integrator.setHistory(history)
    assert simulation.integrator.getWarmupSteps() == 0
    np.testing.assert_allclose(positions_of(simulation)[mapping.n_beads:], history[-1].value_in_unit(u.nanometer),
                               atol=1e-6)
    with pytest.raises(ValueError, match="needs 5 frames"):
        reference_history(walk, path, end=3)


def test_replicas_are_independent_and_reproducible(walk, molecule):
    mapping = molecule[2]
    many = make_simulation(walk, molecule, replicas=3, seed=4)
    many.step(5)
    x = positions_of(many).reshape(3, mapping.n_beads, 3)
    assert not np.allclose(x[0] - x[0].mean(0), x[1] - x[1].mean(0))
    edges, batch = model_graph(mapping, 3)
    assert bool((batch[edges[0]] == batch[edges[1]]).all())
    again = make_simulation(walk, molecule, replicas=3, seed=4)
    again.step(5)
    np.testing.assert_array_equal(positions_of(many), positions_of(again))


def test_nan_guard_names_step_and_beads_and_keeps_last_good_state(molecule, tmp_path):
    mapping = molecule[2]
    # deterministic: beads drift 0.1 nm per step in x; a bead crossing x = 1.55 nm turns NaN
    model = walk_model(mapping, sigma=0.0, drift=0.1, nan_beyond=1.55)
    simulation = make_simulation(model, molecule)
    start = positions_of(simulation)
    dcd = tmp_path / "guard.dcd"
    simulation.reporters.append(app.DCDReporter(str(dcd), 1))
    # x[t+1] = x[t] + 0.5 (x[t] - x[t-1]) + 0.1: displacement after n steps from rest
    shift, velocity, steps = 0.0, 0.0, 0
    while np.max(start[:, 0]) + shift <= 1.55:
        velocity = 0.5 * velocity + 0.1
        shift += velocity
        steps += 1
    last_good = steps - 1
    bad_beads = np.flatnonzero(start[:, 0] + shift > 1.55).tolist()
    with pytest.raises(UnstableRolloutError, match=f"model step {steps}:") as caught:
        simulation.step(50)
    assert caught.value.step == steps
    assert caught.value.beads == bad_beads
    assert caught.value.reason == "nan"
    assert f"beads: {bad_beads[0]} (replica 0, bead {bad_beads[0]} {mapping.bead_names[bad_beads[0]]})" in str(
        caught.value)
    # the Context holds the last good state; the DCD holds the frames reported before the failure
    assert simulation.context.getStepCount() == last_good
    assert np.all(np.isfinite(positions_of(simulation)))
    import mdtraj

    traj = mdtraj.load_dcd(str(dcd), top=mdtraj.Topology.from_openmm(simulation.topology))
    assert traj.n_frames >= last_good - 10 and np.all(np.isfinite(traj.xyz))


def test_model_refusing_nan_inside_a_step_is_reported_as_unstable(molecule):
    model = walk_model(molecule[2], sigma=0.0, drift=0.1, nan_beyond=1.55, raise_on_nan=True)
    simulation = make_simulation(model, molecule)
    message = r"model step 3: the model failed \(step: pos contains NaN"
    with pytest.raises(UnstableRolloutError, match=message) as caught:
        simulation.step(10)
    assert caught.value.reason == "nan" and caught.value.beads == []
    assert simulation.context.getStepCount() == 2


def test_collision_guard(molecule):
    mapping = molecule[2]
    simulation = make_simulation(walk_model(mapping, sigma=0.0), molecule, collision_distance=0.5 * u.nanometer)
    with pytest.raises(UnstableRolloutError, match="collision threshold 0.5 nm") as caught:
        simulation.step(3)
    assert caught.value.reason == "collision" and len(caught.value.beads) == 2
    assert simulation.context.getStepCount() == 0


def test_collision_check_uses_the_minimum_image(molecule):
    model = walk_model(molecule[2], sigma=0.0)
    edges, batch = model_graph(molecule[2], 1)
    beads = torch.tensor([[0.02, 0.0, 0.0], [0.8, 0.0, 0.0], [1.6, 0.0, 0.0], [2.98, 0.0, 0.0]])
    history = beads.repeat(3, 1, 1)
    features = model.embed_mapping()
    out = rollout(model, history, features, edges, batch, torch.zeros(3, 3), 2)  # no box: 0.78 nm apart at least
    np.testing.assert_allclose(out[-1].numpy(), beads.numpy())
    with pytest.raises(UnstableRolloutError, match="beads 0 and 3 are 0.0400 nm apart") as caught:
        rollout(model, history, features, edges, batch, torch.eye(3) * 3.0, 2)
    assert caught.value.step == 1 and caught.value.steps_done == 0


def test_bad_arguments(walk, molecule):
    with pytest.raises(ValueError, match="training temperature 300"):
        CGMLIntegrator(walk, temperature=350 * u.kelvin)
    with pytest.raises(ValueError, match="temperature"):
        CGMLIntegrator(walk, temperature=1 * u.nanometer)
    CGMLIntegrator(walk, temperature=300 * u.kelvin)
    with pytest.raises(ValueError, match="not bound to a Context"):
        CGMLIntegrator(walk).setHistory(np.zeros((3, 4, 3)))
    system = openmm.System()
    for _ in range(5):
        system.addParticle(12.0)
    integrator = CGMLIntegrator(walk)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="5 particles"):
        integrator.step(1)
    simulation = make_simulation(walk, molecule)
    nan_positions = positions_of(simulation)
    nan_positions[2] = np.nan
    simulation.context.setPositions(nan_positions)
    with pytest.raises(ValueError, match=r"NaN/inf for beads \[2\]"):
        simulation.step(1)


@pytest.mark.cuda
def test_cuda_platform_rollout_stays_on_gpu_and_resumes(walk, molecule, tmp_path):
    topology, positions, _ = molecule
    model = walk_model(molecule[2])
    cg = coarse_grained_system(model, topology, positions * u.nanometer, replicas=2)

    def simulation():
        sim = app.Simulation(cg.topology, cg.system, CGMLIntegrator(model, seed=2),
                             openmm.Platform.getPlatformByName("CUDA"))
        sim.context.setPositions(cg.positions)
        return sim

    straight = simulation()
    straight.step(12)
    assert straight.integrator.getDevice().type == "cuda"
    assert straight.context.getState().getTime().value_in_unit(u.picosecond) == pytest.approx(12 * DT_PS)
    run = simulation()
    run.step(5)
    run.saveCheckpoint(str(tmp_path / "cuda.chk"))
    run.step(3)
    run.loadCheckpoint(str(tmp_path / "cuda.chk"))
    run.step(7)
    np.testing.assert_array_equal(positions_of(straight), positions_of(run))


def test_real_exported_model_reports_resumes_and_survives_nosy_reporters(real_model, molecule, tmp_path):
    """The whole contract with a real exported CGPropagator through Simulation and reporters."""
    import mdtraj

    straight = make_simulation(real_model, molecule, replicas=2, seed=9)
    straight.reporters.append(EveryStepReporter())
    straight.step(12)
    assert straight.context.getState().getTime().value_in_unit(u.picosecond) == pytest.approx(12 * DT_PS)

    run = make_simulation(real_model, molecule, replicas=2, seed=9)
    log, dcd, checkpoint = io.StringIO(), tmp_path / "real.dcd", tmp_path / "real.chk"
    run.reporters.append(app.StateDataReporter(log, 4, step=True, time=True))
    run.reporters.append(app.DCDReporter(str(dcd), 4))
    run.reporters.append(app.CheckpointReporter(str(checkpoint), 4))
    run.step(6)   # checkpoint at step 4
    run.loadCheckpoint(str(checkpoint))
    run.step(4)   # to step 8, checkpoint again
    state = tmp_path / "real.xml"
    run.saveState(str(state))
    run.step(2)
    run.loadState(str(state))
    run.step(4)
    assert run.currentStep == 12
    np.testing.assert_array_equal(positions_of(straight), positions_of(run))
    assert [float(line.split(",")[1]) for line in log.getvalue().splitlines()[1:]][-1] == pytest.approx(12 * DT_PS)
    traj = mdtraj.load_dcd(str(dcd), top=mdtraj.Topology.from_openmm(run.topology))
    assert np.all(np.isfinite(traj.xyz))


def test_rollout_is_the_integrator(walk, molecule):
    """The library rollout and the integrator give the same frames (one implementation)."""
    simulation = make_simulation(walk, molecule, seed=11)
    start = positions_of(simulation)
    simulation.step(6)
    mapping = molecule[2]
    edges, batch = model_graph(mapping, 1)
    features = walk.embed_mapping()
    history = torch.as_tensor(start, dtype=torch.float32).repeat(3, 1, 1)
    out = rollout(walk, history, features, edges, batch, torch.zeros(3, 3), 6, seed=11)
    np.testing.assert_array_equal(out[-1].double().numpy(), positions_of(simulation))


# ----------------------------------------------------------------------------- cgml simulate


def save_walk_model(mapping, path, **kwargs):
    """A model file that openmm_cgml.load reads (the scripted walk plus export-style metadata)."""
    import json

    from openmm_cgml.model_file import FORMAT

    walk = DampedWalk(**kwargs)
    metadata = json.dumps({
        "format": FORMAT, "format_version": 1, "mapping": mapping.to_json(), "k": walk.k, "n_beads": walk.n_beads,
        "n_atoms": 0, "md_steps_per_model_step": walk.md_steps_per_model_step, "model_dt_ps": walk.model_dt_ps,
        "md_timestep_ps": walk.md_timestep_ps, "temperature_K": walk.temperature_K, "refine_sigmas": [],
        "model_init": {"config": {"k": walk.k}, "type_masses": walk.type_masses.tolist()}})
    module = torch.jit.script(walk)
    module.metadata = metadata
    torch.jit.save(module, str(path), _extra_files={"metadata.json": metadata})
    return path


def test_cli_simulate_writes_and_resumes(real_model, molecule, tmp_path, capsys):
    import mdtraj

    from openmm_cgml.cli import main

    topology, positions, mapping = molecule
    pdb = tmp_path / "start.pdb"
    with open(pdb, "w") as handle:
        app.PDBFile.writeFile(topology, positions * u.nanometer, handle)
    model = real_model.path
    common = [str(model), "--pdb", str(pdb), "--report-interval", "5", "--seed", "3", "--platform", "CPU"]

    straight = tmp_path / "straight.dcd"
    assert main(["simulate", *common, "--steps", "30", "--out", str(straight)]) == 0
    assert (tmp_path / "straight_beads.pdb").exists()
    assert "30 model steps" in capsys.readouterr().out

    resumed, checkpoint = tmp_path / "resumed.dcd", tmp_path / "run.chk"
    assert main(["simulate", *common, "--steps", "20", "--out", str(resumed), "--checkpoint", str(checkpoint)]) == 0
    assert main(["simulate", *common, "--steps", "30", "--out", str(resumed), "--checkpoint", str(checkpoint)]) == 0
    top = str(tmp_path / "straight_beads.pdb")
    a, b = mdtraj.load_dcd(str(straight), top=top), mdtraj.load_dcd(str(resumed), top=top)
    assert a.n_frames == b.n_frames == 6
    np.testing.assert_array_equal(a.xyz, b.xyz)

    # an existing trajectory is never overwritten without --overwrite; the error is one clean line
    size = straight.stat().st_size
    assert main(["simulate", *common, "--steps", "10", "--out", str(straight)]) == 2
    assert "exists" in capsys.readouterr().err
    assert straight.stat().st_size == size
    assert main(["simulate", *common, "--steps", "10", "--out", str(tmp_path / "t.txt")]) == 2
    assert "unknown trajectory format" in capsys.readouterr().err
    assert main(["simulate", *common, "--steps", "10", "--out", str(tmp_path / "t.dcd"),
                 "--temperature", "400"]) == 2
    assert "training temperature" in capsys.readouterr().err
    broken = tmp_path / "broken.pt"
    broken.write_bytes(open(model, "rb").read()[:500])  # a truncated model file
    assert main(["simulate", str(broken), *common[1:], "--steps", "10", "--out", str(tmp_path / "b.dcd")]) == 2
    assert "broken.pt" in capsys.readouterr().err
    assert not (tmp_path / "b.dcd").exists()


def test_cli_simulate_guard_keeps_frames(molecule, tmp_path, capsys):
    import mdtraj

    from openmm_cgml.cli import main

    topology, positions, mapping = molecule
    pdb = tmp_path / "start.pdb"
    with open(pdb, "w") as handle:
        app.PDBFile.writeFile(topology, positions * u.nanometer, handle)
    model = save_walk_model(mapping, tmp_path / "model.pt", sigma=0.0, drift=0.02, nan_beyond=2.0)
    out = tmp_path / "traj.xtc"
    code = main(["simulate", str(model), "--pdb", str(pdb), "--steps", "100", "--out", str(out),
                 "--report-interval", "2", "--platform", "CPU", "--trust-model"])
    assert code == 2
    err = capsys.readouterr().err
    assert "NaN" in err and "keeps the frames written so far" in err
    traj = mdtraj.load(str(out), top=str(tmp_path / "traj_beads.pdb"))
    assert traj.n_frames > 3 and np.all(np.isfinite(traj.xyz))
    # XTC frames carry the true simulated time: one frame per 2 model steps of DT_PS
    np.testing.assert_allclose(traj.time, 2 * DT_PS * np.arange(1, traj.n_frames + 1), rtol=1e-5)


def velocities_of(simulation):
    state = simulation.context.getState(getVelocities=True)
    return state.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond)


def test_reported_temperature_is_the_model_temperature(walk, molecule):
    """The thermostat: StateDataReporter's temperature averages to the model's; the velocities are
    Maxwell-Boltzmann for each bead's mass, reproducible, and the dynamics do not depend on them."""
    import io

    simulation = make_simulation(walk, molecule, replicas=8, seed=4, collision_distance=0)
    log = io.StringIO()
    simulation.reporters.append(app.StateDataReporter(log, 1, temperature=True))
    simulation.step(300)
    reported = np.loadtxt(io.StringIO(log.getvalue()), delimiter=",", comments="#")
    target = simulation.integrator.getTemperature().value_in_unit(u.kelvin)
    assert abs(reported.mean() / target - 1) < 0.03, reported.mean()
    masses = np.array([simulation.system.getParticleMass(i).value_in_unit(u.dalton)
                       for i in range(simulation.system.getNumParticles())])
    kT = (u.MOLAR_GAS_CONSTANT_R * target * u.kelvin).value_in_unit(u.kilojoule_per_mole)
    scaled = []
    for _ in range(50):
        simulation.step(1)
        scaled.append(velocities_of(simulation) * np.sqrt(masses / kT)[:, None])
    scaled = np.concatenate(scaled)
    assert abs(scaled.std() - 1) < 0.03 and abs(scaled.mean()) < 0.03   # unit normal once scaled by sqrt(M/kT)
    again = make_simulation(walk, molecule, replicas=8, seed=4, collision_distance=0)
    again.step(350)
    np.testing.assert_array_equal(velocities_of(again), velocities_of(simulation))
    np.testing.assert_array_equal(positions_of(again), positions_of(simulation))
    other = make_simulation(walk, molecule, replicas=8, seed=5, collision_distance=0)
    other.step(3)
    assert not np.allclose(velocities_of(other), velocities_of(again))
