"""Neighbour search in plain torch: radius graphs, periodic or not, batched.

torch_cluster / pyg-lib are not available here, so this is written with
sort + searchsorted only, and every function is TorchScript-compatible.

Conventions (used everywhere in ``openmm_cgml.nn``):

* ``edge_index[0]`` is the source ``j``, ``edge_index[1]`` the target ``i``
  (messages flow j -> i, as in PyG).
* The vector from ``j`` to ``i`` is ``pos[i] - pos[j] + shift``, in nm.
  ``shift`` is a lattice vector (zeros without a box) that turns the raw
  difference into the minimum image.
* Boxes are given OpenMM style: rows are the box vectors a, b, c in nm,
  shape (3, 3) for all graphs or (B, 3, 3) per graph. A box that is all zeros
  means "not periodic" for that graph (the coarse datasets store that).
* Periodic search requires ``cutoff <= half the shortest box width``
  (perpendicular width); then at most one image of each atom is in range and
  fractional-coordinate rounding finds it exactly, for any triclinic box.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["radius_graph", "molecule_pairs", "edge_vectors", "graph_boxes", "DENSE_MAX_ATOMS", "GROUPED_MAX_PAIRS"]

# Largest total number of nodes for which the all-pairs distance matrix is
# used when method="auto" (from 65 nodes on, only if the per-graph blocks below do not
# apply); above it the cell list wins (measured with bench/backbone.py
# --neighbors on a 2-core CPU: the crossover is near 500-1000 atoms).
DENSE_MAX_ATOMS = 512

# Largest padded per-molecule distance block (graphs x largest graph^2) that method="auto"
# searches densely, molecule by molecule, for many small molecules without a box (replicas of
# a peptide, a batch of chains): about 25x faster than the cell list for 512 chains of 8 beads.
GROUPED_MAX_PAIRS = 1 << 22


def _dense_max_atoms() -> int:
    # TorchScript cannot read module-level ints; keep in sync with DENSE_MAX_ATOMS
    return 512


def _tiny_atoms() -> int:
    # up to this many nodes (one small molecule: the per-step fast path) the all-pairs matrix is taken
    # without counting the graphs, which costs a host sync
    return 64


def _grouped_max_pairs() -> int:
    # keep in sync with GROUPED_MAX_PAIRS
    return 1 << 22


def graph_boxes(box: Optional[Tensor], n_graphs: int, dtype: torch.dtype,
                device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-graph boxes (G, 3, 3), their inverses and a periodic flag (G,).

    Non-periodic graphs (no box, or an all-zero box) get the identity as box
    and inverse and flag 0, so the same arithmetic serves both cases.
    """
    eye = torch.eye(3, dtype=dtype, device=device).expand(n_graphs, 3, 3)
    if box is None:
        flag = torch.zeros(n_graphs, dtype=dtype, device=device)
        return eye, eye, flag
    b = box.to(dtype=dtype, device=device)
    if b.dim() == 2:
        b = b.unsqueeze(0)
    if b.dim() != 3 or b.size(1) != 3 or b.size(2) != 3:
        raise ValueError("box must have shape (3, 3) or (n_graphs, 3, 3), got " + str(list(box.shape)))
    if b.size(0) == 1 and n_graphs != 1:
        b = b.expand(n_graphs, 3, 3)
    if b.size(0) != n_graphs:
        raise ValueError("box has " + str(b.size(0)) + " boxes but the batch has " + str(n_graphs) + " graphs")
    if not bool(torch.isfinite(b).all()):
        raise ValueError("box contains NaN or infinite values")
    periodic = (b.abs().sum(dim=(1, 2)) > 0)
    flag = periodic.to(dtype)
    b = torch.where(periodic.view(-1, 1, 1), b, eye)
    det = torch.linalg.det(b)
    if bool((det.abs() < 1e-12).any()):
        raise ValueError("box vectors are degenerate (zero volume)")
    inv = torch.linalg.inv(b)
    return b, inv, flag


def _box_widths(box_g: Tensor) -> Tensor:
    """Perpendicular widths (G, 3) of the boxes: volume / area of the opposite face."""
    a, b, c = box_g[:, 0], box_g[:, 1], box_g[:, 2]
    volume = torch.linalg.det(box_g).abs()
    areas = torch.stack([torch.linalg.cross(b, c).norm(p=2, dim=-1),
                         torch.linalg.cross(c, a).norm(p=2, dim=-1),
                         torch.linalg.cross(a, b).norm(p=2, dim=-1)], dim=1)
    return volume.unsqueeze(1) / areas


