"""Per-graph operations on a batch of molecules: graph means, periodic boxes, unwrapping.

A batch is the PyG layout: beads of all molecules stacked (N, ...) with
``batch`` (N,) the molecule (graph) index of each bead. All functions are
TorchScript-compatible and avoid host syncs except where noted.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["graph_mean", "graph_box", "unwrap"]


def graph_mean(x: Tensor, batch: Tensor) -> Tuple[Tensor, Tensor]:
    """Each node's graph mean of ``x`` and its graph's node count, without a device sync.

    Graph indices are < N, so N scatter slots always suffice.

    Parameters
    ----------
    x : Tensor
        (N, D) node values.
    batch : Tensor
        (N,) graph index of each node.

    Returns
    -------
    mean, count : Tensor
        (N, D) the mean over the node's graph, and (N, 1) the node count of its graph.
    """
    ones = torch.ones(x.size(0), 1, dtype=x.dtype, device=x.device)
    counts = torch.zeros_like(ones).index_add(0, batch, ones)
    sums = torch.zeros_like(x).index_add(0, batch, x)
    return (sums / counts.clamp_min(1.0))[batch], counts[batch]


def graph_box(box: Tensor, batch: Tensor) -> Optional[Tensor]:
    """(B, 3, 3) periodic box per graph, or None when the box is all zeros (no periodicity).

    Parameters
    ----------
    box : Tensor
        (3, 3) box for all graphs or (B, 3, 3) one per graph, rows = box vectors, nm.
    batch : Tensor
        (N,) graph index of each node; read (a device sync) only for periodic boxes.
    """
    if box.numel() == 0 or not bool((box != 0).any()):
        return None
    box = box.reshape(-1, 3, 3)
    n_graphs = int(batch.max()) + 1 if batch.numel() > 0 else 1
    if box.size(0) == n_graphs:
        return box
    return box[:1].expand(n_graphs, 3, 3)


def unwrap(frames: Tensor, reference: Tensor, box: Optional[Tensor], batch: Tensor) -> Tensor:
    """``frames`` moved by box vectors to their nearest image of ``reference``.

    Periodic positions may be wrapped between frames; unwrapping them around
    the current frame keeps finite-difference velocities physical. (Solved per
    bead in its own cell, TorchScript-able; the training step and exported
    files depend on these exact numbers.)

    Parameters
    ----------
    frames : Tensor
        (..., N, 3) positions, nm.
    reference : Tensor
        (N, 3) positions, nm.
    box : Tensor or None
        (B, 3, 3) per-graph boxes from :func:`graph_box`; None = not periodic.
    batch : Tensor
        (N,) graph index of each bead.
    """
    if box is None:
        return frames
    cell = box[batch]                                                    # (N, 3, 3) rows = box vectors
    delta = frames - reference
    fractional = torch.linalg.solve(cell.transpose(1, 2), delta.unsqueeze(-1)).squeeze(-1)
    shift = torch.round(fractional)
    return frames - (shift.unsqueeze(-1) * cell).sum(-2)
