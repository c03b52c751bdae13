"""``cgml coarse-grain``: fine trajectories mapped to beads and written as one coarse dataset file.

:func:`coarse_grain` reads fine trajectories (``FineTrajectory`` files from
``cgml generate``) chunk by chunk, maps every frame to beads with a
:class:`~openmm_cgml.mapping.Mapping`, and writes one HDF5 file (layout:
docs/design.md, "Coarse dataset HDF5"), read back by
:class:`~openmm_cgml.data.CoarseDataset`. Memory use is bounded by one chunk of
frames, so data larger than memory is fine.

A window is the history ``t-(k-1)*lag, ..., t-lag, t`` plus the target
``t+lag`` (``lag`` saved frames = one model step). Windows never span two
trajectories, and whole trajectories (or whole sequences: all replicas of
one molecule) go to one split, so no frames leak between train/val/test.
The split is dealt at random by fractions, or given explicitly per file
(``splits={"a.h5": "train", "b.h5": "val"}``; ``cgml coarse-grain a.h5 --val b.h5``).
This module owns the file format (``FORMAT_NAME``, ``FORMAT_VERSION``, ``SPLITS``).

Units: nm, nm/ps, ps, amu.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import h5py
import numpy as np

from openmm_cgml.data_stats import StepScales
from openmm_cgml.io import atomic_path
from openmm_cgml.mapping import Mapping, mapping_options

__all__ = ["coarse_grain", "FORMAT_NAME", "FORMAT_VERSION", "SPLITS"]

FORMAT_NAME = "openmm-cgml-coarse"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
# Smallest model step used by default: the method is about jumps of 1000+ MD steps.
DEFAULT_MODEL_STEPS = 1000
# root attributes of a fine trajectory that say what one saved frame is
_CLOCK_ATTRS = ("cgml_timestep_ps", "cgml_stride", "cgml_temperature_K")


def coarse_grain(data, out, *, mapping: str = "metis", atoms_per_bead: float | None = None,
                 n_beads: int | None = None, center: str = "com", seed: int = 0, k: int = 8,
                 model_steps: int | None = None, lag: int | None = None,
                 split=None, split_by: str = "auto", splits=None, chunk_frames: int = 512,
                 overwrite: bool = False, extra=()) -> Path:
    """Map fine trajectories to beads and write a windowed coarse dataset.

    Steps: read and check the trajectories, one mapping per molecule (:func:`_read_trajectories`);
    deal whole trajectories or sequences to the splits (:func:`_assign_trajectory_splits`), or take
    each file's from ``splits``; write the beads (:func:`_write_trajectories`), then the window
    counts and step scales (:func:`_write_statistics`).

    Parameters
    ----------
    data : str, os.PathLike or list of them
        Fine trajectory HDF5 files (from ``cgml generate``).
    out : str or os.PathLike
        The coarse dataset file to write; refused if it exists, unless ``overwrite``. It is
        written under a temporary name and renamed at the end, so a failure never damages
        an existing file.
    mapping : str
        ``"metis"``, ``"residue"``, ``"backbone"`` or a mapping file (JSON/YAML).
    atoms_per_bead, n_beads : float or int, optional
        METIS resolution (default 4 atoms per bead).
    center : str
        Residue mapping: ``"com"`` or ``"ca"``.
    seed : int
        METIS partitioning and the split.
    k : int
        History length (frames given to the model, the last one current).
    model_steps, lag : int, optional
        MD steps per model step (a multiple of the trajectories' save stride), or saved
        frames per model step; not both. Default: the smallest multiple of the stride that
        is at least 1000 MD steps.
    split : sequence of float or str, optional
        Fractions (train, val, test) summing to 1, e.g. ``(0.8, 0.1, 0.1)`` (the default) or
        ``"0.8,0.1,0.1"``; trajectories or sequences are dealt out at random (``seed``).
    split_by : str
        ``"trajectory"``, ``"sequence"`` (all trajectories of one molecule go to one split)
        or ``"auto"`` (sequence when there are at least three distinct molecules).
    splits : mapping, optional
        The split of every file instead of a random deal, ``{path: "train" | "val" | "test"}``,
        one entry per file of ``data`` (paths compared resolved), e.g. a benchmark's own splits.
        At least one must be ``"train"`` (the step scales come from it). Not with ``split`` or a
        ``split_by`` other than ``"auto"``; recorded as ``split_by="explicit"``.
    chunk_frames : int
        Frames mapped per step (bounds the memory used).
    overwrite : bool
        Replace an existing ``out``.
    extra : list of str
        Backbone mapping: further beads per amino acid, ``["CB"]``, ``["O"]`` or both.

    Returns
    -------
    pathlib.Path
        The path written. Root attrs ``accel_std_nm`` and ``velocity_std_nm`` hold the
        standard deviations of the model-step acceleration ``x[t+lag]-2x[t]+x[t-lag]`` and
        displacement ``x[t]-x[t-lag]`` over the train split (nm).
    """
    paths = _input_paths(data, out, overwrite)
    out = Path(out)
    k, chunk_frames = _positive("k (history length)", k), _positive("chunk_frames (frames mapped at a time)",
                                                                     chunk_frames)
    fractions, explicit = _split_choice(split, split_by, splits, paths)
    method, params = mapping_options(mapping, atoms_per_bead, n_beads, center, seed, extra)

    infos, mappings = _read_trajectories(paths, method, params)
    lag = _lag(infos[0]["stride"], model_steps, lag)
    _check_lengths(infos, k, lag)
    if explicit is None:
        split_by = _assign_trajectory_splits(infos, split_by, fractions, seed)
    else:
        split_by, fractions = "explicit", _apply_explicit_splits(infos, explicit)

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temporary, h5py.File(temporary, "w", libver=("v110", "latest")) as handle:
        handle.attrs.update(_root_attrs(infos, k, lag, method, params, split_by, fractions, seed))
        scales = _write_trajectories(handle, infos, mappings, chunk_frames, lag)
        _write_statistics(handle, infos, scales, k, lag)
    return out


def _positive(name: str, value) -> int:
    """``value`` as an int, refused unless >= 1."""
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _input_paths(data, out, overwrite: bool) -> list[Path]:
    """The fine trajectory paths of ``data``; refuses an ``out`` that exists (unless ``overwrite``) or is an input."""
    paths = [Path(p) for p in ([data] if isinstance(data, (str, os.PathLike)) else data)]
    if not paths:
        raise ValueError("coarse_grain needs at least one fine trajectory file")
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"output {out} is a folder; give the dataset file's name")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; refusing to overwrite it (use --overwrite)")
    if out.parent.exists() and not out.parent.is_dir():
        raise NotADirectoryError(f"output {out}: {out.parent} is a file, not a folder")
    if any(out.resolve() == p.resolve() for p in paths if p.exists()):
        raise ValueError(f"output {out} is one of the input trajectories")
    return paths


def _split_choice(split, split_by: str, splits, paths: list[Path]):
    """``(fractions, labels)``: the random deal's fractions, and the split of every file if ``splits`` is given."""
    if split_by not in ("auto", "trajectory", "sequence"):
        raise ValueError(f"split_by must be 'auto', 'trajectory' or 'sequence', got {split_by!r}")
    if splits is not None and (split is not None or split_by != "auto"):
        raise ValueError("give splits (the split of every file) or split/split_by (a random deal), not both")
    explicit = None if splits is None else _explicit_splits(splits, paths)
    return _split_fractions((0.8, 0.1, 0.1) if split is None else split), explicit


def _explicit_splits(splits, paths: list[Path]) -> list[str]:
    """The split name of every path of ``paths``, from the mapping ``splits`` (path -> name), checked.

    Refuses names other than ``SPLITS``, files of ``data`` without a split, entries that name
    no file of ``data``, and a dataset without a train file.
    """
    if not hasattr(splits, "items"):
        raise ValueError(f"splits must map each input file to 'train', 'val' or 'test', got {type(splits).__name__}")
    named = {}
    for path, name in splits.items():
        if name not in SPLITS:
            raise ValueError(f"splits: unknown split {name!r} for {path}; one of {', '.join(SPLITS)}")
        named[Path(path).resolve()] = name
    resolved = [path.resolve() for path in paths]
    missing = [str(path) for path, full in zip(paths, resolved) if full not in named]
    if missing:
        raise ValueError(f"splits names no split for {len(missing)} input file(s): {', '.join(missing[:3])}"
                         f"{' ...' if len(missing) > 3 else ''}")
    extra = sorted(str(full) for full in set(named) - set(resolved))
    if extra:
        raise ValueError(f"splits names file(s) that are not inputs: {', '.join(extra[:3])}")
    labels = [named[full] for full in resolved]
    if "train" not in labels:
        raise ValueError("splits assigns no file to 'train'; the step scales are computed on the train split")
    return labels


def _apply_explicit_splits(infos: list[dict], labels: list[str]) -> tuple[float, float, float]:
    """Set ``info["split"]`` from ``labels``; returns the fractions of trajectories in each split (for the attrs)."""
    for info, label in zip(infos, labels):
        info["split"] = label
    return tuple(labels.count(name) / len(labels) for name in SPLITS)


def _read_trajectories(paths: list[Path], method: str, params: dict) -> tuple[list[dict], dict]:
    """What every trajectory is, checked to agree, and one :class:`Mapping` per distinct molecule.

    Returns ``(infos, mappings)``: per trajectory a dict with ``path``, ``n_frames``,
    ``stride``, ``timestep_ps``, ``temperature_K``, ``periodic``, ``key`` (the molecule)
    and ``sequence_id`` (molecules numbered in order of appearance); ``mappings``
    maps molecule key -> mapping.
    """
    from openmm_cgml.trajectory import FineTrajectory

    infos, mappings, sequence_of_key = [], {}, {}
    for path in paths:
        with FineTrajectory(path) as trajectory:
            missing = [key for key in _CLOCK_ATTRS if key not in trajectory.attrs]
            if missing:   # the FineTrajectory properties below would raise a KeyError that names nothing
                raise ValueError(f"{path}: the fine trajectory has no attribute {missing[0]!r} "
                                 "(not written by cgml generate?)")
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
    return infos, mappings


def _check_lengths(infos: list[dict], k: int, lag: int) -> None:
    """Every trajectory must hold at least one window of ``k`` history frames ``lag`` apart plus a target."""
    needed = k * lag + 1
    for info in infos:
        if info["n_frames"] < needed:
            raise ValueError(f"{info['path']} has {info['n_frames']} frames; one window with k={k} and "
                             f"lag={lag} frames needs {needed}")


def _assign_trajectory_splits(infos: list[dict], split_by: str, fractions, seed: int) -> str:
    """Set ``info["split"]`` of every trajectory: whole trajectories or whole sequences go to one split.

    Returns the ``split_by`` used (``"auto"`` resolved).
    """
    if split_by == "auto":
        n_sequences = len({info["sequence_id"] for info in infos})
        split_by = "sequence" if n_sequences >= 3 else "trajectory"
    unit_of = [info["sequence_id"] if split_by == "sequence" else i for i, info in enumerate(infos)]
    split_of_unit = _assign_splits(max(unit_of) + 1, fractions, seed)
    for info, unit in zip(infos, unit_of):
        info["split"] = split_of_unit[unit]
    return split_by


def _root_attrs(infos: list[dict], k: int, lag: int, method: str, params: dict, split_by: str, fractions,
                seed: int) -> dict:
    """The root attributes that say how the dataset was made (time steps, mapping, split)."""
    reference = infos[0]
    stride, timestep_ps = reference["stride"], reference["timestep_ps"]
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "k": k, "lag": lag, "model_dt_ps": lag * stride * timestep_ps,
        "md_steps_per_model_step": lag * stride, "md_timestep_ps": timestep_ps,
        "md_stride": stride, "temperature_K": reference["temperature_K"],
        "mapping_method": method, "mapping_params": json.dumps(params),
        "split_by": split_by, "split_fractions": json.dumps(list(fractions)), "seed": int(seed),
        "source_files": json.dumps([str(info["path"].resolve()) for info in infos]),
    }


