"""Excluded volume after a step: which molecules have a pair closer than its minimum, and the hard core.

``violating_beads`` marks every bead of a molecule with a pair closer than
its minimum distance (the step's truncation redraws those molecules); the
hard core (``project_hard_core``) pushes such pairs apart.

TorchScript functions called by :meth:`~openmm_cgml.model.propagator.CGPropagator.step`;
the minimum distances (bonded and non-bonded, nm) are learned from the
reference data (``openmm_cgml.data.CoarseDataset.min_distances``).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from openmm_cgml.nn import radius_graph

__all__ = ["bonded_pairs", "contact_graph", "molecules_with", "near_pairs", "pair_minimum", "project_hard_core",
           "violating_beads"]


def contact_graph(x: Tensor, batch: Tensor, box: Optional[Tensor], limit: float, edge: Tensor, shift: Tensor,
                  built_at: Tensor, graph_cutoff: float) -> Tuple[Tensor, Tensor]:
    """A radius graph (edges, shifts) holding every pair of ``x`` closer than ``2 * limit`` nm.

    The Score graph ``edge``/``shift`` (built at ``built_at`` with
    ``graph_cutoff``) is reused unless beads moved from there by more than the
    skin (as for a Verlet list); else, or without one (empty ``edge``), a
    short-range graph at ``x`` is built. ``2 * limit``: a correction moves a
    bead by at most ~limit, so the beads it can be pushed into are in the graph too.

    Shapes:
        x, built_at (N, 3) nm, batch (N,), box (G, 3, 3) or None, edge (2, E), shift (E, 3)
        -> edge (2, E'), shift (E', 3)
    """
    reuse = edge.size(1) > 0
    if reuse:
        moved = torch.linalg.vector_norm(x - built_at, dim=-1).max()
        reuse = bool(2.0 * moved + 2.0 * limit < graph_cutoff)
    if not reuse:
        edge, shift = radius_graph(x, 2.0 * limit, batch, box)
    return edge, shift


def near_pairs(x: Tensor, edge: Tensor, shift: Tensor, limit: float) -> Tensor:
    """Which pairs of ``edge`` are within 1.25 x ``limit`` nm (the larger minimum distance): those the hard core
    works on in a round, as a correction can push a bead into a neighbour just outside its minimum.

    Shapes:
        x (N, 3) nm, edge (2, E), shift (E, 3) or broadcastable -> (E,) bool
    """
    return torch.linalg.vector_norm(x[edge[1]] - x[edge[0]] + shift, dim=-1) < 1.25 * limit


def project_hard_core(x: Tensor, masses: Tensor, edge: Tensor, shift: Tensor, minimum: Tensor, limit: float,
                      sweeps: int, events: Tensor, early_exit: bool = True) -> Tensor:
    """Push bead pairs closer than their minimum distance apart (SHAKE-like, for inequalities).

    ``edge``/``shift`` a radius graph (both directions) that holds every
    close pair, ``minimum`` each pair's minimum distance (:func:`pair_minimum`). Each violating pair is moved apart
    along its pair vector by the violation, shared inversely to the masses, so
    the centre of mass never moves; Jacobi sweeps (all pairs at once), so a
    bead in several violations gets the sum of its corrections. Three rounds, each over the pairs within
    1.25 x their limit at its start (a correction can push a bead into a neighbour). Only pair
    vectors enter: exactly E(3)-equivariant, and the identity when no pair is
    too close. ``limit`` is the larger minimum distance (nm, a Python float); ``events``
    (a long scalar) counts the close pairs pushed apart, in place.

    Pairs outside a round's selection are pushed by exactly zero (masks, fixed shapes). ``early_exit``: stop
    when no pair is near or too close (a host read each time, the cheap common case on the CPU); False does
    every round and sweep with no host read (fixed-work steps), to the same positions bit for bit.

    Shapes:
        x (N, 3) nm, masses (N,), edge (2, E), shift (E, 3), minimum (E,) nm -> (N, 3)
    """
    j, i = edge[0], edge[1]
    share = (masses[j] / (masses[i] + masses[j])).unsqueeze(-1)   # i moves by m_j / (m_i + m_j)
    counted = torch.zeros((), dtype=torch.bool, device=x.device)
    for _ in range(3):
        near = near_pairs(x, edge, shift, limit)
        if early_exit and not bool(near.any()):
            return x
        moved = False
        for _sweep in range(sweeps):
            vec = x[i] - x[j] + shift
            dist = torch.linalg.vector_norm(vec, dim=-1).clamp_min(1e-9)
            push = torch.where(near, (minimum - dist).clamp_min(0.0), torch.zeros_like(dist))
            if early_exit and not bool((push > 0).any()):
                break
            hits = (push > 0).sum() // 2   # both directions of each pair
            events.add_(torch.where(counted, torch.zeros_like(hits), hits))
            counted = counted | (hits > 0)
            moved = True
            x = x.index_add(0, i, share * (push / dist).unsqueeze(-1) * vec)
        if early_exit and not moved:
            return x
    return x


def violating_beads(x: Tensor, batch: Tensor, edge: Tensor, shift: Tensor, minimum: Tensor) -> Tensor:
    """Whether each bead's molecule has a pair closer than its minimum distance (no host sync).

    ``edge``/``shift`` a radius graph holding every close pair (:func:`contact_graph`), ``minimum`` each pair's
    minimum distance (:func:`pair_minimum`).

    Shapes:
        x (N, 3) nm, batch (N,), edge (2, E), shift (E, 3), minimum (E,) nm -> (N,) bool
    """
    n = x.size(0)
    j, i = edge[0], edge[1]
    close = (torch.linalg.vector_norm(x[i] - x[j] + shift, dim=-1) < minimum).to(x.dtype)
    # per bead, then per molecule (batch < N, so an (N,) buffer holds every molecule), then back to beads
    per_molecule = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, batch[i], close)
    return per_molecule[batch] > 0


def bonded_pairs(edge: Tensor, n: int, bond_keys: Tensor) -> Tensor:
    """Whether each pair of ``edge`` is a coarse bond, from the sorted ``bond_keys`` of the bonds
    (:func:`openmm_cgml.nn.paxnet.bond_keys`, ``n`` beads); for a fixed set of pairs, once per topology.

    Shapes:
        edge (2, E), bond_keys (B',) sorted -> (E,) bool
    """
    # a binary search in the few sorted bond keys: isin would sort all the pairs as well
    keys = edge[1] * n + edge[0]
    if bond_keys.numel() == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    return bond_keys[torch.searchsorted(bond_keys, keys).clamp_max(bond_keys.size(0) - 1)] == keys


def pair_minimum(bonded: Tensor, min_distance_nm: Tensor, dtype: torch.dtype) -> Tensor:
    """Each pair's minimum distance (nm, ``dtype``): ``min_distance_nm[0]`` where ``bonded``
    (:func:`bonded_pairs`), else ``min_distance_nm[1]``.

    Shapes:
        bonded (E,) bool, min_distance_nm (2,) -> (E,)
    """
    return torch.where(bonded, min_distance_nm[0], min_distance_nm[1]).to(dtype)


def molecules_with(flags: Tensor, batch: Tensor) -> Tensor:
    """How many molecules have a flagged bead (a long scalar; no host sync).

    Shapes:
        flags (N,) bool, batch (N,) -> ()
    """
    per_molecule = torch.zeros(flags.size(0), dtype=torch.long, device=flags.device).index_add_(0, batch,
                                                                                                flags.long())
    return (per_molecule > 0).sum()
