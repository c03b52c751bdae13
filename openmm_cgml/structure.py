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
import openmm.app as app

from openmm_cgml.units import AMU, NM, strip_array, strip_box

__all__ = ["load_structure", "read_structure", "element_types"]

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


def load_structure(source: str):
    """Read a structure file, a fine trajectory's first frame or a reference system.

    Parameters
    ----------
    source : str
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
        A file that cannot be read, holds no atoms, or has atoms without an element.
    """
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in _PDB_SUFFIXES:
        return _read_pdb(path)
    if suffix in _TRAJECTORY_SUFFIXES:
        from openmm_cgml.trajectory import FineTrajectory

        with FineTrajectory(path) as trajectory:
            positions = np.asarray(trajectory.positions[0], dtype=np.float64)
            return (trajectory.topology, positions, np.asarray(trajectory.masses),
                    np.asarray(trajectory.atom_types), trajectory.box_vectors(0))
    from openmm_cgml import systems

    reference = systems.load(source)
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
    topology, file_positions, _, types, box = load_structure(os.fspath(pdb_or_topology))
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
    positions = strip_array(structure.getPositions(asNumpy=True), NM, f"positions in {path}")
    box = topology.getPeriodicBoxVectors()
    return topology, positions, masses, None, (None if box is None else strip_box(box))
