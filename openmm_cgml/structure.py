"""Fine-grained structures read from files: the one reader behind ``cgml map-image`` and ``cgml simulate``.

A structure is a topology with one conformation, the atom masses, the atom
types where the source knows them (a fine trajectory or a reference system
carries the bead types of a polymer; a PDB file only has elements) and the
periodic box. Sources: a PDB/PDBx file, a fine trajectory HDF5 file (its
first frame) or a reference system name / YAML file (:mod:`openmm_cgml.systems`).

Units: nm and amu (daltons) inside, as everywhere in the package.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app

from openmm_cgml.units import AMU, NM, strip_array, strip_box, whole_array

__all__ = ["load_structure", "read_structure", "element_types", "topology_atoms", "topology_bonds", "atom_masses",
           "atom_types_for"]

_PDB_SUFFIXES = (".pdb", ".cif", ".pdbx")
_TRAJECTORY_SUFFIXES = (".h5", ".hdf5")


def element_types(topology: app.Topology) -> np.ndarray:
    """Atomic numbers of the atoms of ``topology``, 0 where an atom has no element.

    Parameters
    ----------
    topology : openmm.app.Topology

    Returns
    -------
    numpy.ndarray
        ``(n_atoms,)`` int64.
    """
    return np.array([a.element.atomic_number if a.element is not None else 0 for a in topology.atoms()],
                    dtype=np.int64)


def topology_atoms(topology, name: str = "topology") -> int:
    """The number of atoms of ``topology``; ``ValueError`` naming ``name`` for anything but a Topology."""
    if not isinstance(topology, app.Topology):
        raise ValueError(f"{name} must be an openmm.app.Topology, got {type(topology).__name__}")
    return topology.getNumAtoms()


def topology_bonds(topology: app.Topology) -> np.ndarray:
    """The bonds of ``topology``: ``(B, 2)`` int64 atom pairs, i < j, sorted and unique."""
    bonds = np.array([(b[0].index, b[1].index) for b in topology.bonds()], dtype=np.int64).reshape(-1, 2)
    bonds.sort(axis=1)
    return np.unique(bonds, axis=0) if len(bonds) else bonds


def atom_masses(masses, n_atoms: int) -> np.ndarray:
    """Masses (amu), one per atom, from an array, a quantity or an ``openmm.System``; ``ValueError`` otherwise."""
    if isinstance(masses, openmm.System):
        masses = [masses.getParticleMass(i).value_in_unit(AMU) for i in range(masses.getNumParticles())]
    array = strip_array(masses, AMU, "masses", shape_tail=None)
    if array.shape != (n_atoms,):
        raise ValueError(f"masses has shape {array.shape} but the topology has {n_atoms} atoms (one mass each)")
    return array


def atom_types_for(topology: app.Topology, atom_types) -> tuple[np.ndarray, str]:
    """Atom types and where they came from: atomic numbers ("element") unless given ("given")."""
    if atom_types is None:
        return element_types(topology), "element"
    types = whole_array(atom_types, "atom_types")
    if types.shape[0] != topology.getNumAtoms():
        raise ValueError(f"atom_types has {types.shape[0]} entries but the topology has {topology.getNumAtoms()} atoms")
    return types, "given"


def load_structure(source):
    """Read a structure file, a fine trajectory's first frame or a reference system.

    Parameters
    ----------
    source : str or os.PathLike
        A PDB/PDBx file (``.pdb``, ``.cif``, ``.pdbx``), a fine trajectory HDF5 file (``.h5``,
        ``.hdf5``; its first frame) or a reference system name / YAML file.

    Returns
    -------
    tuple
        ``(topology, positions, masses, atom_types, box)``: an ``openmm.app.Topology``;
        positions ``(n_atoms, 3)`` float64 nm; masses ``(n_atoms,)`` amu (an ``openmm.System``
        for a reference system); atom types ``(n_atoms,)`` or None where the source has only
        elements (a PDB); box vectors ``(3, 3)`` nm or None when not periodic.

    Raises
    ------
    FileNotFoundError
        A structure file that does not exist.
    ValueError
        A folder, a file that cannot be read, holds no atoms (or, a trajectory, no frames), has atoms
        without an element or NaN/inf coordinates.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError("a structure must be a file path, a reference system name or an openmm.app.Topology, "
                         f"got {type(source).__name__}")
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise ValueError(f"structure file {path} is a folder, not a file")
    if suffix in _PDB_SUFFIXES:
        return _read_pdb(path)
    if suffix in _TRAJECTORY_SUFFIXES:
        from openmm_cgml.trajectory import FineTrajectory

        with FineTrajectory(path) as trajectory:
            if trajectory.n_frames == 0:
                raise ValueError(f"trajectory file {path} has no frames")
            positions = _finite_positions(trajectory.positions[0], f"trajectory file {path} (first frame)")
            return (trajectory.topology, positions, np.asarray(trajectory.masses),
                    np.asarray(trajectory.atom_types), trajectory.box_vectors(0))
    from openmm_cgml import systems

    reference = systems.load(os.fspath(source))
    positions = strip_array(reference.positions, NM, "positions")
    periodic = reference.system.usesPeriodicBoundaryConditions()
    box = strip_box(reference.system.getDefaultPeriodicBoxVectors()) if periodic else None
    return reference.topology, positions, reference.system, np.asarray(reference.atom_types), box


