"""Beads back to atoms: :class:`Backmapper`, reference fragments placed on the beads, then a restrained minimisation.

A chemist needs atoms to look at a coarse structure, to rescore it with a
force field or to seed all-atom MD. The backmapping here has two stages:

1. **Fragments.** For every bead, the library holds its atoms and its
   *context* (the bead's neighbours in the coarse bond graph, up to two bonds
   away, at most :data:`CONTEXT_BEADS`) in many reference frames, all relative
   to the bead. A query bead is given the atoms of the reference frame whose
   context matches its own best: candidates by the distances within the
   context (invariant), then the best proper-rotation (Kabsch) fit of the
   context among them. The atoms are rotated by that fit, so the handedness
   of the reference fragment is kept (a mirror image would need a reflection,
   which is never used), and shifted so that the bead's definition (centre of
   mass, or its centre atom) gives the query bead position exactly.
2. **Restrained minimisation** with the fine force field (the reference
   System), every bead's centre held to its target by a stiff harmonic
   restraint (``restraint``, default 1e5 kJ/mol/nm^2, so a force of
   1000 kJ/mol/nm moves a bead by 0.01 nm) on its mass-weighted centre (or
   centre atom), as the mapping defines beads. The fragments of neighbouring
   beads are chosen independently, so the bonds between them need this.

Units: nm, kJ/mol; ``openmm.unit`` quantities or plain numbers in those units
at the public boundary.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import openmm
import openmm.unit as u

from openmm_cgml import systems
from openmm_cgml.bond_graph import neighbour_lists
from openmm_cgml.geometry import kabsch
from openmm_cgml.mapping import Mapping
from openmm_cgml.trajectory import FineTrajectory
from openmm_cgml.units import NM, strip, strip_array

__all__ = ["Backmapper", "BackmapResult", "CONTEXT_BEADS"]

# most neighbouring beads a fragment is matched on (the nearest in the bond graph first)
CONTEXT_BEADS = 6
# candidates (by context distances) that get a full rotational fit
_CANDIDATES = 8
_RESTRAINT_GROUP = 31
_FRAMES_PER_BLOCK = 128
_KJ_PER_NM2 = u.kilojoule_per_mole / u.nanometer ** 2


@dataclass
class BackmapResult:
    """What :meth:`Backmapper.backmap` returns.

    Attributes
    ----------
    positions : Quantity
        (frames, n_atoms, 3) atom positions, nm.
    potential_energy : Quantity or None
        (frames,) fine-force-field energy, without the restraint, kJ/mol (None without minimisation).
    bead_deviation : Quantity
        (frames,) largest distance of a bead (as the mapping defines it) from its target, nm.
    """

    positions: u.Quantity
    potential_energy: u.Quantity | None
    bead_deviation: u.Quantity


def _context_beads(n_beads: int, coarse_bonds: np.ndarray, molecule_of_bead: np.ndarray) -> list[np.ndarray]:
    """Each bead's context: beads of its molecule by bond-graph distance (<= 2, else any), nearest first."""
    neighbours = neighbour_lists(n_beads, coarse_bonds)
    contexts = []
    for bead in range(n_beads):
        seen, queue, order = {bead: 0}, deque([bead]), []
        while queue:
            here = queue.popleft()
            for other in neighbours[here]:
                if other not in seen:
                    seen[other] = seen[here] + 1
                    order.append(other)
                    queue.append(other)
        near = [other for other in order if seen[other] <= 2]
        if len(near) < 2:   # a frame needs two more points: take the rest of the molecule in bond order
            near = order
        if len(near) < 2:
            same = np.flatnonzero(molecule_of_bead == molecule_of_bead[bead])
            near = [int(other) for other in same if other != bead]
        contexts.append(np.asarray(near[:CONTEXT_BEADS], dtype=np.int64))
    return contexts


def _distances(points: np.ndarray) -> np.ndarray:
    """Rotation-invariant descriptor (..., P) of contexts (..., c, 3) relative to their bead: all pair distances."""
    full = np.concatenate([np.zeros(points.shape[:-2] + (1, 3)), points], axis=-2)
    i, j = np.triu_indices(full.shape[-2], k=1)
    return np.linalg.norm(full[..., i, :] - full[..., j, :], axis=-1)


