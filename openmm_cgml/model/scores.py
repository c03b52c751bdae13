"""Score networks: the predicted noise ``eps`` of a candidate step, for the refinement sampler.

A Score network sees a candidate ``x~ = x + sigma * eps`` (bead positions,
nm), the Dynamics latents of each bead and the log noise level, and predicts
the unit noise ``eps`` (score ``-eps / sigma``). It takes no vector inputs:
all geometry comes from the candidate positions. Every Score network has the
same two methods, so :class:`~openmm_cgml.model.propagator.CGPropagator`
takes any of them:

- ``graph(candidate, batch, box) -> (edge, shift)``: a radius graph it can
  reuse over the refinement calls of one step (empty if it builds its own);
- ``forward(candidate, latents, log_sigma, bonds, batch, box, edge, shift, pairs=None) -> eps``, where
  ``pairs`` (open boundaries, small molecules) are the molecules' bead pairs in mirrored halves
  (:func:`~openmm_cgml.nn.neighbors.molecule_pairs`), taken instead of ``edge``.

:func:`build_score` makes the one a :class:`~openmm_cgml.model.config.PropagatorConfig` names.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from openmm_cgml.model.config import PropagatorConfig
from openmm_cgml.model.layers import VectorHead
from openmm_cgml.nn import PaxNet, edge_vectors, radius_graph
from openmm_cgml.nn.basis import BesselBasis, PolynomialEnvelope
from openmm_cgml.nn.layers import Block, mlp

__all__ = ["PairScore", "PaxNetScore", "SCORES", "build_score"]


class PairScore(Block):
    """Light equivariant score network: one round of pair messages at the candidate positions.

    ``eps_i = sum_j c(d_ij, a_i + a_j) u_ij + sum_bonds b(d_ij, a_i + a_j) u_ij``
    with unit vectors ``u_ij`` (j -> i) and invariant coefficients from the
    node context ``a`` (dynamics latents and noise level) and a radial basis.
    Central, pairwise-symmetric terms: the correction never moves the centre
    of mass and carries no net torque, so refining a sampled step fixes the
    internal geometry (stretched bonds, overlaps) without damping the
    diffusion the dynamics network sampled. Pair terms see close contacts,
    bond terms the chain geometry.

    Parameters
    ----------
    latent : int
        Width of the Dynamics latents (the context per bead).
    hidden : int
        Width of the node context and coefficient networks.
    cutoff : float
        Pair cutoff, nm.
    n_rbf : int
        Radial basis size.
    max_num_neighbors : int
        Cap on pair partners per bead (nearest kept).
    """

    def __init__(self, latent: int, hidden: int, cutoff: float, n_rbf: int, max_num_neighbors: int = 64):
        super().__init__()
        self.latent, self.hidden = int(latent), int(hidden)
        self.cutoff = float(cutoff)
        self.max_num_neighbors = int(max_num_neighbors)
        self.node = mlp(latent + 1, hidden, hidden)
        self.rbf = BesselBasis(n_rbf, cutoff)
        self.envelope = PolynomialEnvelope(cutoff)
        self.pair = mlp(hidden + n_rbf, hidden, 1)
        self.bond = mlp(hidden + n_rbf, hidden, 1)

    def extra_repr(self) -> str:
        return f"latent={self.latent}, hidden={self.hidden}, cutoff={self.cutoff}"

    def graph(self, candidate: Tensor, batch: Tensor, box: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Radius graph (edges, shifts) to reuse over the refinement calls of one step (beads move little)."""
        return radius_graph(candidate, self.cutoff, batch, box, self.max_num_neighbors)

    def forward(self, candidate: Tensor, latents: Tensor, log_sigma: Tensor, bonds: Tensor, batch: Tensor,
                box: Optional[Tensor], edge: Tensor, shift: Tensor, pairs: Optional[Tensor] = None) -> Tensor:
        """Predicted unit noise of ``candidate``.

        Shapes:
            candidate (N, 3) nm, latents (N, latent), log_sigma (N, 1), bonds (2, B), batch (N,),
            box (G, 3, 3) or None, edge (2, E) and shift (E, 3) from :meth:`graph`, or ``pairs`` (2, P)
            instead (mirrored halves, open boundaries) -> (N, 3)
        """
        a = self.node(torch.cat([latents, log_sigma], dim=-1))
        if pairs is not None:
            # the coefficient is symmetric in (i, j): computed once per unordered pair, the first half
            half = pairs[:, :pairs.size(1) // 2]
            vec = candidate[half[1]] - candidate[half[0]]
            coeff, dist = self._pair_coefficients(a, half[0], half[1], vec)
            force = coeff * vec / dist
            eps = torch.zeros_like(candidate).index_add(0, half[1], force).index_add(0, half[0], -force)
        else:
            j, i = edge[0], edge[1]
            vec = candidate[i] - candidate[j] + shift
            coeff, dist = self._pair_coefficients(a, j, i, vec)
            eps = torch.zeros_like(candidate).index_add(0, i, coeff * vec / dist)
        if bonds.numel() > 0:
            bond_vec, _ = edge_vectors(candidate, bonds, batch, box)
            bond_dist = torch.linalg.vector_norm(bond_vec, dim=-1, keepdim=True).clamp_min(1e-6)
            bj, bi = bonds[0], bonds[1]
            bond_coeff = self.bond(torch.cat([a[bi] + a[bj], self.rbf(bond_dist.squeeze(-1))], dim=-1))
            eps = eps.index_add(0, bi, bond_coeff * bond_vec / bond_dist)
        return eps

    def _pair_coefficients(self, a: Tensor, j: Tensor, i: Tensor, vec: Tensor) -> Tuple[Tensor, Tensor]:
        """Coefficients (P, 1) of the pair terms and the distances (P, 1) nm, from the node context ``a``."""
        dist = torch.linalg.vector_norm(vec, dim=-1, keepdim=True).clamp_min(1e-6)
        coeff = self.pair(torch.cat([a[i] + a[j], self.rbf(dist.squeeze(-1))], dim=-1)) \
            * self.envelope(dist.squeeze(-1)).unsqueeze(-1)
        return coeff, dist


class PaxNetScore(Block):
    """Score network on the PaxNet backbone (heavier; ``score_net: paxnet``); geometry and context only.

    Parameters
    ----------
    latent : int
        Width of the Dynamics latents (the context per bead).
    hidden, n_layers : int
        PaxNet width and layers.
    cutoff : float
        PaxNet radius cutoff, nm.
    n_rbf, n_sbf : int
        Radial and angular basis sizes.
    """

    def __init__(self, latent: int, hidden: int, n_layers: int, cutoff: float, n_rbf: int, n_sbf: int):
        super().__init__()
        self.cutoff = float(cutoff)
        self.backbone = PaxNet(hidden=hidden, n_layers=n_layers, cutoff=cutoff, n_rbf=n_rbf, n_sbf=n_sbf,
                               vector_in=0, scalar_in=latent + 1)
        self.head = VectorHead(hidden)

    def extra_repr(self) -> str:
        return f"backbone={self.backbone!r}"

    def graph(self, candidate: Tensor, batch: Tensor, box: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """PaxNet builds its own graphs: nothing to precompute."""
        return (torch.zeros(2, 0, dtype=torch.long, device=candidate.device),
                torch.zeros(0, 3, dtype=candidate.dtype, device=candidate.device))

    def forward(self, candidate: Tensor, latents: Tensor, log_sigma: Tensor, bonds: Tensor, batch: Tensor,
                box: Optional[Tensor], edge: Tensor, shift: Tensor, pairs: Optional[Tensor] = None) -> Tensor:
        """Predicted unit noise of ``candidate``; ``edge`` and ``shift`` unused (PaxNet builds its radius
        graph), ``pairs`` (open boundaries) taken by PaxNet instead of it.

        Shapes:
            candidate (N, 3) nm, latents (N, latent), log_sigma (N, 1), bonds (2, B), batch (N,),
            box (G, 3, 3) or None, pairs (2, P) -> (N, 3)
        """
        no_vectors = torch.zeros(candidate.size(0), 3, 0, dtype=candidate.dtype, device=candidate.device)
        s, v = self.backbone(torch.cat([latents, log_sigma], dim=-1), no_vectors, candidate, bonds, batch, box,
                             None, pairs)
        return self.head(s, v)


def _pair_score(config: PropagatorConfig) -> nn.Module:
    return PairScore(config.hidden, config.score_hidden, config.cutoff_nm, config.n_rbf)


def _paxnet_score(config: PropagatorConfig) -> nn.Module:
    return PaxNetScore(config.hidden, config.score_hidden, config.score_layers, config.cutoff_nm,
                       config.n_rbf, config.n_sbf)


# config.score_net -> factory (keys: openmm_cgml.model.config.SCORE_NETS)
SCORES = {"pair": _pair_score, "paxnet": _paxnet_score}


def build_score(config: PropagatorConfig) -> nn.Module:
    """The Score network ``config.score_net`` names, sized by ``config``.

    Parameters
    ----------
    config : PropagatorConfig
        ``score_net`` picks the class; ``hidden`` (the Dynamics latent width),
        ``score_hidden``, ``score_layers``, ``cutoff_nm``, ``n_rbf``, ``n_sbf`` size it.

    Returns
    -------
    torch.nn.Module
        A :class:`PairScore` or :class:`PaxNetScore`.
    """
    if config.score_net not in SCORES:
        raise ValueError(f"model.score_net must be one of {sorted(SCORES)}, got {config.score_net!r}")
    return SCORES[config.score_net](config)
