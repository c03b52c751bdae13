"""Atom-to-bead mappings: which atoms make up each coarse-grained bead.

A :class:`Mapping` is built in one of three ways:

* :meth:`Mapping.metis` partitions the bond graph of every molecule
  (connected component) with METIS into beads of about ``atoms_per_bead``
  atoms; every bead is a connected set of atoms and single-atom ions are
  their own bead (the preprocessing of Fu et al., TMLR 2023).
* :meth:`Mapping.by_residue` makes one bead per residue, placed at the
  residue's centre of mass or at its alpha carbon.
* :meth:`Mapping.from_file` reads a user mapping (JSON or YAML, format in
  ``docs/coarse_graining.md``).

It turns atom coordinates into bead coordinates (mass-weighted centres,
molecules made whole across periodic boundaries first), gives the bead
masses, the coarse bonds (atomic bonds that cross beads), a bead
``openmm.app.Topology`` and an ``openmm.System`` of bead particles. It is
saved as JSON only (``to_json``/``from_json``), never pickled, so it can
travel inside datasets and exported models.

Units: nm, nm/ps and amu (daltons) inside; quantities are accepted at the
public boundary through :mod:`openmm_cgml.units`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, connected_components

from openmm_cgml.geometry import minimum_image
from openmm_cgml.units import AMU, NM, strip_array

__all__ = ["Mapping", "periodic_marker", "draw_mapping", "configure_parser", "run"]

FORMAT_NAME = "openmm-cgml-mapping"
FORMAT_VERSION = 1
# Above this many weight-matrix entries the centre computation uses a sparse matrix.
_DENSE_LIMIT = 4_000_000
# Frames made whole at a time (keeps the working set in cache).
_BLOCK_FRAMES = 128


# ----------------------------------------------------------------------------- helpers

def _atom_masses(masses, n_atoms: int) -> np.ndarray:
    """Masses (amu) from an array, a quantity or an ``openmm.System``."""
    if isinstance(masses, openmm.System):
        masses = [masses.getParticleMass(i).value_in_unit(AMU) for i in range(masses.getNumParticles())]
    array = strip_array(masses, AMU, "masses", shape_tail=None).reshape(-1)
    if array.shape[0] != n_atoms:
        raise ValueError(f"masses has {array.shape[0]} entries but the topology has {n_atoms} atoms")
    if np.any(array < 0):
        raise ValueError(f"masses must be >= 0 amu; atom {int(np.argmin(array))} has {array.min()}")
    return array


def _topology_bonds(topology: app.Topology) -> np.ndarray:
    bonds = np.array([(b[0].index, b[1].index) for b in topology.bonds()], dtype=np.int64).reshape(-1, 2)
    bonds.sort(axis=1)
    return np.unique(bonds, axis=0) if len(bonds) else bonds


def _element_types(topology: app.Topology) -> np.ndarray:
    """Atomic numbers, 0 where an atom has no element."""
    return np.array([a.element.atomic_number if a.element is not None else 0 for a in topology.atoms()],
                    dtype=np.int64)


def _types(topology: app.Topology, atom_types) -> tuple[np.ndarray, str]:
    """Atom types and where they came from: atomic numbers ("element") unless given ("given")."""
    if atom_types is None:
        return _element_types(topology), "element"
    types = np.asarray(atom_types, dtype=np.int64).reshape(-1)
    if types.shape[0] != topology.getNumAtoms():
        raise ValueError(f"atom_types has {types.shape[0]} entries but the topology has {topology.getNumAtoms()} atoms")
    return types, "given"


def _adjacency(n_atoms: int, bonds: np.ndarray) -> sp.csr_matrix:
    rows = np.concatenate([bonds[:, 0], bonds[:, 1]])
    cols = np.concatenate([bonds[:, 1], bonds[:, 0]])
    return sp.csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_atoms, n_atoms))


def _molecules(n_atoms: int, bonds: np.ndarray) -> np.ndarray:
    """Molecule (connected component) of every atom, numbered by first atom."""
    _, labels = connected_components(_adjacency(n_atoms, bonds), directed=False)
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)               # component labels sorted by their first atom
    relabel = np.empty_like(order)
    relabel[order] = np.arange(len(order))
    return relabel[labels].astype(np.int64)


def _renumber_by_first_atom(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..n-1 in order of their first atom (stable, deterministic)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first)
    relabel = np.empty_like(order)
    relabel[order] = np.arange(len(order))
    return relabel[inverse].astype(np.int64)


def _repair_connectivity(adjacency: sp.csr_matrix, part: np.ndarray) -> np.ndarray:
    """Make every part a connected set of atoms.

    METIS can return a part made of several disconnected pieces. The largest
    piece keeps the label; every other piece is merged into the adjacent part
    it shares most bonds with (the smaller one on ties), which keeps part
    sizes close to balanced and every part connected.
    """
    part = part.copy()
    coo = adjacency.tocoo()
    for _ in range(len(part)):
        same = part[coo.row] == part[coo.col]
        inner = sp.csr_matrix((np.ones(same.sum(), dtype=np.int8), (coo.row[same], coo.col[same])),
                              shape=adjacency.shape)
        n_pieces, piece = connected_components(inner, directed=False)
        if n_pieces == len(np.unique(part)):
            return part
        piece_size = np.bincount(piece)
        moved = False
        for label in np.unique(part):
            pieces = np.unique(piece[part == label])
            if len(pieces) < 2:
                continue
            keep = pieces[np.argmax(piece_size[pieces])]
            for fragment in pieces[pieces != keep]:
                atoms = np.flatnonzero(piece == fragment)
                neighbours = adjacency[atoms].indices
                neighbour_parts = part[neighbours]
                neighbour_parts = neighbour_parts[neighbour_parts != label]
                if len(neighbour_parts) == 0:
                    continue
                candidates, bond_counts = np.unique(neighbour_parts, return_counts=True)
                sizes = np.array([(part == c).sum() for c in candidates])
                best = np.lexsort((sizes, -bond_counts))[0]
                part[atoms] = candidates[best]
                moved = True
        if not moved:
            break
    return part


# ----------------------------------------------------------------------------- Mapping

class Mapping:
    """An assignment of every atom to one bead, with what follows from it.

    Attributes
    ----------
    bead_of_atom : (n_atoms,) int64, beads numbered 0..n_beads-1 (molecule by molecule)
    bead_names : list of str, one per bead
    atom_masses : (n_atoms,) float64, amu
    atom_types : (n_atoms,) int64, atomic numbers (or bead types of a coarse polymer)
    fine_bonds : (B, 2) int64, atom index pairs, i < j
    center_atoms : (n_beads,) int64, the atom that places each bead, or -1 for the centre of mass
    method, params : how the mapping was made (``Mapping.build(method, topology, masses, **params)`` re-makes it)
    bead_masses : (n_beads,) float64, amu, the sum of the bead's atom masses (never zero)
    coarse_bonds : (C, 2) int64, bead pairs joined by at least one atomic bond
    molecule_of_atom, molecule_of_bead : molecule (connected component) indices
    """

    def __init__(self, bead_of_atom, atom_masses, atom_types=None, fine_bonds=None, bead_names=None,
                 center_atoms=None, method: str = "custom", params: dict | None = None):
        self.bead_of_atom = np.asarray(bead_of_atom, dtype=np.int64).reshape(-1)
        self.n_atoms = int(self.bead_of_atom.shape[0])
        if self.n_atoms == 0:
            raise ValueError("a mapping needs at least one atom")
        self.atom_masses = np.asarray(atom_masses, dtype=np.float64).reshape(-1)
        self.atom_types = (np.zeros(self.n_atoms, dtype=np.int64) if atom_types is None
                           else np.asarray(atom_types, dtype=np.int64).reshape(-1))
        self.fine_bonds = (np.zeros((0, 2), dtype=np.int64) if fine_bonds is None
                           else np.asarray(fine_bonds, dtype=np.int64).reshape(-1, 2))
        self.method = method
        self.params = dict(params or {})
        for name, array in (("atom_masses", self.atom_masses), ("atom_types", self.atom_types)):
            if array.shape[0] != self.n_atoms:
                raise ValueError(f"{name} has {array.shape[0]} entries but bead_of_atom has {self.n_atoms}")
        if len(self.fine_bonds) and (self.fine_bonds.min() < 0 or self.fine_bonds.max() >= self.n_atoms):
            raise ValueError(f"fine_bonds refer to atoms outside 0..{self.n_atoms - 1}")
        labels = np.unique(self.bead_of_atom)
        self.n_beads = int(labels.shape[0])
        if labels[0] != 0 or labels[-1] != self.n_beads - 1:
            raise ValueError(f"beads must be numbered 0..n_beads-1 without gaps, got labels {labels[:5]}...")
        self.bead_names = ([f"B{i}" for i in range(self.n_beads)] if bead_names is None
                           else [str(name) for name in bead_names])
        if len(self.bead_names) != self.n_beads:
            raise ValueError(f"{len(self.bead_names)} bead names for {self.n_beads} beads")
        self.center_atoms = (np.full(self.n_beads, -1, dtype=np.int64) if center_atoms is None
                             else np.asarray(center_atoms, dtype=np.int64).reshape(-1))
        if self.center_atoms.shape[0] != self.n_beads:
            raise ValueError(f"center_atoms has {self.center_atoms.shape[0]} entries for {self.n_beads} beads")
        placed = self.center_atoms >= 0
        if np.any(self.center_atoms >= self.n_atoms) or np.any(
                self.bead_of_atom[self.center_atoms[placed]] != np.flatnonzero(placed)):
            raise ValueError("every center atom must be an atom of its own bead")

        self.bead_masses = np.bincount(self.bead_of_atom, weights=self.atom_masses, minlength=self.n_beads)
        if np.any(self.bead_masses <= 0):
            bad = int(np.flatnonzero(self.bead_masses <= 0)[0])
            raise ValueError(f"bead {bad} ({self.bead_names[bad]}) has zero mass: its atoms are all massless")
        self.molecule_of_atom = _molecules(self.n_atoms, self.fine_bonds)
        self.n_molecules = int(self.molecule_of_atom.max()) + 1
        lowest = np.full(self.n_beads, self.n_molecules, dtype=np.int64)
        highest = np.full(self.n_beads, -1, dtype=np.int64)
        np.minimum.at(lowest, self.bead_of_atom, self.molecule_of_atom)
        np.maximum.at(highest, self.bead_of_atom, self.molecule_of_atom)
        split = np.flatnonzero(lowest != highest)
        if len(split):
            bead = int(split[0])
            raise ValueError(f"bead {bead} ({self.bead_names[bead]}) contains atoms of molecules {lowest[bead]} "
                             f"and {highest[bead]}; a bead must lie within one molecule")
        self.molecule_of_bead = lowest
        crossing = self.bead_of_atom[self.fine_bonds]
        crossing = np.sort(crossing[crossing[:, 0] != crossing[:, 1]], axis=1)
        self.coarse_bonds = np.unique(crossing, axis=0) if len(crossing) else np.zeros((0, 2), dtype=np.int64)
        self._weights = self._weight_matrix()
        self._unwrap_plan = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def metis(cls, topology: app.Topology, masses, atoms_per_bead: float | None = None,
              n_beads: int | None = None, seed: int = 0, atom_types=None) -> "Mapping":
        """Partition each molecule's bond graph with METIS.

        Give either ``atoms_per_bead`` (a molecule of m atoms gets
        ``round(m / atoms_per_bead)`` beads, at least one) or ``n_beads`` in
        total (shared among molecules in proportion to their size, at least
        one each). Beads are connected sets of atoms; single atoms (ions) are
        their own bead. The same ``seed`` gives the same mapping.
        """
        import pymetis

        n_atoms = topology.getNumAtoms()
        atom_masses = _atom_masses(masses, n_atoms)
        bonds = _topology_bonds(topology)
        if (atoms_per_bead is None) == (n_beads is None):
            raise ValueError("give exactly one of atoms_per_bead or n_beads")
        molecule = _molecules(n_atoms, bonds)
        sizes = np.bincount(molecule)
        if atoms_per_bead is not None:
            atoms_per_bead = float(atoms_per_bead)
            if not atoms_per_bead >= 1:
                raise ValueError(f"atoms_per_bead must be >= 1, got {atoms_per_bead}")
            parts = np.maximum(1, np.rint(sizes / atoms_per_bead)).astype(np.int64)
        else:
            n_beads = int(n_beads)
            if not len(sizes) <= n_beads <= n_atoms:
                raise ValueError(f"n_beads must lie between the number of molecules ({len(sizes)}) "
                                 f"and the number of atoms ({n_atoms}), got {n_beads}")
            parts = _share(n_beads, sizes)
        options = pymetis.Options(seed=int(seed), contig=1)
        # atoms and bonds grouped by molecule, bonds in molecule-local atom numbers
        order = np.argsort(molecule, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        local_index = np.empty(n_atoms, dtype=np.int64)
        local_index[order] = np.arange(n_atoms) - starts[molecule[order]]
        bond_order = np.argsort(molecule[bonds[:, 0]], kind="stable") if len(bonds) else np.zeros(0, dtype=np.int64)
        bond_counts = np.bincount(molecule[bonds[:, 0]], minlength=len(sizes)) if len(bonds) else np.zeros(len(sizes), int)
        local_bonds = np.split(local_index[bonds[bond_order]], np.cumsum(bond_counts)[:-1])
        by_molecule = np.split(order, np.cumsum(sizes)[:-1])
        solved = {}   # identical molecules (waters, chains of one sequence) are partitioned once
        bead = np.empty(n_atoms, dtype=np.int64)
        offset = 0
        for atoms, edges, n_parts in zip(by_molecule, local_bonds, parts):
            key = (len(atoms), int(n_parts), edges.tobytes())
            if key not in solved:
                solved[key] = _partition_molecule(len(atoms), edges, int(n_parts), options)
            local = solved[key]
            bead[atoms] = offset + local
            offset += int(local.max()) + 1
        bead = _renumber_by_first_atom(bead)
        names = _names_within_molecules(bead, molecule)
        params = {"atoms_per_bead": atoms_per_bead, "n_beads": n_beads, "seed": int(seed)}
        types, params["atom_types_from"] = _types(topology, atom_types)
        return cls(bead, atom_masses, types, bonds, names, method="metis", params=params)

    @classmethod
    def by_residue(cls, topology: app.Topology, masses, center: str = "com", atom_types=None) -> "Mapping":
        """One bead per residue, named after it.

        ``center="com"`` places the bead at the residue's centre of mass;
        ``center="ca"`` at its alpha carbon (atom named CA), falling back to
        the centre of mass for residues without one (caps, water, ions).
        """
        if center not in ("com", "ca"):
            raise ValueError(f"center must be 'com' or 'ca', got {center!r}")
        n_atoms = topology.getNumAtoms()
        atom_masses = _atom_masses(masses, n_atoms)
        bead = np.empty(n_atoms, dtype=np.int64)
        names, centers = [], []
        for residue in topology.residues():
            atoms = [atom.index for atom in residue.atoms()]
            if not atoms:
                continue
            bead[atoms] = len(names)
            names.append(residue.name)
            ca = [atom.index for atom in residue.atoms() if atom.name == "CA"]
            centers.append(ca[0] if center == "ca" and ca else -1)
        types, source = _types(topology, atom_types)
        return cls(bead, atom_masses, types, _topology_bonds(topology), names, centers,
                   method="residue", params={"center": center, "atom_types_from": source})

    @classmethod
    def from_file(cls, path, topology: app.Topology, masses, atom_types=None) -> "Mapping":
        """Read a user mapping from a JSON or YAML file and check it fits ``topology``.

        The format (see ``docs/coarse_graining.md``)::

            beads:
              - {name: ACE, atoms: [0, 1, 2, 3, 4, 5]}
              - {name: ALA, atoms: [6, 7, ...], center_atom: 8}   # optional: bead sits on atom 8
            n_atoms: 22                                          # optional, checked

        Every atom must appear in exactly one bead. A file written by
        :meth:`to_json` is accepted too.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"mapping file {path} does not exist")
        text = path.read_text()
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                spec = yaml.safe_load(text)
            else:
                spec = json.loads(text)
        except Exception as error:
            raise ValueError(f"mapping file {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: "
                             f"{error}") from None
        if isinstance(spec, dict) and spec.get("format") == FORMAT_NAME:
            mapping = cls.from_json(text)
            mapping.check_fits(topology, where=f"mapping file {path}")
            return mapping
        n_atoms = topology.getNumAtoms()
        if not isinstance(spec, dict) or not isinstance(spec.get("beads"), list) or not spec["beads"]:
            raise ValueError(f"mapping file {path} must contain a non-empty list 'beads' of "
                             "{name, atoms[, center_atom]} entries")
        if "n_atoms" in spec and int(spec["n_atoms"]) != n_atoms:
            raise ValueError(f"mapping file {path} is for {spec['n_atoms']} atoms but the topology has {n_atoms}")
        bead = np.full(n_atoms, -1, dtype=np.int64)
        names, centers = [], []
        for index, entry in enumerate(spec["beads"]):
            if not isinstance(entry, dict) or "atoms" not in entry:
                raise ValueError(f"mapping file {path}: bead {index} has no 'atoms' list")
            atoms = entry["atoms"]
            if not isinstance(atoms, list) or not atoms or not all(isinstance(a, int) for a in atoms):
                raise ValueError(f"mapping file {path}: bead {index} 'atoms' must be a non-empty list of integers")
            atoms = np.asarray(atoms, dtype=np.int64)
            outside = atoms[(atoms < 0) | (atoms >= n_atoms)]
            if len(outside):
                raise ValueError(f"mapping file {path}: bead {index} refers to atom {int(outside[0])} but the "
                                 f"topology has atoms 0..{n_atoms - 1}")
            taken = atoms[bead[atoms] >= 0]
            if len(taken) or len(np.unique(atoms)) != len(atoms):
                atom = int(taken[0]) if len(taken) else int(atoms[np.argmax(np.bincount(atoms))])
                raise ValueError(f"mapping file {path}: atom {atom} is in more than one bead")
            bead[atoms] = index
            names.append(str(entry.get("name", f"B{index}")))
            center_atom = entry.get("center_atom", -1)
            if center_atom != -1 and center_atom not in atoms.tolist():
                raise ValueError(f"mapping file {path}: bead {index} center_atom {center_atom} is not one of its atoms")
            centers.append(int(center_atom))
        missing = np.flatnonzero(bead < 0)
        if len(missing):
            raise ValueError(f"mapping file {path} leaves {len(missing)} atoms without a bead "
                             f"(first: atom {int(missing[0])}); the topology has {n_atoms} atoms")
        types, source = _types(topology, atom_types)
        try:
            return cls(bead, _atom_masses(masses, n_atoms), types, _topology_bonds(topology), names, centers,
                       method="file", params={"path": str(path), "atom_types_from": source})
        except ValueError as error:
            raise ValueError(f"mapping file {path}: {error}") from None

    @classmethod
    def build(cls, method: str, topology: app.Topology, masses, atom_types=None, **params) -> "Mapping":
        """Make a mapping by name: ``"metis"``, ``"residue"`` or a path to a mapping file.

        ``Mapping.build(m.method, topology, masses, **m.params)`` re-makes a
        mapping the same way for another molecule.
        """
        if params.pop("atom_types_from", None) == "given" and atom_types is None:
            raise ValueError(f"this {method} mapping was made with given atom types (not elements); pass atom_types")
        if method == "metis":
            if params.get("atoms_per_bead") is None and params.get("n_beads") is None:
                params["atoms_per_bead"] = 4
            return cls.metis(topology, masses, atom_types=atom_types, **params)
        if method == "residue":
            return cls.by_residue(topology, masses, center=params.get("center", "com"), atom_types=atom_types)
        if method == "file":
            method = params["path"]
        return cls.from_file(method, topology, masses, atom_types=atom_types)

    # ------------------------------------------------------------------ checks and JSON

    def check_fits(self, topology: app.Topology, where: str = "mapping") -> None:
        """Raise ``ValueError`` naming the mismatch if ``topology`` is not the molecule(s) this mapping is for."""
        n_atoms = topology.getNumAtoms()
        if n_atoms != self.n_atoms:
            raise ValueError(f"{where} is for {self.n_atoms} atoms but the topology has {n_atoms} atoms")
        bonds = _topology_bonds(topology)
        mine = {tuple(b) for b in self.fine_bonds.tolist()}
        theirs = {tuple(b) for b in bonds.tolist()}
        if mine != theirs:
            extra, absent = sorted(theirs - mine), sorted(mine - theirs)
            detail = []
            if extra:
                detail.append(f"topology bond(s) {extra[:3]} not in the mapping")
            if absent:
                detail.append(f"mapping bond(s) {absent[:3]} not in the topology")
            raise ValueError(f"{where} does not fit the topology: the bond graphs differ ({'; '.join(detail)})")
        if self.params.get("atom_types_from") == "element":
            elements = _element_types(topology)
            differ = np.flatnonzero(elements != self.atom_types)
            if len(differ):
                atom = int(differ[0])
                raise ValueError(f"{where} does not fit the topology: atom {atom} has atomic number "
                                 f"{elements[atom]} in the topology but {self.atom_types[atom]} in the mapping")

    def to_json(self) -> str:
        """The mapping as a JSON string (no pickle); :meth:`from_json` reads it back exactly."""
        return json.dumps({
            "format": FORMAT_NAME, "version": FORMAT_VERSION,
            "method": self.method, "params": self.params,
            "n_atoms": self.n_atoms, "n_beads": self.n_beads,
            "bead_names": self.bead_names,
            "bead_of_atom": self.bead_of_atom.tolist(),
            "center_atoms": self.center_atoms.tolist(),
            "atom_masses": self.atom_masses.tolist(),
            "atom_types": self.atom_types.tolist(),
            "fine_bonds": self.fine_bonds.tolist(),
        })

    @classmethod
    def from_json(cls, text: str) -> "Mapping":
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"mapping JSON is not valid JSON: {error}") from None
        if not isinstance(spec, dict) or spec.get("format") != FORMAT_NAME:
            raise ValueError(f"mapping JSON is not an {FORMAT_NAME} document")
        if int(spec.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(f"mapping JSON version {spec['version']} is newer than this openmm-cgml "
                             f"understands ({FORMAT_VERSION})")
        try:
            return cls(spec["bead_of_atom"], spec["atom_masses"], spec["atom_types"], spec["fine_bonds"],
                       spec["bead_names"], spec.get("center_atoms"), spec["method"], spec["params"])
        except KeyError as error:
            raise ValueError(f"mapping JSON lacks the field {error.args[0]!r}") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return (f"Mapping(method={self.method!r}, n_atoms={self.n_atoms}, n_beads={self.n_beads}, "
                f"n_molecules={self.n_molecules}, params={self.params})")

    # ------------------------------------------------------------------ bead quantities

    def _weight_matrix(self):
        """(n_beads, n_atoms) weights: mass fractions, or 1 on a bead's center atom."""
        weights = self.atom_masses / self.bead_masses[self.bead_of_atom]
        placed = np.flatnonzero(self.center_atoms >= 0)
        if len(placed):
            on_placed = np.isin(self.bead_of_atom, placed)
            weights[on_placed] = 0.0
            weights[self.center_atoms[placed]] = 1.0
        matrix = sp.csr_matrix((weights, (self.bead_of_atom, np.arange(self.n_atoms))),
                               shape=(self.n_beads, self.n_atoms))
        return matrix.toarray() if self.n_beads * self.n_atoms <= _DENSE_LIMIT else matrix

    def _apply_weights(self, values: np.ndarray) -> np.ndarray:
        if not sp.issparse(self._weights):
            return np.matmul(self._weights, values)
        lead = values.shape[:-2]
        flat = np.moveaxis(values.reshape(-1, self.n_atoms, 3), 1, 0).reshape(self.n_atoms, -1)
        out = np.asarray(self._weights @ flat).reshape(self.n_beads, -1, 3)
        return np.moveaxis(out, 0, 1).reshape(*lead, self.n_beads, 3)

    def _check_atoms(self, array: np.ndarray, name: str) -> None:
        if array.ndim < 2 or array.shape[-2] != self.n_atoms:
            raise ValueError(f"{name} must have shape (..., {self.n_atoms}, 3) for this mapping, got {array.shape}")

    def _plan(self):
        """Spanning forest of the bond graph, rooted near each molecule's centre, by BFS depth."""
        if self._unwrap_plan is None:
            self._unwrap_plan = _spanning_forest(self.n_atoms, self.fine_bonds, self.molecule_of_atom)
        return self._unwrap_plan

    def make_whole(self, atom_positions, box=None) -> np.ndarray:
        """Atom positions (..., n_atoms, 3) nm with every molecule made whole.

        Each atom is placed at the minimum image of its bond partner nearer the
        molecule's centre (walking the bond graph), so no bond spans the box.
        ``box`` is None (no change), (3, 3) or (..., 3, 3) box vectors as rows, nm.
        """
        positions = strip_array(atom_positions, NM, "atom_positions")
        self._check_atoms(positions, "atom_positions")
        if box is None:
            return positions
        return self._make_whole(positions, self._box(box))

    @staticmethod
    def _box(box) -> np.ndarray:
        """Box vectors as a float64 array (..., 3, 3) nm from an array, a quantity or OpenMM's 3 Vec3 quantities."""
        if u.is_quantity(box):
            box = box.value_in_unit(NM)
        if isinstance(box, (list, tuple)):
            box = [v.value_in_unit(NM) if u.is_quantity(v) else v for v in box]
            box = [tuple(v) if isinstance(v, openmm.Vec3) else v for v in box]
        box = np.asarray(box, dtype=np.float64)
        if box.shape[-2:] != (3, 3):
            raise ValueError(f"box must be box vectors of shape (3, 3) or (..., 3, 3) nm, got {box.shape}")
        if not np.all(np.isfinite(box)) or np.any(np.diagonal(box, axis1=-2, axis2=-1) <= 0):
            raise ValueError("box vectors must be finite with positive diagonal (a_x, b_y, c_z)")
        return box

    def _make_whole(self, positions: np.ndarray, box: np.ndarray) -> np.ndarray:
        child, parent, levels = self._plan()
        if len(child) == 0:
            return positions
        whole = positions.copy()
        bond = minimum_image(positions[..., child, :] - positions[..., parent, :], box)
        for start, stop in levels:   # parents of a level are all placed by earlier levels
            whole[..., child[start:stop], :] = whole[..., parent[start:stop], :] + bond[..., start:stop, :]
        return whole

    def bead_positions(self, atom_positions, box=None) -> np.ndarray:
        """Bead positions (..., n_beads, 3) nm from atom positions (..., n_atoms, 3) nm.

        Mass-weighted centres (or center atoms), computed for all frames at
        once with one weight-matrix product. With a periodic ``box`` ((3, 3)
        or (..., 3, 3) nm, vectors as rows) molecules are made whole first.
        """
        positions = strip_array(atom_positions, NM, "atom_positions")
        self._check_atoms(positions, "atom_positions")
        if box is None:
            return self._apply_weights(positions)
        box = self._box(box)
        lead = positions.shape[:-2]
        if positions.ndim == 3 and len(positions) > _BLOCK_FRAMES:
            # blocks of frames stay in cache through the unwrap passes
            boxes = np.broadcast_to(box, (*lead, 3, 3)) if box.ndim == 3 else box
            return np.concatenate([
                self._apply_weights(self._make_whole(positions[i:i + _BLOCK_FRAMES],
                                                     boxes[i:i + _BLOCK_FRAMES] if boxes.ndim == 3 else boxes))
                for i in range(0, len(positions), _BLOCK_FRAMES)])
        return self._apply_weights(self._make_whole(positions, box))

    def bead_velocities(self, atom_velocities) -> np.ndarray:
        """Bead velocities (..., n_beads, 3) nm/ps: the same weights as the positions."""
        velocities = strip_array(atom_velocities, NM / u.picosecond, "atom_velocities")
        self._check_atoms(velocities, "atom_velocities")
        return self._apply_weights(velocities)

    # ------------------------------------------------------------------ OpenMM objects

    def bead_topology(self, box_vectors=None) -> app.Topology:
        """A Topology of beads: one chain per molecule, one residue (holding one atom) per bead.

        Bead atoms have no element (their masses live in :meth:`bead_system`);
        coarse bonds are bonds. ``box_vectors`` (3x3 nm or Vec3 quantities) sets the periodic box.
        """
        topology = app.Topology()
        chains = [topology.addChain(id=str(m)) for m in range(self.n_molecules)]
        atoms = []
        for bead, name in enumerate(self.bead_names):
            residue = topology.addResidue(name, chains[self.molecule_of_bead[bead]], id=str(bead + 1))
            atoms.append(topology.addAtom(name, None, residue, id=str(bead + 1)))
        for i, j in self.coarse_bonds.tolist():
            topology.addBond(atoms[i], atoms[j])
        if box_vectors is not None:
            topology.setPeriodicBoxVectors(self._box(box_vectors) * NM)
        return topology

    def bead_system(self, box_vectors=None) -> openmm.System:
        """An ``openmm.System`` of bead particles with the bead masses (never zero) and no interactions.

        With ``box_vectors`` (3x3 nm or Vec3 quantities) the System is periodic:
        it gets that default box and a :func:`periodic_marker` (a force with
        no terms), because OpenMM calls a System periodic only if a force is.
        """
        system = openmm.System()
        for mass in self.bead_masses:
            system.addParticle(float(mass) * AMU)
        if box_vectors is not None:
            a, b, c = self._box(box_vectors)
            system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*v) * NM for v in (a, b, c)))
            system.addForce(periodic_marker())
        return system