def read_structure(pdb_or_topology, positions=None):
    """A structure from a file (:func:`load_structure`) or from a Topology and positions.

    Parameters
    ----------
    pdb_or_topology : str, os.PathLike or openmm.app.Topology
        A source :func:`load_structure` reads, or a Topology (its periodic box, if any, is used).
    positions : Quantity compatible with nanometers, array-like (nm), or None
        ``(n_atoms, 3)`` atom positions; required with a Topology, and replaces the file's
        conformation when given with a file.

    Returns
    -------
    tuple
        ``(topology, positions, box, atom_types)``: positions ``(n_atoms, 3)`` float64 nm, box
        ``(3, 3)`` nm or None, atom types ``(n_atoms,)`` int64 or None where only elements are known.
    """
    if isinstance(pdb_or_topology, app.Topology):
        if positions is None:
            raise ValueError("positions are required when a Topology is given")
        box = pdb_or_topology.getPeriodicBoxVectors()
        box = None if box is None else strip_box(box)
        return pdb_or_topology, strip_array(positions, NM, "positions"), box, None
    topology, file_positions, _, types, box = load_structure(pdb_or_topology)
    atoms = file_positions if positions is None else strip_array(positions, NM, "positions")
    return topology, atoms, box, (None if types is None else np.asarray(types, dtype=np.int64))


def _read_pdb(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"structure file {path} does not exist")
    try:
        structure = app.PDBFile(str(path)) if path.suffix.lower() == ".pdb" else app.PDBxFile(str(path))
    except Exception as error:   # OpenMM raises assorted errors on malformed text
        raise ValueError(f"cannot read structure file {path}: {error}") from None
    topology = structure.topology
    if topology.getNumAtoms() == 0:
        raise ValueError(f"structure file {path} contains no atoms")
    no_element = [atom for atom in topology.atoms() if atom.element is None]
    if no_element:
        raise ValueError(f"structure file {path}: atom {no_element[0].index} ({no_element[0].name}) has no "
                         "element, so its mass is unknown")
    masses = np.array([atom.element.mass.value_in_unit(AMU) for atom in topology.atoms()])
    positions = _finite_positions(structure.getPositions(asNumpy=True).value_in_unit(NM), f"structure file {path}")
    box = topology.getPeriodicBoxVectors()
    return topology, positions, masses, None, (None if box is None else strip_box(box))


def _finite_positions(positions, where: str) -> np.ndarray:
    """``(n_atoms, 3)`` float64 nm; ``ValueError`` naming ``where`` and the atoms with NaN/inf coordinates."""
    positions = np.asarray(positions, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=-1))
    if len(bad):
        raise ValueError(f"{where} has NaN/inf coordinates for atoms {bad[:10].tolist()}"
                         + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))
    return positions
