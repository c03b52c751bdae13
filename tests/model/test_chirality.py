"""The ``chirality`` switch: reflection-odd bead inputs make the Dynamics network SE(3)- instead of E(3)-equivariant."""
import json

import pytest
import torch

from openmm_cgml.model.chirality import N_PSEUDO, pseudo_scalars
from openmm_cgml.model.propagator import CGPropagator, PropagatorConfig
from openmm_cgml.model_file import export_model, load


def orthogonal(seed, det):
    """A random 3x3 orthogonal matrix (float64) with determinant ``det`` (+1 rotation, -1 reflection)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if float(torch.det(q)) * det < 0:
        q[:, 0] = -q[:, 0]
    return q


@pytest.fixture
def chain_inputs(chain_molecule, chain_history, n_beads):
    """``chain_inputs(model) -> (history, features, coarse, batch, box)``, float64, for the default chain."""
    def build(model):
        atom_types, fine_edges, bead_of_atom, coarse = chain_molecule()
        with torch.no_grad():
            features = model.embed(atom_types, fine_edges, bead_of_atom, n_beads).double()
        return (chain_history(model.k, dtype=torch.float64), features, coarse, torch.zeros(n_beads, dtype=torch.long),
                torch.zeros(3, 3, dtype=torch.float64))
    return build


def _predict_moved(model, inputs, matrix, shift):
    history, features, coarse, batch, box = inputs
    with torch.no_grad():
        mean, std = model.predict(history, features, coarse, batch, box)
        mean2, std2 = model.predict(history @ matrix.T + shift, features, coarse, batch, box)
    return mean, std, mean2, std2


def test_rotation_keeps_mean_equivariant_and_std_invariant(make_model, chain_inputs):
    model = make_model(chirality=True).double()
    assert model.chirality
    shift = torch.tensor([0.4, -1.1, 2.0], dtype=torch.float64)
    mean, std, mean2, std2 = _predict_moved(model, chain_inputs(model), orthogonal(3, +1), shift)
    assert mean.abs().max() > 1e-6
    torch.testing.assert_close(mean2, mean @ orthogonal(3, +1).T, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(std2, std, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("chirality", [False, True])
def test_reflection_breaks_equivariance_only_with_chirality(make_model, chain_inputs, chirality):
    model = make_model(chirality=chirality).double()
    reflection = orthogonal(4, -1)
    mean, std, mean2, std2 = _predict_moved(model, chain_inputs(model), reflection, torch.zeros(3, dtype=torch.float64))
    gap = float((mean2 - mean @ reflection.T).abs().max())
    if chirality:
        assert gap > 1e-3 * float(mean.abs().max())  # far above float64 noise (~1e-15 relative)
    else:
        torch.testing.assert_close(mean2, mean @ reflection.T, atol=1e-9, rtol=1e-7)
        torch.testing.assert_close(std2, std, atol=1e-9, rtol=1e-7)


def _branched():
    """Positions (6, 3) and one-way bonds of a bead with four neighbours and a tail: 0-1, 0-2, 0-3, 0-4, 4-5."""
    g = torch.Generator().manual_seed(7)
    pos = torch.randn(6, 3, generator=g, dtype=torch.float64)
    return pos, torch.tensor([[0, 0, 0, 0, 4], [1, 2, 3, 4, 5]])


def test_pseudo_scalars_odd_under_reflection_invariant_under_rotation(chain_history, chain_molecule):
    pos = chain_history(1, dtype=torch.float64)[0]
    coarse = chain_molecule()[3]
    feats = pseudo_scalars(pos, coarse)
    assert feats.shape == (pos.size(0), N_PSEUDO) and bool((feats.abs() <= 1).all())
    assert int((feats[:, 1] != 0).sum()) == int((feats[:, 2] != 0).sum()) == pos.size(0) - 3  # chain: torsions
    assert bool((feats[:, 0] == 0).all())  # no bead of a chain has three neighbours
    shift = torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)
    for p, edges in ((pos, coarse), _branched()):
        base = pseudo_scalars(p, edges)
        assert base.abs().max() > 1e-3
        torch.testing.assert_close(pseudo_scalars(p @ orthogonal(5, +1).T + shift, edges), base, atol=1e-12, rtol=0)
        torch.testing.assert_close(pseudo_scalars(p @ orthogonal(6, -1).T + shift, edges), -base, atol=1e-12, rtol=0)
        torch.testing.assert_close(pseudo_scalars(2.5 * p, edges), base, atol=1e-12, rtol=0)  # scale-free
        # one direction or both, duplicates: the same bonds, the same features
        both = torch.cat([edges, edges.flip(0), edges], 1)
        torch.testing.assert_close(pseudo_scalars(p, both), base, atol=0, rtol=0)


def test_pseudo_scalars_batched_and_scripted(chain_history, chain_molecule, n_beads):
    branched_pos, branched_edges = _branched()
    chain_pos, chain_edges = chain_history(1, dtype=torch.float64)[0], chain_molecule()[3]
    # a batch of [chain, branched, chain]: bead indices offset per molecule
    pos = torch.cat([chain_pos, branched_pos, chain_pos + 5.0])
    edges = torch.cat([chain_edges, branched_edges + n_beads, chain_edges + n_beads + 6], 1)
    batched = pseudo_scalars(pos, edges)
    expected = torch.cat([pseudo_scalars(chain_pos, chain_edges), pseudo_scalars(branched_pos, branched_edges),
                          pseudo_scalars(chain_pos, chain_edges)])
    torch.testing.assert_close(batched, expected, atol=1e-12, rtol=0)  # the third copy is shifted: rounding
    assert batched[n_beads, 0] != 0  # the branch point has a star volume
    torch.testing.assert_close(torch.jit.script(pseudo_scalars)(pos, edges), batched, atol=0, rtol=0)


def test_chirality_gradients_finite(make_model, chain_history, chain_molecule, n_beads):
    model = make_model(chirality=True).train()
    atom_types, fine_edges, bead_of_atom, coarse = chain_molecule()
    history = chain_history(4)
    sigma = torch.full((n_beads, 1), 0.1)
    losses = model.losses(history[:3], history[3], model.embed(atom_types, fine_edges, bead_of_atom, n_beads), coarse,
                          torch.zeros(n_beads, dtype=torch.long), torch.zeros(3, 3), sigma, sigma)
    (losses["nll"] + losses["dsm"]).backward()
    grads = [p.grad for p in model.dynamics.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_chirality_model_exports_and_loads(tmp_path, make_model, chain_history, chain_molecule, n_beads, suffix):
    model = make_model(chirality=True)
    path = export_model(model, tmp_path / f"chiral{suffix}")
    loaded = load(path, trusted=suffix == ".pt")
    assert json.loads(loaded.module.init_json)["config"]["chirality"] is True
    atom_types, fine_edges, bead_of_atom, coarse = chain_molecule()
    history, batch, box = chain_history(3), torch.zeros(n_beads, dtype=torch.long), torch.zeros(3, 3)
    with torch.no_grad():
        features = model.embed(atom_types, fine_edges, bead_of_atom, n_beads)
        for got, want in zip(loaded.predict(history, features, coarse, batch, box),
                             model.predict(history, features, coarse, batch, box)):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
        noise = torch.randn(loaded.noise_draws(True), n_beads, 3)
        torch.testing.assert_close(loaded.step(history, features, coarse, batch, box, noise, True),
                                   model.step(history, features, coarse, batch, box, noise, True), atol=0, rtol=0)
    assert PropagatorConfig.from_dict({}).chirality is False and PropagatorConfig().chirality is False
    with pytest.raises(ValueError, match="model.chirality"):
        PropagatorConfig.from_dict({"chirality": "yes"})


def test_switch_off_is_the_model_before_the_switch(make_model, chain_inputs, n_beads):
    """Off (the default): a config without the key (old files' ``model_init``) builds the same network."""
    model = make_model()
    init = json.loads(model.init_json)
    assert init["config"].pop("chirality") is False
    torch.manual_seed(0)  # the seed make_model used
    old = CGPropagator.from_init_json(json.dumps(init)).eval()
    assert old.dynamics.scalar_in == model.k - 1 + model.n_features
    assert {k: v.shape for k, v in old.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    for key, value in old.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key], atol=0, rtol=0)
    history, features, coarse, batch, box = chain_inputs(model)
    history, features, box = history.float(), features.float(), box.float()
    with torch.no_grad():
        for got, want in zip(old.predict(history, features, coarse, batch, box),
                             model.predict(history, features, coarse, batch, box)):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert make_model(chirality=True).dynamics.scalar_in == model.dynamics.scalar_in + N_PSEUDO
