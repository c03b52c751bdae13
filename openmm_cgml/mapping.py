"""Atom-to-bead mappings: which atoms make up each coarse-grained bead, and the rules that make them.

A :class:`Mapping` is made by a *mapping rule* found by name in a registry (as openmm-ml
finds potentials): ``Mapping.build(name, topology, masses, **params)``. Built in are

* ``"metis"`` (:meth:`Mapping.metis`): METIS partitions every molecule's bond graph into
  connected beads of about ``atoms_per_bead`` atoms, single-atom ions their own bead
  (the preprocessing of Fu et al., TMLR 2023);
* ``"residue"`` (:meth:`Mapping.by_residue`): one bead per residue, at its centre of mass or alpha carbon;
* ``"backbone"`` (:mod:`openmm_cgml.backbone`): beads on N, CA, C (and CB, O) of amino acids, exact phi/psi;
* ``"file"`` (:meth:`Mapping.from_file`): a user mapping (JSON or YAML, ``docs/coarse_graining.md``);
  a name that is no rule is taken to be such a file.

More rules come from :func:`register_mapping_rule` or from entry points in the group
``openmm_cgml.mappings`` (name -> ``rule(topology, masses, atom_types=None, **params) -> Mapping``).

A mapping gives bead positions and velocities (mass-weighted centres, molecules made whole
across periodic boundaries first), bead masses, coarse bonds (atomic bonds that cross beads),
a bead ``openmm.app.Topology`` and an ``openmm.System`` of bead particles. It is saved as JSON
only (``to_json``/``from_json``), never pickled, so it can travel inside datasets and exported
models. Graph algorithms live in :mod:`openmm_cgml.bond_graph`, the picture in
:mod:`openmm_cgml.mapping_image`. Units: nm, nm/ps and amu inside; quantities are accepted at
the public boundary through :mod:`openmm_cgml.units`.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Callable

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import scipy.sparse as sp

from openmm_cgml import structure
from openmm_cgml.backbone import backbone_rule
from openmm_cgml.bond_graph import (
    bead_molecules,
    bond_difference,
    coarse_bonds,
    metis_beads,
    molecules,
    spanning_forest,
)
from openmm_cgml.geometry import minimum_image
from openmm_cgml.units import AMU, NM, strip_array, strip_box, whole_array, whole_number

__all__ = ["Mapping", "periodic_marker", "mapping_options", "register_mapping_rule", "mapping_rules",
           "MAPPING_RULE_GROUP"]

FORMAT_NAME = "openmm-cgml-mapping"
FORMAT_VERSION = 1
MAPPING_RULE_GROUP = "openmm_cgml.mappings"   # entry-point group of mapping rules from other packages
# Above this many weight-matrix entries the centre computation uses a sparse matrix.
_DENSE_LIMIT = 4_000_000
# Frames made whole at a time (keeps the working set in cache).
_BLOCK_FRAMES = 128


# ----------------------------------------------------------------------------- Mapping

def _bead_fields(bead_names, center_atoms, bead_of_atom: np.ndarray, atom_masses: np.ndarray, n_beads: int):
    """Checked ``(bead_names, center_atoms, bead_masses)`` of a mapping (defaults: B0.., centres of mass)."""
    names = [f"B{i}" for i in range(n_beads)] if bead_names is None else [str(name) for name in bead_names]
    if len(names) != n_beads:
        raise ValueError(f"{len(names)} bead names for {n_beads} beads")
    centers = (np.full(n_beads, -1, dtype=np.int64) if center_atoms is None
               else whole_array(center_atoms, "center_atoms"))
    _check_center_atoms(centers, bead_of_atom, n_beads)
    masses = np.bincount(bead_of_atom, weights=atom_masses, minlength=n_beads)
    if np.any(masses <= 0):
        bad = int(np.flatnonzero(masses <= 0)[0])
        raise ValueError(f"bead {bad} ({names[bad]}) has zero mass: its atoms are all massless")
    return names, centers, masses


class Mapping:
    """An assignment of every atom to one bead, with what follows from it.

    Parameters
    ----------
    bead_of_atom : array-like of int, (n_atoms,)
        Beads numbered 0..n_beads-1 without gaps.
    atom_masses : array-like, (n_atoms,)
        Masses in amu.
    atom_types, fine_bonds, bead_names, center_atoms : optional
        As the attributes below (defaults: zeros, no bonds, B0.., centres of mass).
    method, params : str, dict
        How the mapping was made.

    Attributes
    ----------
    bead_of_atom : (n_atoms,) int64, beads numbered 0..n_beads-1 (molecule by molecule)
    bead_names : list of str, one per bead
    atom_masses : (n_atoms,) float64, amu
    atom_types : (n_atoms,) int64, atomic numbers (or bead types of a coarse polymer)
    fine_bonds : (B, 2) int64, atom index pairs, i < j
    center_atoms, atom_weights : (n_beads,) int64, the atom that places each bead (-1: the centre of mass);
        (n_atoms,) float64, each atom's weight in its bead's position (mass fraction, or 1 on a center atom)
    method, params : how the mapping was made (``Mapping.build(method, topology, masses, **params)`` re-makes it)
    bead_masses : (n_beads,) float64, amu, the sum of the bead's atom masses (never zero)
    coarse_bonds : (C, 2) int64, bead pairs joined by at least one atomic bond
    molecule_of_atom, molecule_of_bead : molecule (connected component) indices
    """

    def __init__(self, bead_of_atom, atom_masses, atom_types=None, fine_bonds=None, bead_names=None,
                 center_atoms=None, method: str = "custom", params: dict | None = None):
        self.bead_of_atom = whole_array(bead_of_atom, "bead_of_atom")
        self.n_atoms = int(self.bead_of_atom.shape[0])
        if self.n_atoms == 0:
            raise ValueError("a mapping needs at least one atom")
        self.atom_masses = strip_array(atom_masses, AMU, "atom_masses", shape_tail=None).reshape(-1)
        self.atom_types = (np.zeros(self.n_atoms, dtype=np.int64) if atom_types is None
                           else whole_array(atom_types, "atom_types"))
        self.fine_bonds = (np.zeros((0, 2), dtype=np.int64) if fine_bonds is None
                           else whole_array(fine_bonds, "fine_bonds", width=2))
        self.method, self.params = method, dict(params or {})
        self.n_beads = _check_arrays(self.bead_of_atom, self.atom_masses, self.atom_types, self.fine_bonds)
        self.bead_names, self.center_atoms, self.bead_masses = _bead_fields(
            bead_names, center_atoms, self.bead_of_atom, self.atom_masses, self.n_beads)
        self.molecule_of_atom = molecules(self.n_atoms, self.fine_bonds)
        self.n_molecules = int(self.molecule_of_atom.max()) + 1
        self.molecule_of_bead = bead_molecules(self.bead_of_atom, self.molecule_of_atom, self.bead_names)
        self.coarse_bonds = coarse_bonds(self.bead_of_atom, self.fine_bonds)
        self.atom_weights = _atom_weights(self.bead_of_atom, self.atom_masses, self.bead_masses, self.center_atoms)
        self._weights = _weight_matrix(self.bead_of_atom, self.atom_weights, self.n_beads)  # bead = weights @ atoms
        self._unwrap_plan = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def metis(cls, topology: app.Topology, masses, atoms_per_bead: float | None = None,
              n_beads: int | None = None, seed: int = 0, atom_types=None) -> "Mapping":
        """Partition each molecule's bond graph with METIS (:func:`openmm_cgml.bond_graph.metis_beads`).

        Give either ``atoms_per_bead`` (a molecule of m atoms gets
        ``round(m / atoms_per_bead)`` beads, at least one) or ``n_beads`` in
        total (shared among molecules in proportion to their size, at least
        one each). Beads are connected sets of atoms; single atoms (ions) are
        their own bead. The same ``seed`` gives the same mapping. ``masses``
        are amu (an array, a quantity or an ``openmm.System``).
        """
        n_atoms = structure.topology_atoms(topology)
        atom_masses = structure.atom_masses(masses, n_atoms)
        bonds = structure.topology_bonds(topology)
        bead, names, params = metis_beads(n_atoms, bonds, atoms_per_bead, n_beads, seed)
        types, params["atom_types_from"] = structure.atom_types_for(topology, atom_types)
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
        atom_masses = structure.atom_masses(masses, structure.topology_atoms(topology))
        bead, names, centers = _residue_beads(topology, center)
        types, source = structure.atom_types_for(topology, atom_types)
        return cls(bead, atom_masses, types, structure.topology_bonds(topology), names, centers,
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
        path, n_atoms = Path(path), structure.topology_atoms(topology)
        text, spec = _read_mapping_file(path)
        if isinstance(spec, dict) and spec.get("format") == FORMAT_NAME:
            try:
                mapping = cls.from_json(text)
            except ValueError as error:
                raise ValueError(f"mapping file {path}: {error}") from None
            mapping.check_fits(topology, where=f"mapping file {path}")
            return mapping
        bead, names, centers = _beads_from_spec(spec, n_atoms, f"mapping file {path}")
        types, source = structure.atom_types_for(topology, atom_types)
        try:
            return cls(bead, structure.atom_masses(masses, n_atoms), types, structure.topology_bonds(topology),
                       names, centers, method="file", params={"path": str(path), "atom_types_from": source})
        except ValueError as error:
            raise ValueError(f"mapping file {path}: {error}") from None

    @classmethod
    def build(cls, method: str, topology: app.Topology, masses, atom_types=None, **params) -> "Mapping":
        """Make a mapping with the rule named ``method`` (``"metis"``, ``"residue"``, ``"file"``, a
        registered or entry-point rule) or from the mapping file at path ``method``.

        ``Mapping.build(m.method, topology, masses, **m.params)`` re-makes a
        mapping the same way for another molecule.
        """
        if params.pop("atom_types_from", None) == "given" and atom_types is None:
            raise ValueError(f"this {method} mapping was made with given atom types (not elements); pass atom_types")
        rule = _find_rule(method)
        if rule is None:
            if not Path(method).exists():
                raise FileNotFoundError(f"mapping file {method} does not exist, and no mapping rule has that name "
                                        f"(rules: {', '.join(mapping_rules())})")
            return cls.from_file(method, topology, masses, atom_types=atom_types)
        try:   # the parameters the rule takes, checked before it runs
            inspect.signature(rule).bind(topology, masses, atom_types=atom_types, **params)
        except TypeError as error:
            raise ValueError(f"mapping rule {method!r}: {error}") from None
        return rule(topology, masses, atom_types=atom_types, **params)

    # ------------------------------------------------------------------ checks and JSON

    def check_fits(self, topology: app.Topology, where: str = "mapping") -> None:
        """Raise ``ValueError`` naming the mismatch if ``topology`` is not the molecule(s) this mapping is for."""
        n_atoms = structure.topology_atoms(topology)
        if n_atoms != self.n_atoms:
            raise ValueError(f"{where} is for {self.n_atoms} atoms but the topology has {n_atoms} atoms")
        difference = bond_difference(self.fine_bonds, structure.topology_bonds(topology))
        if difference:
            raise ValueError(f"{where} does not fit the topology: the bond graphs differ ({difference})")
        if self.params.get("atom_types_from") == "element":
            elements = structure.element_types(topology)
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
        """The mapping :meth:`to_json` wrote; ``ValueError`` for anything else."""
        try:
            spec = json.loads(text)
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"mapping JSON is not valid JSON: {error}") from None
        if not isinstance(spec, dict) or spec.get("format") != FORMAT_NAME:
            raise ValueError(f"mapping JSON is not an {FORMAT_NAME} document")
        if whole_number(spec.get("version", 0), "mapping JSON version") > FORMAT_VERSION:
            raise ValueError(f"mapping JSON version {spec['version']} is newer than this openmm-cgml "
                             f"understands ({FORMAT_VERSION})")
        try:
            return cls(spec["bead_of_atom"], spec["atom_masses"], spec["atom_types"], spec["fine_bonds"],
                       spec["bead_names"], spec.get("center_atoms"), spec["method"], spec["params"])
        except KeyError as error:
            raise ValueError(f"mapping JSON lacks the field {error.args[0]!r}") from None
        except TypeError as error:   # e.g. params that are not a mapping, bead_names that are not a list
            raise ValueError(f"mapping JSON has a field of the wrong type: {error}") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return (f"Mapping(method={self.method!r}, n_atoms={self.n_atoms}, n_beads={self.n_beads}, "
                f"n_molecules={self.n_molecules}, params={self.params})")

    # ------------------------------------------------------------------ bead quantities

    def _apply_weights(self, values: np.ndarray) -> np.ndarray:
        if not sp.issparse(self._weights):
            return np.matmul(self._weights, values)
        lead = values.shape[:-2]
        flat = np.moveaxis(values.reshape(-1, self.n_atoms, 3), 1, 0).reshape(self.n_atoms, -1)
        out = np.asarray(self._weights @ flat).reshape(self.n_beads, -1, 3)
        return np.moveaxis(out, 0, 1).reshape(*lead, self.n_beads, 3)

    def _checked_atoms(self, values, unit, name: str) -> np.ndarray:
        array = strip_array(values, unit, name)
        if array.ndim < 2 or array.shape[-2] != self.n_atoms:
            raise ValueError(f"{name} must have shape (..., {self.n_atoms}, 3) for this mapping, got {array.shape}")
        return array

    def make_whole(self, atom_positions, box=None) -> np.ndarray:
        """Atom positions (..., n_atoms, 3) nm with every molecule made whole.

        Each atom is placed at the minimum image of its bond partner nearer the
        molecule's centre (walking the bond graph), so no bond spans the box.
        ``box`` is None (no change), (3, 3) or (..., 3, 3) box vectors as rows, nm.
        """
        positions = self._checked_atoms(atom_positions, NM, "atom_positions")
        if box is None:
            return positions
        return self._make_whole(positions, strip_box(box))

    def _make_whole(self, positions: np.ndarray, box: np.ndarray) -> np.ndarray:
        if self._unwrap_plan is None:   # trees rooted near each molecule's centre, by BFS depth
            self._unwrap_plan = spanning_forest(self.n_atoms, self.fine_bonds, self.molecule_of_atom)
        child, parent, levels = self._unwrap_plan
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
        positions = self._checked_atoms(atom_positions, NM, "atom_positions")
        if box is None:
            return self._apply_weights(positions)
        box = strip_box(box)
        if positions.ndim == 3 and len(positions) > _BLOCK_FRAMES:
            # blocks of frames stay in cache through the unwrap passes
            boxes = np.broadcast_to(box, (*positions.shape[:-2], 3, 3)) if box.ndim == 3 else box
            return np.concatenate([
                self._apply_weights(self._make_whole(positions[i:i + _BLOCK_FRAMES],
                                                     boxes[i:i + _BLOCK_FRAMES] if boxes.ndim == 3 else boxes))
                for i in range(0, len(positions), _BLOCK_FRAMES)])
        return self._apply_weights(self._make_whole(positions, box))

    def bead_velocities(self, atom_velocities) -> np.ndarray:
        """Bead velocities (..., n_beads, 3) nm/ps: the same weights as the positions."""
        return self._apply_weights(self._checked_atoms(atom_velocities, NM / u.picosecond, "atom_velocities"))

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
            topology.setPeriodicBoxVectors(strip_box(box_vectors) * NM)
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
            a, b, c = strip_box(box_vectors)
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


# ----------------------------------------------------------------------------- the mapping-rule registry

MappingRule = Callable[..., Mapping]   # rule(topology, masses, atom_types=None, **params) -> Mapping


def _metis_rule(topology, masses, atom_types=None, atoms_per_bead=None, n_beads=None, seed=0) -> Mapping:
    if atoms_per_bead is None and n_beads is None:
        atoms_per_bead = 4
    return Mapping.metis(topology, masses, atoms_per_bead=atoms_per_bead, n_beads=n_beads, seed=seed,
                         atom_types=atom_types)


def _residue_rule(topology, masses, atom_types=None, center="com", **_ignored) -> Mapping:
    return Mapping.by_residue(topology, masses, center=center, atom_types=atom_types)


def _file_rule(topology, masses, atom_types=None, *, path, **_ignored) -> Mapping:
    return Mapping.from_file(path, topology, masses, atom_types=atom_types)


_RULES: dict[str, MappingRule] = {"metis": _metis_rule, "residue": _residue_rule, "file": _file_rule,
                                  "backbone": backbone_rule}


def register_mapping_rule(name: str, rule: MappingRule) -> None:
    """Make ``Mapping.build(name, topology, masses, atom_types=..., **params)`` call ``rule``.

    Parameters
    ----------
    name : str
        The rule's name, stored as a mapping's ``method`` by the rule (so that
        :meth:`Mapping.build` can re-make it for another molecule).
    rule : callable
        ``rule(topology, masses, atom_types=None, **params) -> Mapping``.
    """
    _RULES[str(name)] = rule


def mapping_rules() -> list[str]:
    """Names of the mapping rules: built in, registered and declared as entry points.

    Returns
    -------
    list of str
    """
    from importlib.metadata import entry_points

    return sorted(set(_RULES) | {point.name for point in entry_points(group=MAPPING_RULE_GROUP)})


def _find_rule(name: str) -> MappingRule | None:
    """The rule called ``name``, loading an entry point on first use; None for a mapping file path."""
    if name in _RULES:
        return _RULES[name]
    if Path(name).is_file():
        return None
    from importlib.metadata import entry_points

    for point in entry_points(group=MAPPING_RULE_GROUP, name=name):
        _RULES[name] = point.load()
        return _RULES[name]
    return None


def mapping_options(mapping: str = "metis", atoms_per_bead: float | None = None, n_beads: int | None = None,
                    center: str = "com", seed: int = 0, extra: list[str] | tuple = ()) -> tuple[str, dict]:
    """``(method, params)`` for :meth:`Mapping.build` from the user's mapping choices.

    Parameters
    ----------
    mapping : str
        ``"metis"``, ``"residue"``, another rule's name or a mapping file path.
    atoms_per_bead, n_beads : optional
        METIS resolution (``Mapping.build`` uses 4 atoms per bead when neither is given).
    center : {"com", "ca"}
        Residue rule: bead at the centre of mass or at the alpha carbon.
    seed : int
        METIS seed.
    extra : list of str
        Backbone rule: further beads per amino acid, ``["CB"]``, ``["O"]`` or both.

    Returns
    -------
    tuple
        ``(method, params)``; only the parameters the chosen rule takes.
    """
    params = {"metis": {"atoms_per_bead": atoms_per_bead, "n_beads": n_beads, "seed": seed},
              "residue": {"center": center}, "backbone": {"extra": list(extra)}}
    return mapping, params.get(mapping, {})


# ----------------------------------------------------------------------------- construction helpers

def _residue_beads(topology: app.Topology, center: str) -> tuple[np.ndarray, list[str], list[int]]:
    """(bead of every atom, residue names, center atoms) with one bead per non-empty residue."""
    bead = np.empty(topology.getNumAtoms(), dtype=np.int64)
    names, centers = [], []
    for residue in topology.residues():
        atoms = [atom.index for atom in residue.atoms()]
        if not atoms:
            continue
        bead[atoms] = len(names)
        names.append(residue.name)
        ca = [atom.index for atom in residue.atoms() if atom.name == "CA"]
        centers.append(ca[0] if center == "ca" and ca else -1)
    return bead, names, centers


def _read_mapping_file(path: Path):
    """(text, parsed content) of a JSON or YAML mapping file."""
    if path.is_dir():
        raise ValueError(f"mapping file {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"mapping file {path} does not exist")
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return text, yaml.safe_load(text)
        return text, json.loads(text)
    except Exception as error:
        raise ValueError(f"mapping file {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: "
                         f"{error}") from None


def _beads_from_spec(spec, n_atoms: int, where: str) -> tuple[np.ndarray, list[str], list[int]]:
    """(bead of every atom, bead names, center atoms) from a user mapping ``{beads: [...], n_atoms}``."""
    if not isinstance(spec, dict) or not isinstance(spec.get("beads"), list) or not spec["beads"]:
        raise ValueError(f"{where} must contain a non-empty list 'beads' of {{name, atoms[, center_atom]}} entries")
    if "n_atoms" in spec and whole_number(spec["n_atoms"], f"{where}: n_atoms") != n_atoms:
        raise ValueError(f"{where} is for {spec['n_atoms']} atoms but the topology has {n_atoms}")
    bead = np.full(n_atoms, -1, dtype=np.int64)
    names, centers = [], []
    for index, entry in enumerate(spec["beads"]):
        if not isinstance(entry, dict) or "atoms" not in entry:
            raise ValueError(f"{where}: bead {index} has no 'atoms' list")
        atoms = entry["atoms"]
        if not isinstance(atoms, list) or not atoms or not all(isinstance(a, int) for a in atoms):
            raise ValueError(f"{where}: bead {index} 'atoms' must be a non-empty list of integers")
        atoms = np.asarray(atoms, dtype=np.int64)
        outside = atoms[(atoms < 0) | (atoms >= n_atoms)]
        if len(outside):
            raise ValueError(f"{where}: bead {index} refers to atom {int(outside[0])} but the "
                             f"topology has atoms 0..{n_atoms - 1}")
        taken = atoms[bead[atoms] >= 0]
        if len(taken) or len(np.unique(atoms)) != len(atoms):
            atom = int(taken[0]) if len(taken) else int(atoms[np.argmax(np.bincount(atoms))])
            raise ValueError(f"{where}: atom {atom} is in more than one bead")
        bead[atoms] = index
        names.append(str(entry.get("name", f"B{index}")))
        center_atom = entry.get("center_atom", -1)
        if center_atom != -1 and center_atom not in atoms.tolist():
            raise ValueError(f"{where}: bead {index} center_atom {center_atom} is not one of its atoms")
        centers.append(int(center_atom))
    missing = np.flatnonzero(bead < 0)
    if len(missing):
        raise ValueError(f"{where} leaves {len(missing)} atoms without a bead "
                         f"(first: atom {int(missing[0])}); the topology has {n_atoms} atoms")
    return bead, names, centers


# ----------------------------------------------------------------------------- what follows from the beads

def _check_arrays(bead_of_atom: np.ndarray, atom_masses: np.ndarray, atom_types: np.ndarray,
                  fine_bonds: np.ndarray) -> int:
    """The number of beads, after checking the per-atom arrays agree and beads are numbered without gaps."""
    n_atoms = len(bead_of_atom)
    for name, array in (("atom_masses", atom_masses), ("atom_types", atom_types)):
        if array.shape[0] != n_atoms:
            raise ValueError(f"{name} has {array.shape[0]} entries but bead_of_atom has {n_atoms}")
    if np.any(atom_masses < 0):
        raise ValueError(f"atom_masses must be >= 0 amu; atom {int(np.argmin(atom_masses))} has {atom_masses.min()}")
    if len(fine_bonds) and (fine_bonds.min() < 0 or fine_bonds.max() >= n_atoms):
        raise ValueError(f"fine_bonds refer to atoms outside 0..{n_atoms - 1}")
    labels = np.unique(bead_of_atom)
    if labels[0] != 0 or labels[-1] != len(labels) - 1:
        raise ValueError(f"beads must be numbered 0..n_beads-1 without gaps, got labels {labels[:5]}...")
    return int(labels.shape[0])


def _check_center_atoms(center_atoms: np.ndarray, bead_of_atom: np.ndarray, n_beads: int) -> None:
    if center_atoms.shape[0] != n_beads:
        raise ValueError(f"center_atoms has {center_atoms.shape[0]} entries for {n_beads} beads")
    placed = center_atoms >= 0
    if np.any(center_atoms < -1) or np.any(center_atoms >= len(bead_of_atom)) or np.any(
            bead_of_atom[center_atoms[placed]] != np.flatnonzero(placed)):
        raise ValueError("every center atom must be an atom of its own bead")


def _atom_weights(bead_of_atom, atom_masses, bead_masses, center_atoms) -> np.ndarray:
    """(n_atoms,) each atom's weight in its own bead: mass fractions, or 1 on a bead's center atom (0 on the rest)."""
    weights = atom_masses / bead_masses[bead_of_atom]
    weights[center_atoms[bead_of_atom] >= 0] = 0.0          # the atoms of beads placed by a center atom
    weights[center_atoms[center_atoms >= 0]] = 1.0
    return weights


def _weight_matrix(bead_of_atom, atom_weights, n_beads: int):
    """(n_beads, n_atoms) weights from :func:`_atom_weights`; sparse when large."""
    n_atoms = len(bead_of_atom)
    matrix = sp.csr_matrix((atom_weights, (bead_of_atom, np.arange(n_atoms))), shape=(n_beads, n_atoms))
    return matrix.toarray() if n_beads * n_atoms <= _DENSE_LIMIT else matrix
