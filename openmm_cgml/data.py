"""Coarse datasets: fine trajectories mapped to beads and cut into training windows.

:func:`coarse_grain` reads fine trajectories (``FineTrajectory`` files from
``cgml generate``) chunk by chunk, maps every frame to beads with a
:class:`~openmm_cgml.mapping.Mapping`, and writes one HDF5 file
(layout: docs/design.md, "Coarse dataset HDF5"). Memory use is bounded by
one chunk of frames, so data larger than memory is fine.

A window is the history ``t-(k-1)*lag, ..., t-lag, t`` plus the target
``t+lag`` (``lag`` saved frames = one model step). Windows never span two
trajectories, and whole trajectories (or whole sequences: all replicas of
one molecule) go to one split, so no frames leak between train/val/test.

:class:`CoarseDataset` serves windows as ``torch_geometric`` ``Data``
objects, opening the HDF5 file lazily in each DataLoader worker and reading
only the frames of the window asked for; :func:`make_loader` wraps it.

Units: nm, nm/ps, ps, amu.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
from torch_geometric.data import Data

from openmm_cgml.mapping import Mapping, add_mapping_arguments, mapping_options

__all__ = ["coarse_grain", "CoarseDataset", "WindowData", "make_loader", "configure_parser", "run"]

FORMAT_NAME = "openmm-cgml-coarse"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
# Smallest model step used by default: the method is about jumps of 1000+ MD steps.
DEFAULT_MODEL_STEPS = 1000
# A window spanning less than this is read in one piece and thinned in memory.
_CONTIGUOUS_READ_BYTES = 1 << 20


# ----------------------------------------------------------------------------- writing

def coarse_grain(data, out, *, mapping: str = "metis", atoms_per_bead: float | None = None,
                 n_beads: int | None = None, center: str = "com", seed: int = 0, k: int = 8,
                 model_steps: int | None = None, lag: int | None = None,
                 split=(0.8, 0.1, 0.1), split_by: str = "auto", chunk_frames: int = 512,
                 overwrite: bool = False) -> Path:
    """Map fine trajectories to beads and write a windowed coarse dataset.

    Parameters
    ----------
    data : path or list of paths of fine trajectory HDF5 files
    out : the coarse dataset file to write (refused if it exists, unless ``overwrite``;
        written under a temporary name and renamed at the end, so a failure never
        damages an existing file)
    mapping : ``"metis"``, ``"residue"`` or a mapping file (JSON/YAML)
    atoms_per_bead, n_beads, seed : METIS resolution and seed (default 4 atoms per bead)
    center : residue mapping, ``"com"`` or ``"ca"``
    k : history length (frames given to the model, the last one current)
    model_steps : MD steps per model step, a multiple of the trajectories' save stride;
        or ``lag`` : saved frames per model step. Default: the smallest multiple of the
        stride that is at least 1000 MD steps.
    split : fractions (train, val, test), summing to 1
    split_by : ``"trajectory"``, ``"sequence"`` (all trajectories of one molecule go to
        one split) or ``"auto"`` (sequence when there are at least three distinct molecules)
    chunk_frames : frames mapped per step (bounds the memory used)

    Returns the path written. Root attrs ``accel_std_nm`` and ``velocity_std_nm`` hold
    the standard deviations of the model-step acceleration ``x[t+lag]-2x[t]+x[t-lag]``
    and displacement ``x[t]-x[t-lag]`` over the train split (nm).
    """
    from openmm_cgml.trajectory import FineTrajectory

    paths = [Path(p) for p in ([data] if isinstance(data, (str, os.PathLike)) else data)]
    if not paths:
        raise ValueError("coarse_grain needs at least one fine trajectory file")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; refusing to overwrite it (use --overwrite)")
    if any(out.resolve() == p.resolve() for p in paths if p.exists()):
        raise ValueError(f"output {out} is one of the input trajectories")
    k = int(k)
    if k < 1:
        raise ValueError(f"k (history length) must be >= 1, got {k}")
    fractions = _split_fractions(split)
    if split_by not in ("auto", "trajectory", "sequence"):
        raise ValueError(f"split_by must be 'auto', 'trajectory' or 'sequence', got {split_by!r}")
    chunk_frames = max(1, int(chunk_frames))
    method, params = mapping_options(argparse.Namespace(mapping=mapping, atoms_per_bead=atoms_per_bead,
                                                        n_beads=n_beads, center=center, seed=seed))

    # --- read what every trajectory is, check they agree, make one mapping per molecule
    infos, mappings, sequence_of_key = [], {}, {}
    for path in paths:
        with FineTrajectory(path) as trajectory:
            info = {"path": path, "n_frames": trajectory.n_frames, "stride": trajectory.stride,
                    "timestep_ps": trajectory.timestep_ps, "temperature_K": trajectory.temperature_K,
                    "periodic": trajectory.is_periodic}
            masses, types, bonds = trajectory.masses, trajectory.atom_types, trajectory.bonds
            key = _molecule_key(masses, types, bonds)
            if key not in mappings:
                try:
                    mappings[key] = Mapping.build(method, trajectory.topology, masses, atom_types=types, **params)
                except ValueError as error:
                    raise ValueError(f"{path}: {error}") from None
                sequence_of_key[key] = len(sequence_of_key)
            info["key"], info["sequence_id"] = key, sequence_of_key[key]
            infos.append(info)
    reference = infos[0]
    for info in infos[1:]:
        for name in ("stride", "timestep_ps", "temperature_K"):
            if not math.isclose(info[name], reference[name], rel_tol=1e-9):
                raise ValueError(f"{info['path']} has {name}={info[name]} but {reference['path']} has "
                                 f"{reference[name]}; one dataset needs one time step, stride and temperature")
    stride = reference["stride"]
    lag = _lag(stride, model_steps, lag)
    needed = k * lag + 1
    for info in infos:
        if info["n_frames"] < needed:
            raise ValueError(f"{info['path']} has {info['n_frames']} frames; one window with k={k} and "
                             f"lag={lag} frames needs {needed}")

    # --- splits: whole trajectories or whole sequences
    n_sequences = len(sequence_of_key)
    if split_by == "auto":
        split_by = "sequence" if n_sequences >= 3 else "trajectory"
    unit_of = [info["sequence_id"] if split_by == "sequence" else i for i, info in enumerate(infos)]
    split_of_unit = _assign_splits(max(unit_of) + 1, fractions, seed)
    for info, unit in zip(infos, unit_of):
        info["split"] = split_of_unit[unit]

    # --- write under a temporary name; rename only when everything succeeded
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.partial-{os.getpid()}")
    stats = {"velocity": _Moments(), "accel": _Moments()}
    try:
        with h5py.File(temporary, "w", libver=("v110", "latest")) as handle:
            handle.attrs.update({
                "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "k": k, "lag": lag, "model_dt_ps": lag * stride * reference["timestep_ps"],
                "md_steps_per_model_step": lag * stride, "md_timestep_ps": reference["timestep_ps"],
                "md_stride": stride, "temperature_K": reference["temperature_K"],
                "mapping_method": method, "mapping_params": json.dumps(params),
                "split_by": split_by, "split_fractions": json.dumps(list(fractions)), "seed": int(seed),
                "source_files": json.dumps([str(info["path"].resolve()) for info in infos]),
            })
            group_root = handle.create_group("traj")
            for index, info in enumerate(infos):
                group = group_root.create_group(f"{index:05d}")
                _write_trajectory(group, info, mappings[info["key"]], chunk_frames, lag,
                                  stats if info["split"] == "train" else None)
            counts = {name: 0 for name in SPLITS}
            for info in infos:
                counts[info["split"]] += info["n_frames"] - k * lag
            handle.attrs.update({f"n_windows_{name}": count for name, count in counts.items()})
            handle.attrs["velocity_std_nm"] = stats["velocity"].std()
            handle.attrs["accel_std_nm"] = stats["accel"].std()
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return out


def _write_trajectory(group: h5py.Group, info: dict, mapping: Mapping, chunk_frames: int, lag: int,
                      stats: dict | None) -> None:
    """Map one fine trajectory chunk by chunk into ``group``."""
    from openmm_cgml.trajectory import FineTrajectory

    n_frames, n_beads = info["n_frames"], mapping.n_beads
    rows = max(1, min(n_frames, (256 << 10) // (n_beads * 12)))   # HDF5 chunks of about 256 KiB
    positions = group.create_dataset("positions", (n_frames, n_beads, 3), np.float32, chunks=(rows, n_beads, 3))
    velocities = group.create_dataset("velocities", (n_frames, n_beads, 3), np.float32,
                                      chunks=(rows, n_beads, 3))
    positions.attrs["units"], velocities.attrs["units"] = "nanometers", "nanometers/picosecond"
    boxes = None
    if info["periodic"]:
        boxes = group.create_dataset("box", (n_frames, 3, 3), np.float32)
        boxes.attrs["units"] = "nanometers"
    group.attrs.update({"mapping": mapping.to_json(), "split": info["split"],
                        "sequence_id": int(info["sequence_id"]), "sequence_key": info["key"],
                        "source": str(info["path"].resolve())})
    group.create_dataset("atom_types", data=mapping.atom_types)
    group.create_dataset("fine_bonds", data=mapping.fine_bonds)
    group.create_dataset("bead_of_atom", data=mapping.bead_of_atom)
    group.create_dataset("bead_masses", data=mapping.bead_masses).attrs["units"] = "daltons"
    group.create_dataset("coarse_bonds", data=mapping.coarse_bonds)

    history = np.zeros((0, n_beads, 3), dtype=np.float64)   # last 2*lag frames, for the statistics
    with FineTrajectory(info["path"]) as trajectory:
        for start in range(0, n_frames, chunk_frames):
            stop = min(n_frames, start + chunk_frames)
            atom_positions = trajectory.positions[start:stop]
            atom_velocities = trajectory.velocities[start:stop]
            for name, values in (("positions", atom_positions), ("velocities", atom_velocities)):
                finite = np.isfinite(values).all(axis=(1, 2))
                if not finite.all():
                    raise ValueError(f"{info['path']}: {name} of frame {start + int(np.argmin(finite))} contain NaN "
                                     "or infinite values")
            box = _boxes(trajectory, start, stop) if boxes is not None else None
            bead_positions = mapping.bead_positions(atom_positions, box).astype(np.float32)
            positions[start:stop] = bead_positions
            velocities[start:stop] = mapping.bead_velocities(atom_velocities).astype(np.float32)
            if boxes is not None:
                boxes[start:stop] = box.astype(np.float32)
            if stats is not None:
                history = _accumulate(stats, history, bead_positions.astype(np.float64), lag)


def _boxes(trajectory, start: int, stop: int) -> np.ndarray:
    """Box vectors (n, 3, 3) nm of frames start..stop, from the mdtraj-style cell lengths and angles."""
    from mdtraj.utils import lengths_and_angles_to_box_vectors

    handle = trajectory.positions.file
    lengths = handle["cell_lengths"][start:stop].astype(np.float64)
    angles = handle["cell_angles"][start:stop].astype(np.float64)
    a, b, c = lengths_and_angles_to_box_vectors(*lengths.T, *angles.T)
    box = np.stack([a, b, c], axis=1)
    box[np.abs(box) < 1e-6 * lengths.max()] = 0.0   # cos(90 degrees) round-off: keep the reduced form exact
    return box


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


def _accumulate(stats: dict, history: np.ndarray, chunk: np.ndarray, lag: int) -> np.ndarray:
    """Add the displacements and accelerations that end in ``chunk``; return the new history."""
    frames = np.concatenate([history, chunk])
    first = len(history)
    ends = np.arange(max(lag, first), len(frames))
    if len(ends):
        stats["velocity"].add(frames[ends] - frames[ends - lag])
    ends = np.arange(max(2 * lag, first), len(frames))
    if len(ends):
        stats["accel"].add(frames[ends] - 2 * frames[ends - lag] + frames[ends - 2 * lag])
    return frames[-2 * lag:]


def _molecule_key(masses, atom_types, bonds) -> str:
    """Identity of a molecule (or system): the same atoms, types, masses and bonds give the same key."""
    digest = hashlib.sha1()
    for array in (np.asarray(masses, np.float64), np.asarray(atom_types, np.int64),
                  np.sort(np.asarray(bonds, np.int64).reshape(-1, 2), axis=1)):
        digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def _lag(stride: int, model_steps, lag) -> int:
    if model_steps is not None and lag is not None:
        raise ValueError("give model_steps (MD steps per model step) or lag (saved frames), not both")
    if lag is not None:
        lag = int(lag)
        if lag < 1:
            raise ValueError(f"lag must be >= 1 saved frame, got {lag}")
        return lag
    if model_steps is None:
        return max(1, math.ceil(DEFAULT_MODEL_STEPS / stride))
    model_steps = int(model_steps)
    if model_steps < stride or model_steps % stride:
        raise ValueError(f"model_steps={model_steps} must be a positive multiple of the trajectories' save stride "
                         f"({stride} MD steps)")
    return model_steps // stride


def _split_fractions(split) -> tuple[float, float, float]:
    if isinstance(split, str):
        split = [part for part in split.replace("/", ",").split(",") if part.strip()]
    try:
        values = [float(x) for x in split]
    except (TypeError, ValueError):
        raise ValueError(f"split must be three fractions train,val,test, got {split!r}") from None
    if len(values) == 2:
        values.append(0.0)
    if len(values) != 3 or any(v < 0 for v in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"split must be three non-negative fractions train,val,test summing to 1, got {split!r}")
    return tuple(values)


def _assign_splits(n_units: int, fractions, seed: int) -> list[str]:
    """Shuffle units (trajectories or sequences) with ``seed`` and deal them out by the fractions.

    Every split with a positive fraction gets at least one unit when there are enough
    (train first, then val, then test); train always gets one.
    """
    counts = [0, 0, 0]
    for name in range(3):
        if fractions[name] > 0 and sum(counts) < n_units:
            counts[name] = 1
    ideal = np.array(fractions) * n_units
    while sum(counts) < n_units:
        counts[int(np.argmax(ideal - np.array(counts)))] += 1
    if n_units < sum(1 for f in fractions if f > 0):
        empty = [name for name, count, f in zip(SPLITS, counts, fractions) if f > 0 and count == 0]
        warnings.warn(f"only {n_units} trajectory/sequence unit(s) to split, so {'/'.join(empty)} get none "
                      "(frames of one trajectory never go to two splits)", stacklevel=3)
    order = np.random.default_rng(seed).permutation(n_units)
    labels = [None] * n_units
    position = 0
    for name, count in zip(SPLITS, counts):
        for unit in order[position:position + count]:
            labels[int(unit)] = name
        position += count
    return labels


# ----------------------------------------------------------------------------- reading

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
    """Windows of one split of a coarse dataset file, as :class:`WindowData`.

    Each item has ``pos_history`` (n_beads, k, 3) nm (the last one current),
    ``pos_target`` (n_beads, 3) nm (one model step later), ``bead_mass``
    (n_beads,) amu, ``coarse_edge_index`` (2, 2C), ``atom_types`` (n_atoms,),
    ``fine_edge_index`` (2, 2B), ``bead_of_atom`` (n_atoms,), ``box`` (1, 3, 3)
    nm (zeros when not periodic), ``atom_batch``, and ``traj_index``/``frame``
    (where the window's current frame comes from).

    The file is opened lazily in each process (DataLoader worker) and only
    the k+1 frames of a window are read. ``split=None`` gives all windows;
    ``k`` may be shorter or longer than the history the file was made for.
    """

    def __init__(self, path, split: str | None = "train", k: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"coarse dataset {self.path} does not exist")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        self.split = split
        try:
            handle = h5py.File(self.path, "r")
        except OSError as error:
            raise ValueError(f"{self.path} is not a readable HDF5 file ({error})") from None
        with handle:
            if handle.attrs.get("format") != FORMAT_NAME or "traj" not in handle:
                raise ValueError(f"{self.path} is not an openmm-cgml coarse dataset (made by cgml coarse-grain)")
            self.attrs = {key: (value.item() if isinstance(value, np.generic) else value)
                          for key, value in handle.attrs.items()}
            self.lag = int(self.attrs["lag"])
            self.k = int(self.attrs["k"]) if k is None else int(k)
            if self.k < 1:
                raise ValueError(f"k must be >= 1, got {self.k}")
            self.groups, counts = [], []
            for name in sorted(handle["traj"]):
                group = handle["traj"][name]
                if split is not None and group.attrs["split"] != split:
                    continue
                n_windows = group["positions"].shape[0] - self.k * self.lag
                if n_windows > 0:
                    self.groups.append(name)
                    counts.append(n_windows)
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._file, self._pid, self._static = None, None, {}

    @property
    def accel_std_nm(self) -> float:
        return float(self.attrs["accel_std_nm"])

    @property
    def velocity_std_nm(self) -> float:
        return float(self.attrs["velocity_std_nm"])

    def mapping(self, index: int = 0) -> Mapping:
        """The :class:`Mapping` of the ``index``-th trajectory of this split."""
        return Mapping.from_json(self._handle()["traj"][self.groups[index]].attrs["mapping"])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_file=None, _pid=None, _static={})   # h5py handles do not cross processes
        return state

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            # a larger chunk cache than h5py's 1 MiB default keeps random window reads in memory
            self._file = h5py.File(self.path, "r", rdcc_nbytes=32 << 20)
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

    ``shuffle`` defaults to True for the train split. Workers open the file
    themselves (lazily), so ``num_workers > 0`` reads in parallel.
    """
    from torch_geometric.loader import DataLoader

    dataset = CoarseDataset(path, split, k=k)
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} of {path} has no windows")
    if shuffle is None:
        shuffle = split == "train"
    if num_workers > 0:
        loader_kwargs.setdefault("persistent_workers", True)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, **loader_kwargs)


