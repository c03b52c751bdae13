"""The fine-grained trajectory HDF5 file: the one reader and writer of the format.

The layout (docs/design.md, "Fine trajectory HDF5") follows mdtraj's HDF5
conventions, so ``mdtraj.load(path)`` reads the frames and the topology, and
adds a ``/cgml`` group with what a coarse-graining step needs (masses, atom
types, charges, bonds) plus the OpenMM checkpoint of the last written frame.

Units on disk: nm, ps, kJ/mol, daltons, elementary charges. Arrays handed
out by :class:`FineTrajectory` are plain numbers in those units.

Crash safety: frames are appended in chunks. After each chunk the writer
stores the OpenMM checkpoint of the last frame together with the number of
frames it belongs to (``/cgml/checkpoint`` attr ``n_frames``) and flushes the
file. Frames past that count (a kill in the middle of a chunk write) are
*uncommitted*: readers ignore them and a resuming writer overwrites them, so
a resumed run neither loses nor duplicates frames.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import openmm.app as app

from openmm_cgml.units import NM

__all__ = ["FineTrajectory", "FORMAT_VERSION"]

FORMAT_VERSION = "1"

# per-frame datasets: name -> (trailing shape given n_atoms, dtype, units)
_FRAME_DATASETS = {
    "coordinates": (lambda n: (n, 3), np.float32, "nanometers"),
    "velocities": (lambda n: (n, 3), np.float32, "nanometers/picosecond"),
    "forces": (lambda n: (n, 3), np.float32, "kilojoules/mole/nanometer"),
    "time": (lambda n: (), np.float64, "picoseconds"),
    "potentialEnergy": (lambda n: (), np.float32, "kilojoules/mole"),
    "cell_lengths": (lambda n: (3,), np.float32, "nanometers"),
    "cell_angles": (lambda n: (3,), np.float32, "degrees"),
}
_CHECKPOINT = "cgml/checkpoint"
_CHECKPOINT_NEXT = "cgml/checkpoint_next"


def _open_trajectory(path, mode: str):
    """``(Path, open h5py.File)`` of a fine trajectory; errors name the file and what is wrong with it."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"a trajectory file path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trajectory file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"trajectory file {path} is a folder, not an HDF5 file")
    try:
        handle = h5py.File(path, mode)
    except OSError as error:
        if "already open for write" in str(error):
            raise ValueError(f"{path} was left flagged open-for-writing by a killed run of an older "
                             f"openmm-cgml; clear the flag with `h5clear -s {path}` (HDF5 tools) "
                             "and run again") from None
        raise ValueError(f"{path} is not a readable HDF5 file ({error})") from None
    missing = [name for name in ("coordinates", "velocities", "time", "topology", "cgml/masses") if name not in handle]
    if missing or "cgml_system" not in handle.attrs:
        handle.close()
        raise ValueError(f"{path} is not an openmm-cgml fine trajectory "
                         f"(missing {', '.join(missing) or 'attribute cgml_system'})")
    return path, handle


