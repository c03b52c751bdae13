"""PaxNet: a physics-aware multiplex graph network, E(3)-equivariant.

After Zhang, Liu & Xie (arXiv 2206.02789, PAMNet): two graphs per molecule,
as in molecular mechanics,

* a global graph (radius cutoff) whose messages use distances only, and
* a local graph (bonds, optionally plus pairs within ``local_cutoff``) whose
  messages also see angles: two-hop angles k->j->i and one-hop angles between
  two neighbours of one node, through a Bessel x Legendre(cos) basis. The
  costly angle work is confined to the small local graph.

Per layer the two contributions are fused by attention (a softmax over
{global, local} per node from invariant features).

Unlike PAMNet this version carries a PaiNN-style vector channel (N, 3, hidden)
updated from relative unit vectors weighted by learned invariant filters and
from neighbours' vectors, so it returns equivariant per-node vectors as well as
invariant scalars. Only distances and cosines are used, so reflections act
like rotations (E(3)). Units: positions and cutoffs in nm.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Linear, Sequential, SiLU

from .basis import AngularBasis, BesselBasis, PolynomialEnvelope
from .layers import Block
from .layers import mlp as _mlp
from .neighbors import edge_vectors, radius_graph

__all__ = ["PaxNet", "bond_keys", "bond_local_tables"]


def _scatter_sum(src: Tensor, index: Tensor, n: int) -> Tensor:
    out = torch.zeros((n,) + src.shape[1:], dtype=src.dtype, device=src.device)
    return out.index_add_(0, index, src)


def _soft_normalize(v: Tensor) -> Tensor:
    """Equivariant, smooth saturation of a node's vectors (N, 3, H): v / sqrt(1 + mean_c |v_c|^2).

    Keeps small vectors (and their magnitude information) nearly unchanged
    while stopping the residual vector stream from growing layer after layer.
    """
    return v / torch.sqrt(1.0 + (v * v).sum(dim=1, keepdim=True).mean(dim=2, keepdim=True))


def _vector_message(v_src: Tensor, unit: Tensor, coeff: Tensor, width: int) -> Tensor:
    """PaiNN vector message (E, 3, width): neighbour vectors gated + unit vector times an invariant filter."""
    gate_v, gate_r = coeff[:, :width], coeff[:, width:]
    return v_src * gate_v.unsqueeze(1) + unit.unsqueeze(2) * gate_r.unsqueeze(1)


class VectorChannel(torch.nn.Module):
    """Vector messages in a narrow channel: down-project, gate per edge, sum, up-project.

    The down-projection (``down``) is applied by :meth:`PaxLayer.down_project`, for the global and the local
    channel of a layer in one product; ``forward`` takes its result.

    The (E, 3, width) edge tensors dominate the cost of an equivariant layer
    (and twice over when forces are trained through a double backward), so
    they are kept ``width`` < hidden wide; the channel maps are linear in the
    feature index only, hence equivariant.
    """

    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.width = width
        self.down = Linear(hidden, width, bias=False)
        self.up = Linear(width, hidden, bias=False)

    def forward(self, low: Tensor, src: Tensor, dst: Tensor, unit: Tensor, coeff: Tensor) -> Tensor:
        """``low`` (N, 3, width): the node vectors through ``down``; returns (N, 3, hidden)."""
        message = _vector_message(low.index_select(0, src), unit, coeff, self.width)
        return self.up(_scatter_sum(message, dst, low.size(0)))


class GlobalMessage(torch.nn.Module):
    """Distance-only messages on the radius graph (scalars and vectors)."""

    def __init__(self, hidden: int, n_rbf: int, scale: float, vector_width: int):
        super().__init__()
        self.hidden = hidden
        self.scale = scale
        self.node = _mlp(hidden, hidden, hidden + 2 * vector_width)
        self.filter = Linear(n_rbf, hidden + 2 * vector_width)
        self.vector = VectorChannel(hidden, vector_width)

    def filter_weight(self) -> Tensor:
        """(hidden + 2 width, n_rbf + 1): the radial filter's weight with its bias as the last column, which
        applied to ``[rbf * weight, weight]`` gives ``filter(rbf) * weight`` in one matrix product."""
        return torch.cat([self.filter.weight, self.filter.bias.unsqueeze(1)], dim=1)

    def forward(self, h: Tensor, v_low: Tensor, src: Tensor, dst: Tensor, edge_filter: Tensor,
                unit: Tensor) -> Tuple[Tensor, Tensor]:
        """``v_low`` (N, 3, width) the node vectors down-projected for this channel (:meth:`PaxLayer.down_project`);
        ``edge_filter`` (E, hidden + 2 width) = ``filter(rbf) * weight``, weight = envelope * scale: the
        product of ``[rbf * weight, weight]`` (E, n_rbf + 1) by :meth:`filter_weight`, which ``PaxNet`` takes
        for all layers at once. That spares the passes over the (E, hidden + 2 width) edge tensor (the bias
        copy and the product by the weight) that dominate the step for large N."""
        n = h.size(0)
        m = self.node(h).index_select(0, src) * edge_filter
        dh = _scatter_sum(m[:, :self.hidden], dst, n)
        dv = self.vector(v_low, src, dst, unit, m[:, self.hidden:])
        return dh, dv


class LocalMessage(torch.nn.Module):
    """Bond-graph messages refined by two-hop and one-hop angles (DimeNet++-style bottleneck)."""

    def __init__(self, hidden: int, n_rbf: int, n_angle: int, vector_width: int):
        super().__init__()
        self.hidden = hidden
        down = max(hidden // 2, 8)
        self.node = _mlp(hidden, hidden, hidden)
        self.filter = Linear(n_rbf, hidden)
        self.down = Linear(hidden, down, bias=False)
        self.angle_two_hop = Linear(n_angle, down, bias=False)
        self.angle_one_hop = Linear(n_angle, down, bias=False)
        self.up_two_hop = Linear(down, hidden)
        self.up_one_hop = Linear(down, hidden)
        self.out = _mlp(hidden, hidden, hidden + 2 * vector_width)
        self.vector = VectorChannel(hidden, vector_width)
        self.act = SiLU()

    def forward(self, h: Tensor, v_low: Tensor, src: Tensor, dst: Tensor, rbf: Tensor, envelope: Optional[Tensor],
                unit: Tensor, two_hop_in: Tensor, two_hop_out: Tensor, two_hop_basis: Tensor,
                one_hop_in: Tensor, one_hop_out: Tensor, one_hop_basis: Tensor) -> Tuple[Tensor, Tensor]:
        """``v_low`` (N, 3, width) the node vectors down-projected for this channel (:meth:`PaxLayer.down_project`);
        ``envelope`` (E_l, 1), or None when all local edges are bonds (no cutoff, weight 1)."""
        n = h.size(0)
        n_edges = src.size(0)
        m = self.node(h).index_select(0, src) * self.filter(rbf)   # (E_l, H) edge j->i
        if envelope is not None:
            m = m * envelope
        low = self.down(m)
        # two-hop: message k->j modulated by the angle k-j-i flows into edge j->i
        t2 = low.index_select(0, two_hop_in) * self.angle_two_hop(two_hop_basis)
        # one-hop: message k->i modulated by the angle j-i-k flows into edge j->i
        t1 = low.index_select(0, one_hop_in) * self.angle_one_hop(one_hop_basis)
        m = m + self.up_two_hop(self.act(_scatter_sum(t2, two_hop_out, n_edges)))
        m = m + self.up_one_hop(self.act(_scatter_sum(t1, one_hop_out, n_edges)))
        # the envelope again so that angle terms also vanish smoothly for cutoff pairs
        m = self.out(m)
        if envelope is not None:
            m = m * envelope
        dh = _scatter_sum(m[:, :self.hidden], dst, n)
        dv = self.vector(v_low, src, dst, unit, m[:, self.hidden:])
        return dh, dv


class AttentionFusion(torch.nn.Module):
    """Softmax over {global, local} per node from the invariant features of each branch."""

    def __init__(self, hidden: int):
        super().__init__()
        self.score_global = Linear(hidden, 1)
        self.score_local = Linear(hidden, 1)

    def forward(self, h: Tensor, v: Tensor, dh_g: Tensor, dv_g: Tensor, dh_l: Tensor,
                dv_l: Tensor) -> Tuple[Tensor, Tensor]:
        scores = torch.cat([self.score_global(h + dh_g), self.score_local(h + dh_l)], dim=1)
        alpha = torch.softmax(torch.nn.functional.leaky_relu(scores, 0.2), dim=1)
        a_g, a_l = alpha[:, :1], alpha[:, 1:]
        h = h + a_g * dh_g + a_l * dh_l
        v = v + a_g.unsqueeze(1) * dv_g + a_l.unsqueeze(1) * dv_l
        return h, v


class EquivariantUpdate(torch.nn.Module):
    """PaiNN update: mixes scalars and vectors within a node through invariant norms and dot products."""

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.mix_u = Linear(hidden, hidden, bias=False)
        self.mix_w = Linear(hidden, hidden, bias=False)
        self.gate = _mlp(2 * hidden, hidden, 3 * hidden)

    def forward(self, h: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        # both maps of the same vectors in one product (wider, so faster, than two)
        mixed = torch.nn.functional.linear(v, torch.cat([self.mix_u.weight, self.mix_w.weight], dim=0))
        uv, wv = mixed[:, :, :self.hidden], mixed[:, :, self.hidden:]
        # eps keeps the gradient of the norm finite when the vectors vanish
        norm = torch.sqrt((wv * wv).sum(dim=1) + 1e-8)
        a = self.gate(torch.cat([h, norm], dim=1))
        a_vv, a_sv, a_ss = a[:, :self.hidden], a[:, self.hidden:2 * self.hidden], a[:, 2 * self.hidden:]
        v = v + a_vv.unsqueeze(1) * uv
        h = h + a_sv * (uv * wv).sum(dim=1) + a_ss
        return h, v


class PaxLayer(torch.nn.Module):
    def __init__(self, hidden: int, n_rbf: int, n_angle: int, global_scale: float, vector_width: int):
        super().__init__()
        self.global_message = GlobalMessage(hidden, n_rbf, global_scale, vector_width)
        self.local_message = LocalMessage(hidden, n_rbf, n_angle, vector_width)
        self.fusion = AttentionFusion(hidden)
        self.update = EquivariantUpdate(hidden)
        self.norm = torch.nn.LayerNorm(hidden)

    def down_project(self, v: Tensor) -> Tuple[Tensor, Tensor]:
        """The node vectors (N, 3, hidden) through the global and the local channel's ``down`` maps, in one
        product: (N, 3, width) each."""
        width = self.global_message.vector.width
        weight = torch.cat([self.global_message.vector.down.weight, self.local_message.vector.down.weight], dim=0)
        low = torch.nn.functional.linear(v, weight)
        return low[:, :, :width], low[:, :, width:]


class PaxNet(Block):
    """E(3)-equivariant multiplex backbone: per-node invariant scalars and equivariant vectors.

    Parameters
    ----------
    hidden : int
        Feature width H.
    n_layers : int
        Number of multiplex layers.
    cutoff : float or Quantity
        Global radius graph cutoff; Quantity compatible with nanometers, default: 1.0*unit.nanometer.
    local_cutoff : float or Quantity, optional
        If set, pairs closer than this (Quantity compatible with nanometers) join the bonds in the local graph.
    n_rbf : int
        Radial Bessel functions.
    n_sbf : int
        Angular orders (Legendre P_0..P_{n_sbf-1}) in the angle basis.
    vector_in : int
        Input vector channels (e.g. velocities), ``v`` of shape (N, 3, vector_in).
    scalar_in : int
        Input scalar channels, ``s`` of shape (N, scalar_in).
    n_angle_rbf : int
        Radial functions in the angle basis.
    max_num_neighbors : int
        Cap on global neighbours per node (nearest kept).
    envelope_exponent : int
        Smoothness exponent of the cutoff envelope.
    avg_num_neighbors : float
        Typical global neighbour count; global sums are divided by its square
        root (a constant, so smoothness is kept) to keep features O(1) in
        dense systems.
    vector_width : int, optional
        Width of the per-edge vector messages (default max(8, hidden // 4));
        the node vector channel stays ``hidden`` wide.
    """

    def __init__(self, hidden: int = 64, n_layers: int = 3, cutoff: float = 1.0,
                 local_cutoff: Optional[float] = None, n_rbf: int = 16, n_sbf: int = 6,
                 vector_in: int = 0, scalar_in: int = 0, n_angle_rbf: int = 6,
                 max_num_neighbors: int = 64, envelope_exponent: int = 5, avg_num_neighbors: float = 16.0,
                 vector_width: Optional[int] = None):
        super().__init__()
        from ..units import NM, strip

        cutoff = strip(cutoff, NM, "cutoff")
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff} nm")
        if local_cutoff is not None:
            local_cutoff = strip(local_cutoff, NM, "local_cutoff")
            if not 0 < local_cutoff:
                raise ValueError(f"local_cutoff must be positive, got {local_cutoff} nm")
        for name, value, low in (("hidden", hidden, 1), ("n_layers", n_layers, 1), ("n_rbf", n_rbf, 1),
                                 ("n_sbf", n_sbf, 1), ("vector_in", vector_in, 0), ("scalar_in", scalar_in, 0),
                                 ("n_angle_rbf", n_angle_rbf, 1), ("max_num_neighbors", max_num_neighbors, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value}")
        self.hidden = int(hidden)
        self.n_layers = int(n_layers)
        self.cutoff = float(cutoff)
        self.use_local_cutoff = local_cutoff is not None
        self.local_cutoff = float(local_cutoff) if local_cutoff is not None else float(cutoff)
        self.scalar_in = int(scalar_in)
        self.vector_in = int(vector_in)
        self.max_num_neighbors = int(max_num_neighbors)

        if scalar_in > 0:
            self.embed = _mlp(scalar_in, hidden, hidden)
        else:
            self.embed = Sequential(Linear(1, hidden))   # fed a constant 1: one learned start vector
        self.vector_embed = Linear(max(vector_in, 1), hidden, bias=False)
        self.rbf_global = BesselBasis(n_rbf, cutoff)
        self.envelope_global = PolynomialEnvelope(cutoff, envelope_exponent)
        self.rbf_local = BesselBasis(n_rbf, self.local_cutoff)
        self.envelope_local = PolynomialEnvelope(self.local_cutoff, envelope_exponent)
        self.angle_basis = AngularBasis(n_angle_rbf, n_sbf, self.local_cutoff)
        global_scale = float(avg_num_neighbors) ** -0.5
        self.global_scale = global_scale
        width = max(8, hidden // 4) if vector_width is None else int(vector_width)
        if width < 1:
            raise ValueError(f"vector_width must be >= 1, got {vector_width}")
        self.layers = torch.nn.ModuleList([PaxLayer(hidden, n_rbf, n_angle_rbf * n_sbf, global_scale, width)
                                           for _ in range(n_layers)])
        # Cache of the index work that depends on the bonds only (local edges
        # and angle triplets): a propagator calls the network every model step
        # with the same bonds, and rebuilding them costs more than the layers
        # on a small molecule. Plain tensor attributes (not buffers): not in
        # the state dict, kept by TorchScript, re-made on any change of the
        # bonds' values, shape, dtype or device, or of the node count.
        # Unused with local_cutoff, where the local graph follows the positions.
        self._clear_bond_cache()

    def reset_parameters(self) -> None:
        """Re-initialise all weights (and the Bessel frequencies); the bond cache is emptied too."""
        super().reset_parameters()
        self._clear_bond_cache()

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden}, n_layers={self.n_layers}, cutoff={self.cutoff}, "
                f"scalar_in={self.scalar_in}, vector_in={self.vector_in}")

    def _clear_bond_cache(self) -> None:
        self._cache_n = -1
        self._cache_bonds = torch.zeros(2, 0, dtype=torch.long)
        self._cache_graph = [torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.bool)]
        self._cache_triplets = [torch.zeros(0, dtype=torch.long) for _ in range(7)]

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cpu()/.cuda()/.float() move parameters, not plain attributes: empty the cache so
        # that no tensor is left behind on another device (e.g. inside an exported CPU model)
        self._clear_bond_cache()
        return super()._apply(fn, *args, **kwargs)

    def local_graph(self, pos: Tensor, local_edge_index: Tensor, batch: Tensor,
                    box: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Local edges (2, E_l) sorted by target, both directions, and a bond flag (E_l,) (1 = bond)."""
        n = pos.size(0)
        bonded = bond_keys(local_edge_index, n)
        keys = bonded
        if self.use_local_cutoff:
            near, _ = radius_graph(pos, self.local_cutoff, batch, box, self.max_num_neighbors)
            keys = torch.unique(torch.cat([bonded, near[1] * n + near[0]]))
        return _key_edges(keys, n), torch.isin(keys, bonded)

    def local_tables(self, pos: Tensor, local_edge_index: Tensor, batch: Tensor, box: Optional[Tensor]
                     ) -> List[Tensor]:
        """``[edges, is_bond]`` of :meth:`local_graph` and the angle triplets of :meth:`_local_indices`, uncached.

        Without ``local_cutoff`` they depend on the bonds alone: a caller stepping one topology may compute them
        once and pass them to :meth:`forward` as ``local``.
        """
        if not self.use_local_cutoff:
            return bond_local_tables(local_edge_index, pos.size(0))
        edges, is_bond = self.local_graph(pos, local_edge_index.long(), batch, box)
        return _angle_tables(edges, is_bond, pos.size(0))

    def _local_indices(self, pos: Tensor, local_edge_index: Tensor, batch: Tensor, box: Optional[Tensor]
                       ) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """Local edges, bond flags and angle triplets; cached while the bonds stay the same.

        Triplets: [two_in, two_out, one_in, one_out, angle_in, angle_out, angle_sign], the
        last three being both kinds concatenated (two-hop first) so that one gather and one
        basis evaluation serve both; angle_sign (+-1) turns the dot product into the cosine.
        """
        n = pos.size(0)
        if not self.use_local_cutoff and self._cache_n == n \
                and local_edge_index.device == self._cache_bonds.device \
                and local_edge_index.dtype == self._cache_bonds.dtype \
                and local_edge_index.size() == self._cache_bonds.size() \
                and not (self._cache_bonds.is_inference() and torch.is_grad_enabled()) \
                and bool(torch.equal(local_edge_index, self._cache_bonds)):
            return self._cache_graph[0], self._cache_graph[1], self._cache_triplets
        if local_edge_index.dim() != 2 or local_edge_index.size(0) != 2:
            raise ValueError("local_edge_index must have shape (2, E), got " + str(list(local_edge_index.shape)))
        if local_edge_index.numel() > 0 and (int(local_edge_index.min()) < 0 or int(local_edge_index.max()) >= n):
            raise ValueError("local_edge_index refers to nodes outside 0.." + str(n - 1))
        tables = self.local_tables(pos, local_edge_index, batch, box)
        edges, is_bond, triplets = tables[0], tables[1], tables[2:]
        # (a cache made under torch.inference_mode, e.g. in validation, holds inference tensors that
        # autograd cannot save: the hit test above rebuilds instead of reusing them when grad is on)
        if not self.use_local_cutoff:
            # clone: the caller may change its tensor in place later
            self._cache_bonds = local_edge_index.clone()
            self._cache_n = n
            self._cache_graph = [edges, is_bond]
            self._cache_triplets = triplets
        return edges, is_bond, triplets

    def _global_edges(self, pos: Tensor, batch: Tensor, box: Optional[Tensor], pairs: Optional[Tensor]
                      ) -> Tuple[Tensor, Tensor, Tensor, bool]:
        """Sources, targets and vectors j -> i (E, 3) nm of the global graph: ``pairs`` on open boundaries,
        else the radius graph (minimum images); and whether the edges are mirrored halves (the pairs)."""
        if pairs is not None and box is None:
            return pairs[0], pairs[1], pos.index_select(0, pairs[1]) - pos.index_select(0, pairs[0]), True
        edge, shift = radius_graph(pos, self.cutoff, batch, box, self.max_num_neighbors)
        vec = pos.index_select(0, edge[1]) - pos.index_select(0, edge[0])
        return edge[0], edge[1], vec + shift if box is not None else vec, False

    def _global_filters(self, dist: Tensor, mirrored: bool) -> Tensor:
        """Every layer's radial filter of the global edges (E, n_layers * (hidden + 2 width)), from one matrix
        product; on mirrored halves (the molecules' pairs) computed on the first half, as it depends on the
        distance alone."""
        if mirrored:
            dist = dist[:dist.size(0) // 2]
        weight = (self.envelope_global(dist) * self.global_scale).unsqueeze(1)
        basis = torch.cat([self.rbf_global(dist) * weight, weight], dim=1)
        weights: List[Tensor] = []
        for layer in self.layers:
            weights.append(layer.global_message.filter_weight())
        filters = torch.mm(basis, torch.cat(weights, dim=0).t())
        if mirrored:   # both halves read the same rows: a view of the product (compiled, no copy)
            return filters.unsqueeze(0).expand(2, filters.size(0), filters.size(1)).reshape(-1, filters.size(1))
        return filters

    def _check_features(self, s: Tensor, v: Tensor, n: int) -> None:
        """``ValueError`` unless ``s`` is (n, scalar_in) and ``v`` (n, 3, vector_in)."""
        if s.size(0) != n or s.size(1) != self.scalar_in:
            raise ValueError("s must have shape (N, scalar_in) = (" + str(n) + ", " + str(self.scalar_in)
                             + "), got " + str(list(s.shape)))
        if v.size(0) != n or v.size(1) != 3 or v.size(2) != self.vector_in:
            raise ValueError("v must have shape (N, 3, vector_in) = (" + str(n) + ", 3, " + str(self.vector_in)
                             + "), got " + str(list(v.shape)))

    def forward(self, s: Tensor, v: Tensor, pos: Tensor, local_edge_index: Tensor, batch: Tensor,
                box: Optional[Tensor] = None, local: Optional[List[Tensor]] = None,
                pairs: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Per-node features.

        Parameters
        ----------
        s, v : Tensor
            (N, scalar_in) invariant and (N, 3, vector_in) equivariant inputs (e.g. velocities); a zero
            channel count is allowed.
        pos, local_edge_index, batch : Tensor
            (N, 3) positions in nm, (2, E_l) bonds (either or both directions), (N,) graph of each node.
        box : Tensor, optional
            (B, 3, 3) or (3, 3) box vectors as rows, nm; zeros = not periodic.
        local : list of Tensor, optional
            :meth:`local_tables` of these bonds (no ``local_cutoff``), if at hand.
        pairs : Tensor, optional
            (2, P) a fixed superset of the global graph without a box, in mirrored halves
            (:func:`~openmm_cgml.nn.neighbors.molecule_pairs`), taken instead of a radius graph: the envelope
            gives the pairs beyond the cutoff zero weight, so the result is the same (to rounding), with fixed
            shapes; the radial filters are computed on the first half.

        Returns
        -------
        scalars, vectors : Tensor
            (N, hidden) invariant and (N, 3, hidden) equivariant node features.
        """
        n = pos.size(0)
        self._check_features(s, v, n)
        if box is not None and not bool(box.any()):
            box = None          # all-zero box = not periodic

        # global graph: distances only
        g_src, g_dst, g_vec, mirrored = self._global_edges(pos, batch, box, pairs)
        g_dist = torch.sqrt((g_vec * g_vec).sum(dim=1))
        g_unit = g_vec / g_dist.unsqueeze(1)
        g_filters = self._global_filters(g_dist, mirrored)
        width = g_filters.size(1) // self.n_layers

        # local graph: bonds (+ near pairs), with angles
        if local is None or self.use_local_cutoff:
            l_edge, is_bond, triplets = self._local_indices(pos, local_edge_index, batch, box)
        else:
            l_edge, is_bond, triplets = local[0], local[1], local[2:]
        two_in, two_out, one_in, one_out = triplets[0], triplets[1], triplets[2], triplets[3]
        l_src, l_dst = l_edge[0], l_edge[1]
        l_vec, _ = edge_vectors(pos, l_edge, batch, box)
        l_dist = torch.sqrt((l_vec * l_vec).sum(dim=1))
        l_unit = l_vec / l_dist.unsqueeze(1)
        l_rbf = self.rbf_local(l_dist)
        l_env: Optional[Tensor] = None     # bonds only: no envelope
        if self.use_local_cutoff:
            l_env = torch.where(is_bond, torch.ones_like(l_dist), self.envelope_local(l_dist)).unsqueeze(1)
        # cosines of both angle kinds in one pass (signs: see _local_indices)
        angle_in, angle_out = triplets[4], triplets[5]
        cos = (l_unit.index_select(0, angle_in) * l_unit.index_select(0, angle_out)).sum(dim=1) * triplets[6]
        basis = self.angle_basis(l_dist.index_select(0, angle_in), cos)
        n_two = two_in.size(0)
        two_basis, one_basis = basis[:n_two], basis[n_two:]

        if self.scalar_in > 0:
            h = self.embed(s)
        else:
            h = self.embed(torch.ones(n, 1, dtype=pos.dtype, device=pos.device))
        if self.vector_in > 0:
            vec = self.vector_embed(v)
        else:
            vec = torch.zeros(n, 3, self.hidden, dtype=pos.dtype, device=pos.device)

        for index, layer in enumerate(self.layers):
            low_g, low_l = layer.down_project(vec)
            dh_g, dv_g = layer.global_message(h, low_g, g_src, g_dst,
                                              g_filters[:, index * width:(index + 1) * width], g_unit)
            dh_l, dv_l = layer.local_message(h, low_l, l_src, l_dst, l_rbf, l_env, l_unit,
                                             two_in, two_out, two_basis, one_in, one_out, one_basis)
            h, vec = layer.fusion(h, vec, dh_g, dv_g, dh_l, dv_l)
            h, vec = layer.update(layer.norm(h), _soft_normalize(vec))
        return h, vec


def bond_keys(local_edge_index: Tensor, n: int) -> Tensor:
    """Sorted unique keys ``dst * n + src`` of the bonds (2, E) in both directions, self-loops dropped: the key
    of a pair edge ``(src, dst)`` is in them (``torch.searchsorted``) exactly when the pair is bonded."""
    bonds = torch.cat([local_edge_index, local_edge_index.flip(0)], dim=1).long()
    bonds = bonds[:, bonds[0] != bonds[1]]
    return torch.unique(bonds[1] * n + bonds[0])


def _key_edges(keys: Tensor, n: int) -> Tensor:
    """Edges (2, E) ``[src, dst]`` of keys ``dst * n + src`` (sorted by target when the keys are sorted)."""
    return torch.stack([torch.remainder(keys, n), torch.div(keys, n, rounding_mode="floor")], dim=0)


def _angle_tables(edges: Tensor, is_bond: Tensor, n: int) -> List[Tensor]:
    """``[edges, is_bond]`` and the angle triplets of ``PaxNet._local_indices`` (its docstring) of a local graph."""
    two_in, two_out, one_in, one_out = _triplets(edges[0], edges[1], n)
    # angle k-j-i at j is between x_k - x_j = -vec[kj] and x_i - x_j = vec[ji]: sign -1;
    # angle j-i-k at i is between x_j - x_i and x_k - x_i, both edges point into i: sign +1
    sign = torch.cat([torch.full_like(two_in, -1), torch.ones_like(one_in)])
    return [edges, is_bond, two_in, two_out, one_in, one_out, torch.cat([two_in, one_in]),
            torch.cat([two_out, one_out]), sign]


def bond_local_tables(local_edge_index: Tensor, n: int) -> List[Tensor]:
    """:meth:`PaxNet.local_tables` of a network without ``local_cutoff``: its local graph is the bonds (2, E)
    of ``n`` nodes alone, so the tables need no positions."""
    keys = bond_keys(local_edge_index, n)
    return _angle_tables(_key_edges(keys, n), torch.ones_like(keys, dtype=torch.bool), n)


def _triplets(src: Tensor, dst: Tensor, n: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Edge pairs for angles on a graph whose edges are sorted by target.

    Returns (two_in, two_out): edge k->j feeding edge j->i, k != i; and
    (one_in, one_out): edge k->i feeding edge j->i, k != j.
    """
    device = src.device
    n_edges = src.size(0)
    deg_in = torch.bincount(dst, minlength=n)
    first_in = torch.cumsum(deg_in, 0) - deg_in
    edges = torch.arange(n_edges, device=device)

    count = deg_in[src]
    two_out = torch.repeat_interleave(edges, count)
    rank = torch.arange(two_out.size(0), device=device) - (torch.cumsum(count, 0) - count)[two_out]
    two_in = first_in[src[two_out]] + rank
    keep = src[two_in] != dst[two_out]
    two_in, two_out = two_in[keep], two_out[keep]

    count = deg_in[dst]
    one_out = torch.repeat_interleave(edges, count)
    rank = torch.arange(one_out.size(0), device=device) - (torch.cumsum(count, 0) - count)[one_out]
    one_in = first_in[dst[one_out]] + rank
    keep = one_in != one_out
    return two_in, two_out, one_in[keep], one_out[keep]
