"""Bead trajectories for the evaluation: references and rollouts read as beads, in nm and ps.

* A reference is a fine trajectory HDF5 (from ``cgml generate``), coarse-grained
  here with the mapping that fits the model and the molecule
  (:func:`openmm_cgml.openmm.bead_system.molecule_mapping`) or with a mapping
  method; or a bead trajectory.
* A rollout is a bead trajectory: DCD/XTC with a bead topology PDB, or mdtraj HDF5.

Frame intervals (ps) come from the files (fine HDF5 attributes, XTC/HDF5
times, the DCD header OpenMM writes) unless given.
"""
from __future__ import annotations

import contextlib
import os
import struct
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from openmm_cgml.bond_graph import molecules
from openmm_cgml.io import first_line
from openmm_cgml.units import PS, strip

__all__ = ["BeadTrajectory", "load_reference", "load_rollout"]

AKMA_TIME_PS = 0.04888821  # the DCD header stores the time step in AKMA units
_BEAD_FILES_WITH_TOPOLOGY = (".h5", ".hdf5", ".pdb")  # formats that carry their own topology


@dataclass
class BeadTrajectory:
    """Bead coordinates of one trajectory and what the analysis needs about them.

    Parameters
    ----------
    path : str
        The file it was read from.
    positions : numpy.ndarray
        ``(F, N, 3)`` nm.
    frame_interval_ps : float
        Time between frames, ps.
    masses : numpy.ndarray or None
        ``(N,)`` amu; None if unknown (equal masses are used).
    molecule_of_bead : numpy.ndarray
        ``(N,)`` molecule index of each bead.
    bonds : numpy.ndarray
        ``(C, 2)`` bonded bead pairs.
    box : numpy.ndarray or None
        ``(F, 3, 3)`` box vectors in nm, None for a non-periodic system.
    notes : list of str
        Remarks for the report (e.g. an unfinished reference run).
    """
    path: str
    positions: np.ndarray
    frame_interval_ps: float
    masses: np.ndarray | None
    molecule_of_bead: np.ndarray
    bonds: np.ndarray
    box: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return len(self.positions)

    @property
    def n_beads(self) -> int:
        """Number of beads per frame (all replicas together)."""
        return int(self.positions.shape[1])

    @property
    def simulated_ps(self) -> float:
        """Time from the first frame to the last, ps."""
        return self.frame_interval_ps * max(self.n_frames - 1, 0)


