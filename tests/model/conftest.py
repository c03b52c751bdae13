"""The tiny chain molecules, histories and untrained propagators the tests of this folder share.

Fixtures (session-scoped factories; each call builds new tensors and models):

* ``n_beads``: 8, the beads of the default chain (two atoms each, types 6 and 1).
* ``chain_molecule(n_beads=8, atoms_per_bead=2) -> (atom_types, fine_edge_index, bead_of_atom,
  coarse_edge_index)``: a linear molecule, both edge directions.
* ``chain_history(k, n_beads=8, seed=0, dtype=float32) -> (k, N, 3)``: a zig-zag chain (0.38 nm
  bonds) with small random motion, nm.
* ``compressed_history(k, dtype=float64)``: the same chain squeezed to half length along x (bonds
  ~0.26 nm, 1-3 pairs 0.33 nm), inside the hard core of ``hard_core_model``.
* ``make_model(k=3, n_beads=8, n_atoms=16, seed=0, **config) -> CGPropagator``: a small untrained
  propagator for the chain, in eval mode.
* ``hard_core_model(**overrides)``: ``make_model``'s network with learned minima bonded >= 0.30 nm,
  others >= 0.45 nm: the zig-zag chain violates neither at rest, the compressed one both.
"""
import json

import pytest
import torch

from openmm_cgml.model.propagator import CGPropagator, PropagatorConfig

N_BEADS = 8
SMALL = dict(embed_hidden=16, embed_layers=2, hidden=16, n_layers=2, score_hidden=16, score_layers=1,
             cutoff_nm=1.2, refine_sigmas=[0.5, 0.2])


def _chain_molecule(n_beads=N_BEADS, atoms_per_bead=2):
    n_atoms = n_beads * atoms_per_bead
    atom_types = torch.tensor([1 if i % 2 else 6 for i in range(n_atoms)])
    bonds = torch.stack([torch.arange(n_atoms - 1), torch.arange(1, n_atoms)])
    fine_edges = torch.cat([bonds, bonds.flip(0)], 1)
    bead_of_atom = torch.arange(n_atoms) // atoms_per_bead
    coarse = torch.stack([torch.arange(n_beads - 1), torch.arange(1, n_beads)])
    return atom_types, fine_edges, bead_of_atom, torch.cat([coarse, coarse.flip(0)], 1)


def _chain_history(k, n_beads=N_BEADS, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.stack([torch.arange(n_beads) * 0.33, (torch.arange(n_beads) % 2) * 0.2,
                        torch.zeros(n_beads)], 1).double()
    steps = 0.03 * torch.randn(k, n_beads, 3, generator=g, dtype=torch.float64)
    return (base + steps.cumsum(0)).to(dtype)


def _compressed_history(k, dtype=torch.float64):
    history = _chain_history(k, dtype=dtype)
    return history * torch.tensor([0.5, 1.0, 1.0], dtype=dtype)


def _make_model(k=3, n_beads=N_BEADS, n_atoms=2 * N_BEADS, seed=0, **overrides):
    torch.manual_seed(seed)
    config = PropagatorConfig(k=k, **{**SMALL, **overrides})
    masses = torch.zeros(7)
    masses[1], masses[6] = 1.008, 12.011
    return CGPropagator(config, masses, accel_std_nm=0.05, velocity_std_nm=0.08, mass_scale_amu=13.0,
                        model_dt_ps=1.0, md_steps_per_model_step=500, md_timestep_ps=0.002,
                        n_beads=n_beads, n_atoms=n_atoms).eval()


def _hard_core_model(**overrides):
    model = _make_model(**overrides)
    init = json.loads(model.init_json)
    init.update(min_bonded_nm=0.30, min_nonbonded_nm=0.45)
    hard = CGPropagator.from_init_json(json.dumps(init))
    hard.load_state_dict(model.state_dict())
    return hard.eval()


@pytest.fixture(scope="session")
def n_beads():
    return N_BEADS


@pytest.fixture(scope="session")
def chain_molecule():
    return _chain_molecule


@pytest.fixture(scope="session")
def chain_history():
    return _chain_history


@pytest.fixture(scope="session")
def compressed_history():
    return _compressed_history


@pytest.fixture(scope="session")
def make_model():
    return _make_model


@pytest.fixture(scope="session")
def hard_core_model():
    return _hard_core_model