def edge_vectors(pos: Tensor, edge_index: Tensor, batch: Optional[Tensor] = None,
                 box: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Minimum-image vectors j -> i (E, 3) and shifts (E, 3) for given edges (e.g. bonds).

    Differentiable in ``pos``; the shift is piecewise constant and returned detached.
    """
    j, i = edge_index[0], edge_index[1]
    vec = pos.index_select(0, i) - pos.index_select(0, j)
    if box is None or not bool(box.any()):
        # no box or an all-zero box (= not periodic): skip the lattice arithmetic
        return vec, torch.zeros_like(vec)
    n = pos.size(0)
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=pos.device)
    n_graphs = int(batch.max()) + 1 if n > 0 else 1
    box_g, inv_g, flag = graph_boxes(box, n_graphs, pos.dtype, pos.device)
    shift = _min_image_shift(vec.detach(), batch[i], box_g, inv_g, flag)
    return vec + shift, shift


def _min_image_shift(vec: Tensor, edge_graph: Tensor, box_g: Tensor, inv_g: Tensor, flag: Tensor) -> Tensor:
    """Lattice vector that maps ``vec`` to its minimum image (zeros for non-periodic graphs)."""
    frac = torch.bmm(vec.unsqueeze(1), inv_g[edge_graph]).squeeze(1)
    n_images = torch.round(frac) * flag[edge_graph].unsqueeze(1)
    return -torch.bmm(n_images.unsqueeze(1), box_g[edge_graph]).squeeze(1)


def _neighbor_offsets(device: torch.device) -> Tensor:
    r = torch.arange(-1, 2, device=device)
    grid = torch.stack(torch.meshgrid([r, r, r], indexing="ij"), dim=-1)
    return grid.reshape(27, 3)


def radius_graph(pos: Tensor, cutoff: float, batch: Optional[Tensor] = None,
                 box: Optional[Tensor] = None, max_num_neighbors: int = 64,
                 method: str = "auto") -> Tuple[Tensor, Tensor]:
    """All pairs closer than ``cutoff`` (nm) within each graph, as a directed graph.

    Parameters
    ----------
    pos : Tensor
        (N, 3) positions in nm (any float dtype, any device).
    cutoff : float
        Radius in nm; pairs with distance < cutoff are returned.
    batch : Tensor, optional
        (N,) graph index of each node (need not be sorted); no edges between
        graphs. ``None`` = one graph.
    box : Tensor, optional
        None, (3, 3) or (B, 3, 3) box vectors as rows, nm; all zeros = not periodic.
    max_num_neighbors : int
        At most this many incoming edges per node; the nearest ones are kept
        (deterministic, unlike torch_cluster).
    method : str
        "auto": without a box, the all-pairs matrix up to 64 nodes in total;
        above that, all pairs within each graph when the graphs are small,
        contiguous and under the neighbour cap (GROUPED_MAX_PAIRS), else the
        all-pairs matrix up to DENSE_MAX_ATOMS nodes; with a box, the all-pairs
        matrix up to DENSE_MAX_ATOMS nodes; everything else a cell list (O(N)
        for a fixed density). "dense" or "cell" force one path.

    Returns
    -------
    edge_index, shift : Tensor
        edge_index (2, E) long, rows [source j, target i], both directions,
        sorted by (i, j); shift (E, 3) such that the vector from j to i is
        ``pos[i] - pos[j] + shift``. Not differentiable (indices only);
        recompute the vectors from ``pos`` for gradients.
    """
    _check_graph_options(pos, cutoff, max_num_neighbors, method)
    device = pos.device
    n = pos.size(0)
    if n == 0:
        return (torch.zeros(2, 0, dtype=torch.long, device=device), torch.zeros(0, 3, dtype=pos.dtype, device=device))
    batch = _checked_batch(pos, batch)
    pos = pos.detach()
    if box is not None and not bool(box.any()):
        box = None      # all-zero box = not periodic: take the cheap open-boundary path
    dense = n <= _dense_max_atoms() if method == "auto" else method == "dense"
    if box is None and (method == "dense" or (method == "auto" and n <= _tiny_atoms())):
        return _dense_open_graph(pos, batch, cutoff, max_num_neighbors)
    if box is None and method == "auto":
        # many small graphs (replicas in one Context): one block per graph beats the all-pairs matrix
        # already at a few hundred nodes in all (64 chains of 8 beads: G n_max^2 = N^2 / 64)
        counts = torch.bincount(batch)
        n_max = int(counts.max())
        if n_max <= max_num_neighbors + 1 and counts.size(0) * n_max * n_max <= _grouped_max_pairs() \
                and bool((batch[1:] >= batch[:-1]).all()):
            return _grouped_open_graph(pos, batch, counts, n_max, cutoff)
        if dense:
            return _dense_open_graph(pos, batch, cutoff, max_num_neighbors)
    box_g, inv_g, flag = graph_boxes(box, int(batch.max()) + 1, pos.dtype, device)
    periodic = flag > 0
    any_periodic = bool(periodic.any())
    if any_periodic:
        _check_cutoff_fits(box_g, periodic, cutoff)
    frac, wrapped = _wrapped_coordinates(pos, batch, box_g, inv_g, flag, periodic, any_periodic)
    if dense:
        i, j = _dense_candidates(wrapped, frac, batch, flag, box_g, cutoff)
    else:
        i, j = _cell_candidates(pos, frac, batch, periodic, box_g, cutoff)
    i, j, shift, dist2 = _pairs_within(pos, wrapped, frac, batch, flag, periodic, box_g, i, j, cutoff)
    if i.numel() > 0 and int(torch.bincount(i, minlength=n).max()) > max_num_neighbors:
        i, j, shift = _keep_nearest(i, j, shift, dist2, n, max_num_neighbors)
    canon = torch.argsort(i * n + j)
    edge_index = torch.stack([j[canon], i[canon]], dim=0)
    return edge_index, shift[canon]


def _check_graph_options(pos: Tensor, cutoff: float, max_num_neighbors: int, method: str) -> None:
    if pos.dim() != 2 or pos.size(1) != 3:
        raise ValueError("pos must have shape (N, 3), got " + str(list(pos.shape)))
    if not cutoff > 0.0:
        raise ValueError("cutoff must be positive, got " + str(cutoff))
    if max_num_neighbors < 1:
        raise ValueError("max_num_neighbors must be >= 1, got " + str(max_num_neighbors))
    if method != "auto" and method != "dense" and method != "cell":
        raise ValueError("method must be 'auto', 'dense' or 'cell', got '" + method + "'")


def _checked_batch(pos: Tensor, batch: Optional[Tensor]) -> Tensor:
    """``batch`` checked against finite ``pos`` (N, 3) (zeros = one graph when None)."""
    n = pos.size(0)
    if not bool(torch.isfinite(pos).all()):
        raise ValueError("pos contains NaN or infinite coordinates")
    if batch is None:
        return torch.zeros(n, dtype=torch.long, device=pos.device)
    if batch.dim() != 1 or batch.size(0) != n:
        raise ValueError("batch must have shape (N,) = (" + str(n) + ",), got " + str(list(batch.shape)))
    return batch


def _check_cutoff_fits(box_g: Tensor, periodic: Tensor, cutoff: float) -> None:
    """``ValueError`` if ``cutoff`` exceeds half the shortest periodic box width (ambiguous minimum image)."""
    shortest = float(_box_widths(box_g)[periodic].min())
    if cutoff > 0.5 * shortest * (1.0 + 1e-9):
        raise ValueError("cutoff " + str(cutoff) + " nm exceeds half the shortest periodic box width ("
                         + str(0.5 * shortest) + " nm); minimum image would be ambiguous")


def _wrapped_coordinates(pos: Tensor, batch: Tensor, box_g: Tensor, inv_g: Tensor, flag: Tensor,
                         periodic: Tensor, any_periodic: bool) -> Tuple[Tensor, Tensor]:
    """Fractional coordinates wrapped into [0, 1) (periodic graphs only) and the matching Cartesian positions.

    Pair vectors come from these, the nearest image of j being
    round(frac_i - frac_j) boxes away (exact when cutoff <= half width).
    """
    frac = torch.bmm(pos.unsqueeze(1), inv_g[batch]).squeeze(1)
    frac = frac - torch.floor(frac) * flag[batch].unsqueeze(1)
    if not any_periodic:
        return frac, pos
    wrapped = torch.bmm(frac.unsqueeze(1), box_g[batch]).squeeze(1)
    return frac, torch.where(periodic[batch].unsqueeze(1), wrapped, pos)


def _pairs_within(pos: Tensor, wrapped: Tensor, frac: Tensor, batch: Tensor, flag: Tensor, periodic: Tensor,
                  box_g: Tensor, i: Tensor, j: Tensor, cutoff: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Candidate pairs (i, j) closer than ``cutoff``, with their shifts (E, 3) and squared distances (E,)."""
    any_periodic = bool(periodic.any())
    if any_periodic:
        images = torch.round(frac[i] - frac[j])
        if not bool(periodic.all()):
            images = images * flag[batch[i]].unsqueeze(1)
        if bool((box_g == box_g[0]).all()):
            lattice = images @ box_g[0]
        else:
            lattice = (images.unsqueeze(2) * box_g[batch[i]]).sum(dim=1)
        vec = wrapped[i] - wrapped[j] - lattice
    else:
        lattice = torch.zeros(0, 3, dtype=pos.dtype, device=pos.device)
        vec = pos[i] - pos[j]
    dist2 = (vec * vec).sum(dim=1)
    kept = torch.nonzero((dist2 < cutoff * cutoff) & (i != j)).squeeze(1)
    i, j, dist2 = i[kept], j[kept], dist2[kept]
    if any_periodic:
        moved = wrapped - pos     # lattice vector each atom was wrapped by
        shift = moved[i] - moved[j] - lattice[kept]
    else:
        shift = torch.zeros(i.size(0), 3, dtype=pos.dtype, device=pos.device)
    return i, j, shift, dist2


def _keep_nearest(i: Tensor, j: Tensor, shift: Tensor, dist2: Tensor, n: int,
                  max_num_neighbors: int) -> Tuple[Tensor, Tensor, Tensor]:
    """The ``max_num_neighbors`` nearest incoming edges of every node (ties by candidate order)."""
    by_dist = torch.argsort(dist2, stable=True)
    by_node = by_dist[torch.argsort(i[by_dist], stable=True)]
    i_s = i[by_node]
    deg = torch.bincount(i_s, minlength=n)
    node_first = torch.cumsum(deg, 0) - deg
    within = torch.arange(i_s.size(0), device=i.device) - node_first[i_s]
    chosen = by_node[within < max_num_neighbors]
    return i[chosen], j[chosen], shift[chosen]


def _dense_open_graph(pos: Tensor, batch: Tensor, cutoff: float, max_num_neighbors: int) -> Tuple[Tensor, Tensor]:
    """Radius graph without a box from the all-pairs distance matrix, in few ops.

    The fast path for small molecules (called every model step): the matrix
    test is exact, and ``nonzero`` returns pairs in row-major order, i.e.
    already sorted by (i, j), so no re-check or sort is needed.
    """
    n = pos.size(0)
    diff = pos.unsqueeze(1) - pos.unsqueeze(0)                   # (N, N, 3): pos[i] - pos[j]
    dist2 = (diff * diff).sum(dim=2)
    close = (dist2 < cutoff * cutoff) & (batch.unsqueeze(0) == batch.unsqueeze(1))
    close.fill_diagonal_(False)
    if n > max_num_neighbors and int(close.sum(dim=1).max()) > max_num_neighbors:
        # keep the nearest: rank each row's candidates by distance (ties by index, as the general path)
        far = torch.where(close, dist2, torch.full_like(dist2, float("inf")))
        order = torch.argsort(far, dim=1, stable=True)[:, :max_num_neighbors]
        keep = torch.zeros_like(close)
        keep.scatter_(1, order, True)
        close = close & keep
    ij = torch.nonzero(close)
    i, j = ij[:, 0], ij[:, 1]
    return torch.stack([j, i], dim=0), torch.zeros(i.size(0), 3, dtype=pos.dtype, device=pos.device)


def molecule_pairs(batch: Tensor, max_graph: int = 64) -> Optional[Tensor]:
    """Every ordered pair of distinct nodes within each graph, (2, P) as ``[source j, target i]``: the edges of
    the radius graph of an infinite cutoff, fixed for a topology, in mirrored halves. The first half holds each
    unordered pair once (``j < i``, sorted by (i, j)), the second the same pairs reversed
    (``pairs[:, P // 2:] == pairs[:, :P // 2].flip(0)``), so that a caller computes what depends on the
    distance alone (radial bases, envelopes, symmetric coefficients) on the first half only.

    A model whose messages vanish at its cutoff (an envelope that is exactly zero there) computes the same on
    these pairs as on its radius graph, as long as no node has more than ``max_graph - 1`` neighbours (no
    neighbour cap applies). Without a box, a caller stepping many small molecules can take them once per
    topology instead of a radius graph per call: fixed shapes and no host sync inside the step (a graph
    capture or ``torch.export`` needs both), at the price of the pairs beyond the cutoff.

    None when a graph has more than ``max_graph`` nodes, when the graphs are not contiguous and sorted, or
    when the pairs would exceed GROUPED_MAX_PAIRS. Host syncs: meant for once per topology.

    Shapes:
        batch (N,) -> (2, P) long, or None
    """
    n = batch.size(0)
    if n == 0 or bool((batch[1:] < batch[:-1]).any()):
        return None
    counts = torch.bincount(batch)
    n_max = int(counts.max())
    if n_max > max_graph or counts.size(0) * n_max * n_max > _grouped_max_pairs():
        return None
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n_max, device=batch.device)
    present = slot.unsqueeze(0) < counts.unsqueeze(1)                                  # (G, n_max)
    pair = present.unsqueeze(2) & present.unsqueeze(1)                                  # (G, i, j)
    pair = torch.tril(pair, diagonal=-1)                                                # j < i
    gij = torch.nonzero(pair)                                                           # (graph, i, j) order
    offset = first[gij[:, 0]]
    lower = torch.stack([offset + gij[:, 2], offset + gij[:, 1]], dim=0)
    return torch.cat([lower, lower.flip(0)], dim=1)


