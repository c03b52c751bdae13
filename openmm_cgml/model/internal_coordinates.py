"""The step's noise in internal coordinates: :class:`InternalCoordinateNoise` (``model.noise: internal``).

Over a model step of picoseconds a torsion turns by tens of degrees while its
bonds and angles stay at their equilibria. A Gaussian in Cartesian space
(``noise: independent`` or ``bonded``) can only approximate a turn by a
straight displacement along its tangent, and that stretches the bond by
second order: a 40 degree turn of a 0.15 nm bond lengthens it by 20%, and the
torsion a Cartesian draw gives is not centred on the mean's torsion. Here
the step is drawn in the coordinates the molecule moves in:

- the coarse bonds are read as a spanning forest (each bead's *parent* is
  its highest-index bonded neighbour of lower index,
  :func:`~openmm_cgml.model.bonded_noise.bond_parents`); each tree is
  anchored by its root ``r``, the root's first child that has children of its
  own ``c1`` (on a comb, the backbone, not a side bead) and that bead's first
  child ``c2``;
- every bead of a tree carries a frame (:func:`frames`): ``e_x`` along the
  bond from its parent, ``e_z`` normal to that bond and the parent's bond;
  the root and ``c1`` take the frame of the plane ``r, c1, c2``;
- a bead's internal coordinates (:func:`internal_coordinates`) are its bond
  length ``b`` to the parent, the bond angle ``theta`` at the parent and the
  torsion ``phi`` about the parent's bond, read in the parent's frame
  (``c1`` has only ``b``, ``c2`` only ``b`` and ``theta``): 3n - 6 numbers
  per tree, plus its orientation (the root's frame) and centre of mass;
- at a branch, a bead that is not its parent's first child draws the change
  of its torsion *relative to that first sibling's* (:func:`torsion_references`:
  the draw adds the sibling's torsion step to its own), centred on their
  current relative torsion, from one Gaussian (no mixture). Siblings turn together
  about the parent's bond, as the atoms downstream of a bond do when it turns,
  and their relative torsion, which at a stereocentre (CA with N, C and CB
  beads) is its handedness, is a stiff coordinate of its own (near +-120
  degrees), not the difference of two independently drawn torsions;
- given the mean positions ``x_mean`` of the step (the Dynamics network's
  mean acceleration, integrated), a draw takes the mean's torsions, the
  current bond lengths and angles plus predicted changes
  (:meth:`InternalCoordinateNoise._centre`), perturbs them by Gaussians of
  per-bead stds ``s_b, s_theta, s_phi`` (or torsion mixtures), rebuilds
  the tree from the mean's anchor (:func:`rebuild`: frame products by pointer
  doubling, O(N) work in ``ceil(log2 N)`` rounds, any depth), turns it
  about its centre of mass by a rotation vector of std ``s_rot`` and moves
  that centre by the mean's plus a Gaussian of std ``s_com`` (per molecule).

The map from positions to (centre, orientation, internal coordinates) is one
to one, so the log-density of a target is the sum of the Gaussians'
(:meth:`InternalCoordinateNoise.nll`) plus the log-Jacobian of the map, which
depends on the target only and is dropped (the NLL is therefore not
comparable with the Cartesian noise models'). Bond lengths and angles are
kept by construction up to their own learned stds; torsions are signed, so
the draw has the handedness of the mean (SE(3), not E(3)). Torsion
differences are wrapped to (-pi, pi]; the stds are meant to be well below
pi. Every tree needs three beads in a row from its root (checked by
:func:`check_trees`). Everything here is TorchScript-compatible.
"""
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from openmm_cgml.model.batch import graph_mean
from openmm_cgml.model.bonded_noise import _rounds, _skew, bond_parents
from openmm_cgml.nn.layers import Block, mlp

__all__ = ["InternalCoordinateNoise", "tree_layout", "torsion_references", "doubling_rounds", "check_trees", "frames",
           "internal_coordinates", "rebuild", "rotation_vector", "rotation_matrix"]


def _unit(v: Tensor) -> Tensor:
    """``v`` normalised along its last axis; smooth (finite gradient) at zero."""
    return v * torch.rsqrt(v.pow(2).sum(-1, keepdim=True) + 1e-12)


