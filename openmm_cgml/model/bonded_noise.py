"""Acceleration noise correlated along the coarse bonds: :class:`BondedNoise` (``model.noise: bonded``).

Over a model step of picoseconds a bead moves far more than the bond to its
neighbour stretches: bonded beads move *together*. Independent per-bead noise
(``noise: independent``) must use the large displacement std for every bead
and so stretches bonds and flips stereocentres, leaving the refinement to
repair them. Here the residual ``r = a - mean`` of the acceleration (in
accel-std units) is a Gaussian Markov chain over a spanning forest of the
coarse bond graph:

- every bead ``i`` bonded to a lower-index bead has a *parent* ``p(i)``, the
  highest such index (along a chain, the previous bead); the others are roots;
- ``r_i = C_i r_p(i) + S_i eps_i`` with ``eps_i ~ N(0, I_3)``;
- ``S_i = s_par u u^T + s_perp (I - u u^T)`` and
  ``C_i = c_par u u^T + c_perp (I - u u^T)``, with ``u`` the unit bond vector
  ``x_i - x_p(i)`` at the current frame; at a root ``S = s_perp I`` and ``C = 0``;
- the four scalars per bead come from the Dynamics latents (invariant), so the
  draw is E(3)-equivariant like the rest of the step.

With ``C ~ I`` a bead inherits its parent's displacement and adds its own:
the bond stretches by ``s_par`` and bends by ``s_perp``, while a root's noise
moves the whole molecule (there is no separate centre-of-mass term). It is the
structure of a harmonic chain: the precision matrix is sparse along the bonds.

The log-density is exact and O(N): ``w_i = r_i - C_i r_p(i)`` has a unit
triangular Jacobian, so it is a sum of independent per-bead Gaussians of
``w_i`` under ``S_i``. A draw solves the triangular system by pointer
doubling in ``ceil(log2 N)`` rounds of gathers (no host sync, any tree
depth). Everything here is TorchScript-compatible.
"""
from typing import Tuple

import torch
from torch import Tensor, nn

from openmm_cgml.nn.layers import Block, mlp

__all__ = ["BondedNoise", "bond_parents", "tree_solve", "tree_covariance"]


def bond_parents(coarse_edge_index: Tensor, n: int) -> Tensor:
    """Each bead's parent (N,): its highest-index bonded neighbour of lower index, or itself (a root).

    Edges may be listed in one or both directions.
    """
    parent = torch.arange(n, device=coarse_edge_index.device)
    if coarse_edge_index.size(1) == 0:
        return parent
    low = torch.minimum(coarse_edge_index[0], coarse_edge_index[1])
    high = torch.maximum(coarse_edge_index[0], coarse_edge_index[1])
    keep = low < high
    return parent.scatter_reduce(0, high[keep], low[keep], reduce="amax", include_self=False)


def _rounds(n: int) -> int:
    """Pointer-doubling rounds that reach the root from any depth < n."""
    rounds = 0
    while (1 << rounds) < n:
        rounds += 1
    return rounds


def tree_solve(w: Tensor, coupling: Tensor, parent: Tensor) -> Tensor:
    """``x`` with ``x_i = w_i + C_i x_parent(i)`` (``C = 0`` at roots), by pointer doubling.

    Shapes:
        w (N, 3), coupling (N, 3, 3), parent (N,) -> (N, 3)
    """
    x, a, p = w, coupling, parent
    for _ in range(_rounds(w.size(0))):
        # invariant: x_true_i = x_i + a_i x_true_p(i)
        x = x + torch.bmm(a, x[p].unsqueeze(-1)).squeeze(-1)
        a = torch.bmm(a, a[p])
        p = p[p]
    return x


def tree_covariance(cov: Tensor, coupling: Tensor, parent: Tensor) -> Tensor:
    """Marginal covariance of ``x_i = w_i + C_i x_parent(i)`` for independent ``w_i`` of covariance ``cov``.

    Shapes:
        cov (N, 3, 3), coupling (N, 3, 3), parent (N,) -> (N, 3, 3)
    """
    c, a, p = cov, coupling, parent
    for _ in range(_rounds(cov.size(0))):
        c = c + torch.bmm(torch.bmm(a, c[p]), a.transpose(1, 2))
        a = torch.bmm(a, a[p])
        p = p[p]
    return c


