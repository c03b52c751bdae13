"""Bead features from the fine bond graph: :class:`EmbeddingGNN` and the pooling per bead.

Topological only (atom types and bonds): computed once per molecule, never
per step. Bead masses come from a per-type mass table (:func:`type_mass_table`),
so types must determine masses.
"""
from typing import Optional

import torch
from torch import Tensor, nn

from openmm_cgml.nn.layers import Block, mlp

__all__ = ["MessageLayer", "EmbeddingGNN", "type_mass_table", "check_embed_inputs", "pool_beads"]


class MessageLayer(Block):
    """One residual message-passing step on a plain graph (sum of neighbour messages).

    Parameters
    ----------
    hidden : int
        Feature width.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = int(hidden)
        self.message = mlp(2 * hidden, hidden, hidden)
        self.update = mlp(2 * hidden, hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def extra_repr(self) -> str:
        return str(self.hidden)

    def forward(self, h: Tensor, edge_index: Tensor) -> Tensor:
        """Updated node features.

        Shapes:
            h (N, hidden), edge_index (2, E) rows [source j, target i] -> (N, hidden)
        """
        source, target = edge_index[0], edge_index[1]
        messages = self.message(torch.cat([h[source], h[target]], dim=-1))
        aggregated = torch.zeros_like(h).index_add(0, target, messages)
        return self.norm(h + self.update(torch.cat([h, aggregated], dim=-1)))


class EmbeddingGNN(Block):
    """Atom features from the fine bond graph (atom types and bonds only: topological).

    Parameters
    ----------
    n_types : int
        Size of the atom-type vocabulary.
    hidden : int
        Feature width.
    n_layers : int
        Message-passing steps.
    """

    def __init__(self, n_types: int, hidden: int = 32, n_layers: int = 3):
        super().__init__()
        self.n_types, self.hidden = int(n_types), int(hidden)
        self.type_embedding = nn.Embedding(n_types, hidden)
        self.layers = nn.ModuleList([MessageLayer(hidden) for _ in range(n_layers)])

    def extra_repr(self) -> str:
        return f"n_types={self.n_types}, hidden={self.hidden}, n_layers={len(self.layers)}"

    def forward(self, atom_types: Tensor, edge_index: Tensor) -> Tensor:
        """Atom features.

        Shapes:
            atom_types (n_atoms,) long, edge_index (2, E) both directions -> (n_atoms, hidden)
        """
        h = self.type_embedding(atom_types)
        for layer in self.layers:
            h = layer(h, edge_index)
        return h


def check_embed_inputs(atom_types: Tensor, fine_edge_index: Tensor, bead_of_atom: Tensor, n_beads: int,
                       model_beads: int, model_atoms: int, type_masses: Tensor) -> None:
    """``ValueError`` saying why a molecule does not fit the model (``embed``'s input checks).

    Parameters
    ----------
    atom_types, fine_edge_index, bead_of_atom, n_beads
        As for ``CGPropagator.embed``.
    model_beads, model_atoms : int
        The molecule the model is for (0 = transferable); whole multiples (copies) pass.
    type_masses : Tensor
        (n_types,) mass per atom type, amu; 0 = a type never seen in training.
    """
    n_atoms = atom_types.size(0)
    if atom_types.dim() != 1 or bead_of_atom.dim() != 1 or bead_of_atom.size(0) != n_atoms:
        raise ValueError("atom_types and bead_of_atom must both have shape (n_atoms,)")
    if model_beads > 0 and (n_beads == 0 or n_beads % model_beads != 0):
        raise ValueError("this model is for a molecule of " + str(model_beads) + " beads, got n_beads = "
                         + str(n_beads))
    if model_atoms > 0 and (n_atoms == 0 or n_atoms % model_atoms != 0
                            or n_atoms // model_atoms != n_beads // model_beads):
        raise ValueError("this model is for a molecule of " + str(model_atoms) + " atoms in "
                         + str(model_beads) + " beads, got " + str(n_atoms) + " atoms in "
                         + str(n_beads) + " beads")
    if n_atoms == 0 or int(bead_of_atom.min()) < 0 or int(bead_of_atom.max()) >= n_beads:
        raise ValueError("bead_of_atom must number beads 0.." + str(n_beads - 1))
    if int(atom_types.min()) < 0 or int(atom_types.max()) >= type_masses.size(0):
        raise ValueError("atom types must be in 0.." + str(type_masses.size(0) - 1)
                         + " (the types seen in training)")
    atom_masses = type_masses[atom_types]
    if not bool((atom_masses > 0).all()):
        raise ValueError("atom type " + str(int(atom_types[atom_masses <= 0][0]))
                         + " was never seen in training (this model does not fit the molecule)")
    if fine_edge_index.dim() != 2 or fine_edge_index.size(0) != 2:
        raise ValueError("fine_edge_index must have shape (2, E)")
    if fine_edge_index.numel() > 0 and (int(fine_edge_index.min()) < 0 or int(fine_edge_index.max()) >= n_atoms):
        raise ValueError("fine_edge_index refers to atoms outside 0.." + str(n_atoms - 1))


def pool_beads(h: Tensor, bead_of_atom: Tensor, atom_masses: Tensor, n_beads: int, mass_scale_amu: float) -> Tensor:
    """Bead features: atom features mean-pooled per bead, then the bead mass over ``mass_scale_amu``.

    Shapes:
        h (n_atoms, H), bead_of_atom (n_atoms,), atom_masses (n_atoms,) amu -> (n_beads, H + 1)
    """
    summed = torch.zeros(n_beads, h.size(1), dtype=h.dtype, device=h.device).index_add(0, bead_of_atom, h)
    ones = torch.ones(bead_of_atom.size(0), dtype=h.dtype, device=h.device)
    counts = torch.zeros(n_beads, dtype=h.dtype, device=h.device).index_add(0, bead_of_atom, ones)
    if bool((counts == 0).any()):
        raise ValueError("every bead needs at least one atom (empty bead in bead_of_atom)")
    mass = torch.zeros(n_beads, dtype=h.dtype, device=h.device).index_add(0, bead_of_atom, atom_masses.to(h.dtype))
    return torch.cat([summed / counts.unsqueeze(1), (mass / mass_scale_amu).unsqueeze(1)], dim=-1)


def type_mass_table(atom_types: Tensor, atom_masses: Tensor, n_types: Optional[int] = None) -> Tensor:
    """Mass (amu) of each atom type; 0 for types not present.

    Parameters
    ----------
    atom_types : array-like of int
        (n_atoms,) type of each atom, >= 0.
    atom_masses : array-like of float
        (n_atoms,) mass of each atom, amu.
    n_types : int, optional
        Minimum table size (default: the largest type + 1).

    Returns
    -------
    Tensor
        (n_types,) float32 masses, amu.

    Raises
    ------
    ValueError
        If one type has two different masses (the embedding derives bead
        masses from types, so types must determine masses).
    """
    atom_types = torch.as_tensor(atom_types, dtype=torch.long).flatten()
    atom_masses = torch.as_tensor(atom_masses, dtype=torch.float64).flatten()
    if atom_types.numel() != atom_masses.numel() or atom_types.numel() == 0:
        raise ValueError("atom_types and atom_masses must be non-empty and of equal length")
    if int(atom_types.min()) < 0:
        raise ValueError("atom types must be >= 0")
    size = max(int(atom_types.max()) + 1, n_types or 0)
    table = torch.zeros(size, dtype=torch.float64)
    table[atom_types] = atom_masses
    if not torch.allclose(table[atom_types], atom_masses, rtol=1e-4):
        bad = torch.unique(atom_types[~torch.isclose(table[atom_types], atom_masses, rtol=1e-4)]).tolist()
        raise ValueError(f"atom type(s) {bad} occur with different masses; the model needs one mass per type")
    if not bool((atom_masses > 0).all()):
        raise ValueError("atom masses must be > 0 amu")
    return table.float()
