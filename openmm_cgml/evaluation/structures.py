"""Quality of atomistic structures (backmapped or MD): handedness of stereocentres, clashes, heavy-atom RMSD.

Positions are plain nm arrays (frames, n_atoms, 3); the topology is an
``openmm.app.Topology`` with bonds.

- :func:`stereocentres`: atoms with four bonded neighbours that all differ
  (by element and the elements bonded to them), e.g. the alpha carbon of
  every residue but glycine; a methyl carbon is not one.
- :func:`handedness`: the sign of the signed volume at each stereocentre.
- :func:`clashes`: atom pairs more than three bonds apart that overlap by
  0.04 nm or more (d < r_i + r_j - 0.04 nm: the "serious clash" of
  MolProbity, Word et al. 1999), hydrogen bonds (a hydrogen on N or O
  against an N or O) excepted, as there. Radii: Bondi's for heavy atoms,
  0.10 nm for hydrogens (Bondi's 0.12 nm counts ordinary H...H contacts of
  MD frames, 0.19-0.20 nm, as clashes).
- :func:`heavy_atom_rmsd`: per-frame RMSD of the heavy atoms after the best
  proper rotation onto the reference frame.
- :func:`torsions`: backbone phi and psi (mdtraj).
- :func:`backmap_quality`: all of these for a Backmapper on reference frames
  it never saw (the ``backmap`` block of the peptide benchmark, ``bench/backmap.py``);
  :func:`backmap_summary`: what can be said of backmapped frames without their
  original atoms (``cgml backmap``, ``examples/peptides.py``).
"""
from __future__ import annotations

import time

import numpy as np
import openmm.unit as u
from openmm import app
from scipy.sparse.csgraph import dijkstra

from openmm_cgml.bond_graph import adjacency, neighbour_lists
from openmm_cgml.bond_graph import stereocentres as graph_stereocentres
from openmm_cgml.geometry import kabsch
from openmm_cgml.structure import topology_bonds

__all__ = ["stereocentres", "handedness", "clashes", "heavy_atom_rmsd", "torsions", "backmap_quality",
           "backmap_summary", "VDW_RADII_NM", "CLASH_OVERLAP_NM"]

# van der Waals radii, nm: Bondi (1964) for heavy atoms (others 0.18), 0.10 for hydrogen (see above)
VDW_RADII_NM = {"H": 0.100, "C": 0.170, "N": 0.155, "O": 0.152, "F": 0.147, "P": 0.180, "S": 0.180, "Cl": 0.175}
CLASH_OVERLAP_NM = 0.04


def _symbols(topology: app.Topology) -> list[str]:
    return [atom.element.symbol if atom.element is not None else atom.name for atom in topology.atoms()]


def stereocentres(topology: app.Topology) -> np.ndarray:
    """Stereocentres and their neighbours in a fixed order: (S, 5) int, ``[centre, a, b, c, d]``.

    Neighbours are told apart by their element and the sorted elements bonded
    to them (excluding the centre); a centre qualifies when all four differ
    (:func:`openmm_cgml.bond_graph.stereocentres`).
    """
    return graph_stereocentres(_symbols(topology), topology_bonds(topology))


