"""The ``"backbone"`` mapping rule: beads centred exactly on the backbone atoms N, CA and C of every amino acid.

Every amino-acid residue (a standard residue name, protonation variants included) gives three
beads, each placed exactly on its atom (``center_atoms``), so the backbone dihedrals phi and psi
computed from bead positions equal those of the atoms. ``extra=["CB"]``, ``["O"]`` or both add
centred beads on CB (glycine has none and gets none) and on the carbonyl O.

* **Caps.** An atom of a non-amino-acid residue (ACE, NME, NH2, ...) bonded to an amino acid's
  N or C (the peptide bond) is a bead too: ACE's C (the C of residue i-1 in phi) and NME's N
  (the N of residue i+1 in psi), so phi and psi of a capped peptide's end residues are exact.
* **Every other atom** joins the bead nearest to it along the bond graph (breadth-first, counted in
  bonds). Ties go to the bead of the higher role, CA, CB, N, C, O (then the lower atom index):
  a proline's CG, two bonds from both N and CA, goes with CA. A hydrogen is therefore always in
  the bead of the heavy atom it is bonded to, and every bead is a connected set of atoms.
* **Molecules without amino acids** (water, ions, ligands not bonded to the protein) are one bead
  each, at their centre of mass, named after their first residue. A topology with no amino acid
  at all is refused: use the ``metis`` or ``residue`` rule.

Beads are numbered in the topology order of their centre atoms (a centre-of-mass bead at its
molecule's first atom) and named after the atom and the 1-based residue position in the
topology: ``C1`` (ACE), ``N2``, ``CA2``, ``C2``, ``N3`` (NME) for alanine dipeptide.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import openmm.app as app

from openmm_cgml import structure
from openmm_cgml.bond_graph import adjacency, molecules

__all__ = ["backbone_rule", "backbone_beads", "AMINO_ACIDS", "EXTRA_ATOMS"]

# Residue names taken as amino acids: the standard 20 and the usual protonation/variant names.
AMINO_ACIDS = frozenset(
    "ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL "
    "HID HIE HIP HSD HSE HSP CYX CYM ASH GLH LYN ARN MSE SEC PYL".split())
EXTRA_ATOMS = ("CB", "O")   # the atoms ``extra`` may add as beads, in this order
_BACKBONE = ("N", "CA", "C")
_ROLE_RANK = {"CA": 0, "CB": 1, "N": 2, "C": 3, "O": 4}   # tie-break: lower rank wins


def backbone_rule(topology: app.Topology, masses, atom_types=None, extra=()):
    """The ``"backbone"`` mapping of ``topology``: N, CA, C (and ``extra``) of every amino acid as beads.

    Parameters
    ----------
    topology : openmm.app.Topology
        With at least one amino-acid residue; every amino acid must have N, CA and C.
    masses : array-like, Quantity or openmm.System
        Atom masses, amu.
    atom_types : array-like of int, optional
        Default: atomic numbers.
    extra : list of str
        Further centred beads per amino acid: ``[]`` (default), ``["CB"]``, ``["O"]`` or ``["CB", "O"]``.

    Returns
    -------
    openmm_cgml.mapping.Mapping
        ``method="backbone"``, ``params={"extra": [...], "atom_types_from": ...}``.

    Raises
    ------
    ValueError
        An ``extra`` that is not a list of ``"CB"``/``"O"``; an amino acid lacking N, CA, C (or an
        asked-for O, or CB other than in glycine), named with its residue; a topology without amino acids.
    """
    from openmm_cgml.mapping import Mapping  # here, not above: mapping.py imports this module

    extra = _checked_extra(extra)
    n_atoms = structure.topology_atoms(topology)
    atom_masses = structure.atom_masses(masses, n_atoms)
    bonds = structure.topology_bonds(topology)
    bead, names, centers = backbone_beads(topology, bonds, extra)
    types, source = structure.atom_types_for(topology, atom_types)
    return Mapping(bead, atom_masses, types, bonds, names, centers, method="backbone",
                   params={"extra": list(extra), "atom_types_from": source})


def backbone_beads(topology: app.Topology, bonds: np.ndarray, extra=()) -> tuple[np.ndarray, list[str], list[int]]:
    """Bead of every atom, bead names and centre atoms (-1: centre of mass) of the backbone mapping.

    Parameters
    ----------
    topology : openmm.app.Topology
    bonds : numpy.ndarray
        ``(B, 2)`` atom pairs (:func:`openmm_cgml.structure.topology_bonds`).
    extra : sequence of str
        Checked names from :data:`EXTRA_ATOMS`.

    Returns
    -------
    tuple
        ``(bead_of_atom (n_atoms,) int64, names, center_atoms)``, beads in topology order.
    """
    n_atoms = topology.getNumAtoms()
    centres = _centre_atoms(topology, extra)
    atoms = np.array([atom for atom, _, _ in centres], dtype=np.int64)
    ranks = [rank for _, _, rank in centres]
    owner = _nearest_source(adjacency(n_atoms, bonds), atoms[np.lexsort((atoms, ranks))])
    molecule = molecules(n_atoms, bonds)
    first_atom = np.unique(molecule, return_index=True)[1]
    alone = owner < 0   # atoms of molecules no backbone bead reaches: one bead per molecule, keyed by its first atom
    owner[alone] = first_atom[molecule[alone]]
    residue_of = [atom.residue for atom in topology.atoms()]
    solo = np.unique(owner[alone]).tolist()
    keys = np.concatenate([atoms, np.asarray(solo, dtype=np.int64)])
    names = [name for _, name, _ in centres] + [f"{residue_of[a].name}{residue_of[a].index + 1}" for a in solo]
    centers = atoms.tolist() + [-1] * len(solo)
    order = np.argsort(keys, kind="stable")
    number = np.empty(n_atoms, dtype=np.int64)
    number[keys[order]] = np.arange(len(order))
    return number[owner], [names[i] for i in order], [centers[i] for i in order]


def _checked_extra(extra) -> tuple[str, ...]:
    """``extra`` as a tuple in the order of :data:`EXTRA_ATOMS`; ``ValueError`` for anything else."""
    if isinstance(extra, str) or not isinstance(extra, (list, tuple)):
        raise ValueError(f'backbone mapping: extra must be a list such as ["CB"] or ["CB", "O"], got {extra!r}')
    unknown = [name for name in extra if name not in EXTRA_ATOMS]
    if unknown or len(set(extra)) != len(extra):
        raise ValueError(f"backbone mapping: extra may name each of {', '.join(EXTRA_ATOMS)} once, got {list(extra)}")
    return tuple(name for name in EXTRA_ATOMS if name in extra)


def _residue_label(residue: app.Residue) -> str:
    chain = residue.chain.id if residue.chain is not None else "?"
    return f"{residue.name}{residue.id} (chain {chain}, residue {residue.index + 1} of the topology)"


def _centre_atoms(topology: app.Topology, extra: tuple[str, ...]) -> list[tuple[int, str, int]]:
    """``(atom index, bead name, tie-break rank)`` of every centred bead, amino acids and cap atoms."""
    centres, backbone = [], {}   # backbone N and C atom -> the role of a cap atom bonded to it
    for residue in topology.residues():
        if residue.name not in AMINO_ACIDS:
            continue
        by_name = {atom.name: atom.index for atom in residue.atoms()}
        missing = [name for name in _BACKBONE if name not in by_name]
        wanted = [name for name in extra if not (name == "CB" and residue.name == "GLY")]
        missing += [name for name in wanted if name not in by_name]
        if missing:
            raise ValueError(f"backbone mapping: amino acid {_residue_label(residue)} lacks the atom(s) "
                             f"{', '.join(missing)}; complete the structure (e.g. with PDBFixer) or use another "
                             "mapping")
        for name in (*_BACKBONE, *wanted):
            centres.append((by_name[name], f"{name}{residue.index + 1}", _ROLE_RANK[name]))
        backbone[by_name["N"]], backbone[by_name["C"]] = "C", "N"
    if not centres:
        names = sorted({residue.name for residue in topology.residues()})
        raise ValueError("backbone mapping: the topology has no amino-acid residue (it has "
                         f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}); use the metis or residue "
                         "mapping")
    caps = {}
    for bond in topology.bonds():   # a non-amino-acid heavy atom bonded to an N or C: C(i-1) or N(i+1)
        for this, other in ((bond[0], bond[1]), (bond[1], bond[0])):
            role = backbone.get(this.index) if this.residue is not other.residue else None
            if role and other.residue.name not in AMINO_ACIDS and not _is_hydrogen(other):
                caps[other.index] = (other.index, f"{other.name}{other.residue.index + 1}", _ROLE_RANK[role])
    return centres + list(caps.values())


def _is_hydrogen(atom: app.Atom) -> bool:
    return atom.element is not None and atom.element.atomic_number == 1


def _nearest_source(graph, sources: np.ndarray) -> np.ndarray:
    """For every atom, the source atom nearest along bonds (-1 where none is reachable).

    A breadth-first search from all sources at once, started in the order given: an atom at equal
    distance from several sources goes to the one that comes first in ``sources`` (by induction,
    each level of the queue stays in that order).
    """
    owner = np.full(graph.shape[0], -1, dtype=np.int64)
    owner[sources] = sources
    queue = deque(int(atom) for atom in sources)
    indptr, indices = graph.indptr, graph.indices
    while queue:
        atom = queue.popleft()
        for neighbour in indices[indptr[atom]:indptr[atom + 1]]:
            if owner[neighbour] < 0:
                owner[neighbour] = owner[atom]
                queue.append(neighbour)
    return owner