def _is_fine_hdf5(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return "cgml_system" in handle.attrs and "cgml" in handle
    except OSError:
        return False


def _check_hdf5(path: Path, role: str) -> None:
    """Refuse an ``.h5``/``.hdf5`` file that HDF5 cannot open, with HDF5's own reason (mdtraj's names none)."""
    import h5py

    if path.suffix.lower() not in (".h5", ".hdf5"):
        return
    try:
        with h5py.File(path, "r"):
            pass
    except OSError as error:
        raise ValueError(f"{role} {path} is not a readable HDF5 file ({' '.join(str(error).split())})") from None


def _fine_mapping(fine, model=None, method: str = "metis", params: dict | None = None):
    """The mapping for the molecule(s) of a fine trajectory: the one that fits the model, else by method."""
    from openmm_cgml.mapping import Mapping

    if model is not None:
        from openmm_cgml.openmm.bead_system import molecule_mapping

        return molecule_mapping(model, fine.topology, np.asarray(fine.atom_types))
    return Mapping.build(method, fine.topology, np.asarray(fine.masses), atom_types=np.asarray(fine.atom_types),
                         **(params or {}))


def _fine_beads(fine, mapping, path: Path, chunk_frames: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Bead positions (F, N, 3) and boxes (F, 3, 3) or None of a fine trajectory, read chunk by chunk."""
    beads, boxes = [], []
    for start in range(0, fine.n_frames, chunk_frames):
        stop = min(start + chunk_frames, fine.n_frames)
        atoms = np.asarray(fine.positions[start:stop], dtype=np.float64)
        if not np.all(np.isfinite(atoms)):
            bad = int(np.argwhere(~np.isfinite(atoms))[0][0]) + start
            raise ValueError(f"reference {path}: frame {bad} contains NaN or infinite coordinates")
        box = (np.stack([fine.box_vectors(f) for f in range(start, stop)]) if fine.is_periodic else None)
        beads.append(mapping.bead_positions(atoms, box=box))
        if box is not None:
            boxes.append(box)
    return np.concatenate(beads), (np.concatenate(boxes) if boxes else None)


def load_reference(path, *, topology=None, model=None, mapping_method: str = "metis", mapping_params=None,
                   frame_interval=None, chunk_frames: int = 2000) -> tuple[BeadTrajectory, object]:
    """Load a reference as beads.

    A fine HDF5 file is coarse-grained (molecules made whole, mass-weighted
    bead centres) chunk by chunk; a bead trajectory is read as is.

    Parameters
    ----------
    path : str or os.PathLike
        A fine trajectory HDF5 (``cgml generate``) or a bead trajectory.
    topology : str or os.PathLike, optional
        Bead PDB for a DCD/XTC bead trajectory.
    model : CGModel, optional
        Its mapping (re-made for another molecule, see ``molecule_mapping``) coarse-grains a fine file.
    mapping_method, mapping_params : str, dict
        Without a model: ``Mapping.build(mapping_method, ..., **mapping_params)``.
    frame_interval : Quantity compatible with picoseconds, optional
        Time between frames when the file does not say (or to override it).
    chunk_frames : int
        Fine frames coarse-grained at once (bounds memory).

    Returns
    -------
    tuple of (BeadTrajectory, Mapping or None)
        The beads, and the mapping used (None for a bead trajectory).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file {path} does not exist")
    _check_hdf5(path, "reference")
    if not _is_fine_hdf5(path):
        return load_rollout(path, topology=topology, frame_interval=frame_interval, role="reference"), None
    from openmm_cgml.trajectory import FineTrajectory

    with FineTrajectory(path) as fine:
        if fine.n_frames < 2:
            raise ValueError(f"reference {path} has {fine.n_frames} committed frames; need at least 2")
        try:
            mapping = _fine_mapping(fine, model, mapping_method, mapping_params)
        except ValueError as error:   # e.g. a model of another molecule: name the file
            raise ValueError(f"reference {path}: {error}") from None
        beads, boxes = _fine_beads(fine, mapping, path, chunk_frames)
        interval = fine.frame_interval_ps if frame_interval is None else strip(frame_interval, PS, "frame_interval")
        notes = [] if fine.complete else [f"{path.name} is an unfinished run ({fine.n_frames} committed frames)"]
    trajectory = BeadTrajectory(str(path), beads, float(interval), mapping.bead_masses.copy(),
                                mapping.molecule_of_bead.copy(), mapping.coarse_bonds.copy(), boxes, notes)
    return trajectory, mapping


def _dcd_frame_interval_ps(path: Path) -> float | None:
    """Frame interval from the header OpenMM's DCDFile writes (save interval x step size), or None."""
    with open(path, "rb") as handle:
        header = handle.read(48)  # '<i4c9if': 84, "CORD", n_frames, first step, interval, 6 zeros, step size
    if len(header) < 48 or header[4:8] != b"CORD":
        return None
    interval = struct.unpack("<i", header[16:20])[0]
    step_akma = struct.unpack("<f", header[44:48])[0]
    value = interval * step_akma * AKMA_TIME_PS
    return value if np.isfinite(value) and value > 0 else None


def _check_dcd_size(path: Path, role: str) -> None:
    """Refuse a torn or truncated DCD file: its size must be the header plus whole frames, as many as it says.

    mdtraj reads the complete frames of a torn file and says nothing, so an evaluation of a
    file cut off mid-write (a killed run, a partial copy) would give numbers from part of it.
    A layout this check does not know (fixed atoms) is left to mdtraj.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(96)
        order = "<" if head[:4] == struct.pack("<i", 84) else ">"
        if len(head) < 96 or head[:4] != struct.pack(order + "i", 84) or head[4:8] != b"CORD":
            raise ValueError(f"{role} {path}: not a DCD file, or one cut off in its header ({size} bytes)")
        n_frames, fixed, unitcell, title = (struct.unpack(order + "i", head[at:at + 4])[0] for at in (8, 40, 48, 92))
        handle.seek(92 + 4 + max(title, 0) + 4)
        atoms = handle.read(12)
    if fixed:
        return
    if title < 0 or len(atoms) < 12:
        raise ValueError(f"{role} {path}: not a DCD file, or one cut off in its header ({size} bytes)")
    n_atoms = struct.unpack(order + "i", atoms[4:8])[0]
    header = 92 + 4 + title + 4 + 12
    frame = (56 if unitcell else 0) + 3 * (4 * n_atoms + 8)
    whole, left = divmod(size - header, frame) if frame > 0 else (0, 0)
    if left or whole < n_frames:
        raise ValueError(f"{role} {path}: a torn or truncated DCD file ({size} bytes): its header says {n_frames} "
                         f"frames of {n_atoms} atoms ({header + n_frames * frame} bytes), it holds {whole} whole "
                         f"frame(s){' and part of another' if left else ''}")


@contextlib.contextmanager
def _quiet_c_stdout():
    """Keep the chatter that mdtraj's C DCD plugin prints to stdout out of the command's output."""
    try:
        import ctypes

        flush = ctypes.CDLL(None).fflush
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, AttributeError, ValueError):  # no C library handle or no fd 1: leave stdout alone
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            try:
                yield
            finally:
                flush(None)
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def _bead_topology(path: Path, topology, role: str):
    """The topology file for a bead trajectory: the given one, the PDB `cgml simulate` writes beside it, or None."""
    suffix = path.suffix.lower()
    beside = path.with_name(path.stem + "_beads.pdb")  # written by `cgml simulate` next to a DCD/XTC
    if topology is None and suffix not in _BEAD_FILES_WITH_TOPOLOGY and beside.is_file():
        topology = beside
    if topology is None and suffix not in _BEAD_FILES_WITH_TOPOLOGY:
        raise ValueError(f"{role} {path}: a {suffix or 'topology-less'} file needs --topology (the bead PDB; "
                         f"`cgml simulate` writes it as {beside.name})")
    if topology is not None and not Path(topology).is_file():
        raise FileNotFoundError(f"topology file {topology} does not exist")
    return topology


def _read_topology(topology, role: str):
    """The bead topology (an ``mdtraj.Topology``) of a PDB file, or ``ValueError`` naming the file."""
    import mdtraj

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mdtraj warns about element-less bead atoms
            top = mdtraj.load_topology(str(topology))
    except Exception as error:  # mdtraj raises many types for damaged files
        raise ValueError(f"cannot read the {role}'s bead topology {topology}: {first_line(error)}") from None
    if top.n_atoms == 0:
        raise ValueError(f"the {role}'s bead topology {topology} has no atoms")
    return top


def _read_mdtraj(path: Path, topology, role: str):
    import mdtraj

    if topology is not None:
        top = _read_topology(topology, role)
        topology_note = f" (its topology {topology} has {top.n_atoms} beads)"
    else:
        top, topology_note = None, ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mdtraj warns about element-less bead atoms
            with _quiet_c_stdout():
                traj = mdtraj.load(str(path), top=top)
    except Exception as error:  # mdtraj raises many types for damaged files
        raise ValueError(f"cannot read {role} {path}: {first_line(error)}{topology_note}") from None
    if traj.n_frames < 2:
        raise ValueError(f"{role} {path} has {traj.n_frames} frame(s); need at least 2")
    if not np.all(np.isfinite(traj.xyz)):
        bad = int(np.argwhere(~np.isfinite(traj.xyz))[0][0])
        raise ValueError(f"{role} {path}: frame {bad} contains NaN or infinite coordinates (an unstable rollout?)")
    return traj


def _frame_interval_ps(path: Path, traj, frame_interval, role: str) -> float:
    """The given interval, else the DCD header's, else the median step of the frame times."""
    if frame_interval is not None:
        interval = strip(frame_interval, PS, "frame_interval")
    elif path.suffix.lower() == ".dcd":
        interval = _dcd_frame_interval_ps(path)
    else:
        steps = np.diff(traj.time)
        interval = float(np.median(steps)) if len(steps) and np.all(steps > 0) else None
    if interval is None or not interval > 0:
        raise ValueError(f"{role} {path}: the file gives no frame interval; pass --{role}-interval PS")
    return float(interval)


def load_rollout(path, *, topology=None, frame_interval=None, role: str = "rollout") -> BeadTrajectory:
    """Load a bead trajectory (DCD/XTC/other mdtraj formats with a topology, or mdtraj HDF5).

    Parameters
    ----------
    path : str or os.PathLike
        The bead trajectory.
    topology : str or os.PathLike, optional
        The bead PDB; default the ``<stem>_beads.pdb`` beside a DCD/XTC file, if there is one.
    frame_interval : Quantity compatible with picoseconds, optional
        Time between frames when the file does not say (or to override it).
    role : str
        "rollout" or "reference", for the error messages.

    Returns
    -------
    BeadTrajectory
        Masses unknown (None); molecules are the connected components of the topology's bonds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{role} file {path} does not exist")
    if path.suffix.lower() == ".dcd":
        _check_dcd_size(path, role)
    _check_hdf5(path, role)
    traj = _read_mdtraj(path, _bead_topology(path, topology, role), role)
    interval = _frame_interval_ps(path, traj, frame_interval, role)
    bonds = np.array(sorted({tuple(sorted((b[0].index, b[1].index))) for b in traj.topology.bonds}),
                     dtype=np.int64).reshape(-1, 2)
    box = traj.unitcell_vectors.astype(np.float64) if traj.unitcell_vectors is not None else None
    return BeadTrajectory(str(path), traj.xyz.astype(np.float64), interval, None,
                          molecules(traj.n_atoms, bonds), bonds, box)


def _fill_from_mapping(trajectory: BeadTrajectory, mapping, replicas: int) -> None:
    """Give a bead trajectory the masses, bonds and molecules of ``replicas`` copies of ``mapping``.

    Parameters
    ----------
    trajectory : BeadTrajectory
        Changed in place.
    mapping : Mapping
        The mapping of one copy of the molecule(s).
    replicas : int
        How many copies the trajectory holds, one after the other.

    Raises
    ------
    ValueError
        If the trajectory's own bonds are not those of the mapping's coarse bonds.
    """
    n = mapping.n_beads
    expected = np.concatenate([mapping.coarse_bonds + r * n for r in range(replicas)])
    if len(trajectory.bonds) and {tuple(b) for b in trajectory.bonds.tolist()} != \
            {tuple(sorted(b)) for b in expected.tolist()}:
        raise ValueError(f"{trajectory.path}: the bead bonds of its topology differ from the coarse bonds of the "
                         f"mapping ({mapping.method} {mapping.params}); is it the same coarse-grained molecule?")
    offsets = np.repeat(np.arange(replicas), n)
    trajectory.masses = np.tile(mapping.bead_masses, replicas)
    trajectory.molecule_of_bead = np.tile(mapping.molecule_of_bead, replicas) + offsets * mapping.n_molecules
    trajectory.bonds = expected