def _grouped_open_graph(pos: Tensor, batch: Tensor, counts: Tensor, n_max: int,
                        cutoff: float) -> Tuple[Tensor, Tensor]:
    """Radius graph without a box from one padded distance block per graph: O(G n_max^2).

    For many small graphs in contiguous, sorted order (``counts`` nodes each,
    at most ``n_max``, no node over the neighbour cap). ``nonzero`` walks the
    (graph, i, j) blocks in order, so the edges come sorted by (i, j) as from
    every other path, and are the same edges.
    """
    n = pos.size(0)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n, device=pos.device) - first[batch]
    padded = torch.zeros(counts.size(0), n_max, 3, dtype=pos.dtype, device=pos.device)
    padded[batch, slot] = pos
    present = torch.zeros(counts.size(0), n_max, dtype=torch.bool, device=pos.device)
    present[batch, slot] = True
    diff = padded.unsqueeze(2) - padded.unsqueeze(1)               # (G, n, n, 3): pos[i] - pos[j]
    close = ((diff * diff).sum(dim=3) < cutoff * cutoff) & present.unsqueeze(2) & present.unsqueeze(1)
    close.diagonal(dim1=1, dim2=2).fill_(False)
    gij = torch.nonzero(close)
    offset = first[gij[:, 0]]
    i, j = offset + gij[:, 1], offset + gij[:, 2]
    return torch.stack([j, i], dim=0), torch.zeros(i.size(0), 3, dtype=pos.dtype, device=pos.device)


