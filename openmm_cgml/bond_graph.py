"""The bond graph of a fine-grained system: molecules, METIS beads and the spanning forest that makes molecules whole.

Graph algorithms on atoms and bonds, independent of any :class:`~openmm_cgml.mapping.Mapping`:

* :func:`molecules` labels connected components (molecules), numbered by first atom;
* :func:`metis_beads` partitions each molecule with METIS into connected beads of about
  ``atoms_per_bead`` atoms (single atoms, such as ions, are their own bead; identical
  molecules are partitioned once), the preprocessing of Fu et al., TMLR 2023;
* :func:`coarse_bonds` and :func:`bead_molecules` contract the graph by beads;
* :func:`spanning_forest` gives the bond-graph trees, rooted near each molecule's centre,
  along which :meth:`Mapping.make_whole <openmm_cgml.mapping.Mapping.make_whole>` undoes
  periodic wrapping.

Bonds are ``(B, 2)`` int64 atom index pairs throughout.
"""
from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, connected_components

from openmm_cgml.units import whole_number

__all__ = ["adjacency", "neighbour_lists", "molecules", "stereocentres",
           "repair_connectivity", "check_atoms_per_bead", "check_n_beads", "metis_beads",
           "spanning_forest", "coarse_bonds", "bead_molecules", "bond_difference"]


def adjacency(n_atoms: int, bonds: np.ndarray) -> sp.csr_matrix:
    """Symmetric ``(n_atoms, n_atoms)`` adjacency matrix of the bond graph (int8 ones)."""
    rows = np.concatenate([bonds[:, 0], bonds[:, 1]])
    cols = np.concatenate([bonds[:, 1], bonds[:, 0]])
    return sp.csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_atoms, n_atoms))


def neighbour_lists(n_atoms: int, bonds) -> list[list[int]]:
    """Each atom's bonded partners, ascending (the rows of :func:`adjacency`; a repeated bond counts once)."""
    graph = adjacency(n_atoms, np.asarray(bonds, dtype=np.int64).reshape(-1, 2))
    graph.sort_indices()
    return [graph.indices[graph.indptr[i]:graph.indptr[i + 1]].tolist() for i in range(n_atoms)]


def molecules(n_atoms: int, bonds: np.ndarray) -> np.ndarray:
    """Molecule (connected component) of every atom, numbered by first atom."""
    _, labels = connected_components(adjacency(n_atoms, bonds), directed=False)
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


def repair_connectivity(graph: sp.csr_matrix, part: np.ndarray) -> np.ndarray:
    """Make every part a connected set of atoms.

    METIS can return a part made of several disconnected pieces. The largest
    piece keeps the label; every other piece is merged into the adjacent part
    it shares most bonds with (the smaller one on ties), which keeps part
    sizes close to balanced and every part connected.
    """
    part = part.copy()
    coo = graph.tocoo()
    for _ in range(len(part)):
        same = part[coo.row] == part[coo.col]
        inner = sp.csr_matrix((np.ones(same.sum(), dtype=np.int8), (coo.row[same], coo.col[same])),
                              shape=graph.shape)
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
                neighbours = graph[atoms].indices
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



def check_atoms_per_bead(atoms_per_bead, name: str = "atoms_per_bead") -> float:
    """``atoms_per_bead`` as a float if it is a finite number >= 1, else a ``ValueError`` naming ``name``.

    Parameters
    ----------
    atoms_per_bead : float
        The METIS resolution (inf would silently make one bead per molecule).
    name : str
        What the message calls it, e.g. ``"--atoms-per-bead"`` on the command line.

    Returns
    -------
    float
    """
    if isinstance(atoms_per_bead, (bool, np.bool_)) or not isinstance(atoms_per_bead, numbers.Real) \
            or not (np.isfinite(atoms_per_bead) and atoms_per_bead >= 1):
        raise ValueError(f"{name} must be a finite number >= 1, got {atoms_per_bead!r}")
    return float(atoms_per_bead)