class Backmapper:
    """Reconstruct atoms from bead positions: reference fragments, then a restrained minimisation.

    Parameters
    ----------
    mapping : Mapping
        The molecule's atom-to-bead mapping (one copy of the molecule).
    system : openmm.System
        The fine System of one molecule (the reference force field), used for the minimisation;
        None places fragments only.
    reference_positions : array_like or Quantity
        (frames, n_atoms, 3) reference atom positions (molecules whole), nm: the fragment library.
    restraint : float or Quantity
        Force constant of the bead restraints, kJ/mol/nm^2 (default 1e5).
    tolerance : float or Quantity
        Minimiser force tolerance, kJ/mol/nm (default 10).
    max_iterations : int
        Minimiser iterations per frame (0: until converged).
    platform : str
        OpenMM platform of the minimisation (default ``CPU``).

    Examples
    --------
    >>> backmapper = Backmapper(mapping, reference.system, fine_positions)      # doctest: +SKIP
    >>> result = backmapper.backmap(bead_trajectory)                            # doctest: +SKIP
    """

    def __init__(self, mapping: Mapping, system: openmm.System | None, reference_positions,
                 restraint=1e5 * _KJ_PER_NM2, tolerance=10.0 * u.kilojoule_per_mole / u.nanometer,
                 max_iterations: int = 2000, platform: str = "CPU"):
        if not isinstance(mapping, Mapping):
            raise TypeError(f"mapping must be an openmm_cgml Mapping, got {type(mapping).__name__}")
        frames = strip_array(reference_positions, NM, "reference_positions")
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3 or frames.shape[1:] != (mapping.n_atoms, 3) or len(frames) == 0:
            raise ValueError(f"reference_positions must have shape (frames, {mapping.n_atoms}, 3) for this mapping, "
                             f"got {frames.shape}")
        if system is not None and system.getNumParticles() != mapping.n_atoms:
            raise ValueError(f"the System has {system.getNumParticles()} particles but the mapping "
                             f"{mapping.n_atoms} atoms")
        self.restraint = strip(restraint, _KJ_PER_NM2, "restraint")
        self.tolerance = strip(tolerance, u.kilojoule_per_mole / u.nanometer, "tolerance")
        if not (self.restraint > 0 and self.tolerance > 0) or int(max_iterations) < 0:
            raise ValueError("restraint and tolerance must be > 0 and max_iterations >= 0")
        self.mapping, self.system = mapping, system
        self.max_iterations, self.platform = int(max_iterations), str(platform)
        self._library(frames.astype(np.float64))
        self._context = None

    @classmethod
    def from_references(cls, mapping: Mapping, references, library_frames: int = 1000, system=None,
                        **options) -> "Backmapper":
        """A Backmapper whose fragment library comes from fine trajectories (``cgml generate`` HDF5 files).

        Parameters
        ----------
        mapping : Mapping
            The molecule's mapping; it must fit the trajectories' topology.
        references : path or list of paths
            Fine trajectories of the molecule (the training data); frames are taken evenly from all of them.
        library_frames : int
            Most frames in the library (default 1000).
        system : openmm.System or str, optional
            The fine System for the minimisation, or a reference system name/YAML; default: rebuilt from the
            trajectories' ``cgml_system``/``cgml_params``.
        **options
            ``restraint``, ``tolerance``, ``max_iterations``, ``platform`` of the constructor.
        """
        paths = [references] if isinstance(references, (str, bytes)) or hasattr(references, "__fspath__") \
            else list(references)
        if not paths or int(library_frames) < 1:
            raise ValueError("give at least one reference trajectory and library_frames >= 1")
        opened = [FineTrajectory(path) for path in paths]
        for trajectory in opened:
            mapping.check_fits(trajectory.topology, where=f"the mapping of {trajectory.path}")
            if trajectory.is_periodic:
                raise ValueError(f"{trajectory.path} is periodic (solvated): backmapping needs a molecule in "
                                 "vacuum or implicit solvent")
        total = sum(trajectory.n_frames for trajectory in opened)
        if total == 0:
            raise ValueError(f"{paths[0]}: the reference trajectories hold no frames")
        chosen = np.unique(np.linspace(0, total - 1, min(int(library_frames), total)).round().astype(np.int64))
        frames, offset = [], 0
        for trajectory in opened:
            local = chosen[(chosen >= offset) & (chosen < offset + trajectory.n_frames)] - offset
            if len(local):
                frames.append(np.asarray(trajectory.positions[np.sort(local)], dtype=np.float64))
            offset += trajectory.n_frames
        if system is None or isinstance(system, str):
            system = _fine_system(opened[0], system)
        return cls(mapping, system, np.concatenate(frames), **options)

    def __repr__(self) -> str:
        return (f"Backmapper(n_beads={self.mapping.n_beads}, n_atoms={self.mapping.n_atoms}, "
                f"library_frames={self.library_frames}, minimize={self.system is not None})")

    @property
    def library_frames(self) -> int:
        """Reference frames in the fragment library."""
        return int(self._atoms[0].shape[0])

    def _library(self, frames: np.ndarray) -> None:
        mapping = self.mapping
        beads = mapping.bead_positions(frames)                                     # (T, n_beads, 3)
        self._contexts = _context_beads(mapping.n_beads, mapping.coarse_bonds, mapping.molecule_of_bead)
        self._members = [np.flatnonzero(mapping.bead_of_atom == b) for b in range(mapping.n_beads)]
        self._context_xyz, self._descriptors, self._atoms = [], [], []
        for bead, (context, members) in enumerate(zip(self._contexts, self._members)):
            relative = beads[:, context] - beads[:, bead:bead + 1]
            self._context_xyz.append(relative)
            self._descriptors.append(_distances(relative))
            self._atoms.append(frames[:, members] - beads[:, bead:bead + 1])

    # ------------------------------------------------------------------ stage 1: fragments
    def place(self, bead_positions) -> u.Quantity:
        """Atoms from fragments alone (no minimisation): (frames, n_atoms, 3) nm.

        Parameters
        ----------
        bead_positions : array_like or Quantity
            (frames, n_beads, 3) or (n_beads, 3) bead positions, nm.
        """
        beads = self._checked_beads(bead_positions)
        return self._place(beads) * NM

    def _checked_beads(self, bead_positions) -> np.ndarray:
        beads = strip_array(bead_positions, NM, "bead_positions").astype(np.float64)
        if beads.ndim == 2:
            beads = beads[None]
        if beads.ndim != 3 or beads.shape[1:] != (self.mapping.n_beads, 3):
            raise ValueError(f"bead_positions must have shape (frames, {self.mapping.n_beads}, 3) for this mapping, "
                             f"got {beads.shape}")
        if not np.isfinite(beads).all():
            raise ValueError("bead_positions contain NaN or infinite values")
        return beads

    def _place(self, beads: np.ndarray) -> np.ndarray:
        atoms = np.zeros((len(beads), self.mapping.n_atoms, 3))
        for start in range(0, len(beads), _FRAMES_PER_BLOCK):   # bounds the (frames, library) work arrays
            block = beads[start:start + _FRAMES_PER_BLOCK]
            for bead, (context, members) in enumerate(zip(self._contexts, self._members)):
                atoms[start:start + len(block), members] = self._fragment(bead, context, block)
        # shift each bead's atoms so the bead, as the mapping defines it, sits exactly on its target
        atoms += (beads - self.mapping.bead_positions(atoms))[:, self.mapping.bead_of_atom]
        return atoms

    def _fragment(self, bead: int, context: np.ndarray, beads: np.ndarray) -> np.ndarray:
        """The library atoms of ``bead`` (frames, its atoms, 3) nm, rotated onto each frame's context."""
        n_frames = len(beads)
        if len(context) == 0:   # a lone bead: no orientation to match
            return beads[:, bead:bead + 1] + self._atoms[bead][0]
        query = beads[:, context] - beads[:, bead:bead + 1]                                  # (F, c, 3)
        gap = np.abs(_distances(query)[:, None, :] - self._descriptors[bead][None]).sum(-1)   # (F, T)
        k = min(_CANDIDATES, gap.shape[1])
        candidates = np.argpartition(gap, k - 1, axis=1)[:, :k]                              # (F, k)
        rotation, residual = kabsch(self._context_xyz[bead][candidates], query[:, None])
        best = np.argmin(residual, axis=1)
        chosen = candidates[np.arange(n_frames), best]
        turn = rotation[np.arange(n_frames), best]                                           # (F, 3, 3)
        return beads[:, bead:bead + 1] + self._atoms[bead][chosen] @ np.swapaxes(turn, -1, -2)

    # ------------------------------------------------------------------ stage 2: minimisation
    def backmap(self, bead_positions, minimize: bool = True) -> BackmapResult:
        """Atoms for bead frames: fragments, then (``minimize`` and a System given) the restrained minimisation.

        Parameters
        ----------
        bead_positions : array_like or Quantity
            (frames, n_beads, 3) or (n_beads, 3) bead positions of one molecule, nm.
        minimize : bool
            Run the restrained minimisation with the fine force field.

        Returns
        -------
        BackmapResult
        """
        beads = self._checked_beads(bead_positions)
        atoms = self._place(beads)
        energies = None
        if minimize and self.system is not None:
            energies = np.zeros(len(beads))
            for frame in range(len(beads)):
                atoms[frame], energies[frame] = self._minimize(atoms[frame], beads[frame])
        deviation = np.linalg.norm(self.mapping.bead_positions(atoms) - beads, axis=-1).max(axis=-1)
        return BackmapResult(positions=atoms * NM, bead_deviation=deviation * NM,
                             potential_energy=None if energies is None else energies * u.kilojoule_per_mole)

    def minimize(self, atom_positions, bead_positions) -> tuple[u.Quantity, u.Quantity]:
        """Restrained minimisation of one structure: (positions (n_atoms, 3) nm, fine energy kJ/mol).

        Also the fair reference for backmapped energies: an MD frame minimised under the
        restraints to its own beads.
        """
        if self.system is None:
            raise ValueError("this Backmapper has no System: give the fine System to minimise")
        atoms = strip_array(atom_positions, NM, "atom_positions").astype(np.float64)
        if atoms.shape != (self.mapping.n_atoms, 3) or not np.isfinite(atoms).all():
            raise ValueError(f"atom_positions must be finite, of shape ({self.mapping.n_atoms}, 3), got {atoms.shape}")
        positions, energy = self._minimize(atoms, self._checked_beads(bead_positions)[0])
        return positions * NM, energy * u.kilojoule_per_mole

    def _minimize(self, atoms: np.ndarray, beads: np.ndarray) -> tuple[np.ndarray, float]:
        context, restraint = self._restrained_context()
        for bead in range(self.mapping.n_beads):
            restraint.setBondParameters(bead, [bead], [float(x) for x in beads[bead]])
        restraint.updateParametersInContext(context)
        context.setPositions(atoms)
        openmm.LocalEnergyMinimizer.minimize(context, self.tolerance, self.max_iterations)
        state = context.getState(getPositions=True, getEnergy=True, groups=~(1 << _RESTRAINT_GROUP) & 0xFFFFFFFF)
        return (state.getPositions(asNumpy=True).value_in_unit(u.nanometer),
                state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole))

    def _restrained_context(self) -> tuple[openmm.Context, openmm.CustomCentroidBondForce]:
        """One Context of the fine System plus a harmonic restraint on every bead centre (made once)."""
        if self._context is None:
            system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(self.system))
            restraint = openmm.CustomCentroidBondForce(1, "0.5*k_backmap*((x1-x0)^2+(y1-y0)^2+(z1-z0)^2)")
            restraint.addGlobalParameter("k_backmap", self.restraint)
            for name in ("x0", "y0", "z0"):
                restraint.addPerBondParameter(name)
            for bead, members in enumerate(self._members):
                restraint.addGroup([int(a) for a in members],
                                   [float(w) for w in self.mapping.atom_weights[members]])
                restraint.addBond([bead], [0.0, 0.0, 0.0])
            restraint.setForceGroup(_RESTRAINT_GROUP)
            system.addForce(restraint)
            platform = openmm.Platform.getPlatformByName(self.platform)
            properties = {"Threads": "1"} if self.platform == "CPU" else {}
            context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform, properties)
            self._context = (context, restraint)
        return self._context



def _fine_system(trajectory: FineTrajectory, name: str | None) -> openmm.System:
    """The fine System of a trajectory: ``name`` (a reference system), else its recorded system and parameters."""
    attrs = trajectory.attrs
    if name is None:
        name = attrs.get("cgml_system")
        reference = systems.rebuild(name, attrs.get("cgml_params") or {})
    else:
        reference = systems.load(name)
    if reference.n_atoms != trajectory.n_atoms:
        raise ValueError(f"the system {name!r} has {reference.n_atoms} atoms but {trajectory.path} "
                         f"{trajectory.n_atoms}")
    return reference.system
