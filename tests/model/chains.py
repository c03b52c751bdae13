"""Tiny chain molecules, histories and untrained propagators that the tests of this folder share."""
import json

import torch

from openmm_cgml.model.propagator import CGPropagator, PropagatorConfig

N_BEADS = 8
SMALL = dict(embed_hidden=16, embed_layers=2, hidden=16, n_layers=2, score_hidden=16, score_layers=1,
             cutoff_nm=1.2, refine_sigmas=[0.5, 0.2])


def chain_molecule(n_beads=N_BEADS, atoms_per_bead=2):
    """A linear 'molecule': atoms of types 1/6 bonded in a chain, two atoms per bead."""
    n_atoms = n_beads * atoms_per_bead
    atom_types = torch.tensor([1 if i % 2 else 6 for i in range(n_atoms)])
    bonds = torch.stack([torch.arange(n_atoms - 1), torch.arange(1, n_atoms)])
    fine_edges = torch.cat([bonds, bonds.flip(0)], 1)
    bead_of_atom = torch.arange(n_atoms) // atoms_per_bead
    coarse = torch.stack([torch.arange(n_beads - 1), torch.arange(1, n_beads)])
    return atom_types, fine_edges, bead_of_atom, torch.cat([coarse, coarse.flip(0)], 1)


def chain_history(k, n_beads=N_BEADS, seed=0, dtype=torch.float32):
    """k frames of a zig-zag chain (0.38 nm bonds) with small random motion, (k, N, 3) nm."""
    g = torch.Generator().manual_seed(seed)
    base = torch.stack([torch.arange(n_beads) * 0.33, (torch.arange(n_beads) % 2) * 0.2,
                        torch.zeros(n_beads)], 1).double()
    steps = 0.03 * torch.randn(k, n_beads, 3, generator=g, dtype=torch.float64)
    return (base + steps.cumsum(0)).to(dtype)


def make_model(k=3, n_beads=N_BEADS, n_atoms=2 * N_BEADS, seed=0, **overrides):
    torch.manual_seed(seed)
    config = PropagatorConfig(k=k, **{**SMALL, **overrides})
    masses = torch.zeros(7)
    masses[1], masses[6] = 1.008, 12.011
    return CGPropagator(config, masses, accel_std_nm=0.05, velocity_std_nm=0.08, mass_scale_amu=13.0,
                        model_dt_ps=1.0, md_steps_per_model_step=500, md_timestep_ps=0.002,
                        n_beads=n_beads, n_atoms=n_atoms).eval()


def hard_core_model(**overrides):
    """Bonded pairs >= 0.30 nm, others >= 0.45 nm: the zig-zag chain (bonds 0.38, 1-3 pairs 0.66) violates
    neither at rest, the compressed one below violates both."""
    model = make_model(**overrides)
    init = json.loads(model.init_json)
    init.update(min_bonded_nm=0.30, min_nonbonded_nm=0.45)
    hard = CGPropagator.from_init_json(json.dumps(init))
    hard.load_state_dict(model.state_dict())
    return hard.eval()


def compressed_history(k, dtype=torch.float64):
    history = chain_history(k, dtype=dtype)
    return history * torch.tensor([0.5, 1.0, 1.0], dtype=dtype)  # bonds ~0.26 nm, 1-3 pairs 0.33 nm
