"""The openmm-torch TorchForce path (``openmm_cgml.openmm.torchforce``, timed by bench/integrator_paths.py)
against CGMLIntegrator.

Real objects only: an exported (untrained) CGPropagator for a 10-bead
polymer chain, openmm-torch's TorchForce, a CustomIntegrator and
CGMLIntegrator on the CPU platform. The TorchForce path must move the beads
exactly as the torch rollout does, and its guard must keep extra force
evaluations (getState(getForces/getEnergy)) from advancing the history,
which the naive module does not.
"""
import os

import numpy as np
import openmm
import openmm.unit as u
import pytest
import torch  # before openmm: openmm-torch's plugin needs torch's libraries loaded

pytest.importorskip("openmmtorch")

from openmm_cgml.openmm.bead_system import coarse_grained_system  # noqa: E402
from openmm_cgml.openmm.integrator import CGMLIntegrator  # noqa: E402

K = 4
STEPS = 6



from openmm_cgml import systems  # noqa: E402
from openmm_cgml.mapping import Mapping  # noqa: E402
from openmm_cgml.model.propagator import CGPropagator, PropagatorConfig  # noqa: E402
from openmm_cgml.model_file import export_model, load  # noqa: E402
from openmm_cgml.openmm import torchforce as paths  # noqa: E402
from openmm_cgml.openmm.rollout import model_graph  # noqa: E402


def polymer_model(n_beads: int, k: int, directory: str):
    """An exported, untrained propagator for a ``n_beads``-bead polymer chain (one bead per particle)."""
    reference = systems.load("polymer-chain", length=n_beads // 2)
    mapping = Mapping.metis(reference.topology, reference.masses, atoms_per_bead=1, atom_types=reference.atom_types)
    dt = reference.timestep.value_in_unit(u.picosecond)
    steps = 500
    module = CGPropagator.from_mapping(
        mapping, PropagatorConfig(k=k), model_dt_ps=steps * dt, md_steps_per_model_step=steps, md_timestep_ps=dt,
        temperature_K=reference.temperature.value_in_unit(u.kelvin), accel_std_nm=1e-2, velocity_std_nm=1e-2)
    model = load(export_model(module, os.path.join(directory, f"polymer{n_beads}.safetensors"), {"mapping": mapping}))
    return model, reference


@pytest.fixture(scope="module")
def polymer(tmp_path_factory):
    model, reference = polymer_model(10, K, str(tmp_path_factory.mktemp("model")))
    cg = coarse_grained_system(model, reference.topology, reference.positions)
    return model, cg


def _cpu():
    return openmm.Platform.getPlatformByName("CPU")


def _positions(context):
    return context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)


def _rollout_trajectory(model, cg, steps=STEPS):
    integrator = CGMLIntegrator(model, seed=1, collision_distance=0.0)
    context = openmm.Context(cg.system, integrator, _cpu())
    context.setPositions(cg.positions)
    frames = []
    for _ in range(steps):
        integrator.step(1)
        frames.append(_positions(context))
    return np.array(frames)


def _torchforce_trajectory(model, cg, steps=STEPS, extra_evaluations=False, guard=True):
    context, integrator = paths.torchforce_context(model, cg, _cpu(), seed=1, noise_steps=16,
                                                   properties={"Threads": "1"}, guard=guard)
    frames = []
    for _ in range(steps):
        integrator.step(1)
        if extra_evaluations:  # what a StateDataReporter with potentialEnergy=True does
            context.getState(getForces=True, getEnergy=True)
            context.getState(getEnergy=True)
        frames.append(_positions(context))
    return np.array(frames), context


def test_torchforce_moves_beads_as_the_rollout(polymer):
    model, cg = polymer
    expected = _rollout_trajectory(model, cg)
    got, context = _torchforce_trajectory(model, cg)
    assert np.abs(expected[-1] - cg.positions.value_in_unit(u.nanometer)).max() > 1e-4  # the beads did move
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # time and step count advance by model steps, as CGMLIntegrator's do
    assert context.getStepCount() == STEPS
    assert context.getTime().value_in_unit(u.picosecond) == pytest.approx(STEPS * model.module.model_dt_ps)


def test_guard_ignores_extra_force_evaluations(polymer):
    model, cg = polymer
    plain, _ = _torchforce_trajectory(model, cg)
    guarded, _ = _torchforce_trajectory(model, cg, extra_evaluations=True)
    np.testing.assert_allclose(guarded, plain, rtol=0, atol=1e-6)


def test_naive_module_is_corrupted_by_extra_evaluations(polymer):
    """The pitfall: without the guard each getState(getForces/getEnergy) takes a hidden model step."""
    model, cg = polymer
    plain, _ = _torchforce_trajectory(model, cg, guard=True)
    naive_alone, _ = _torchforce_trajectory(model, cg, guard=False)
    naive_reported, _ = _torchforce_trajectory(model, cg, guard=False, extra_evaluations=True)
    np.testing.assert_allclose(naive_alone, plain, rtol=0, atol=1e-6)  # same design when nobody asks
    assert np.abs(naive_reported[1:] - plain[1:]).max() > 1e-4


def test_moved_positions_restart_history_like_the_rollout(polymer):
    model, cg = polymer
    start = cg.positions.value_in_unit(u.nanometer)
    moved = start + np.array([0.05, 0.0, 0.0])

    integrator = CGMLIntegrator(model, seed=1, collision_distance=0.0)
    rollout_context = openmm.Context(cg.system, integrator, _cpu())
    tf_context, tf_integrator = paths.torchforce_context(model, cg, _cpu(), seed=1, noise_steps=16)
    for context, stepper in ((rollout_context, integrator), (tf_context, tf_integrator)):
        context.setPositions(start)
        stepper.step(2)
        context.setPositions(moved)  # the user moves the beads: both start a new warm-up here
        stepper.step(2)
    np.testing.assert_allclose(_positions(tf_context), _positions(rollout_context), rtol=0, atol=1e-6)


def test_history_buffers_carry_no_autograd_graph(polymer):
    """openmm-torch calls the module with autograd on: buffers must not chain graphs across steps."""
    model, cg = polymer
    edges, batch = model_graph(model.mapping, 1)
    wrapper = torch.jit.script(paths.GuardedTorchForcePropagator(
        model.module, model.embed_mapping(), edges, batch, torch.randn(4, model.noise_draws(True), 10, 3), K))
    positions = torch.as_tensor(cg.positions.value_in_unit(u.nanometer), dtype=torch.float64)
    with torch.enable_grad():
        for step in range(1, 4):
            # as openmm-torch passes them: requires_grad even with setOutputsForces(True)
            positions = positions.detach().requires_grad_(True)
            _, displacement = wrapper(positions, torch.tensor(float(step), dtype=torch.float64))
            positions = positions + displacement
    assert wrapper.history.grad_fn is None and not wrapper.history.requires_grad
    assert wrapper.displacement.grad_fn is None
    assert torch.isfinite(wrapper.history).all()
