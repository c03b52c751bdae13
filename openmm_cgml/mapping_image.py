"""The picture of a mapping (``cgml map-image``): beads coloured on one conformation of the molecule.

Drawn on a ``matplotlib.figure.Figure`` and saved with ``Figure.savefig``, so no
pyplot state and no backend switch are involved (safe inside notebooks and GUIs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from openmm_cgml.mapping import Mapping

__all__ = ["mapping_figure", "draw_mapping"]

_LABEL_LIMIT = 60   # more bead names than this would cover the picture


def mapping_figure(mapping: Mapping, atom_positions, box=None, title: str | None = None):
    """A figure of ``mapping`` on one conformation.

    Atoms are coloured by bead and projected on the molecule's two principal
    axes; atomic bonds are thin lines (grey where they cross beads), bead
    centres are large outlined discs joined by the coarse bonds (dashed).

    Parameters
    ----------
    mapping : Mapping
    atom_positions : Quantity compatible with nanometers, or array-like (nm)
        One conformation, ``(n_atoms, 3)``.
    box : array-like (nm) or box-vector Quantity, optional
        Periodic box vectors; molecules are made whole first.
    title : str, optional
        Default: the method and the atom, bead and molecule counts.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    positions = mapping.make_whole(atom_positions, box)
    if positions.ndim != 2:
        raise ValueError(f"atom_positions must be one conformation (n_atoms, 3), got {positions.shape}")
    atoms_2d, beads_2d = _principal_projection(positions, mapping.bead_positions(positions))
    # neighbouring beads get well separated colours
    bead_colours = colormaps["tab20"](np.arange(20))[(np.arange(mapping.n_beads) * 7) % 20]
    atom_colours = bead_colours[mapping.bead_of_atom]

    figure = Figure(figsize=(7, 6), dpi=120)
    ax = figure.add_subplot()
    for i, j in mapping.fine_bonds.tolist():
        same = mapping.bead_of_atom[i] == mapping.bead_of_atom[j]
        ax.plot(*atoms_2d[[i, j]].T, color=atom_colours[i] if same else "0.6", lw=1.5 if same else 0.8, zorder=1)
    ax.scatter(*atoms_2d.T, s=18, c=atom_colours, edgecolors="none", zorder=2)
    for i, j in mapping.coarse_bonds.tolist():
        ax.plot(*beads_2d[[i, j]].T, color="black", lw=1.2, ls="--", zorder=3)
    ax.scatter(*beads_2d.T, s=160, c=bead_colours, edgecolors="black", linewidths=1.5, alpha=0.85, zorder=4)
    if mapping.n_beads <= _LABEL_LIMIT:
        for b, (x, y) in enumerate(beads_2d):
            ax.annotate(mapping.bead_names[b], (x, y), fontsize=7, ha="center", va="center", zorder=5)
    ax.set_aspect("equal")
    ax.set_xlabel("principal axis 1 (nm)")
    ax.set_ylabel("principal axis 2 (nm)")
    ax.set_title(title or f"{mapping.method} mapping: {mapping.n_atoms} atoms -> {mapping.n_beads} beads "
                          f"({mapping.n_molecules} molecule{'s' if mapping.n_molecules > 1 else ''})")
    figure.tight_layout()
    return figure


def draw_mapping(mapping: Mapping, atom_positions, out, box=None, title: str | None = None) -> Path:
    """Draw ``mapping`` on one conformation (:func:`mapping_figure`) and save it as a PNG.

    Parameters
    ----------
    mapping, atom_positions, box, title
        As for :func:`mapping_figure`.
    out : str or os.PathLike
        The PNG file; its folder is created if needed. It is written to a temporary
        name and renamed, so an existing file is replaced only by a whole new one.

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    from openmm_cgml.io import atomic_path

    figure = mapping_figure(mapping, atom_positions, box=box, title=title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temporary:   # an interrupted save never leaves a torn PNG at ``out``
        figure.savefig(temporary, format="png")
    return out


def _principal_projection(atoms: np.ndarray, beads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Atoms and beads projected on the atoms' two principal axes: the view that shows them spread out most."""
    centre = atoms.mean(axis=0)
    _, _, axes = np.linalg.svd(atoms - centre, full_matrices=False)
    project = axes[:2].T if len(axes) >= 2 else np.eye(3)[:, :2]
    return (atoms - centre) @ project, (beads - centre) @ project