def _first_child(parent: Tensor, index: Tensor, eligible: Tensor, n: int) -> Tensor:
    """(N + 1,) each bead's lowest-index child among ``eligible`` beads (-1: none), and a trailing -1."""
    first = torch.full((n,), n, dtype=torch.long, device=parent.device)
    first = first.scatter_reduce(0, parent[eligible], index[eligible], reduce="amin", include_self=True)
    return torch.cat([torch.where(first == n, -1, first), torch.full((1,), -1, dtype=torch.long,
                                                                     device=parent.device)])


def tree_layout(coarse_edge_index: Tensor, n: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The forest the internal coordinates are read on.

    Returns
    -------
    parent : Tensor
        (N,) each bead's parent (a root is its own).
    root : Tensor
        (N,) the root of each bead's tree.
    anchor : Tensor
        (N, 2) ``[c1, c2]`` of each bead's tree (-1 where missing).
    dof : Tensor
        (N, 3) which of ``[b, theta, phi]`` each bead has (float 0/1).
    """
    parent = bond_parents(coarse_edge_index, n)
    index = torch.arange(n, device=parent.device)
    child = parent != index
    first = _first_child(parent, index, child, n)
    # the anchor's c1 is a child with children of its own: a side bead cannot anchor a torsion
    first_parent = _first_child(parent, index, child & (first[:n] >= 0)[index], n)
    root = parent
    for _ in range(_rounds(n)):
        root = root[root]
    c1 = first_parent[root]
    c2 = first[c1]                      # first[-1] is the appended -1
    is_c1, is_c2 = index == c1, index == c2
    dof = torch.stack([child, child & ~is_c1, child & ~is_c1 & ~is_c2], 1).to(torch.float32)
    return parent, root, torch.stack([c1, c2], 1), dof


def torsion_references(parent: Tensor) -> Tensor:
    """(N,) for a bead that is not its parent's first (lowest-index) child, that first child: the sibling its
    torsion step is drawn relative to; -1 for first children and roots."""
    n = parent.numel()
    index = torch.arange(n, device=parent.device)
    child = parent != index
    first = _first_child(parent, index, child, n)[parent]
    return torch.where(child & (first != index), first, torch.full_like(parent, -1))


def _layout(coarse_edge_index: Tensor, n: int, layout: Optional[List[Tensor]]
            ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``layout`` (a :func:`tree_layout` and its :func:`torsion_references`, as a list) if given, else those of
    the bonds."""
    if layout is None:
        parent, root, anchor, dof = tree_layout(coarse_edge_index, n)
        return parent, root, anchor, dof, torsion_references(parent)
    return layout[0], layout[1], layout[2], layout[3], layout[4]


def _on_sibling(turn: Tensor, sibling: Tensor) -> Tensor:
    """(N, 1) each bead's reference sibling's value of ``turn`` (N, 1) (0 where it has none)."""
    return torch.where((sibling >= 0).unsqueeze(1), turn[sibling.clamp_min(0)], torch.zeros_like(turn))


def doubling_rounds(parent: Tensor) -> int:
    """Pointer-doubling rounds that compose every bead's path to its root: ceil(log2(depth + 1)) of the deepest
    bead (a bead at depth d composes d + 1 transforms, the root's own included).

    A batch of many small molecules needs as few rounds as one of them, not log2 of all the beads. Reads
    the depth off the device (one host sync): for a caller that computes it once per topology.
    """
    index = torch.arange(parent.numel(), device=parent.device)
    depth, p = (parent != index).long(), parent
    for _ in range(_rounds(parent.numel())):
        depth, p = depth + depth[p], p[p]       # roots have depth 0 and point at themselves
    return _rounds(int(depth.max()) + 1) if parent.numel() > 0 else 0


def check_trees(coarse_edge_index: Tensor, n: int, anchor: Optional[Tensor] = None) -> None:
    """``ValueError`` unless every tree of the coarse bond forest has a root, a child and a grandchild in a row
    (``anchor``: the :func:`tree_layout` anchors of these bonds, if at hand)."""
    if anchor is None:
        anchor = tree_layout(coarse_edge_index, n)[2]
    if bool((anchor < 0).any()):
        raise ValueError("noise: internal needs every molecule's coarse bonds to start with three bonded beads "
                         "in a row from its lowest-index bead (a chain or tree with a path of >= 3 beads from it)")


def frames(x: Tensor, parent: Tensor, root: Tensor, anchor: Tensor) -> Tensor:
    """Each bead's frame (N, 3, 3), columns ``[e_x, e_y, e_z]`` (module docstring)."""
    index = torch.arange(x.size(0), device=x.device)
    is_root = parent == index
    c1, c2 = anchor[:, 0].clamp_min(0), anchor[:, 1].clamp_min(0)
    ex = _unit(x - x[parent])
    ex = torch.where(is_root.unsqueeze(-1), ex[c1], ex)
    ez = _unit(torch.linalg.cross(ex[parent], ex))
    is_c1 = index == anchor[:, 0]
    ez = torch.where((is_root | is_c1).unsqueeze(-1), ez[c2], ez)
    ey = torch.linalg.cross(ez, ex)
    return torch.stack([ex, ey, ez], -1)


def internal_coordinates(x: Tensor, frame: Tensor, parent: Tensor, dof: Tensor) -> Tensor:
    """``[b, theta, phi]`` (N, 3) per bead in nm and radians, read from the bond vector in the parent's frame.

    ``theta`` is the bond angle at the parent (pi for a straight continuation), ``phi`` the torsion
    about the parent's bond (the IUPAC dihedral of the bead, its parent, grandparent and great-grandparent).
    Where ``dof`` has no angle or torsion they read pi and 0 (``c1`` and ``c2``, as :func:`rebuild` needs);
    roots read nonsense.
    """
    d = torch.bmm(frame[parent].transpose(1, 2), (x - x[parent]).unsqueeze(-1)).squeeze(-1)
    b = torch.sqrt(d.pow(2).sum(-1) + 1e-12)
    theta = torch.atan2(torch.sqrt(d[:, 1].pow(2) + d[:, 2].pow(2) + 1e-12), -d[:, 0])
    theta = torch.where(dof[:, 1] > 0, theta, torch.full_like(theta, math.pi))
    # where there is no torsion the inputs are replaced, so atan2 has a finite gradient
    has_phi = dof[:, 2] > 0
    phi = torch.atan2(torch.where(has_phi, d[:, 2], torch.zeros_like(b)),
                      torch.where(has_phi, d[:, 1], torch.ones_like(b)))
    return torch.stack([b, theta, phi], 1)


def _local(internal: Tensor) -> Tuple[Tensor, Tensor]:
    """Each bead's placement in its parent's frame: the rotation ``Rx(phi) Rz(pi - theta)`` (N, 3, 3), and ``b``
    times its first column (N, 3)."""
    b, theta, phi = internal[:, 0], internal[:, 1], internal[:, 2]
    ca, sa = torch.cos(math.pi - theta), torch.sin(math.pi - theta)
    cp, sp = torch.cos(phi), torch.sin(phi)
    zero = torch.zeros_like(b)
    rotation = torch.stack([torch.stack([ca, -sa, zero], -1),
                            torch.stack([cp * sa, cp * ca, -sp], -1),
                            torch.stack([sp * sa, sp * ca, cp], -1)], 1)
    return rotation, b.unsqueeze(-1) * rotation[:, :, 0]


def rebuild(internal: Tensor, root_frame: Tensor, root_position: Tensor, parent: Tensor, root: Tensor,
            rounds: int = -1) -> Tensor:
    """Positions (N, 3) with the given internal coordinates, each root at ``root_position`` with ``root_frame``.

    Bead ``i``'s frame and position are its parent's composed with its local placement; the products
    along every path are taken by pointer doubling, in ``rounds`` rounds (:func:`doubling_rounds`; -1: enough
    for any forest of N beads).

    Shapes:
        internal (N, 3), root_frame (N, 3, 3), root_position (N, 3) (read at roots), parent, root (N,) -> (N, 3)
    """
    rotation, shift = _local(internal)
    is_root = (parent == torch.arange(parent.numel(), device=parent.device)).view(-1, 1)
    rotation = torch.where(is_root.unsqueeze(-1), root_frame, rotation)
    shift = torch.where(is_root, root_position, shift)
    done, p = is_root, parent
    for _ in range(rounds if rounds >= 0 else _rounds(parent.numel())):
        # invariant: T_i = T_p(i) . (rotation_i, shift_i) until done, then T_i = (rotation_i, shift_i)
        new_rotation = torch.bmm(rotation[p], rotation)
        new_shift = torch.bmm(rotation[p], shift.unsqueeze(-1)).squeeze(-1) + shift[p]
        rotation = torch.where(done.unsqueeze(-1), rotation, new_rotation)
        shift = torch.where(done, shift, new_shift)
        done = done | done[p]
        p = p[p]
    return shift


def rotation_matrix(omega: Tensor) -> Tensor:
    """Rodrigues' rotation (N, 3, 3) by the rotation vectors ``omega`` (N, 3) (radians)."""
    angle2 = omega.pow(2).sum(-1).view(-1, 1, 1)
    angle = torch.sqrt(angle2 + 1e-12)
    k = _skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(k)
    return eye + torch.sin(angle) / angle * k + (1.0 - torch.cos(angle)) / (angle2 + 1e-12) * torch.bmm(k, k)


def rotation_vector(r: Tensor) -> Tensor:
    """The rotation vectors (N, 3) of rotation matrices ``r`` (N, 3, 3): the inverse of :func:`rotation_matrix`
    for angles below pi."""
    v = 0.5 * torch.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], -1)
    sine = torch.sqrt(v.pow(2).sum(-1) + 1e-12)
    cosine = 0.5 * (r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2] - 1.0)
    return (torch.atan2(sine, cosine) / sine).unsqueeze(-1) * v


