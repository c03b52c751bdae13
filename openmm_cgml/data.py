"""Coarse datasets: the windows of a file written by :func:`coarse_grain`, and their statistics.

A window is the history ``t-(k-1)*lag, ..., t-lag, t`` plus the target
``t+lag`` (``lag`` saved frames = one model step), all from one trajectory.

:class:`CoarseDataset` serves windows as ``torch_geometric`` ``Data``
objects, opening the HDF5 file once per process (each DataLoader worker opens
its own) and reading only the frames of the window asked for;
:func:`make_loader` wraps it. It also answers what training needs to know
about the data (scales, mappings, closest bead approaches; the arithmetic is
in :mod:`openmm_cgml.data_stats`). :func:`coarse_grain`, which writes the file,
lives in :mod:`openmm_cgml.coarse_graining` and is re-exported here.

Units: nm, nm/ps, ps, amu.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np
import torch
from torch_geometric.data import Data

from openmm_cgml.coarse_graining import FORMAT_NAME, SPLITS, coarse_grain
from openmm_cgml.data_stats import MAX_FRAMES_PER_TRAJECTORY, closest_approaches
from openmm_cgml.mapping import Mapping

__all__ = ["coarse_grain", "CoarseDataset", "WindowData", "make_loader"]

# A window spanning less than this is read in one piece and thinned in memory.
_CONTIGUOUS_READ_BYTES = 1 << 20


class WindowData(Data):
    """One window as a PyG ``Data``; batching offsets bead and atom indices correctly.

    ``coarse_edge_index`` and ``bead_of_atom`` are offset by beads (``num_nodes``),
    ``fine_edge_index`` by atoms, and ``atom_batch`` (zeros per window) by one, so
    a batch's ``atom_batch`` is the window index of every atom.
    """

    def __inc__(self, key, value, *args, **kwargs):
        if key in ("coarse_edge_index", "bead_of_atom"):
            return self.num_nodes
        if key == "fine_edge_index":
            return self.atom_types.size(0)
        if key == "atom_batch":
            return 1
        return super().__inc__(key, value, *args, **kwargs)

    def __cat_dim__(self, key, value, *args, **kwargs):
        if key in ("coarse_edge_index", "fine_edge_index"):
            return 1
        if key in ("bead_of_atom", "atom_batch", "traj_index", "frame"):
            return 0
        return super().__cat_dim__(key, value, *args, **kwargs)


class CoarseDataset(torch.utils.data.Dataset):
    """Windows of one split of a coarse dataset file, as :class:`WindowData`, and the statistics of that split.

    Each item has ``pos_history`` (n_beads, k, 3) nm (the last one current),
    ``pos_target`` (n_beads, 3) nm (one model step later), ``bead_mass``
    (n_beads,) amu, ``coarse_edge_index`` (2, 2C), ``atom_types`` (n_atoms,),
    ``fine_edge_index`` (2, 2B), ``bead_of_atom`` (n_atoms,), ``box`` (1, 3, 3)
    nm (zeros when not periodic), ``atom_batch``, and ``traj_index``/``frame``
    (where the window's current frame comes from).

    The file is opened once per process (each DataLoader worker opens its own) and
    only the k+1 frames of a window are read; :meth:`view` gives another split or
    history length of the same file without reading it again. What training needs
    to know about the data comes from here too: :attr:`accel_std_nm`,
    :attr:`velocity_std_nm`, :meth:`scales`, :meth:`mappings`, :meth:`summary` and
    :meth:`min_distances`.

    Parameters
    ----------
    path : str or os.PathLike
        A coarse dataset file (from :func:`coarse_grain`).
    split : str or None
        ``"train"``, ``"val"``, ``"test"``, or None for all windows.
    k : int, optional
        History length; may be shorter or longer than the one the file was made for
        (its ``k``, the default).
    """

    def __init__(self, path, split: str | None = "train", k: int | None = None):
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"coarse dataset {self.path} is a folder, not a dataset file")
        if not self.path.is_file():
            raise FileNotFoundError(f"coarse dataset {self.path} does not exist")
        _check_split(split)
        self._file, self._pid, self._static = None, None, {}
        handle = self._handle()
        try:
            if handle.attrs.get("format") != FORMAT_NAME or "traj" not in handle:
                raise ValueError(f"{self.path} is not an openmm-cgml coarse dataset (made by cgml coarse-grain)")
            self.attrs = {key: (value.item() if isinstance(value, np.generic) else value)
                          for key, value in handle.attrs.items()}
            missing = [key for key in ("k", "lag") if key not in self.attrs]
            if missing:
                raise ValueError(f"{self.path}: the coarse dataset has no root attribute {missing[0]!r}")
            self.lag = int(self.attrs["lag"])
            self._catalogue = _catalogue(handle, self.path)
        except BaseException:
            self.close()
            raise
        self._select(split, k)

    def _select(self, split: str | None, k: int | None) -> None:
        """Serve the windows of ``split`` with history length ``k`` (None: the file's)."""
        _check_split(split)
        self.split = split
        self.k = int(self.attrs["k"]) if k is None else int(k)
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        members = [(name, n_frames) for name, name_split, n_frames in self._catalogue
                   if split is None or name_split == split]
        windows = [(name, n_frames - self.k * self.lag) for name, n_frames in members
                   if n_frames - self.k * self.lag > 0]
        self._members = [name for name, _ in members]   # the split's trajectories, windows or not
        self.groups = [name for name, _ in windows]     # those with windows: indexed by traj_index
        self._offsets = np.concatenate([[0], np.cumsum([count for _, count in windows], dtype=np.int64)])
        self._static, self._mappings = {}, None

    def view(self, split: str | None, k: int | None = None) -> "CoarseDataset":
        """The windows of another split (or history length) of the same file, sharing its open handle.

        Parameters
        ----------
        split : str or None
            ``"train"``, ``"val"``, ``"test"``, or None for all windows.
        k : int, optional
            History length (default: the file's).

        Returns
        -------
        CoarseDataset
        """
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other._select(split, k)
        return other

    # ------------------------------------------------------------------ statistics
    @property
    def accel_std_nm(self) -> float:
        """Std of the model-step acceleration over the train split (nm); NaN if unknown."""
        return float(self.attrs.get("accel_std_nm", float("nan")))

    @property
    def velocity_std_nm(self) -> float:
        """Std of the model-step displacement over the train split (nm); NaN if unknown."""
        return float(self.attrs.get("velocity_std_nm", float("nan")))

    def scales(self) -> dict:
        """The model's scales, checked: ``{"accel_std_nm", "velocity_std_nm"}`` (nm).

        Raises
        ------
        ValueError
            If one is missing or not a positive number (an empty train split).
        """
        values = {"accel_std_nm": self.accel_std_nm, "velocity_std_nm": self.velocity_std_nm}
        for key, value in values.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{self.path}: dataset attribute {key} = {value} is not a positive number "
                                 "(is the train split empty?)")
        return values

    def mappings(self) -> list[Mapping]:
        """The distinct mappings (one per molecule) of this split's trajectories, in file order."""
        if self._mappings is None:
            texts = []
            for name in self._members:
                text = _text(self._handle()["traj"][name].attrs["mapping"])
                if text not in texts:
                    texts.append(text)
            self._mappings = [Mapping.from_json(text) for text in texts]
        return self._mappings

    def summary(self) -> dict:
        """What a model is built from, checked: ``{"path", "attrs", "mass_scale_amu", "n_molecules"}``.

        ``attrs`` are the file's scalar root attributes (time steps, ``k``, scales, ...);
        ``mass_scale_amu`` is the mean bead mass over :meth:`mappings`.

        Raises
        ------
        ValueError
            If the scales are not positive (:meth:`scales`) or there are no trajectories.
        """
        self.scales()
        mappings = self.mappings()
        if not mappings:
            raise ValueError(f"{self.path}: the dataset holds no trajectories")
        return {
            "path": str(self.path.resolve()),
            "attrs": {key: _text(value) if isinstance(value, bytes) else value
                      for key, value in self.attrs.items() if np.ndim(value) == 0},
            "mass_scale_amu": float(np.concatenate([m.bead_masses for m in mappings]).mean()),
            "n_molecules": len(mappings),
        }

    def min_distances(self, max_frames_per_trajectory: int = MAX_FRAMES_PER_TRAJECTORY) -> dict:
        """Closest approach (nm) of bead pairs in the frames of this split (the data behind a hard core).

        Parameters
        ----------
        max_frames_per_trajectory : int
            Frames used per trajectory at most, evenly spread.

        Returns
        -------
        dict
            ``{"bonded_nm", "nonbonded_nm", "frames"}``: see
            :func:`~openmm_cgml.data_stats.closest_approaches`.

        Raises
        ------
        ValueError
            If the split has no frames.
        """
        handle = self._handle()
        try:
            result = closest_approaches((handle["traj"][name] for name in self._members), max_frames_per_trajectory)
        except ValueError as error:   # e.g. NaN positions: name the file
            raise ValueError(f"{self.path}: {error}") from None
        if result["frames"] == 0:
            raise ValueError(f"{self.path}: no '{self.split}' frames to measure bead distances on")
        return result

    def mapping(self, index: int = 0) -> Mapping:
        """The :class:`Mapping` of the ``index``-th trajectory of this split."""
        return Mapping.from_json(self._handle()["traj"][self.groups[index]].attrs["mapping"])

    # ------------------------------------------------------------------ windows
    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_file=None, _pid=None, _static={})   # h5py handles do not cross processes
        return state

    def close(self) -> None:
        """Close the file in this process (views share it); reading again reopens it."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid, self._static = None, None, {}

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid() or not self._file:
            try:
                # a larger chunk cache than h5py's 1 MiB default keeps random window reads in memory
                self._file = h5py.File(self.path, "r", rdcc_nbytes=32 << 20)
            except OSError as error:
                raise ValueError(f"{self.path} is not a readable HDF5 file ({error})") from None
            self._pid, self._static = os.getpid(), {}
        return self._file

    def _static_fields(self, traj: int) -> dict:
        """Per-trajectory tensors (graphs, masses) and open datasets, read once per process."""
        if traj not in self._static:
            group = self._handle()["traj"][self.groups[traj]]
            fine = torch.from_numpy(group["fine_bonds"][()].reshape(-1, 2).T.astype(np.int64))
            coarse = torch.from_numpy(group["coarse_bonds"][()].reshape(-1, 2).T.astype(np.int64))
            self._static[traj] = ({
                "bead_mass": torch.from_numpy(group["bead_masses"][()].astype(np.float32)),
                "coarse_edge_index": torch.cat([coarse, coarse.flip(0)], dim=1),
                "atom_types": torch.from_numpy(group["atom_types"][()].astype(np.int64)),
                "fine_edge_index": torch.cat([fine, fine.flip(0)], dim=1),
                "bead_of_atom": torch.from_numpy(group["bead_of_atom"][()].astype(np.int64)),
            }, group["positions"], group["box"] if "box" in group else None)
        return self._static[traj]

    def locate(self, index: int) -> tuple[int, int]:
        """(trajectory index within this split, current frame t) of window ``index``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        index %= len(self)
        traj = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return traj, int(index - self._offsets[traj] + (self.k - 1) * self.lag)

    def __getitem__(self, index) -> WindowData:
        traj, t = self.locate(int(index))
        static, positions, boxes = self._static_fields(traj)
        start = t - (self.k - 1) * self.lag
        stop = t + self.lag + 1
        if (stop - start) * positions.shape[1] * 12 <= _CONTIGUOUS_READ_BYTES:
            # one contiguous read, then every lag-th frame: much faster than an HDF5 strided selection
            frames = positions[start:stop][::self.lag].copy()
        else:
            frames = positions[start:stop:self.lag]
        frames = torch.from_numpy(frames)                                          # (k+1, n_beads, 3)
        box = torch.from_numpy(boxes[t])[None] if boxes is not None else torch.zeros(1, 3, 3)
        return WindowData(
            pos_history=frames[:-1].transpose(0, 1).contiguous(), pos_target=frames[-1],
            box=box, atom_batch=torch.zeros(static["atom_types"].shape[0], dtype=torch.long),
            traj_index=torch.tensor([traj]), frame=torch.tensor([t]), num_nodes=frames.shape[1], **static)

    def __repr__(self) -> str:
        return (f"CoarseDataset({str(self.path)!r}, split={self.split!r}, windows={len(self)}, "
                f"trajectories={len(self.groups)}, k={self.k}, lag={self.lag})")


