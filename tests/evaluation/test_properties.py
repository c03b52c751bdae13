"""Property task on real OpenMM data: sampling, dipoles, splits, energy/force/dipole model."""
import numpy as np
import pytest
import torch

from openmm_cgml.evaluation.properties import (
    DEBYE_PER_E_NM,
    PaxNetAtomwise,
    PropertyData,
    PropertyModel,
    dipole_moments,
    evaluate,
    sample_configurations,
    train,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("props")
    return sample_configurations(out, temperatures=(300.0, 500.0), trajectories_per_temperature=2, frames=6,
                                 stride=20, seed=3, platform="CPU")


def test_sampled_frames_carry_openmm_labels(data):
    assert data.positions.shape == (24, 22, 3) and data.forces.shape == (24, 22, 3)
    assert sorted(set(data.trajectory.tolist())) == [0, 1, 2, 3]
    assert set(data.temperature.tolist()) == {300.0, 500.0}
    assert abs(data.charges.sum()) < 1e-6 and data.atom_types[0] == 6
    # energies and forces come from the force field: recompute one frame with OpenMM
    import openmm as mm
    import openmm.unit as u

    from openmm_cgml import systems

    ref = systems.load("alanine-dipeptide", constraints="None")
    context = mm.Context(ref.system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(data.positions[7].astype(np.float64))
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
    assert data.energies[7] == pytest.approx(energy, abs=0.05)
    np.testing.assert_allclose(data.forces[7], forces, atol=0.5, rtol=1e-3)
    # frames of one trajectory move; trajectories differ
    assert np.abs(data.positions[1] - data.positions[0]).max() > 1e-3
    assert np.abs(data.positions[6] - data.positions[0]).max() > 1e-3


def test_dipole_is_charge_weighted_and_origin_free(data):
    mu = dipole_moments(data.positions.astype(np.float64), data.charges)
    np.testing.assert_allclose(data.dipoles, mu)
    direct = np.einsum("fni,n->fi", data.positions.astype(np.float64), data.charges)   # neutral molecule
    np.testing.assert_allclose(mu, direct, atol=1e-5)
    np.testing.assert_allclose(dipole_moments(data.positions + 3.0, data.charges), mu, atol=1e-5)
    assert 0.5 < np.linalg.norm(mu, axis=1).mean() * DEBYE_PER_E_NM < 10.0   # Debye, physically sensible


def test_split_is_by_trajectory(data):
    train_idx, test_idx = data.split([1, 3])
    assert not set(data.trajectory[train_idx]) & set(data.trajectory[test_idx])
    assert len(train_idx) + len(test_idx) == data.n_frames
    with pytest.raises(ValueError, match="empty"):
        data.split([7])


def test_save_load_and_bad_files(data, tmp_path):
    path = tmp_path / "d.npz"
    data.save(path)
    back = PropertyData.load(path)
    np.testing.assert_array_equal(back.forces, data.forces)
    with pytest.raises(FileNotFoundError):
        PropertyData.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a property data file"):
        PropertyData.load(tmp_path / "bad.npz")
    broken = PropertyData(**{**data.__dict__, "positions": data.positions * np.nan})
    broken.save(tmp_path / "nan.npz")
    with pytest.raises(ValueError, match="NaN"):
        PropertyData.load(tmp_path / "nan.npz")
    assert path.exists()           # a failed load never touches other files


def test_forces_are_the_negative_gradient_and_dipole_rotates(data):
    torch.manual_seed(0)
    model = PropertyModel(PaxNetAtomwise(hidden=16, n_layers=2, cutoff=0.5)).double()
    model.fit_normalisation(data, np.arange(data.n_frames))
    heads = list(model.atomwise.scalar_head[-1].parameters()) + list(model.atomwise.vector_head.parameters())
    for parameter in heads:                  # the heads start at zero; make the outputs non-trivial
        torch.nn.init.normal_(parameter, std=0.5)
    z = torch.as_tensor(data.atom_types)
    pos = torch.as_tensor(data.positions[0], dtype=torch.float64)
    bonds = torch.as_tensor(data.bonds).t()
    batch = torch.zeros(22, dtype=torch.long)
    energy, forces, dipole = model(z, pos.clone(), batch, bonds, 1)
    assert forces.abs().max() > 1.0 and dipole.abs().max() > 1e-3
    step = 1e-5
    for atom, axis in ((0, 0), (5, 2), (13, 1)):
        plus, minus = pos.clone(), pos.clone()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        numeric = -(model(z, plus, batch, bonds, 1)[0] - model(z, minus, batch, bonds, 1)[0]) / (2 * step)
        assert float(forces[atom, axis].detach()) == pytest.approx(float(numeric.detach()), rel=1e-4, abs=1e-3)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    energy2, forces2, dipole2 = model(z, pos @ q.T + 1.0, batch, bonds, 1)
    torch.testing.assert_close(energy2, energy)
    torch.testing.assert_close(forces2, forces @ q.T)
    torch.testing.assert_close(dipole2, dipole @ q.T)


def test_training_reduces_the_loss_and_evaluate_reports_maes(data):
    torch.manual_seed(0)
    model = PropertyModel(PaxNetAtomwise(hidden=16, n_layers=1, cutoff=0.5))
    train_idx, test_idx = data.split([3])
    history = train(model, data, train_idx, epochs=15, batch_size=6, lr=5e-3, seed=0)
    assert history["epochs"] == 15 and history["loss"][-1] < 0.5 * history["loss"][0]
    metrics = evaluate(model, data, test_idx, batch_size=6)
    assert set(metrics) == {"energy_mae", "force_mae", "dipole_mae", "infer_ms_per_batch"}
    assert all(np.isfinite(v) and v > 0 for v in metrics.values())
    with pytest.raises(ValueError, match="epochs"):
        train(model, data, train_idx, epochs=0)