class FineTrajectory:
    """A fine-grained (all-atom or bead-spring) trajectory file.

    Open an existing file for reading with ``FineTrajectory(path)``; create
    one with :meth:`create`; reopen one to append with ``mode="a"``.
    Use as a context manager so the file is closed.

    Attributes (read-only): ``n_frames``, ``n_atoms``, ``positions`` and
    ``velocities`` (h5py datasets, nm and nm/ps, float32, shape
    ``(F, N, 3)``; only the first ``n_frames`` rows are valid while a run is
    still writing), ``masses`` (amu), ``bonds`` ``(B, 2)``, ``atom_types``,
    ``charges`` (e), ``topology`` (``openmm.app.Topology``),
    ``timestep_ps``, ``stride``, ``frame_interval_ps``, ``temperature_K``,
    ``attrs`` (all root attributes, JSON ones decoded).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.h5`` file.
    mode : {"r", "a"}
        Read, or append to a file :meth:`create` made.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Naming the file: not a path, a folder, not readable HDF5, or not a fine trajectory.
    """

    def __init__(self, path, mode: str = "r"):
        if mode not in ("r", "a"):
            raise ValueError(f"FineTrajectory mode must be 'r' or 'a', got {mode!r}")
        self.path, self._file = _open_trajectory(path, mode)
        self._topology = None

    # ------------------------------------------------------------------ writing
    @classmethod
    def create(cls, path, *, topology: app.Topology, masses, atom_types, charges, attrs: dict,
               periodic: bool, save_forces: bool = False, chunk_frames: int = 100) -> "FineTrajectory":
        """Create a new, empty trajectory file and return it open for appending.

        ``masses`` (amu), ``atom_types`` and ``charges`` (e) have one entry per
        atom. ``attrs`` are the ``cgml_*`` root attributes (dicts/lists are
        stored as JSON). Refuses to overwrite an existing file.
        """
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} already exists; refusing to overwrite it")
        per_atom = _per_atom_arrays(topology.getNumAtoms(), masses, atom_types, charges)
        # Free-space tracking is persisted so that rewriting the checkpoint after
        # every chunk reuses file space instead of growing the file. The lowest format is v108:
        # from v110 on, HDF5 flags a file "open for writing" in its superblock, and a file whose
        # writer was killed then refuses every later open (resume and readers alike).
        handle = h5py.File(path, "w-", libver=("v108", "latest"), fs_strategy="fsm", fs_persist=True)
        try:
            _write_layout(handle, topology, *per_atom, attrs, periodic, save_forces, chunk_frames)
        except BaseException:
            handle.close()
            path.unlink(missing_ok=True)  # our own half-made, empty file
            raise
        handle.close()
        return cls(path, mode="a")

    def append(self, positions, velocities, time_ps, potential_energy, forces=None, box_vectors=None) -> None:
        """Append a batch of frames after the last committed one.

        ``positions``/``velocities``/``forces``: ``(n, N, 3)`` in nm, nm/ps,
        kJ/mol/nm; ``time_ps``, ``potential_energy``: ``(n,)``;
        ``box_vectors``: ``(n, 3, 3)`` nm for periodic files. One resize per
        dataset per batch (never per frame). The frames are uncommitted
        until :meth:`commit`.
        """
        self._require_writable()
        positions = np.asarray(positions, dtype=np.float32)
        n = positions.shape[0]
        start = self.n_frames
        values = {"coordinates": positions,
                  "velocities": np.asarray(velocities, dtype=np.float32),
                  "time": np.asarray(time_ps, dtype=np.float64),
                  "potentialEnergy": np.asarray(potential_energy, dtype=np.float32)}
        if "forces" in self._file:
            if forces is None:
                raise ValueError(f"{self.path} stores forces; append() needs them")
            values["forces"] = np.asarray(forces, dtype=np.float32)
        if "cell_lengths" in self._file:
            if box_vectors is None:
                raise ValueError(f"{self.path} is periodic; append() needs box_vectors")
            lengths, angles = _box_to_lengths_angles(np.asarray(box_vectors, dtype=np.float64))
            values["cell_lengths"], values["cell_angles"] = lengths, angles
        for name, value in values.items():
            if value.shape[0] != n:
                raise ValueError(f"append(): {name} has {value.shape[0]} frames, positions have {n}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"append(): {name} contains NaN or infinite values (the simulation blew up?)")
            dataset = self._file[name]
            if dataset.shape[0] != start + n:
                dataset.resize(start + n, axis=0)
            dataset[start:start + n] = value
        self._pending = start + n

    def commit(self, checkpoint: bytes) -> None:
        """Mark all appended frames as written, storing the OpenMM checkpoint of the last one.

        The new checkpoint is written under a temporary name and then renamed
        over the old one, so a kill at any point leaves one valid checkpoint
        whose ``n_frames`` matches the frames it belongs to.
        """
        self._require_writable()
        n_frames = getattr(self, "_pending", self.n_frames)
        if _CHECKPOINT_NEXT in self._file:
            del self._file[_CHECKPOINT_NEXT]
        data = np.frombuffer(checkpoint, dtype=np.uint8)
        dataset = self._file.create_dataset(_CHECKPOINT_NEXT, data=data)
        dataset.attrs["n_frames"] = np.int64(n_frames)  # written last: marks the new checkpoint valid
        self._file.flush()
        if _CHECKPOINT in self._file:
            del self._file[_CHECKPOINT]
        self._file.move(_CHECKPOINT_NEXT, _CHECKPOINT)
        self._file.flush()

    def truncate_uncommitted(self) -> int:
        """Drop frames written after the last checkpoint (a run killed mid-chunk); return the frame count."""
        self._require_writable()
        self._adopt_pending_checkpoint()
        n_frames = self.n_frames
        for name in _FRAME_DATASETS:
            if name in self._file and self._file[name].shape[0] > n_frames:
                self._file[name].resize(n_frames, axis=0)
        self._pending = n_frames
        self._file.flush()
        return n_frames

    def mark_complete(self, complete: bool = True) -> None:
        """Set ``cgml_complete``: the run reached its requested number of frames."""
        self._require_writable()
        self._file.attrs["cgml_complete"] = np.int8(bool(complete))
        self._file.flush()

    def set_attrs(self, **attrs) -> None:
        """Update root ``cgml_*`` attributes (dicts/lists stored as JSON)."""
        self._require_writable()
        for key, value in attrs.items():
            self._file.attrs[key] = _attr_value(value)
        self._file.flush()

    # ------------------------------------------------------------------ reading
    @property
    def checkpoint(self) -> bytes | None:
        """The OpenMM checkpoint of frame ``n_frames - 1``, or None before the first commit."""
        dataset = self._checkpoint_dataset()
        return None if dataset is None else dataset[()].tobytes()

    @property
    def n_frames(self) -> int:
        """Number of committed frames (frames covered by the stored checkpoint)."""
        if getattr(self, "_pending", None) is not None and self._file.mode != "r":
            return int(self._pending)
        dataset = self._checkpoint_dataset()
        stored = self._file["coordinates"].shape[0]
        if dataset is None:
            # no checkpoint: a file written without one is complete as it is;
            # a run killed before its first commit has nothing committed
            return stored if bool(self._file.attrs.get("cgml_complete", False)) else 0
        return min(int(dataset.attrs["n_frames"]), stored)

    @property
    def n_atoms(self) -> int:
        return int(self._file["coordinates"].shape[1])

    @property
    def positions(self) -> h5py.Dataset:
        """Positions, nm, float32, ``(F, N, 3)``, not wrapped into the box (molecules stay whole)."""
        return self._file["coordinates"]

    @property
    def velocities(self) -> h5py.Dataset:
        """Velocities, nm/ps, float32, ``(F, N, 3)``."""
        return self._file["velocities"]

    @property
    def forces(self) -> h5py.Dataset | None:
        """Forces, kJ/mol/nm, float32, ``(F, N, 3)``, or None when not saved."""
        return self._file["forces"] if "forces" in self._file else None

    @property
    def time_ps(self) -> np.ndarray:
        return self._file["time"][: self.n_frames]

    @property
    def potential_energy(self) -> np.ndarray:
        """Potential energy per frame, kJ/mol."""
        return self._file["potentialEnergy"][: self.n_frames].astype(np.float64)

    @property
    def masses(self) -> np.ndarray:
        return self._file["cgml/masses"][()]

    @property
    def atom_types(self) -> np.ndarray:
        return self._file["cgml/atom_types"][()]

    @property
    def charges(self) -> np.ndarray:
        return self._file["cgml/charges"][()]

    @property
    def bonds(self) -> np.ndarray:
        return self._file["cgml/bonds"][()].reshape(-1, 2)

    @property
    def is_periodic(self) -> bool:
        return "cell_lengths" in self._file

    def box_vectors(self, frame: int) -> np.ndarray | None:
        """Periodic box vectors of ``frame`` as a ``(3, 3)`` array in nm (rows a, b, c), or None."""
        if not self.is_periodic:
            return None
        if not -self.n_frames <= frame < self.n_frames:
            raise IndexError(f"frame {frame} out of range for {self.n_frames} frames")
        frame = frame % self.n_frames
        return _lengths_angles_to_box(self._file["cell_lengths"][frame].astype(np.float64),
                                      self._file["cell_angles"][frame].astype(np.float64))

    @property
    def topology(self) -> app.Topology:
        if self._topology is None:
            raw = self._file["topology"][()]
            raw = raw[0] if np.ndim(raw) else raw
            self._topology = _topology_from_dict(json.loads(raw.decode() if isinstance(raw, bytes) else raw))
            if self.is_periodic and self.n_frames:
                self._topology.setPeriodicBoxVectors(self.box_vectors(0))
        return self._topology

    @property
    def attrs(self) -> dict:
        """Root attributes with the JSON-valued ones (``cgml_params``, ``cgml_versions``) decoded."""
        return _decoded_attrs(self._file.attrs)

    @property
    def complete(self) -> bool:
        return bool(self._file.attrs.get("cgml_complete", False))

    @property
    def timestep_ps(self) -> float:
        return float(self._file.attrs["cgml_timestep_ps"])

    @property
    def stride(self) -> int:
        """MD steps between saved frames."""
        return int(self._file.attrs["cgml_stride"])

    @property
    def frame_interval_ps(self) -> float:
        return self.timestep_ps * self.stride

    @property
    def temperature_K(self) -> float:
        return float(self._file.attrs["cgml_temperature_K"])

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        return (f"FineTrajectory({str(self.path)!r}, n_frames={self.n_frames}, n_atoms={self.n_atoms}, "
                f"system={self._file.attrs.get('cgml_system')!r})")

    def _require_writable(self):
        if self._file.mode == "r":
            raise ValueError(f"{self.path} is open read-only")

    def _checkpoint_dataset(self):
        for name in (_CHECKPOINT, _CHECKPOINT_NEXT):
            if name in self._file and "n_frames" in self._file[name].attrs:
                return self._file[name]
        return None

    def _adopt_pending_checkpoint(self):
        """Finish a checkpoint rename that a kill interrupted, or drop a half-written new checkpoint."""
        if _CHECKPOINT_NEXT not in self._file:
            return
        if "n_frames" in self._file[_CHECKPOINT_NEXT].attrs:
            if _CHECKPOINT in self._file:
                del self._file[_CHECKPOINT]
            self._file.move(_CHECKPOINT_NEXT, _CHECKPOINT)
        else:
            del self._file[_CHECKPOINT_NEXT]


def _per_atom_arrays(n_atoms: int, masses, atom_types, charges):
    """Masses (float64, all > 0), atom types (int64) and charges (float64), each checked to be ``(n_atoms,)``."""
    masses = np.asarray(masses, dtype=np.float64)
    atom_types = np.asarray(atom_types, dtype=np.int64)
    charges = np.asarray(charges, dtype=np.float64)
    for name, array in (("masses", masses), ("atom_types", atom_types), ("charges", charges)):
        if array.shape != (n_atoms,):
            raise ValueError(f"{name} must have shape ({n_atoms},) to match the topology, got {array.shape}")
    if np.any(masses <= 0):
        raise ValueError(f"all masses must be positive; atoms {np.flatnonzero(masses <= 0)[:5].tolist()} are not")
    return masses, atom_types, charges


def _write_layout(handle: h5py.File, topology: app.Topology, masses, atom_types, charges, attrs: dict,
                  periodic: bool, save_forces: bool, chunk_frames: int) -> None:
    """The empty file: root attributes, resizable frame datasets, the topology JSON and the ``/cgml`` group."""
    n_atoms = topology.getNumAtoms()
    handle.attrs["conventions"] = "Pande"
    handle.attrs["conventionVersion"] = "1.1"
    handle.attrs["program"] = "openmm-cgml"
    handle.attrs["title"] = str(attrs.get("cgml_system", "openmm-cgml trajectory"))
    handle.attrs["application"] = "OpenMM"
    handle.attrs["cgml_format_version"] = FORMAT_VERSION
    for key, value in attrs.items():
        handle.attrs[key] = _attr_value(value)
    # booleans are stored as int8 0/1: PyTables (mdtraj.load) warns on HDF5 enum attributes
    handle.attrs["cgml_complete"] = np.int8(0)

    names = ["coordinates", "velocities", "time", "potentialEnergy"]
    if save_forces:
        names.append("forces")
    if periodic:
        names += ["cell_lengths", "cell_angles"]
    chunk_frames = max(1, int(chunk_frames))
    for name in names:
        tail, dtype, units = _FRAME_DATASETS[name]
        shape = tail(n_atoms)
        # HDF5 chunks of about one write batch (capped near 4 MiB)
        per_frame = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        rows = int(max(1, min(chunk_frames, (4 << 20) // max(per_frame, 1))))
        dataset = handle.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape),
                                        dtype=dtype, chunks=(rows, *shape))
        dataset.attrs["units"] = units

    topology_json = json.dumps(_topology_to_dict(topology)).encode("ascii")
    # mdtraj stores the topology JSON as a length-1 string array and reads element [0]
    handle.create_dataset("topology", data=np.array([topology_json]))

    group = handle.create_group("cgml")
    group.create_dataset("masses", data=masses).attrs["units"] = "daltons"
    group.create_dataset("atom_types", data=atom_types)
    group.create_dataset("charges", data=charges).attrs["units"] = "elementary_charge"
    bonds = np.array([[b.atom1.index, b.atom2.index] for b in topology.bonds()], dtype=np.int64)
    group.create_dataset("bonds", data=bonds.reshape(-1, 2))
    handle.flush()


def _decoded_attrs(raw) -> dict:
    """Root attributes as Python values: strings decoded, JSON ones parsed, ``cgml_complete`` a bool."""
    out = {}
    for key, value in raw.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        if key in ("cgml_params", "cgml_versions") and isinstance(value, str):
            value = json.loads(value)
        if key == "cgml_complete":
            value = bool(value)
        out[key] = value
    return out


def _attr_value(value):
    """An HDF5 attribute value: JSON for containers, int8 0/1 for booleans (PyTables reads both)."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    if isinstance(value, (bool, np.bool_)):
        return np.int8(value)
    return value


def _topology_to_dict(topology: app.Topology) -> dict:
    """The mdtraj HDF5 topology JSON of an OpenMM topology (elements by symbol, '' when none)."""
    chains = []
    for chain in topology.chains():
        residues = []
        for residue in chain.residues():
            try:
                res_seq = int(residue.id)
            except (TypeError, ValueError):
                res_seq = residue.index + 1
            atoms = [{"index": atom.index, "name": atom.name,
                      "element": atom.element.symbol if atom.element is not None else ""}
                     for atom in residue.atoms()]
            residues.append({"index": residue.index, "name": residue.name, "atoms": atoms,
                             "resSeq": res_seq, "segmentID": ""})
        chains.append({"index": chain.index, "chain_id": chain.id or None, "residues": residues})
    bonds = [[bond.atom1.index, bond.atom2.index] for bond in topology.bonds()]
    return {"chains": chains, "bonds": bonds}


def _topology_from_dict(data: dict) -> app.Topology:
    topology = app.Topology()
    atoms = {}
    for chain_data in sorted(data["chains"], key=lambda c: c["index"]):
        chain = topology.addChain(id=chain_data.get("chain_id") or None)
        for residue_data in sorted(chain_data["residues"], key=lambda r: r["index"]):
            residue = topology.addResidue(residue_data["name"], chain, id=str(residue_data.get("resSeq", "")))
            for atom_data in sorted(residue_data["atoms"], key=lambda a: a["index"]):
                symbol = atom_data.get("element") or ""
                try:
                    element = app.Element.getBySymbol(symbol) if symbol and symbol != "VS" else None
                except KeyError:
                    element = None
                atoms[atom_data["index"]] = topology.addAtom(atom_data["name"], element, residue)
    for i, j in data["bonds"]:
        topology.addBond(atoms[i], atoms[j])
    return topology


def _box_to_lengths_angles(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 3) box vectors (nm) -> lengths (n, 3) nm and angles alpha, beta, gamma (n, 3) degrees."""
    a, b, c = boxes[:, 0], boxes[:, 1], boxes[:, 2]
    lengths = np.stack([np.linalg.norm(v, axis=1) for v in (a, b, c)], axis=1)

    def angle(x, y, nx, ny):
        return np.degrees(np.arccos(np.clip(np.sum(x * y, axis=1) / (nx * ny), -1.0, 1.0)))

    angles = np.stack([angle(b, c, lengths[:, 1], lengths[:, 2]),
                       angle(a, c, lengths[:, 0], lengths[:, 2]),
                       angle(a, b, lengths[:, 0], lengths[:, 1])], axis=1)
    return lengths, angles


def _lengths_angles_to_box(lengths: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Box vectors in OpenMM's reduced form (a along x, b in the xy plane) from lengths and angles."""
    from openmm.app.internal.unitcell import computePeriodicBoxVectors

    alpha, beta, gamma = np.radians(angles)
    vectors = computePeriodicBoxVectors(*lengths, alpha, beta, gamma).value_in_unit(NM)
    return np.array([[v[0], v[1], v[2]] for v in vectors], dtype=np.float64)