def check_n_beads(n_beads, n_molecules: int = 1, n_atoms: int | None = None, name: str = "n_beads") -> int:
    """``n_beads`` as an int if a whole number in ``[n_molecules, n_atoms]``, else a ``ValueError`` naming ``name``.

    Parameters
    ----------
    n_beads : int
        The total number of METIS beads.
    n_molecules : int
        The fewest beads allowed: one per molecule (1 before the molecule is known).
    n_atoms : int, optional
        The most beads allowed: one per atom (no upper bound before the molecule is known).
    name : str
        What the messages call it, e.g. ``"--n-beads"`` on the command line.

    Returns
    -------
    int
    """
    n_beads = whole_number(n_beads, name)
    if n_atoms is None and n_beads < n_molecules:
        raise ValueError(f"{name} must be >= {n_molecules}, got {n_beads}")
    if n_atoms is not None and not n_molecules <= n_beads <= n_atoms:
        raise ValueError(f"{name} must lie between the number of molecules ({n_molecules}) "
                         f"and the number of atoms ({n_atoms}), got {n_beads}")
    return n_beads


def metis_beads(n_atoms: int, bonds: np.ndarray, atoms_per_bead: float | None = None,
                n_beads: int | None = None, seed: int = 0) -> tuple[np.ndarray, list[str], dict]:
    """Partition each molecule's bond graph with METIS into connected beads.

    Parameters
    ----------
    n_atoms : int
    bonds : numpy.ndarray
        ``(B, 2)`` int64 atom pairs.
    atoms_per_bead : float, optional
        A molecule of m atoms gets ``round(m / atoms_per_bead)`` beads, at least one. A finite number >= 1.
    n_beads : int, optional
        The total number of beads, shared among molecules in proportion to their size
        (at least one each): a whole number from the number of molecules to ``n_atoms``.
        Give exactly one of ``atoms_per_bead`` and ``n_beads``.
    seed : int
        METIS seed: the same seed gives the same beads.

    Returns
    -------
    tuple
        ``(bead_of_atom, bead_names, params)``: ``(n_atoms,)`` int64 beads numbered by first atom,
        names B0, B1, ... counted within each molecule, and the parameters that re-make the partition.

    Raises
    ------
    ValueError
        Naming the parameter, for an ``atoms_per_bead``, ``n_beads`` or ``seed`` out of range or of the
        wrong kind (NaN, inf, a fraction of a bead, a string, a quantity).
    """
    import pymetis

    if (atoms_per_bead is None) == (n_beads is None):
        raise ValueError("give exactly one of atoms_per_bead or n_beads")
    molecule = molecules(n_atoms, bonds)
    sizes = np.bincount(molecule)
    seed = whole_number(seed, "seed")
    if atoms_per_bead is not None:
        atoms_per_bead = check_atoms_per_bead(atoms_per_bead)
        parts = np.maximum(1, np.rint(sizes / atoms_per_bead)).astype(np.int64)
    else:
        n_beads = check_n_beads(n_beads, len(sizes), n_atoms)
        parts = _share(n_beads, sizes)
    options = pymetis.Options(seed=seed, contig=1)
    solved = {}   # identical molecules (waters, chains of one sequence) are partitioned once
    bead = np.empty(n_atoms, dtype=np.int64)
    offset = 0
    for atoms, edges, n_parts in zip(*_by_molecule(n_atoms, bonds, molecule, sizes), parts):
        key = (len(atoms), int(n_parts), edges.tobytes())
        if key not in solved:
            solved[key] = _partition_molecule(len(atoms), edges, int(n_parts), options)
        local = solved[key]
        bead[atoms] = offset + local
        offset += int(local.max()) + 1
    bead = _renumber_by_first_atom(bead)
    params = {"atoms_per_bead": atoms_per_bead, "n_beads": n_beads, "seed": seed}
    return bead, _names_within_molecules(bead, molecule), params