def periodic_marker() -> openmm.Force:
    """A force with no terms that makes ``System.usesPeriodicBoundaryConditions()`` true.

    OpenMM calls a System periodic only if one of its forces is; a bead
    System has no forces, so without this the integrator (and Simulation's
    reporters) would treat a periodic box as absent. A System you build
    yourself for beads in a box needs one too. It costs nothing per step.
    """
    marker = openmm.CustomBondForce("0")
    marker.setUsesPeriodicBoundaryConditions(True)
    marker.setName("cgml periodic box")
    return marker


def _partition_molecule(n_atoms: int, edges: np.ndarray, n_parts: int, options) -> np.ndarray:
    """METIS parts (0..n-1, numbered by first atom, each connected) of one molecule's atoms."""
    import pymetis

    if n_parts <= 1:
        return np.zeros(n_atoms, dtype=np.int64)
    if n_parts >= n_atoms:
        return np.arange(n_atoms, dtype=np.int64)
    adjacency = _adjacency(n_atoms, edges)
    result = pymetis.part_graph(n_parts, xadj=adjacency.indptr.astype(np.int64),
                                adjncy=adjacency.indices.astype(np.int64), options=options)
    return _renumber_by_first_atom(_repair_connectivity(adjacency, np.asarray(result.vertex_part, dtype=np.int64)))