def _write_trajectories(handle: h5py.File, infos: list[dict], mappings: dict, chunk_frames: int,
                        lag: int) -> StepScales:
    """One group ``traj/NNNNN`` per trajectory; returns the step scales of the train split."""
    scales = StepScales(lag)
    group_root = handle.create_group("traj")
    for index, info in enumerate(infos):
        group = group_root.create_group(f"{index:05d}")
        _write_trajectory(group, info, mappings[info["key"]], chunk_frames,
                          scales if info["split"] == "train" else None)
    return scales


def _write_statistics(handle: h5py.File, infos: list[dict], scales: StepScales, k: int, lag: int) -> None:
    """Root attrs ``n_windows_<split>`` and the train split's ``velocity_std_nm``/``accel_std_nm``."""
    counts = {name: 0 for name in SPLITS}
    for info in infos:
        counts[info["split"]] += info["n_frames"] - k * lag
    handle.attrs.update({f"n_windows_{name}": count for name, count in counts.items()})
    handle.attrs.update(scales.attrs())


def _write_trajectory(group: h5py.Group, info: dict, mapping: Mapping, chunk_frames: int,
                      scales: StepScales | None) -> None:
    """Map one fine trajectory chunk by chunk into ``group``; add its frames to ``scales`` if given."""
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

    if scales is not None:
        scales.new_trajectory()
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
            if scales is not None:
                scales.add(bead_positions)


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
    given = split   # named as the user wrote it in the messages
    if isinstance(split, str):
        split = [part for part in split.replace("/", ",").split(",") if part.strip()]
    try:
        values = [float(x) for x in split]
    except (TypeError, ValueError):
        raise ValueError(f"split must be three fractions train,val,test, got {given!r}") from None
    if len(values) == 2:
        values.append(0.0)
    if len(values) != 3 or not all(v >= 0 for v in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"split must be three non-negative fractions train,val,test summing to 1, got {given!r}")
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
