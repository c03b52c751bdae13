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
- ``S_i`` and ``C_i`` are diagonal in a local frame of internal coordinates
  at the current positions: the bond ``u`` to the parent (stretch), the normal
  ``n`` of the plane of that bond and the parent's bond (torsion), and the
  third direction (bend); at a root ``S`` is isotropic and ``C = 0``
  (:class:`BondedNoise`);
- the scalars per bead come from the Dynamics latents (invariant), and the
  frame only through ``u u^T`` and ``n n^T``, so the draw is equivariant like
  the rest of the step (exactly under rotations; under reflections in law,
  since the rotation below is drawn as a pseudo-vector).

With ``C ~ I`` a bead inherits its parent's displacement and adds its own:
the bond stretches, bends and twists by their own stds, while a root's noise
moves the whole molecule (there is no separate centre-of-mass term). It is the
structure of a harmonic chain: the precision matrix is sparse along the bonds.
On top, each molecule turns rigidly by a random rotation ``s_rot omega x d_i``
(``d_i`` the offset from its centroid), see :class:`BondedNoise`.

The log-density is exact and O(N): ``w_i = r_i - C_i r_p(i)`` has a unit
triangular Jacobian, so the tree's is a sum of independent per-bead Gaussians
of ``w_i`` under ``S_i``; the rotation adds a 3x3 Woodbury term per
molecule. A draw solves the triangular system by pointer doubling in
``ceil(log2 N)`` rounds of gathers (no host sync, any tree depth).
Everything here is TorchScript-compatible.
"""
from typing import Tuple

import torch
from torch import Tensor, nn

from openmm_cgml.model.batch import graph_mean
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


def _skew(d: Tensor) -> Tensor:
    """Cross-product matrices (N, 3, 3): ``_skew(d) @ v == d x v``."""
    zero = torch.zeros_like(d[:, 0])
    return torch.stack([torch.stack([zero, -d[:, 2], d[:, 1]], -1),
                        torch.stack([d[:, 2], zero, -d[:, 0]], -1),
                        torch.stack([-d[:, 1], d[:, 0], zero], -1)], 1)


class BondedNoise(Block):
    """Per-bead scales of the bond-correlated acceleration noise, and its draw and log-density.

    Each bead's own noise ``S_i`` and coupling ``C_i`` act in a local frame of internal coordinates:
    ``u`` along the bond to its parent (stretch), ``n`` normal to the plane of that bond and the
    parent's own bond (out of plane: the torsion), and the rest (in plane: the bend), with one std and
    one coupling each. Where there is no plane (the parent is a root, or the bonds are collinear)
    the torsion direction takes the bend's values; at a root the noise is isotropic (the bend's std).
    A stiff bond, a stiff angle and a soft torsion thus get their own scales.

    Besides the tree (module docstring) each molecule gets a rigid rotation: ``r_i += s_rot (omega x d_i)``
    with ``omega ~ N(0, I_3)`` per molecule and ``d_i`` the bead's offset from the molecule's centroid
    (nm), ``s_rot`` read from the pooled latents. A molecule that turns as a whole over a model step
    moves its beads perpendicular to their offsets, oppositely on opposite sides; independent per-bond
    noise would have to rotate every bond on its own and scramble the torsions. The density adds a
    rank-3 term per molecule, exact by the Woodbury identity with the tree's sparse precision.

    Parameters
    ----------
    hidden : int
        Width of the Dynamics latents the scales are read from.
    min_std : float
        Floor of the per-bead stds (accel-std units).
    """

    def __init__(self, hidden: int, min_std: float):
        super().__init__()
        self.hidden, self.min_std = int(hidden), float(min_std)
        self.head = mlp(hidden, hidden, 6)
        self.rotation_head = mlp(hidden, hidden, 1)

    def extra_repr(self) -> str:
        return f"{self.hidden}, min_std={self.min_std}"

    def forward(self, latents: Tensor, batch: Tensor) -> Tensor:
        """``[s_bond, s_torsion, s_bend, c_bond, c_torsion, c_bend, s_rot]`` per bead (``s_rot`` per
        molecule, in accel-std per nm).

        Shapes:
            latents (N, hidden) invariant, batch (N,) -> (N, 7)
        """
        out = self.head(latents)
        pooled, _ = graph_mean(latents, batch)
        rotation = nn.functional.softplus(self.rotation_head(pooled))
        return torch.cat([self.min_std + nn.functional.softplus(out[:, :3]), out[:, 3:], rotation], dim=1)

    def _frame(self, params: Tensor, x: Tensor, coarse_edge_index: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Parent (N,), the frame's two unit axes (N, 2, 3) ``[u, n]`` (0 where undefined), the
        coupling matrices (N, 3, 3) and the stds along ``[u, n, rest]`` (N, 3)."""
        n_beads = x.size(0)
        parent = bond_parents(coarse_edge_index, n_beads)
        root = parent == torch.arange(n_beads, device=x.device)
        bond = x - x[parent]
        u = bond / torch.linalg.vector_norm(bond, dim=-1, keepdim=True).clamp_min(1e-9)
        normal = torch.linalg.cross(u[parent], u)        # 0 at roots and next to them (u[root] = 0)
        length = torch.linalg.vector_norm(normal, dim=-1, keepdim=True)
        planar = length.squeeze(-1) > 1e-3
        normal = torch.where(planar.unsqueeze(-1), normal / length.clamp_min(1e-9), torch.zeros_like(normal))
        axes = torch.stack([u, normal], 1)
        # without a plane the torsion direction is a bend direction; at a root all three are
        stds = torch.stack([torch.where(root, params[:, 2], params[:, 0]),
                            torch.where(planar, params[:, 1], params[:, 2]), params[:, 2]], 1)
        couplings = torch.stack([params[:, 3], torch.where(planar, params[:, 4], params[:, 5]), params[:, 5]], 1)
        coupling = _in_frame(axes, couplings) * (~root).to(x.dtype).view(-1, 1, 1)
        return parent, axes, coupling, stds

    def _rotation_basis(self, params: Tensor, x: Tensor, batch: Tensor) -> Tensor:
        """``s_rot B_i`` (N, 3, 3), with ``B_i omega = omega x d_i``."""
        centroid, _ = graph_mean(x, batch)
        return -_skew(x - centroid) * params[:, 6].view(-1, 1, 1)

    def sample(self, params: Tensor, noise: Tensor, rotation_noise: Tensor, x: Tensor, coarse_edge_index: Tensor,
               batch: Tensor) -> Tensor:
        """A draw of the residual ``r`` (N, 3), frames and offsets taken at ``x``.

        ``noise`` (N, 3) standard normal drives the tree; ``rotation_noise`` (N, 3) standard normal gives
        each molecule's rotation ``omega = sqrt(n) * its mean`` (itself standard normal).
        """
        parent, axes, coupling, stds = self._frame(params, x, coarse_edge_index)
        w = torch.bmm(_in_frame(axes, stds), noise.unsqueeze(-1)).squeeze(-1)
        omega_mean, count = graph_mean(rotation_noise, batch)
        omega = omega_mean * torch.sqrt(count)
        turn = torch.bmm(self._rotation_basis(params, x, batch), omega.unsqueeze(-1)).squeeze(-1)
        return tree_solve(w, coupling, parent) + turn

    def nll(self, residual: Tensor, params: Tensor, x: Tensor, coarse_edge_index: Tensor, batch: Tensor) -> Tensor:
        """Negative log-density of ``residual`` (N, 3), per bead, averaged (constant dropped)."""
        parent, axes, coupling, stds = self._frame(params, x, coarse_edge_index)
        w = residual - torch.bmm(coupling, residual[parent].unsqueeze(-1)).squeeze(-1)
        whitened = torch.bmm(_in_frame(axes, 1.0 / stds), w.unsqueeze(-1)).squeeze(-1)
        tree = 0.5 * whitened.pow(2).sum(-1) + torch.log(stds).sum(-1)
        # Woodbury for the rotation: Sigma = T + U U^T with U = s_rot B (3 columns per molecule)
        basis = self._rotation_basis(params, x, batch)
        columns = torch.cat([residual.unsqueeze(-1), basis], dim=-1)                   # (N, 3, 4)
        precise = _apply_precision(columns, coupling, parent, _in_frame(axes, stds.pow(-2)))  # Q [r, U]
        per_bead = torch.bmm(basis.transpose(1, 2), precise).flatten(1)                # U_i^T Q [r, U] (N, 12)
        mean, count = graph_mean(per_bead, batch)
        summed = (mean * count).view(-1, 3, 4)                                        # per molecule, on each bead
        y = summed[:, :, :1]
        m = torch.eye(3, dtype=x.dtype, device=x.device) + summed[:, :, 1:]
        correction = -0.5 * (y * torch.linalg.solve(m, y)).sum((1, 2)) + 0.5 * torch.linalg.slogdet(m)[1]
        return (tree + correction / count.squeeze(-1)).mean()

    def marginal_covariance(self, params: Tensor, x: Tensor, coarse_edge_index: Tensor, batch: Tensor) -> Tensor:
        """Each bead's marginal covariance ``Cov(r_i)`` (N, 3, 3)."""
        parent, axes, coupling, stds = self._frame(params, x, coarse_edge_index)
        basis = self._rotation_basis(params, x, batch)
        return tree_covariance(_in_frame(axes, stds.pow(2)), coupling, parent) + torch.bmm(basis, basis.transpose(1, 2))

    def marginal_std(self, params: Tensor, x: Tensor, coarse_edge_index: Tensor, batch: Tensor) -> Tensor:
        """Isotropic summary (N, 1) of each bead's marginal std: ``sqrt(trace(Cov(r_i)) / 3)``."""
        cov = self.marginal_covariance(params, x, coarse_edge_index, batch)
        return torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2).sum(-1, keepdim=True) / 3.0)