class BondedNoise(Block):
    """Per-bead scales of the bond-correlated acceleration noise, and its draw and log-density.

    Parameters
    ----------
    hidden : int
        Width of the Dynamics latents the scales are read from.
    min_std : float
        Floor of both stds (accel-std units).
    """

    def __init__(self, hidden: int, min_std: float):
        super().__init__()
        self.hidden, self.min_std = int(hidden), float(min_std)
        self.head = mlp(hidden, hidden, 4)

    def extra_repr(self) -> str:
        return f"{self.hidden}, min_std={self.min_std}"

    def forward(self, latents: Tensor) -> Tensor:
        """``[s_par, s_perp, c_par, c_perp]`` per bead.

        Shapes:
            latents (N, hidden) invariant -> (N, 4)
        """
        out = self.head(latents)
        return torch.cat([self.min_std + nn.functional.softplus(out[:, :2]), out[:, 2:]], dim=1)

    def _frame(self, params: Tensor, x: Tensor, coarse_edge_index: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Parent (N,), unit bond axis (N, 3) (0 at roots), coupling matrices (N, 3, 3), and the std along
        the axis (N,) (``s_perp`` at roots, whose noise is isotropic)."""
        parent = bond_parents(coarse_edge_index, x.size(0))
        root = parent == torch.arange(x.size(0), device=x.device)
        bond = x - x[parent]
        axis = bond / torch.linalg.vector_norm(bond, dim=-1, keepdim=True).clamp_min(1e-9)
        outer = axis.unsqueeze(-1) * axis.unsqueeze(-2)
        eye = torch.eye(3, dtype=x.dtype, device=x.device).expand_as(outer)
        c_par, c_perp = params[:, 2].view(-1, 1, 1), params[:, 3].view(-1, 1, 1)
        coupling = (c_perp * eye + (c_par - c_perp) * outer) * (~root).to(x.dtype).view(-1, 1, 1)
        s_par = torch.where(root, params[:, 1], params[:, 0])
        return parent, axis, coupling, s_par

    def sample(self, params: Tensor, noise: Tensor, x: Tensor, coarse_edge_index: Tensor) -> Tensor:
        """A draw of the residual ``r`` (N, 3) from standard normal ``noise`` (N, 3), bond axes taken at ``x``."""
        parent, axis, coupling, s_par = self._frame(params, x, coarse_edge_index)
        s_perp = params[:, 1:2]
        along = (axis * noise).sum(-1, keepdim=True)
        w = s_perp * noise + (s_par.unsqueeze(-1) - s_perp) * along * axis
        return tree_solve(w, coupling, parent)

    def nll(self, residual: Tensor, params: Tensor, x: Tensor, coarse_edge_index: Tensor) -> Tensor:
        """Negative log-density of ``residual`` (N, 3), per bead, averaged (constant dropped)."""
        parent, axis, coupling, s_par = self._frame(params, x, coarse_edge_index)
        s_perp = params[:, 1]
        w = residual - torch.bmm(coupling, residual[parent].unsqueeze(-1)).squeeze(-1)
        w_par = (axis * w).sum(-1)
        quad = (w_par / s_par).pow(2) + (w.pow(2).sum(-1) - w_par.pow(2)) / s_perp.pow(2)
        return (0.5 * quad + torch.log(s_par) + 2.0 * torch.log(s_perp)).mean()

    def marginal_covariance(self, params: Tensor, x: Tensor, coarse_edge_index: Tensor) -> Tensor:
        """Each bead's marginal covariance ``Cov(r_i)`` (N, 3, 3)."""
        parent, axis, coupling, s_par = self._frame(params, x, coarse_edge_index)
        outer = axis.unsqueeze(-1) * axis.unsqueeze(-2)
        eye = torch.eye(3, dtype=x.dtype, device=x.device).expand_as(outer)
        s_perp2 = params[:, 1].pow(2).view(-1, 1, 1)
        own = s_perp2 * eye + (s_par.pow(2).view(-1, 1, 1) - s_perp2) * outer
        return tree_covariance(own, coupling, parent)

    def marginal_std(self, params: Tensor, x: Tensor, coarse_edge_index: Tensor) -> Tensor:
        """Isotropic summary (N, 1) of each bead's marginal std: ``sqrt(trace(Cov(r_i)) / 3)``."""
        cov = self.marginal_covariance(params, x, coarse_edge_index)
        return torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2).sum(-1, keepdim=True) / 3.0)