# ----------------------------------------------------------------------------- CLI: cgml coarse-grain

def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", help="fine trajectory HDF5 files (from cgml generate)")
    parser.add_argument("--out", required=True, help="coarse dataset HDF5 file to write")
    add_mapping_arguments(parser)
    parser.add_argument("--k", type=int, default=8, help="history length in frames (default 8)")
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--model-steps", type=int, default=None,
                      help="MD steps per model step, a multiple of the save stride (default: >= 1000)")
    step.add_argument("--lag", type=int, default=None, help="saved frames per model step")
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions (default 0.8,0.1,0.1)")
    parser.add_argument("--split-by", choices=("auto", "trajectory", "sequence"), default="auto",
                        help="keep whole trajectories or whole sequences in one split (default auto)")
    parser.add_argument("--chunk-frames", type=int, default=512, help="frames mapped at a time (memory bound)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args) -> int:
    out = coarse_grain(args.data, args.out, mapping=args.mapping, atoms_per_bead=args.atoms_per_bead,
                       n_beads=args.n_beads, center=args.center, seed=args.seed, k=args.k,
                       model_steps=args.model_steps, lag=args.lag, split=args.split, split_by=args.split_by,
                       chunk_frames=args.chunk_frames, overwrite=args.overwrite)
    with h5py.File(out, "r") as handle:
        attrs = handle.attrs
        print(f"wrote {out}: {len(handle['traj'])} trajectories, windows train/val/test = "
              f"{attrs['n_windows_train']}/{attrs['n_windows_val']}/{attrs['n_windows_test']}, "
              f"model step {attrs['md_steps_per_model_step']} MD steps ({attrs['model_dt_ps']:g} ps), "
              f"accel_std {attrs['accel_std_nm']:.4g} nm, velocity_std {attrs['velocity_std_nm']:.4g} nm")
    return 0