def _dense_candidates(wrapped: Tensor, frac: Tensor, batch: Tensor, flag: Tensor, box_g: Tensor,
                      cutoff: float) -> Tuple[Tensor, Tensor]:
    """Pairs (i, j) of the same graph within ``cutoff`` from the all-pairs distance matrix, O(N^2)."""
    vec = wrapped.unsqueeze(1) - wrapped.unsqueeze(0)              # (N, N, 3): pos[i] - pos[j]
    if bool((flag > 0).any()):
        images = torch.round(frac.unsqueeze(1) - frac.unsqueeze(0)) * flag[batch].view(-1, 1, 1)
        vec = vec - torch.bmm(images, box_g[batch])
    close = ((vec * vec).sum(dim=2) < cutoff * cutoff) & (batch.unsqueeze(0) == batch.unsqueeze(1))
    close.fill_diagonal_(False)
    ij = torch.nonzero(close)
    return ij[:, 0], ij[:, 1]


def _cell_candidates(pos: Tensor, frac: Tensor, batch: Tensor, periodic: Tensor, box_g: Tensor,
                     cutoff: float) -> Tuple[Tensor, Tensor]:
    """Candidate pairs (i, j) from a cell list: O(N) for a fixed density.

    Each graph gets its own grid (cells keyed by graph, so graphs never mix).
    Periodic graphs: cells in fractional coordinates, floor(width_k / cutoff)
    per axis, so every cell is at least `cutoff` wide perpendicular to its
    faces and all partners lie in the 27 adjacent (wrapped) cells.
    """
    device = pos.device
    n = pos.size(0)
    n_graphs = box_g.size(0)
    index3 = batch.unsqueeze(1).expand(n, 3)
    lo = torch.full((n_graphs, 3), float("inf"), dtype=pos.dtype, device=device)
    lo = lo.scatter_reduce(0, index3, pos, reduce="amin", include_self=True)
    hi = torch.full((n_graphs, 3), float("-inf"), dtype=pos.dtype, device=device)
    hi = hi.scatter_reduce(0, index3, pos, reduce="amax", include_self=True)
    extent = (hi - lo).clamp(min=0.0)
    # cap cells per axis (a sparse cloud must not make billions of cells); bigger cells stay correct
    cell_free = torch.maximum(extent / 1000.0, torch.full_like(extent, cutoff))
    n_free = torch.floor(extent / cell_free).long() + 1
    n_periodic = torch.floor(_box_widths(box_g) / cutoff).long().clamp(min=1, max=1000)
    n_cells = torch.where(periodic.unsqueeze(1), n_periodic, n_free)
    nb = n_cells[batch]
    coord_free = torch.floor((pos - lo[batch]) / cell_free[batch]).long()
    coord_periodic = torch.floor(frac * nb.to(pos.dtype)).long()
    coord = torch.where(periodic[batch].unsqueeze(1), coord_periodic, coord_free)
    coord = torch.minimum(coord.clamp(min=0), nb - 1)

    cells_per_graph = n_cells[:, 0] * n_cells[:, 1] * n_cells[:, 2]
    graph_offset = torch.cumsum(cells_per_graph, 0) - cells_per_graph
    key = graph_offset[batch] + (coord[:, 0] * nb[:, 1] + coord[:, 1]) * nb[:, 2] + coord[:, 2]
    sorted_key, order = torch.sort(key)

    offsets = _neighbor_offsets(device)
    n_off = offsets.size(0)
    ncoord = coord.unsqueeze(1) + offsets.unsqueeze(0)              # (N, 27, 3)
    nbx = nb.unsqueeze(1)
    per = periodic[batch].view(n, 1, 1)
    # periodic: wrap, and drop offsets that would visit the same cell twice (fewer than 3 cells)
    valid_per = (offsets == 0) | ((offsets == 1) & (nbx >= 2)) | ((offsets == -1) & (nbx >= 3))
    valid_free = (ncoord >= 0) & (ncoord < nbx)
    valid = torch.where(per, valid_per, valid_free).all(dim=2)
    ncoord = torch.where(per, torch.remainder(ncoord, nbx), torch.minimum(ncoord.clamp(min=0), nbx - 1))
    nkey = graph_offset[batch].unsqueeze(1) \
        + (ncoord[..., 0] * nbx[..., 1] + ncoord[..., 1]) * nbx[..., 2] + ncoord[..., 2]
    start = torch.searchsorted(sorted_key, nkey.reshape(-1))
    stop = torch.searchsorted(sorted_key, nkey.reshape(-1), right=True)
    count = (stop - start) * valid.reshape(-1).long()

    # expand (node, neighbour cell) slots into candidate pairs
    slot = torch.repeat_interleave(torch.arange(n * n_off, device=device), count)
    first = torch.cumsum(count, 0) - count
    rank = torch.arange(slot.size(0), device=device) - first[slot]
    i = torch.div(slot, n_off, rounding_mode="floor")
    j = order[start[slot] + rank]
    return i, j