def make_loader(path, split: str | None = "train", batch_size: int = 16, shuffle: bool | None = None,
                num_workers: int = 0, k: int | None = None, **loader_kwargs):
    """A ``torch_geometric.loader.DataLoader`` over the windows of one split.

    Parameters
    ----------
    path : str, os.PathLike or CoarseDataset
        A coarse dataset file, or a dataset already open (its :meth:`~CoarseDataset.view`
        of ``split`` is used: the file is not read again).
    split : str or None
        ``"train"``, ``"val"``, ``"test"``, or None for all windows.
    batch_size : int
        Windows per batch.
    shuffle : bool, optional
        Default: True for the train split.
    num_workers : int
        Worker processes; each opens the file itself, so they read in parallel.
    k : int, optional
        History length (default: the file's).
    **loader_kwargs
        Passed to the ``DataLoader``.

    Returns
    -------
    torch_geometric.loader.DataLoader
    """
    from torch_geometric.loader import DataLoader

    dataset = path.view(split, k) if isinstance(path, CoarseDataset) else CoarseDataset(path, split, k=k)
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} of {dataset.path} has no windows")
    if shuffle is None:
        shuffle = split == "train"
    if num_workers > 0:
        loader_kwargs.setdefault("persistent_workers", True)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, **loader_kwargs)


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")


# what every trajectory group holds: later reads need not check (a missing one is a clear ValueError here)
_GROUP_DATASETS = ("positions", "atom_types", "fine_bonds", "bead_of_atom", "bead_masses", "coarse_bonds")
_GROUP_ATTRS = ("split", "mapping")


def _catalogue(handle: h5py.File, path: Path) -> list[tuple[str, str, int]]:
    """(group name, split, frames) of every trajectory of an open coarse dataset, in file order."""
    entries = []
    for name in sorted(handle["traj"]):
        group = handle["traj"][name]
        missing = [f"dataset {key!r}" for key in _GROUP_DATASETS if key not in group]
        missing += [f"attribute {key!r}" for key in _GROUP_ATTRS if key not in group.attrs]
        if missing:
            raise ValueError(f"{path}: trajectory {name} of the coarse dataset has no {missing[0]}")
        entries.append((name, _text(group.attrs["split"]), int(group["positions"].shape[0])))
    return entries


def _text(value) -> str:
    """An HDF5 string attribute as ``str`` (h5py gives ``bytes`` for fixed-length strings)."""
    return value.decode() if isinstance(value, bytes) else str(value)