def handedness(positions: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Sign (+1/-1) of the volume spanned by the first three ordered neighbours at each centre: (frames, S)."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim == 2:
        positions = positions[None]
    x = positions[:, centres[:, 0]]
    a, b, c = (positions[:, centres[:, k]] - x for k in (1, 2, 3))
    return np.where(np.einsum("fsi,fsi->fs", a, np.cross(b, c)) >= 0, 1, -1)


def _separated_pairs(topology: app.Topology, min_bonds: int = 4) -> np.ndarray:
    """Atom pairs (P, 2), i < j, at least ``min_bonds`` bonds apart (or in different molecules)."""
    n = topology.getNumAtoms()
    hops = dijkstra(adjacency(n, topology_bonds(topology)), directed=False, unweighted=True, limit=min_bonds - 1)
    i, j = np.triu_indices(n, k=1)
    keep = ~np.isfinite(hops[i, j])
    return np.stack([i[keep], j[keep]], axis=1)


def clashes(positions: np.ndarray, topology: app.Topology) -> np.ndarray:
    """Number of clashing atom pairs (more than three bonds apart, overlap >= CLASH_OVERLAP_NM) per frame."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim == 2:
        positions = positions[None]
    pairs = _separated_pairs(topology)
    symbols = _symbols(topology)
    polar_h = np.asarray([symbol == "H" and any(symbols[m] in ("N", "O") for m in around)
                          for symbol, around in zip(symbols, neighbour_lists(len(symbols), topology_bonds(topology)))])
    acceptor = np.isin(symbols, ["N", "O"])
    hydrogen_bond = (polar_h[pairs[:, 0]] & acceptor[pairs[:, 1]]) | (polar_h[pairs[:, 1]] & acceptor[pairs[:, 0]])
    pairs = pairs[~hydrogen_bond]
    radii = np.asarray([VDW_RADII_NM.get(symbol, 0.18) for symbol in symbols])
    limit = radii[pairs[:, 0]] + radii[pairs[:, 1]] - CLASH_OVERLAP_NM
    counts = np.zeros(len(positions), dtype=np.int64)
    for start in range(0, len(positions), 256):
        block = positions[start:start + 256]
        distance = np.linalg.norm(block[:, pairs[:, 0]] - block[:, pairs[:, 1]], axis=-1)
        counts[start:start + 256] = (distance < limit).sum(axis=1)
    return counts


def heavy_atom_rmsd(positions: np.ndarray, reference: np.ndarray, topology: app.Topology) -> np.ndarray:
    """Per-frame heavy-atom RMSD (nm) between paired frames, after the best proper rotation and translation."""
    heavy = np.asarray([atom.element is not None and atom.element.symbol != "H" for atom in topology.atoms()])
    a = np.asarray(positions, dtype=np.float64).reshape(-1, len(heavy), 3)[:, heavy]
    b = np.asarray(reference, dtype=np.float64).reshape(-1, len(heavy), 3)[:, heavy]
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    _, residual = kabsch(a, b)
    return np.sqrt(np.maximum(residual, 0.0) / heavy.sum())


def torsions(positions: np.ndarray, topology) -> tuple[np.ndarray, np.ndarray]:
    """Backbone phi and psi in degrees, (frames, n_phi) and (frames, n_psi), from atom positions (frames, n, 3) nm."""
    import mdtraj

    trajectory = mdtraj.Trajectory(np.asarray(positions, dtype=np.float32), mdtraj.Topology.from_openmm(topology))
    return np.degrees(mdtraj.compute_phi(trajectory)[1]), np.degrees(mdtraj.compute_psi(trajectory)[1])


def backmap_quality(backmapper, atoms: np.ndarray, topology: app.Topology) -> dict:
    """Backmap the beads of reference frames (with minimisation) and compare with their own atoms.

    Parameters
    ----------
    backmapper : Backmapper
        Its library must not hold these frames.
    atoms : ndarray
        (frames, n_atoms, 3) reference atom positions, nm (a stretch of one trajectory, in order).
    topology : openmm.app.Topology

    Returns
    -------
    dict
        ``rmsd_nm`` (mean and 95% block-bootstrap interval), ``chirality_fraction`` (stereocentre signs
        as in the original frame), ``clashes`` and ``clashes_md_frames`` (frames with a clash after
        backmapping, and in the MD frames themselves), ``bead_deviation_nm`` (largest), energies
        (``potential_energy_kj_mol``: backmapped, and the MD frames minimised under the same restraints),
        ``frames``, ``seconds_per_frame`` and, for a peptide, ``phi_psi_error_deg`` (mean absolute difference
        of the backbone torsions).
    """
    from openmm_cgml.evaluation.statistics import mean_ci

    beads = backmapper.mapping.bead_positions(atoms)
    start = time.perf_counter()
    result = backmapper.backmap(beads)
    seconds = (time.perf_counter() - start) / len(beads)
    placed = result.positions.value_in_unit(u.nanometer)
    centres = stereocentres(topology)
    out = {"frames": int(len(beads)), "rmsd_nm": mean_ci(heavy_atom_rmsd(placed, atoms, topology)),
           "chirality_fraction": float((handedness(placed, centres) == handedness(atoms, centres)).mean())
           if len(centres) else None,
           "clashes": int((clashes(placed, topology) > 0).sum()),
           "clashes_md_frames": int((clashes(atoms, topology) > 0).sum()),
           "bead_deviation_nm": float(result.bead_deviation.value_in_unit(u.nanometer).max()),
           "seconds_per_frame": seconds}
    angles = np.concatenate(torsions(placed, topology), axis=1) - np.concatenate(torsions(atoms, topology), axis=1)
    if angles.size:
        out["phi_psi_error_deg"] = mean_ci(np.abs((angles + 180.0) % 360.0 - 180.0).mean(axis=1))
    if result.potential_energy is not None:
        energy = result.potential_energy.value_in_unit(u.kilojoule_per_mole)
        minimized = np.array([backmapper.minimize(frame, bead)[1].value_in_unit(u.kilojoule_per_mole)
                              for frame, bead in zip(atoms, beads)])
        out["potential_energy_kj_mol"] = {"backmapped_minimized": mean_ci(energy),
                                          "md_minimized_same_restraints": mean_ci(minimized),
                                          "backmapped_minus_md_minimized": mean_ci(energy - minimized)}
    return out


def backmap_summary(result, topology: app.Topology, reference: np.ndarray) -> dict:
    """Quality of backmapped frames with no original atoms to compare with (rollouts).

    Parameters
    ----------
    result : BackmapResult
        From :meth:`~openmm_cgml.backmap.Backmapper.backmap`, frames of one molecule.
    topology : openmm.app.Topology
        The molecule's.
    reference : ndarray
        (frames, n_atoms, 3) reference atom positions, nm: each stereocentre's handedness is the sign it has
        in most of them.

    Returns
    -------
    dict
        ``frames``, ``max_bead_deviation_nm``, ``mean_potential_energy_kj_mol`` (None without minimisation),
        ``stereocentres``, ``handedness_kept_fraction`` (None without stereocentres), ``frames_with_clashes``.
    """
    atoms = result.positions.value_in_unit(u.nanometer)
    centres = stereocentres(topology)
    kept = None
    if len(centres):
        hands = np.sign(handedness(reference, centres).sum(axis=0))
        kept = float((handedness(atoms, centres) == hands).mean())
    energy = result.potential_energy
    deviation = result.bead_deviation.value_in_unit(u.nanometer)
    return {"frames": int(len(atoms)), "max_bead_deviation_nm": float(deviation.max()),
            "mean_potential_energy_kj_mol": None if energy is None
            else float(np.mean(energy.value_in_unit(u.kilojoule_per_mole))),
            "stereocentres": int(len(centres)), "handedness_kept_fraction": kept,
            "frames_with_clashes": int((clashes(atoms, topology) > 0).sum())}
