"""Statistics of a coarse dataset: the numbers measured over its frames, written once.

Two kinds, both over the frames of one split:

* while :func:`~openmm_cgml.data.coarse_grain` writes, :class:`StepScales` pools
  the model-step displacement ``x[t]-x[t-lag]`` and acceleration
  ``x[t+lag]-2x[t]+x[t-lag]`` chunk by chunk (the root attributes
  ``velocity_std_nm`` and ``accel_std_nm``: the model's input and output scales);
* on a written file, :func:`closest_approaches` measures how close bead pairs
  come (the hard core of a trained model).

:class:`~openmm_cgml.data.CoarseDataset` serves both (``accel_std_nm``,
``scales()``, ``min_distances()``); this module keeps the arithmetic out of the
file format. Lengths are plain nanometers (internal helpers).
"""
from __future__ import annotations

import math

import h5py
import numpy as np
import torch

from openmm_cgml.geometry import pair_distances_torch

__all__ = ["StepScales", "closest_approaches", "MAX_FRAMES_PER_TRAJECTORY"]

# Frames per trajectory used for the closest approaches: evenly spread, enough to find the minimum.
MAX_FRAMES_PER_TRAJECTORY = 5000
# Distance matrices computed at a time: about 160 MB of float64.
_DISTANCE_VALUES_PER_CHUNK = 2e7


class _Moments:
    """Running count, sum and sum of squares (float64) for a pooled standard deviation."""

    def __init__(self):
        self.count, self.total, self.squares = 0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        self.count += values.size
        self.total += float(values.sum())
        self.squares += float(np.square(values).sum())

    def std(self) -> float:
        if self.count == 0:
            return float("nan")
        mean = self.total / self.count
        return float(math.sqrt(max(self.squares / self.count - mean * mean, 0.0)))


class StepScales:
    """Pooled standard deviations of the model-step displacement and acceleration, fed chunk by chunk.

    Parameters
    ----------
    lag : int
        Saved frames per model step.

    Notes
    -----
    Call :meth:`new_trajectory` before the first chunk of each trajectory: differences never
    span two trajectories. Frames are pooled in float64 over every bead and component.
    """

    def __init__(self, lag: int):
        self.lag = int(lag)
        self.velocity, self.accel = _Moments(), _Moments()
        self._tail = None

    def new_trajectory(self) -> None:
        self._tail = None

    def add(self, frames: np.ndarray) -> None:
        """Add the differences that end in ``frames`` (n, n_beads, 3) nm, the next frames of the trajectory."""
        frames = np.asarray(frames, dtype=np.float64)
        first = 0 if self._tail is None else len(self._tail)
        if self._tail is not None:
            frames = np.concatenate([self._tail, frames])
        lag = self.lag
        ends = np.arange(max(lag, first), len(frames))
        if len(ends):
            self.velocity.add(frames[ends] - frames[ends - lag])
        ends = np.arange(max(2 * lag, first), len(frames))
        if len(ends):
            self.accel.add(frames[ends] - 2 * frames[ends - lag] + frames[ends - 2 * lag])
        self._tail = frames[-2 * lag:]   # the frames later differences reach back to

    def attrs(self) -> dict:
        """``{"velocity_std_nm", "accel_std_nm"}``: NaN when no difference was added (an empty split)."""
        return {"velocity_std_nm": self.velocity.std(), "accel_std_nm": self.accel.std()}


def closest_approaches(groups, max_frames: int = MAX_FRAMES_PER_TRAJECTORY) -> dict:
    """Closest approach (nm) of bead pairs in the frames of some trajectories of a coarse dataset.

    The minimum over all frames (evenly subsampled to at most ``max_frames`` per
    trajectory) of the distance between beads joined by a coarse bond, and between
    all other bead pairs of a trajectory (within and between molecules). One global
    value per class: the small training sets here do not support one per pair of
    bead types.

    Parameters
    ----------
    groups : iterable of h5py.Group
        Trajectory groups of a coarse dataset file (``positions``, ``coarse_bonds``, ``box``).
    max_frames : int
        Frames used per trajectory at most.

    Returns
    -------
    dict
        ``{"bonded_nm", "nonbonded_nm", "frames"}``; a class with no pairs gives 0
        (no hard core for it), and ``frames`` is 0 when the groups hold no frames.

    Raises
    ------
    ValueError
        If a frame used holds NaN or infinite positions (the message names the group and frame).
    """
    bonded, nonbonded, frames = math.inf, math.inf, 0
    for group in groups:
        closest_bonded, closest_other, used = _closest_in_trajectory(group, max_frames)
        bonded, nonbonded, frames = min(bonded, closest_bonded), min(nonbonded, closest_other), frames + used
    return {"bonded_nm": bonded if math.isfinite(bonded) else 0.0,
            "nonbonded_nm": nonbonded if math.isfinite(nonbonded) else 0.0, "frames": frames}


def _closest_in_trajectory(group: h5py.Group, max_frames: int) -> tuple[float, float, int]:
    """(closest bonded, closest other pair, frames used) of one trajectory; inf for a class without pairs."""
    n_frames, n = group["positions"].shape[:2]
    if n < 2:
        return math.inf, math.inf, 0
    is_bond = torch.zeros(n, n, dtype=torch.bool)
    bonds = torch.as_tensor(np.asarray(group["coarse_bonds"], dtype=np.int64).reshape(-1, 2))
    is_bond[bonds[:, 0], bonds[:, 1]] = True
    is_bond |= is_bond.clone().T
    other = ~is_bond & ~torch.eye(n, dtype=torch.bool)
    picks = np.unique(np.linspace(0, n_frames - 1, min(n_frames, max_frames)).astype(np.int64))
    chunk = max(1, int(_DISTANCE_VALUES_PER_CHUNK // (n * n * 3)))
    bonded, nonbonded = math.inf, math.inf
    for start in range(0, len(picks), chunk):
        rows = picks[start:start + chunk]
        # one contiguous read, then the picked rows: faster than an HDF5 point selection
        box = np.asarray(group["box"][rows[0]:rows[-1] + 1])[rows - rows[0]] if "box" in group else None
        positions = np.asarray(group["positions"][rows[0]:rows[-1] + 1])[rows - rows[0]]
        finite = np.isfinite(positions).all(axis=(1, 2))
        if not finite.all():
            raise ValueError(f"trajectory {group.name}: bead positions of frame {int(rows[np.argmin(finite)])} "
                             "contain NaN or infinite values")
        cell = torch.as_tensor(box, dtype=torch.float64)[:, None, None] if box is not None and np.any(box) else None
        distances = pair_distances_torch(torch.as_tensor(positions, dtype=torch.float64), cell)
        if bool(is_bond.any()):
            bonded = min(bonded, float(distances[:, is_bond].min()))
        if bool(other.any()):
            nonbonded = min(nonbonded, float(distances[:, other].min()))
    return bonded, nonbonded, len(picks)