def _in_frame(axes: Tensor, values: Tensor) -> Tensor:
    """The symmetric matrices (N, 3, 3) ``v_u u u^T + v_n n n^T + v_rest (I - u u^T - n n^T)``.

    A zero axis (undefined) leaves its direction to ``v_rest``.

    Shapes:
        axes (N, 2, 3), values (N, 3) -> (N, 3, 3)
    """
    outer = axes.unsqueeze(-1) * axes.unsqueeze(-2)                                   # (N, 2, 3, 3)
    eye = torch.eye(3, dtype=axes.dtype, device=axes.device)
    rest = values[:, 2].view(-1, 1, 1)
    return rest * eye + ((values[:, :2] - values[:, 2:]).view(-1, 2, 1, 1) * outer).sum(1)


def _apply_precision(v: Tensor, coupling: Tensor, parent: Tensor, inverse_variance: Tensor) -> Tensor:
    """``Q v`` for the tree's precision ``Q = (I - C)^T S^-2 (I - C)``, column by column.

    Shapes:
        v (N, 3, M), coupling (N, 3, 3), parent (N,), inverse_variance ``S^-2`` (N, 3, 3) -> (N, 3, M)
    """
    y = torch.bmm(inverse_variance, v - torch.bmm(coupling, v[parent]))
    # (I - C)^T: each child sends -C^T y back to its parent (roots have C = 0)
    return y.index_add(0, parent, -torch.bmm(coupling.transpose(1, 2), y))
