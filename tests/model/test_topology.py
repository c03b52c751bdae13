"""The topology tables a step reads off the bonds: stored by ``validate``, reused only while the caller vouches."""
import pytest
import torch

from openmm_cgml.model.topology import TopologyCache


def _chain_inputs(model, chain_molecule, chain_history, n_beads, copies=1):
    atom_types, fine_edges, bead_of_atom, coarse = chain_molecule()
    features = model.embed(atom_types, fine_edges, bead_of_atom, n_beads).repeat(copies, 1)
    history = torch.cat([chain_history(model.k) + torch.tensor([40.0 * c, 0.0, 0.0]) for c in range(copies)], 1)
    edges = torch.cat([coarse + c * n_beads for c in range(copies)], 1)
    batch = torch.arange(copies).repeat_interleave(n_beads)
    return history, features, edges, batch, torch.zeros(3, 3)


@pytest.mark.parametrize("noise_model, copies, n_chain", [("independent", 1, 8), ("internal", 1, 8), ("internal", 5, 8),
                                                     ("internal", 3, 5)])
def test_reused_tables_give_the_step_of_fresh_ones(noise_model, copies, n_chain, make_model, chain_molecule,
                                                   chain_history):
    model = torch.jit.script(make_model(n_beads=n_chain, n_atoms=2 * n_chain, noise=noise_model, chirality=True,
                                        exclusion_retries=2))
    history, features, edges, batch, box = _chain_inputs(model, lambda: chain_molecule(n_chain),
                                                         lambda k: chain_history(k, n_chain), n_chain, copies)
    noise = torch.randn(model.noise_draws(True), copies * n_chain, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fresh = model.step(history, features, edges, batch, box, noise, True)
        model.validate(history, features, edges, batch)
        model.validate_inputs = False
        reused = model.step(history, features, edges, batch, box, noise, True)
    assert sorted(model.topology.tables) == sorted(["bonds", "bond_keys", "chirality", "local"]
                                                   + (["forest"] if noise_model == "internal" else []))
    # the stored forest is rebuilt in as many doubling rounds as one chain needs (its last bead composes n_chain
    # transforms), whatever the copies
    assert model.topology.rounds == (3 if noise_model == "internal" else -1)
    torch.testing.assert_close(reused, fresh, atol=1e-6, rtol=0)


def test_tables_of_another_size_are_not_reused(make_model, chain_molecule, chain_history, n_beads):
    model = make_model(chirality=True)
    one = _chain_inputs(model, chain_molecule, chain_history, n_beads)
    two = _chain_inputs(model, chain_molecule, chain_history, n_beads, copies=2)
    model.validate(*one[:4])
    model.validate_inputs = False
    assert model.topology.lookup(one[2], n_beads) is not None
    assert model.topology.lookup(two[2], 2 * n_beads) is None           # more beads and bonds: computed afresh
    noise = torch.randn(model.noise_draws(False), 2 * n_beads, 3)
    with torch.no_grad():
        step = model.step(*two, noise, False)
    model.validate_inputs = True
    with torch.no_grad():
        checked = model.step(*two, noise, False)
    torch.testing.assert_close(step, checked, atol=0, rtol=0)


def test_moving_the_model_or_recording_gradients_drops_the_tables(make_model, chain_molecule, chain_history, n_beads):
    model = make_model()
    history, features, edges, batch, _ = _chain_inputs(model, chain_molecule, chain_history, n_beads)
    with torch.inference_mode():
        model.validate(history, features, edges, batch)
        assert model.topology.lookup(edges, n_beads) is not None
    # inference tensors cannot be saved for backward: not handed out where autograd records
    assert model.topology.lookup(edges, n_beads) is None
    with torch.no_grad():
        assert model.topology.lookup(edges, n_beads) is not None
    model.to(torch.float64)
    assert model.topology.lookup(edges, n_beads) is None and model.topology.tables == {}


def test_cache_compares_sizes_and_device_only():
    cache = TopologyCache()
    bonds = torch.tensor([[0, 1], [1, 2]])
    assert cache.lookup(bonds, 3) is None
    cache.store(bonds, 3, {"bond_keys": [torch.arange(4)]})
    assert cache.lookup(bonds, 3)["bond_keys"][0].tolist() == [0, 1, 2, 3]
    assert cache.lookup(bonds, 4) is None and cache.lookup(bonds[:, :1], 3) is None
    assert "n_beads=3, n_bonds=2" in repr(cache)

