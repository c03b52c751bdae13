"""Geometry, written once: the minimum image, pair distances, bead collisions and the best rotation (Kabsch).

Box vectors are rows of a (3, 3) matrix, as OpenMM gives them (``a`` along x,
``b`` in the xy plane: the reduced form). A box of all zeros, or ``None``, means
no periodicity. Lengths are plain nanometers: these are internal helpers, the
unit boundary is the caller's.

The numpy functions serve the data path (mapping, training statistics); the
torch functions serve rollouts and run on the model's device and dtype.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from openmm_cgml.units import COLLISION_DISTANCE_NM

__all__ = ["minimum_image", "minimum_image_torch", "pair_distances_torch", "count_collisions", "kabsch"]


def minimum_image(delta: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Shortest periodic image of displacement vectors ``delta`` (..., 3) nm.

    ``box`` (..., 3, 3) holds the box vectors as rows in OpenMM's reduced form,
    so subtracting multiples of c, then b, then a gives the minimum image of any
    displacement shorter than half the box. A rectangular box takes one pass.
    """
    box = box[..., None, :, :] if box.ndim == delta.ndim else box
    lengths = np.diagonal(box, axis1=-2, axis2=-1)
    if not np.any(box - lengths[..., None] * np.eye(3)):
        return delta - np.round(delta / lengths) * lengths
    for axis in (2, 1, 0):
        vector = box[..., axis, :]
        delta = delta - np.round(delta[..., axis:axis + 1] / vector[..., axis:axis + 1]) * vector
    return delta


def minimum_image_torch(delta: Tensor, box: Optional[Tensor]) -> Tensor:
    """Torch twin of :func:`minimum_image` through fractional coordinates.

    ``delta`` (..., 3) nm; ``box`` (3, 3) or broadcastable (..., 3, 3) rows, or
    ``None`` (returned unchanged). Exact for rectangular boxes; for triclinic
    ones, for displacements shorter than half the shortest box height.
    """
    if box is None:
        return delta
    fractional = (delta.unsqueeze(-2) @ torch.linalg.inv(box)).squeeze(-2)
    return ((fractional - torch.round(fractional)).unsqueeze(-2) @ box).squeeze(-2)


def pair_distances_torch(positions: Tensor, box: Optional[Tensor] = None) -> Tensor:
    """All pair distances (..., n, n) nm between the beads of ``positions`` (..., n, 3).

    A leading dimension groups beads that see each other (replicas, frames);
    minimum image when ``box`` is given.
    """
    delta = positions.unsqueeze(-2) - positions.unsqueeze(-3)
    return torch.linalg.vector_norm(minimum_image_torch(delta, box), dim=-1)


def count_collisions(pos: Tensor, threshold_nm: float = COLLISION_DISTANCE_NM,
                     batch: Optional[Tensor] = None) -> int:
    """Number of bead pairs closer than ``threshold_nm`` in ``pos`` (N, 3) nm.

    Only pairs within one molecule graph count when ``batch`` (N,) is given.
    Plain O(N^2) in chunks of rows: for rollouts and benchmarks, not inner loops.
    """
    n = pos.size(0)
    total = 0
    chunk = 2048
    for start in range(0, n, chunk):
        block = pos[start:start + chunk]
        close = torch.cdist(block, pos) < threshold_nm
        rows = torch.arange(start, start + block.size(0), device=pos.device)
        close &= rows.unsqueeze(1) < torch.arange(n, device=pos.device).unsqueeze(0)  # each pair once, no self
        if batch is not None:
            close &= batch[start:start + chunk].unsqueeze(1) == batch.unsqueeze(0)
        total += int(close.sum())
    return total


def kabsch(moving: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best proper rotations of point sets, batched: ``moving @ R.T`` fits ``target``.

    Both (..., P, 3), already centred (on their centroids, or on a common
    origin such as a bead). A rotation never reflects (det +1), so a fit keeps
    the handedness of ``moving``.

    Returns
    -------
    rotation : (..., 3, 3)
    residual : (...,) sum of squared distances after the fit, nm^2
    """
    left, _, right_t = np.linalg.svd(np.swapaxes(moving, -1, -2) @ target)
    sign = np.where(np.linalg.det(left @ right_t) < 0, -1.0, 1.0)
    left = left.copy()
    left[..., :, 2] *= sign[..., None]
    rotation = np.swapaxes(left @ right_t, -1, -2)
    residual = ((moving @ np.swapaxes(rotation, -1, -2) - target) ** 2).sum(axis=(-1, -2))
    return rotation, residual
