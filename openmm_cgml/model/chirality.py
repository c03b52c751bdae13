"""Reflection-odd (pseudo-scalar) bead inputs for the Dynamics network: the ``chirality`` switch.

Distances, angles and dot products are unchanged by a mirror image, so a
network that sees only them (E(3)) cannot tell a molecule from its
enantiomer. The signed volumes here are unchanged by rotations and
translations but change sign under a reflection; given to the Dynamics
network as extra invariant scalars they make it SE(3)- instead of
E(3)-equivariant (``PropagatorConfig.chirality``, docs/propagator.md).

Per bead ``i`` (:data:`N_PSEUDO` = 3 features), from the coarse bonds only,
in an order fixed by bead indices (so copies of one molecule in a batch get
the same features, and no feature depends on the positions' order in space):

0. star volume: ``det(x_a - x_i, x_b - x_i, x_c - x_i)`` over the three
   lowest-index neighbours ``a < b < c`` of ``i`` (0 with fewer than three);
1. forward torsion: ``det(x_j - x_i, x_k - x_j, x_l - x_k)`` along
   ``j = next(i), k = next(j), l = next(k)``, ``next(i)`` the lowest-index
   neighbour above ``i`` (0 where the walk ends early);
2. backward torsion: the same along ``prev`` (the highest-index neighbour
   below), so a chain's last beads have a torsion too.

Each is divided by the product of its three vector lengths (scale-free, in
[-1, 1]).
"""
from typing import List, Optional

import torch
from torch import Tensor

__all__ = ["N_PSEUDO", "bond_tables", "pseudo_scalars", "dynamics_scalars"]

N_PSEUDO = 3


def _signed_volume(a: Tensor, b: Tensor, c: Tensor, valid: Tensor) -> Tensor:
    """``det(a, b, c) / (|a| |b| |c|)`` where ``valid``, else 0.

    Shapes:
        a, b, c (N, 3), valid (N,) bool -> (N,)
    """
    eye = torch.eye(3, dtype=a.dtype, device=a.device)
    keep = valid.unsqueeze(-1)
    # unit placeholders where undefined, so neither the value nor its gradient is NaN
    a, b, c = torch.where(keep, a, eye[0]), torch.where(keep, b, eye[1]), torch.where(keep, c, eye[2])
    volume = (torch.linalg.cross(a, b) * c).sum(-1)
    lengths = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1) \
        * torch.linalg.vector_norm(c, dim=-1)
    return torch.where(valid, volume / lengths.clamp_min(1e-30), torch.zeros_like(volume))


def bond_tables(coarse_edge_index: Tensor, n: int) -> List[Tensor]:
    """The three lowest-index neighbours, ``next`` and ``prev`` of each bead (-1: none).

    Shapes:
        coarse_edge_index (2, E) -> first3 (n, 3), next (n,), prev (n,); int64
    """
    src, dst = coarse_edge_index[0].long(), coarse_edge_index[1].long()
    # both directions, no self-loops, no duplicates; sorted by (src, dst)
    keys = torch.cat([src * n + dst, dst * n + src])
    keys, _ = torch.sort(keys[src.repeat(2) != dst.repeat(2)])
    keys = keys[torch.cat([torch.ones_like(keys[:1], dtype=torch.bool), keys[1:] != keys[:-1]])]
    src, dst = torch.div(keys, n, rounding_mode="floor"), keys % n
    counts = torch.bincount(src, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(keys.numel(), device=keys.device) - starts[src]
    first3 = torch.full((n, 3), -1, dtype=torch.long, device=keys.device)
    low = rank < 3
    first3[src[low], rank[low]] = dst[low]
    up, down = dst > src, dst < src
    nxt = torch.full((n,), n, dtype=torch.long, device=keys.device).scatter_reduce(
        0, src[up], dst[up], reduce="amin")
    prev = torch.full((n,), -1, dtype=torch.long, device=keys.device).scatter_reduce(
        0, src[down], dst[down], reduce="amax")
    return [first3, torch.where(nxt == n, -torch.ones_like(nxt), nxt), prev]


def _torsion(pos: Tensor, step: Tensor) -> Tensor:
    """Normalised ``det(x_j - x_i, x_k - x_j, x_l - x_k)`` along ``j = step[i], k = step[j], l = step[k]``.

    Shapes:
        pos (N, 3), step (N,) int64 (-1: no further bead) -> (N,)
    """
    j = step
    k = step[j.clamp_min(0)]
    l = step[k.clamp_min(0)]
    valid = (j >= 0) & (k >= 0) & (l >= 0)
    xj, xk, xl = pos[j.clamp_min(0)], pos[k.clamp_min(0)], pos[l.clamp_min(0)]
    return _signed_volume(xj - pos, xk - xj, xl - xk, valid)


def pseudo_scalars(pos: Tensor, coarse_edge_index: Tensor, tables: Optional[List[Tensor]] = None) -> Tensor:
    """The reflection-odd bead features (star volume, forward and backward torsion; module docstring).

    Parameters
    ----------
    pos : Tensor
        Bead positions (nm), unwrapped (bonds are plain differences); any
        number of molecules, bead indices global as in ``batch``.
    coarse_edge_index : Tensor
        Coarse bonds (either or both directions).
    tables : list of Tensor, optional
        :func:`bond_tables` of these bonds, if already at hand.

    Returns
    -------
    Tensor
        Invariant under rotations and translations, odd under reflections,
        scale-free, in [-1, 1]; 0 where undefined.

    Shapes:
        pos (N, 3), coarse_edge_index (2, E) -> (N, N_PSEUDO)
    """
    n = pos.size(0)
    if tables is None:
        tables = bond_tables(coarse_edge_index, n)
    first3, nxt, prev = tables[0], tables[1], tables[2]
    star_valid = first3[:, 2] >= 0
    nb = first3.clamp_min(0)
    star = _signed_volume(pos[nb[:, 0]] - pos, pos[nb[:, 1]] - pos, pos[nb[:, 2]] - pos, star_valid)
    return torch.stack([star, _torsion(pos, nxt), _torsion(pos, prev)], dim=-1)


def dynamics_scalars(v_in: Tensor, bead_features: Tensor, pos: Tensor, coarse_edge_index: Tensor,
                     chirality: bool, tables: Optional[List[Tensor]] = None) -> Tensor:
    """The Dynamics network's scalar inputs: velocity norms, bead features, and the pseudo-scalars if ``chirality``
    (``tables``: :func:`bond_tables`, if at hand).

    Shapes:
        v_in (N, 3, k-1), bead_features (N, F), pos (N, 3), coarse_edge_index (2, E)
        -> (N, k-1 + F [+ N_PSEUDO])
    """
    parts = [torch.linalg.vector_norm(v_in, dim=1), bead_features]
    if chirality:
        parts.append(pseudo_scalars(pos, coarse_edge_index, tables))
    return torch.cat(parts, dim=-1)