def _tree_mean(x: Tensor, weight: Tensor, root: Tensor) -> Tensor:
    """The ``weight``-weighted mean of ``x`` (N, D) over each bead's tree, on every bead."""
    total = torch.zeros_like(weight).index_add(0, root, weight)
    sums = torch.zeros_like(x).index_add(0, root, weight * x)
    return (sums / total.clamp_min(1e-12))[root]


class InternalCoordinateNoise(Block):
    """Per-bead stds of the internal-coordinate step, and its draw and log-density (module docstring).

    The torsion's change may be a mixture of ``torsion_components`` Gaussians (offsets from the mean's
    torsion, stds and weights per bead, from the latents): over a picosecond step a torsion at the edge of
    its basin moves back far more often than on, which one Gaussian of the right mean and variance cannot
    say, and its tail then carries rollouts over barriers the MD never crosses.

    Parameters
    ----------
    hidden : int
        Width of the Dynamics latents the stds are read from.
    length_scale_nm : float
        The dataset's acceleration std in nm; bond-length and centre stds are read in its units.
    torsion_components : int
        Gaussians in the torsion's mixture (1: one Gaussian centred on the mean's torsion).
    """

    def __init__(self, hidden: int, length_scale_nm: float, torsion_components: int = 1):
        super().__init__()
        self.hidden, self.length_scale_nm = int(hidden), float(length_scale_nm)
        self.components = int(torsion_components)
        if self.components < 1:
            raise ValueError(f"torsion_components must be >= 1, got {torsion_components}")
        # [s_b, s_theta, bond change, angle change] and [s_phi] with one component, [logits, offsets, stds] with more
        self.head = mlp(hidden, hidden, 4 + (1 if self.components == 1 else 3 * self.components))
        self.rigid_head = mlp(hidden, hidden, 2)

    def extra_repr(self) -> str:
        return f"{self.hidden}, length_scale_nm={self.length_scale_nm:.4g}, torsion_components={self.components}"

    @torch.jit.export
    def draws(self) -> int:
        """Standard-normal (N, 3) draws a sample takes: internal, centre and rotation (and the component)."""
        return 3 if self.components == 1 else 4

    def forward(self, latents: Tensor, batch: Tensor) -> Tensor:
        """``[s_b (nm), s_theta, s_com (nm), s_rot, db (nm), dtheta, log w (K), offsets (K), s_phi (K)]`` per bead,
        K the torsion components (``s_com``, ``s_rot`` per molecule; angles in radians; ``log w`` normalised;
        ``db``, ``dtheta`` the changes of the bond length and angle from the current ones).

        Shapes:
            latents (N, hidden) invariant, batch (N,) -> (N, 6 + 3K)
        """
        pooled, _ = graph_mean(latents, batch)
        out = self.head(latents)
        rigid = nn.functional.softplus(self.rigid_head(pooled)) + 1e-4
        k = self.components
        s_b = (nn.functional.softplus(out[:, :1]) + 1e-4) * self.length_scale_nm
        s_theta = nn.functional.softplus(out[:, 1:2]) + 1e-4
        if k == 1:
            log_w, offsets, s_phi = torch.zeros_like(s_b), torch.zeros_like(s_b), nn.functional.softplus(out[:, 4:5])
        else:
            log_w = torch.log_softmax(out[:, 4:4 + k], dim=1)
            offsets, s_phi = out[:, 4 + k:4 + 2 * k], nn.functional.softplus(out[:, 4 + 2 * k:])
        return torch.cat([s_b, s_theta, rigid[:, :1] * self.length_scale_nm, rigid[:, 1:],
                          out[:, 2:3] * self.length_scale_nm, out[:, 3:4], log_w, offsets, s_phi + 1e-4], 1)

    def _torsion(self, params: Tensor, sibling: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``log w``, offsets and stds (N, K) of each bead's torsion step; a later sibling's on the first component
        alone: its relative torsion is stiff, with one mode (at a stereocentre, its handedness), and a spare wide
        component is what let single draws mirror CA for a frame."""
        k = self.components
        log_w = params[:, 6:6 + k]
        if k > 1:
            first = torch.full_like(log_w, float("-inf"))
            first[:, 0] = 0.0
            log_w = torch.where((sibling >= 0).unsqueeze(1), first, log_w)
        return log_w, params[:, 6 + k:6 + 2 * k], params[:, 6 + 2 * k:6 + 3 * k]

    def _centre(self, params: Tensor, x_now: Tensor, x_mean: Tensor, parent: Tensor, root: Tensor, anchor: Tensor,
                dof: Tensor, sibling: Tensor) -> Tuple[Tensor, Tensor]:
        """The draw's centre ``[b, theta, phi]`` (N, 3) and the mean's frames (N, 3, 3).

        Bond lengths and angles are the current ones (at ``x_now``) plus the predicted changes: read off the
        current geometry, not off ``x_mean``, whose velocity term would carry a stretch from step to step.
        Torsions (where the drift lives) and everything the anchor fixes are the mean's, except that a later
        sibling's torsion is its first sibling's mean torsion plus their *current* relative torsion: that
        relative torsion is a stiff coordinate like an angle (at a stereocentre, its handedness), and the
        Cartesian mean, whose beads move independently, can carry one sibling past the other.
        """
        frame = frames(x_mean, parent, root, anchor)
        mean = internal_coordinates(x_mean, frame, parent, dof)
        now = internal_coordinates(x_now, frames(x_now, parent, root, anchor), parent, dof)
        theta = torch.where(dof[:, 1] > 0, now[:, 1] + params[:, 5], mean[:, 1])
        phi_now, phi_mean = now[:, 2:], mean[:, 2:]
        relative = phi_now - _on_sibling(phi_now, sibling)
        phi = torch.where((sibling >= 0).unsqueeze(1), _on_sibling(phi_mean, sibling) + relative, phi_mean)
        return torch.stack([now[:, 0] + params[:, 4], theta, phi[:, 0]], 1), frame

    def sample(self, params: Tensor, noise: Tensor, x_now: Tensor, x_mean: Tensor, masses: Tensor,
               coarse_edge_index: Tensor, batch: Tensor, layout: Optional[List[Tensor]] = None,
               rounds: int = -1) -> Tensor:
        """A draw of the next positions (N, 3) nm from the current ``x_now`` and the mean positions ``x_mean``
        (N, 3) nm (:meth:`_centre`).

        ``noise`` (draws(), N, 3) standard normal: the first perturbs ``[b, theta, phi]``, the next two give each
        tree's centre shift and rotation vector (``sqrt(n)`` times the tree mean, itself standard normal), the
        fourth (with a mixture) picks the torsion's component (``Phi(noise[3][:, 0])`` uniform). ``masses`` (N,)
        weight the centres (any units). ``layout``: :func:`tree_layout` of the bonds, if at hand, and ``rounds``
        its :func:`doubling_rounds` (-1: enough for any forest).
        """
        parent, root, anchor, dof, sibling = _layout(coarse_edge_index, x_mean.size(0), layout)
        internal, frame = self._centre(params, x_now, x_mean, parent, root, anchor, dof, sibling)
        log_w, offsets, s_phi = self._torsion(params, sibling)
        if self.components > 1:
            uniform = torch.special.ndtr(noise[3][:, :1])
            cumulative = torch.cumsum(torch.exp(log_w), dim=1)[:, :-1]
            pick = (uniform > cumulative).sum(1, keepdim=True)
            offsets, s_phi = offsets.gather(1, pick), s_phi.gather(1, pick)
        dof = dof.to(x_mean.dtype)
        turn = (offsets + s_phi * noise[0][:, 2:]) * dof[:, 2:]
        step = torch.cat([params[:, :2] * noise[0][:, :2] * dof[:, :2], turn + _on_sibling(turn, sibling)], 1)
        z = rebuild(internal + step, frame, x_mean, parent, root, rounds)
        weight = masses.view(-1, 1).to(x_mean.dtype)
        ones = torch.ones_like(weight)
        count = torch.zeros_like(ones).index_add(0, root, ones)[root]
        com_kick = _tree_mean(noise[1], ones, root) * torch.sqrt(count)
        omega = _tree_mean(noise[2], ones, root) * torch.sqrt(count) * params[:, 3:4]
        centre_z = _tree_mean(z, weight, root)
        turned = torch.bmm(rotation_matrix(omega), (z - centre_z).unsqueeze(-1)).squeeze(-1)
        return _tree_mean(x_mean, weight, root) + params[:, 2:3] * com_kick + turned

    def nll(self, target: Tensor, x_now: Tensor, x_mean: Tensor, params: Tensor, masses: Tensor,
            coarse_edge_index: Tensor, batch: Tensor, layout: Optional[List[Tensor]] = None) -> Tensor:
        """Negative log-density of the positions ``target`` (N, 3) nm, per bead, averaged (Jacobian and
        constants dropped)."""
        parent, root, anchor, dof, sibling = _layout(coarse_edge_index, x_mean.size(0), layout)
        dof = dof.to(x_mean.dtype)
        centre, frame_mean = self._centre(params, x_now, x_mean, parent, root, anchor, dof, sibling)
        frame_target = frames(target, parent, root, anchor)
        delta = internal_coordinates(target, frame_target, parent, dof) - centre
        stds = params[:, :2]
        bonded = ((0.5 * (delta[:, :2] / stds).pow(2) + torch.log(stds)) * dof[:, :2]).sum(-1)
        log_w, offsets, s_phi = self._torsion(params, sibling)
        own = delta[:, 2:] * dof[:, 2:]
        turn = own - _on_sibling(own, sibling) - offsets      # a later sibling's step: its own plus its first's
        turn = torch.atan2(torch.sin(turn), torch.cos(turn))
        torsion = -torch.logsumexp(log_w - torch.log(s_phi) - 0.5 * (turn / s_phi).pow(2), dim=1) * dof[:, 2]
        # rigid part, once per tree (read at its root)
        weight = masses.view(-1, 1).to(x_mean.dtype)
        shift = _tree_mean(target, weight, root) - _tree_mean(x_mean, weight, root)
        omega = rotation_vector(torch.bmm(frame_target, frame_mean.transpose(1, 2)))
        s_com, s_rot = params[:, 2], params[:, 3]
        rigid = (0.5 * shift.pow(2).sum(-1) / s_com.pow(2) + 3.0 * torch.log(s_com)
                 + 0.5 * omega.pow(2).sum(-1) / s_rot.pow(2) + 3.0 * torch.log(s_rot))
        is_root = (parent == torch.arange(parent.numel(), device=parent.device)).to(x_mean.dtype)
        return (bonded + torsion + rigid * is_root).mean()

    def marginal_std(self, params: Tensor, x_now: Tensor, x_mean: Tensor, masses: Tensor,
                     coarse_edge_index: Tensor, batch: Tensor, draws: int = 64,
                     layout: Optional[List[Tensor]] = None) -> Tensor:
        """Isotropic summary (N, 1) nm of each bead's spread about ``x_mean``: ``sqrt(E|x - x_mean|^2 / 3)``,
        estimated from ``draws`` draws (the global random stream)."""
        layout = list(_layout(coarse_edge_index, x_mean.size(0), layout))
        total = torch.zeros_like(x_mean[:, :1])
        for _ in range(draws):
            noise = torch.randn(self.draws(), x_mean.size(0), 3, dtype=x_mean.dtype, device=x_mean.device)
            y = self.sample(params, noise, x_now, x_mean, masses, coarse_edge_index, batch, layout)
            total = total + (y - x_mean).pow(2).sum(-1, keepdim=True)
        return torch.sqrt(total / (3.0 * draws))