def _by_molecule(n_atoms: int, bonds: np.ndarray, molecule: np.ndarray, sizes: np.ndarray):
    """Atoms of each molecule, and its bonds in molecule-local atom numbers: two lists, one entry per molecule."""
    order = np.argsort(molecule, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    local_index = np.empty(n_atoms, dtype=np.int64)
    local_index[order] = np.arange(n_atoms) - starts[molecule[order]]
    if len(bonds):
        bond_order = np.argsort(molecule[bonds[:, 0]], kind="stable")
        bond_counts = np.bincount(molecule[bonds[:, 0]], minlength=len(sizes))
    else:
        bond_order, bond_counts = np.zeros(0, dtype=np.int64), np.zeros(len(sizes), int)
    local_bonds = np.split(local_index[bonds[bond_order]], np.cumsum(bond_counts)[:-1])
    return np.split(order, np.cumsum(sizes)[:-1]), local_bonds


def bead_molecules(bead_of_atom: np.ndarray, molecule_of_atom: np.ndarray, names: list[str]) -> np.ndarray:
    """The molecule of every bead; ``ValueError`` for a bead with atoms of two molecules."""
    n_beads, n_molecules = len(names), int(molecule_of_atom.max()) + 1
    lowest = np.full(n_beads, n_molecules, dtype=np.int64)
    highest = np.full(n_beads, -1, dtype=np.int64)
    np.minimum.at(lowest, bead_of_atom, molecule_of_atom)
    np.maximum.at(highest, bead_of_atom, molecule_of_atom)
    split = np.flatnonzero(lowest != highest)
    if len(split):
        bead = int(split[0])
        raise ValueError(f"bead {bead} ({names[bead]}) contains atoms of molecules {lowest[bead]} "
                         f"and {highest[bead]}; a bead must lie within one molecule")
    return lowest


def coarse_bonds(bead_of_atom: np.ndarray, fine_bonds: np.ndarray) -> np.ndarray:
    """Bead pairs (i < j) joined by at least one atomic bond."""
    crossing = bead_of_atom[fine_bonds]
    crossing = np.sort(crossing[crossing[:, 0] != crossing[:, 1]], axis=1)
    return np.unique(crossing, axis=0) if len(crossing) else np.zeros((0, 2), dtype=np.int64)


def bond_difference(mine: np.ndarray, theirs: np.ndarray) -> str:
    """How two bond lists differ, in words; empty when they hold the same bonds."""
    mine, theirs = {tuple(b) for b in mine.tolist()}, {tuple(b) for b in theirs.tolist()}
    extra, absent = sorted(theirs - mine), sorted(mine - theirs)
    detail = []
    if extra:
        detail.append(f"topology bond(s) {extra[:3]} not in the mapping")
    if absent:
        detail.append(f"mapping bond(s) {absent[:3]} not in the topology")
    return "; ".join(detail)


def _partition_molecule(n_atoms: int, edges: np.ndarray, n_parts: int, options) -> np.ndarray:
    """METIS parts (0..n-1, numbered by first atom, each connected) of one molecule's atoms."""
    import pymetis

    if n_parts <= 1:
        return np.zeros(n_atoms, dtype=np.int64)
    if n_parts >= n_atoms:
        return np.arange(n_atoms, dtype=np.int64)
    graph = adjacency(n_atoms, edges)
    result = pymetis.part_graph(n_parts, xadj=graph.indptr.astype(np.int64),
                                adjncy=graph.indices.astype(np.int64), options=options)
    return _renumber_by_first_atom(repair_connectivity(graph, np.asarray(result.vertex_part, dtype=np.int64)))


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


def spanning_forest(n_atoms: int, bonds: np.ndarray, molecule: np.ndarray):
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
        graph = adjacency(n_atoms + 1, np.concatenate([bonds, extra]))
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


def stereocentres(labels, bonds: np.ndarray) -> np.ndarray:
    """Stereocentres of a bond graph and their neighbours in a fixed order: (S, 5) int64, ``[centre, a, b, c, d]``.

    An atom with four bonded neighbours that all differ, told apart by their
    label (element or atom type) and the sorted labels bonded to them
    (excluding the centre): the alpha carbon of every amino acid but glycine,
    not a methyl carbon. The neighbours are sorted by that signature, so the
    sign of ``det(a - x, b - x, c - x)`` is the handedness.

    Parameters
    ----------
    labels : sequence
        One comparable label per atom (element symbols, atomic numbers).
    bonds : ndarray
        (B, 2) atom index pairs.
    """
    bonded = neighbour_lists(len(labels), bonds)
    rows = []
    for centre, around in enumerate(bonded):
        if len(around) != 4:
            continue
        signature = [(labels[n], tuple(sorted(labels[m] for m in bonded[n] if m != centre))) for n in around]
        if len(set(signature)) == 4:
            rows.append([centre] + [n for _, n in sorted(zip(signature, around))])
    return np.asarray(rows, dtype=np.int64).reshape(-1, 5)
