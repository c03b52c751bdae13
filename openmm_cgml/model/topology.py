"""What a model step reads off the coarse bonds alone, computed once per topology.

A rollout steps one topology thousands of times. The chirality features'
bond tables, the internal-coordinate forest (and the pointer-doubling rounds
its rebuild needs), the Dynamics network's local graph with its angle
triplets and the sorted bond keys of the exclusion checks depend on the
bonds and the bead count only; a fixed-work step (``CGPropagator.fixed_work``) also
reads every bead pair of each molecule, which depends on the molecules only.
``CGPropagator.validate`` computes them with
the input checks and stores them here, and ``step`` reads them: right after
validating its own inputs (``validate_inputs`` on), or while its caller
vouches that the topology is the validated one (off, as inside
``CGModel.validated``). Reuse compares sizes and the device (tensor
metadata, no host sync): a different topology of the same sizes under a
vouching caller is that caller's error.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from openmm_cgml.model.chirality import bond_tables
from openmm_cgml.model.hard_core import bonded_pairs
from openmm_cgml.model.internal_coordinates import doubling_rounds, torsion_references, tree_layout
from openmm_cgml.nn.neighbors import molecule_pairs
from openmm_cgml.nn.paxnet import bond_keys, bond_local_tables

__all__ = ["TopologyCache"]


class TopologyCache(nn.Module):
    """The topology tables (name -> tensors) of the last validated inputs; nothing persistent.

    Parameters
    ----------
    chirality, forest, local : bool
        Whether the model reads the chirality bond tables, the internal-coordinate forest, and the Dynamics
        network's local tables (a network without ``local_cutoff``, whose local graph is the bonds).

    Moving the model (``.to``) empties it, so no table is left on another device.
    """

    tables: Dict[str, List[Tensor]]

    def __init__(self, chirality: bool = False, forest: bool = False, local: bool = False):
        super().__init__()
        self.chirality, self.forest, self.local = bool(chirality), bool(forest), bool(local)
        self.clear()

    def clear(self) -> None:
        """Forget the stored tables."""
        self.n_beads, self.n_bonds, self.rounds = -1, -1, -1
        self.tables = {}

    def _apply(self, fn, *args, **kwargs):
        self.clear()
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"chirality={self.chirality}, forest={self.forest}, local={self.local}, n_beads={self.n_beads}, "
                f"n_bonds={self.n_bonds}, tables={sorted(self.tables)}")

    def compute(self, coarse_edge_index: Tensor, n: int, batch: Optional[Tensor] = None) -> Dict[str, List[Tensor]]:
        """The tables of ``n`` beads bonded by ``coarse_edge_index`` (2, E), afresh and unstored: ``bond_keys``
        always, ``chirality``, ``forest`` (tree layout and torsion references) and ``local`` where the model reads
        them, and given the molecules ``batch`` (N,) (a fixed-work step), ``pairs``: every bead pair within each
        molecule, where the molecules are small enough (:func:`~openmm_cgml.nn.neighbors.molecule_pairs`), which
        the step takes instead of radius graphs on open boundaries, and which of them are bonds."""
        tables = {"bond_keys": [bond_keys(coarse_edge_index, n)]}
        if batch is not None:
            pairs = molecule_pairs(batch)
            if pairs is not None:
                tables["pairs"] = [pairs, bonded_pairs(pairs, n, tables["bond_keys"][0])]
        if self.chirality:
            tables["chirality"] = bond_tables(coarse_edge_index, n)
        if self.forest:
            parent, root, anchor, dof = tree_layout(coarse_edge_index, n)
            tables["forest"] = [parent, root, anchor, dof, torsion_references(parent)]
        if self.local:
            tables["local"] = bond_local_tables(coarse_edge_index, n)
        return tables

    def fill(self, coarse_edge_index: Tensor, n: int, batch: Optional[Tensor] = None) -> None:
        """Compute and store the tables, and the forest's doubling rounds (host syncs: once per topology)."""
        tables = self.compute(coarse_edge_index, n, batch)
        self.store(coarse_edge_index, n, tables, doubling_rounds(tables["forest"][0]) if self.forest else -1)

    def get(self, coarse_edge_index: Tensor, n: int, batch: Optional[Tensor] = None
            ) -> Tuple[Dict[str, List[Tensor]], int]:
        """The stored tables and rounds if they fit, else fresh tables of these bonds and molecules ``batch`` and
        -1 (rounds enough for any forest)."""
        stored = self.lookup(coarse_edge_index, n)
        if stored is not None:
            return stored, self.rounds
        return self.compute(coarse_edge_index, n, batch), -1

    def store(self, coarse_edge_index: Tensor, n: int, tables: Dict[str, List[Tensor]], rounds: int = -1) -> None:
        """Keep ``tables`` as those of ``n`` beads bonded by ``coarse_edge_index`` (2, E), with ``rounds`` the
        pointer-doubling rounds of their forest (-1: not known)."""
        self.n_beads, self.n_bonds, self.rounds = n, coarse_edge_index.size(1), rounds
        # a copy of the index (2, E): the checks below need a tensor made here, whatever else is stored
        tables["bonds"] = [coarse_edge_index.clone()]
        self.tables = tables

    def lookup(self, coarse_edge_index: Tensor, n: int) -> Optional[Dict[str, List[Tensor]]]:
        """The stored tables if they are for ``n`` beads and as many bonds on the same device (and usable where
        autograd records), else None."""
        if self.n_beads != n or self.n_bonds != coarse_edge_index.size(1) or "bonds" not in self.tables:
            return None
        if self.tables["bonds"][0].device != coarse_edge_index.device:
            return None
        # tables made in inference mode cannot be saved for backward: rebuilt where autograd records
        if torch.is_grad_enabled() and self.tables["bonds"][0].is_inference():
            return None
        return self.tables