def _share(total: int, sizes: np.ndarray) -> np.ndarray:
    """Split ``total`` beads over molecules in proportion to size: at least one, at most size, each."""
    ideal = total * sizes / sizes.sum()
    parts = np.clip(np.floor(ideal).astype(np.int64), 1, sizes)
    while parts.sum() < total:
        room = np.flatnonzero(parts < sizes)
        parts[room[np.argmax((ideal - parts)[room])]] += 1
    while parts.sum() > total:
        room = np.flatnonzero(parts > 1)
        parts[room[np.argmax((parts - ideal)[room])]] -= 1
    return parts


def _names_within_molecules(bead: np.ndarray, molecule: np.ndarray) -> list[str]:
    """Bead names B0, B1, ... counted within each molecule."""
    n_beads = int(bead.max()) + 1
    molecule_of_bead = np.zeros(n_beads, dtype=np.int64)
    molecule_of_bead[bead] = molecule
    names, count = [], {}
    for mol in molecule_of_bead.tolist():
        names.append(f"B{count.get(mol, 0)}")
        count[mol] = count.get(mol, 0) + 1
    return names


def _spanning_forest(n_atoms: int, bonds: np.ndarray, molecule: np.ndarray):
    """BFS spanning forest of the bond graph, one tree per molecule rooted at its centre.

    Returns (child, parent, levels): child/parent atom pairs ordered by depth,
    and (start, stop) slices of each depth. Roots are found by a double
    sweep (farthest atom from the farthest atom; the middle of that path),
    which keeps the trees shallow so unwrapping takes few vectorised steps.
    """
    n_mol = int(molecule.max()) + 1
    first = np.zeros(n_mol, dtype=np.int64)
    first[molecule[::-1]] = np.arange(n_atoms)[::-1]

    def sweep(roots):
        # one BFS over all molecules at once from a virtual atom bonded to every root
        extra = np.stack([np.full(n_mol, n_atoms), roots], axis=1)
        graph = _adjacency(n_atoms + 1, np.concatenate([bonds, extra]))
        order, predecessors = breadth_first_order(graph, n_atoms, directed=False, return_predecessors=True)
        depth = np.zeros(n_atoms + 1, dtype=np.int64)
        for atom in order[1:]:
            depth[atom] = depth[predecessors[atom]] + 1
        return order[1:], predecessors, depth[:n_atoms] - 1

    def farthest(depth):
        best = np.full(n_mol, -1)
        far = np.lexsort((np.arange(n_atoms), depth))   # by depth, then index
        best[molecule[far]] = far                         # last write per molecule = deepest atom
        return best

    _, _, depth = sweep(first)
    ends = farthest(depth)
    _, predecessors, depth = sweep(ends)
    other = farthest(depth)
    roots = other.copy()
    for mol in range(n_mol):    # walk half-way back along the longest path
        for _ in range(depth[other[mol]] // 2):
            roots[mol] = predecessors[roots[mol]]
    order, predecessors, depth = sweep(roots)
    children = order[depth[order] > 0]
    children = children[np.argsort(depth[children], kind="stable")]
    parents = predecessors[children].astype(np.int64)
    child_depth = depth[children]
    boundaries = np.flatnonzero(np.diff(child_depth)) + 1
    starts = np.concatenate([[0], boundaries]).astype(int)
    stops = np.concatenate([boundaries, [len(children)]]).astype(int)
    levels = list(zip(starts.tolist(), stops.tolist())) if len(children) else []
    return children.astype(np.int64), parents, levels


# ----------------------------------------------------------------------------- picture

def draw_mapping(mapping: Mapping, atom_positions, out, box=None, title: str | None = None) -> Path:
    """Draw ``mapping`` on one conformation and save it as a PNG.

    Atoms are coloured by bead and projected on the molecule's two principal
    axes; atomic bonds are thin lines (grey where they cross beads), bead
    centres are large outlined discs joined by the coarse bonds (dashed).
    ``atom_positions`` (n_atoms, 3) nm; ``box`` makes molecules whole first.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = mapping.make_whole(atom_positions, box)
    if positions.ndim != 2:
        raise ValueError(f"atom_positions must be one conformation (n_atoms, 3), got {positions.shape}")
    beads = mapping.bead_positions(positions)
    centre = positions.mean(axis=0)
    # principal axes: the view that shows the molecule spread out most
    _, _, axes = np.linalg.svd(positions - centre, full_matrices=False)
    project = axes[:2].T if len(axes) >= 2 else np.eye(3)[:, :2]
    atoms_2d = (positions - centre) @ project
    beads_2d = (beads - centre) @ project

    # neighbouring beads get well separated colours
    palette = plt.get_cmap("tab20")(np.arange(20))
    order = (np.arange(mapping.n_beads) * 7) % 20
    bead_colours = palette[order]
    atom_colours = bead_colours[mapping.bead_of_atom]

    figure, ax = plt.subplots(figsize=(7, 6), dpi=120)
    for i, j in mapping.fine_bonds.tolist():
        same = mapping.bead_of_atom[i] == mapping.bead_of_atom[j]
        ax.plot(*atoms_2d[[i, j]].T, color=atom_colours[i] if same else "0.6", lw=1.5 if same else 0.8, zorder=1)
    ax.scatter(*atoms_2d.T, s=18, c=atom_colours, edgecolors="none", zorder=2)
    for i, j in mapping.coarse_bonds.tolist():
        ax.plot(*beads_2d[[i, j]].T, color="black", lw=1.2, ls="--", zorder=3)
    ax.scatter(*beads_2d.T, s=160, c=bead_colours, edgecolors="black", linewidths=1.5, alpha=0.85, zorder=4)
    if mapping.n_beads <= 60:
        for b, (x, y) in enumerate(beads_2d):
            ax.annotate(mapping.bead_names[b], (x, y), fontsize=7, ha="center", va="center", zorder=5)
    ax.set_aspect("equal")
    ax.set_xlabel("principal axis 1 (nm)")
    ax.set_ylabel("principal axis 2 (nm)")
    ax.set_title(title or f"{mapping.method} mapping: {mapping.n_atoms} atoms -> {mapping.n_beads} beads "
                          f"({mapping.n_molecules} molecule{'s' if mapping.n_molecules > 1 else ''})")
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out


def load_structure(source: str):
    """(topology, positions nm (n_atoms, 3), masses amu, atom_types, box or None) from a PDB file,
    a fine trajectory HDF5 file (first frame) or a reference system name / YAML file."""
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".pdb", ".cif", ".pdbx"):
        if not path.is_file():
            raise FileNotFoundError(f"structure file {path} does not exist")
        try:
            structure = app.PDBFile(str(path)) if suffix == ".pdb" else app.PDBxFile(str(path))
        except Exception as error:
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
        return topology, positions, masses, None, (None if box is None else Mapping._box(box))
    if suffix in (".h5", ".hdf5"):
        from openmm_cgml.trajectory import FineTrajectory

        with FineTrajectory(path) as trajectory:
            positions = np.asarray(trajectory.positions[0], dtype=np.float64)
            return (trajectory.topology, positions, np.asarray(trajectory.masses),
                    np.asarray(trajectory.atom_types), trajectory.box_vectors(0))
    from openmm_cgml import systems

    reference = systems.load(source)
    positions = strip_array(reference.positions, NM, "positions")
    box = reference.system.getDefaultPeriodicBoxVectors() if reference.system.usesPeriodicBoundaryConditions() else None
    return (reference.topology, positions, reference.system, np.asarray(reference.atom_types),
            None if box is None else Mapping._box(box))


# ----------------------------------------------------------------------------- CLI: cgml map-image

def add_mapping_arguments(parser: argparse.ArgumentParser) -> None:
    """The mapping options shared by ``cgml map-image`` and ``cgml coarse-grain``."""
    parser.add_argument("--mapping", default="metis",
                        help="metis (graph partitioning), residue (one bead per residue) or a mapping file "
                             "(JSON/YAML, see docs/coarse_graining.md); default metis")
    parser.add_argument("--atoms-per-bead", type=float, default=None,
                        help="METIS resolution: atoms per bead (default 4 unless --n-beads is given)")
    parser.add_argument("--n-beads", type=int, default=None, help="METIS resolution: total number of beads")
    parser.add_argument("--center", choices=("com", "ca"), default="com",
                        help="residue mapping: bead at the centre of mass or at the alpha carbon")
    parser.add_argument("--seed", type=int, default=0, help="random seed: METIS partitioning (same seed, same mapping) and, for coarse-grain, the split")


def mapping_options(args) -> tuple[str, dict]:
    """(method, params) for :meth:`Mapping.build` from the parsed mapping arguments."""
    if args.mapping == "metis":
        return "metis", {"atoms_per_bead": args.atoms_per_bead, "n_beads": args.n_beads, "seed": args.seed}
    if args.mapping == "residue":
        return "residue", {"center": args.center}
    return args.mapping, {}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("structure", help="a PDB/PDBx file, a fine trajectory (.h5) or a reference system name/YAML")
    add_mapping_arguments(parser)
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--save-mapping", default=None, help="also write the mapping as JSON to this file")


def run(args) -> int:
    topology, positions, masses, atom_types, box = load_structure(args.structure)
    method, params = mapping_options(args)
    mapping = Mapping.build(method, topology, masses, atom_types=atom_types, **params)
    out = draw_mapping(mapping, positions, args.out, box=box)
    if args.save_mapping:
        Path(args.save_mapping).write_text(mapping.to_json())
    print(f"{mapping.method} mapping: {mapping.n_atoms} atoms -> {mapping.n_beads} beads; wrote {out}")
    return 0
