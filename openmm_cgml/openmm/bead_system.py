"""The bead system a model runs on: which mapping fits, and the Topology/System/positions it gives.

``molecule_mapping`` is the one place that decides which atom-to-bead mapping
runs a model on a molecule (the model's own, its rule re-made for a new
molecule, or one given), with the atom-count, bond-graph, element and
atom-type checks. ``coarse_grained_system`` turns a fine structure into a bead
Topology, System and positions (``R`` replicas); ``reference_history`` turns
the end of a fine trajectory into a ``k``-frame start for
``CGMLIntegrator.setHistory``; ``check_bead_system`` checks a System against a
mapping before the integrator steps it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import torch

from openmm_cgml.mapping import Mapping, periodic_marker
from openmm_cgml.structure import element_types, read_structure
from openmm_cgml.units import whole_number

__all__ = [
    "CoarseGrainedSystem",
    "coarse_grained_system",
    "molecule_mapping",
    "mapping_rule",
    "reference_history",
    "check_bead_system",
    "as_model",
]

# Mapping rules that depend only on the molecule (plus a stored seed), so they can be re-made for a new one.
_REMAKEABLE = ("metis", "residue", "backbone")


def as_model(model):
    """A ``CGModel``, from itself or from the path of an exported model file.

    Parameters
    ----------
    model : CGModel or str or os.PathLike

    Returns
    -------
    CGModel

    Raises
    ------
    ValueError
        If ``model`` is neither.
    """
    if isinstance(model, (str, os.PathLike)):
        from openmm_cgml.model_file import load

        return load(model)
    for name in ("module", "mapping", "step", "embed_mapping"):
        if not hasattr(model, name):
            raise ValueError(
                f"model must be a CGModel from openmm_cgml.load(path) or a path to an exported model; "
                f"got {type(model).__name__} without .{name}"
            )
    return model


@dataclass
class CoarseGrainedSystem:
    """What ``coarse_grained_system`` returns: everything a Simulation over beads needs.

    Attributes
    ----------
    topology : openmm.app.Topology
        ``replicas`` copies of the bead molecule (one residue and atom per bead, coarse bonds).
    system : openmm.System
        The bead particles with the bead masses, no forces; it remembers its mapping (``cgml_mapping``).
    positions : Quantity
        Starting bead positions, compatible with nanometers.
    bead_features : torch.Tensor
        Per-molecule features from ``model.embed`` ``(n_beads, F)``.
    mapping : Mapping
        The atom-to-bead mapping of one molecule.
    replicas : int
    """

    topology: app.Topology
    system: openmm.System
    positions: u.Quantity
    bead_features: torch.Tensor
    mapping: object
    replicas: int


def mapping_rule(model):
    """The rule the model's mapping was made with, if it can be re-made for another molecule.

    Read by :attr:`CGModel.mapping_rule <openmm_cgml.model_file.CGModel.mapping_rule>` (the file's
    ``mapping_rule``, else its own mapping's, else its training data's). Only rules that depend on the
    molecule alone ("metis" with its seed, "residue", "backbone") can be re-made.

    Parameters
    ----------
    model : CGModel or path

    Returns
    -------
    tuple of (str, dict) or None
        ``(method, params)`` for ``Mapping.build``, or None if the rule cannot be re-made.
    """
    rule = as_model(model).mapping_rule
    return rule if rule is not None and rule[0] in _REMAKEABLE else None


def _type_masses(model) -> np.ndarray:
    """The model's mass (amu) per atom type; 0 = a type never seen in training."""
    table = getattr(model.module, "type_masses", None)  # CGModel has no public property for it yet
    if table is None:
        raise ValueError("the exported model has no 'type_masses' table: re-export it with `cgml export`")
    return table.detach().cpu().double().numpy()


def _check_vocabulary(model, types: np.ndarray, topology: app.Topology, where: str) -> None:
    """ValueError naming the first atom whose type the model's embedding never saw."""
    table = _type_masses(model)
    unseen = (types < 0) | (types >= len(table))
    unseen[~unseen] = table[types[~unseen]] <= 0
    if unseen.any():
        index = int(np.flatnonzero(unseen)[0])
        atom = list(topology.atoms())[index]
        known = np.flatnonzero(table > 0).tolist()
        raise ValueError(
            f"{where}: atom {index} ({atom.name}) has type {int(types[index])}, which the model never saw in "
            f"training (its atom types: {known}); atom types are atomic numbers unless given "
            "(atom_types=, or a fine trajectory .h5 / system YAML that carries them)")


def _given_mapping(model, topology: app.Topology, types, mapping) -> Mapping:
    """An explicit mapping (a Mapping or a mapping file), checked against the molecule and the model."""
    if not isinstance(mapping, Mapping):
        # a saved Mapping (to_json) carries its own masses and types; a list of beads takes the model's
        # mass per type (types it never saw are refused just below, from the mapping's atom types)
        given = types if types is not None else element_types(topology)
        table = _type_masses(model)
        known = (given >= 0) & (given < len(table))
        masses = np.where(known, table[np.where(known, given, 0)], 0.0)
        mapping = Mapping.from_file(mapping, topology, np.where(masses > 0, masses, 1.0), atom_types=types)
    mapping.check_fits(topology, where="the given mapping")
    if types is not None and not np.array_equal(types, mapping.atom_types):
        raise ValueError("atom_types differ from the given mapping's atom types")
    _check_vocabulary(model, mapping.atom_types, topology, "the given mapping")
    if model.n_beads and mapping.n_beads % model.n_beads:
        raise ValueError(f"the given mapping has {mapping.n_beads} beads; this model is molecule-specific "
                         f"({model.n_beads} beads per molecule)")
    return mapping


def _types_are_elements(mapping: Mapping) -> bool:
    """Whether a mapping's atom types are atomic numbers: made from elements, or each type's element has the
    atom's mass (within 5 %). Given types that are not (e.g. polymer bead types) cannot be checked from a PDB."""
    if mapping.params.get("atom_types_from") == "element":
        return True
    types = mapping.atom_types
    if types.min() < 1 or types.max() > 118:
        return False
    masses = np.array([app.element.Element.getByAtomicNumber(int(t)).mass.value_in_unit(u.dalton)
                       for t in types])
    return bool(np.allclose(masses, mapping.atom_masses, rtol=0.05))


def _own_mapping_mismatch(model, topology: app.Topology, types):
    """Why the model's own mapping does not fit the molecule, or None if it does."""
    own = model.mapping
    if own is None:
        return "the model file carries no mapping"
    try:
        own.check_fits(topology, where="the model's mapping")
    except ValueError as error:
        return str(error)
    if types is not None and not np.array_equal(types, own.atom_types):
        differ = int(np.flatnonzero(types != own.atom_types)[0])
        return (f"the model's mapping does not fit: atom {differ} has type {int(types[differ])} "
                f"but {int(own.atom_types[differ])} in the model's mapping")
    if types is None and _types_are_elements(own):
        # No types from the structure means atomic numbers. check_fits compares elements only for a mapping
        # made from elements; a mapping made with given types (e.g. from a fine .h5 whose types are atomic
        # numbers) or by hand would otherwise accept any molecule with the same bond graph.
        elements = element_types(topology)
        if not np.array_equal(elements, own.atom_types):
            differ = int(np.flatnonzero(elements != own.atom_types)[0])
            atom = list(topology.atoms())[differ]
            return (f"the model's mapping does not fit: atom {differ} ({atom.name}) has atomic number "
                    f"{int(elements[differ])} but type {int(own.atom_types[differ])} in the model's mapping "
                    "(if the model's atom types are not atomic numbers, pass atom_types=, or a fine "
                    "trajectory .h5 / system YAML that carries them)")
    return None


def _remade_mapping(model, topology: app.Topology, types, rule, mismatch: str) -> Mapping:
    """The model's mapping rule applied to a molecule its own mapping does not fit (transferable models)."""
    if model.n_beads:
        raise ValueError(f"{mismatch}; this model is molecule-specific ({model.n_beads} beads, trained on one "
                         "molecule), so it cannot be transferred to another molecule")
    if rule is None:
        raise ValueError(f"{mismatch}, and the model's mapping rule cannot be re-made for another molecule "
                         "(only metis and residue mappings can); pass mapping= (a Mapping or mapping file)")
    method, params = rule
    if params.get("atom_types_from") == "given" and types is None:
        raise ValueError(f"{mismatch}; the model's atom types are not atomic numbers (its {method} mapping was "
                         "made with given atom types): pass atom_types=, or a fine trajectory (.h5) or system "
                         "YAML that carries them")
    own = model.mapping
    if method == "metis" and params.get("n_beads") is not None and own is not None \
            and topology.getNumAtoms() != own.n_atoms:
        raise ValueError(f"{mismatch}; the model's metis mapping fixes the total bead count (n_beads="
                         f"{params['n_beads']}), which is a different resolution for a molecule of another size: "
                         "pass mapping=")
    given = types if types is not None else element_types(topology)
    _check_vocabulary(model, given, topology, "the molecule")
    params.pop("atom_types_from", None)
    # masses per type from the model: what it was trained with, and what its embedding assumes
    return Mapping.build(method, topology, _type_masses(model)[given], atom_types=types, **params)


def molecule_mapping(model, topology: app.Topology, atom_types=None, mapping=None) -> Mapping:
    """The atom-to-bead mapping to run ``model`` on the molecule(s) of ``topology``.

    In order:

    * ``mapping`` given (a :class:`Mapping`, or a mapping file path): it is
      checked against the topology and used.
    * The model's own mapping, if the molecule fits it.
    * Otherwise, for a transferable model (``n_beads == 0``: trained on
      several molecules, or exported as transferable) whose mapping rule can
      be re-made (see :func:`mapping_rule`), the rule is applied to this
      molecule, deterministically (the stored METIS seed), with the model's
      mass per atom type.
    * Anything else is a ``ValueError`` naming the mismatch.

    Parameters
    ----------
    model : CGModel or path
    topology : openmm.app.Topology
        The fine-grained molecule(s).
    atom_types : array_like of int, optional
        ``(n_atoms,)``; default atomic numbers. Every type must be one the model saw in training.
    mapping : Mapping or path, optional
        An explicit mapping.

    Returns
    -------
    Mapping
    """
    model = as_model(model)
    types = None if atom_types is None else np.asarray(atom_types, dtype=np.int64).reshape(-1)
    if types is not None and len(types) != topology.getNumAtoms():
        raise ValueError(f"atom_types has {len(types)} entries but the topology has {topology.getNumAtoms()} atoms")
    if mapping is not None:
        return _given_mapping(model, topology, types, mapping)
    rule = mapping_rule(model)
    if not model.n_beads and types is None and rule is not None and rule[1].get("atom_types_from") == "given":
        # A transferable model of non-element types (e.g. polymer bead types): another sequence has the
        # same bond graph, so without types the molecule cannot be told from the model's own.
        raise ValueError("this transferable model uses given atom types (not atomic numbers), which a PDB does "
                         "not carry: pass atom_types=, or a fine trajectory (.h5) or system YAML that carries them")
    mismatch = _own_mapping_mismatch(model, topology, types)
    if mismatch is None:
        return model.mapping
    return _remade_mapping(model, topology, types, rule, mismatch)


def _replicate_topology(topology: app.Topology, replicas: int) -> app.Topology:
    top = app.Topology()
    for r in range(replicas):
        for chain in topology.chains():
            new_chain = top.addChain(chain.id if replicas == 1 else f"{chain.id or 'A'}{r}")
            atoms = {}
            for residue in chain.residues():
                new_residue = top.addResidue(residue.name, new_chain, residue.id)
                for atom in residue.atoms():
                    atoms[atom] = top.addAtom(atom.name, atom.element, new_residue)
            for bond in topology.bonds():
                if bond[0] in atoms and bond[1] in atoms:
                    top.addBond(atoms[bond[0]], atoms[bond[1]])
    top.setPeriodicBoxVectors(topology.getPeriodicBoxVectors())
    return top


def _replicate(topology: app.Topology, system: openmm.System, positions: np.ndarray, replicas: int,
               periodic: bool):
    """R copies of a one-molecule bead topology/system; non-periodic copies are set side by side in x."""
    out = openmm.System()
    for _ in range(replicas):
        for i in range(system.getNumParticles()):
            out.addParticle(system.getParticleMass(i))
    out.setDefaultPeriodicBoxVectors(*system.getDefaultPeriodicBoxVectors())
    for i in range(system.getNumForces()):  # bead systems carry no forces, but keep e.g. a CMMotionRemover
        if replicas == 1 or isinstance(system.getForce(i), openmm.CMMotionRemover):
            out.addForce(openmm.XmlSerializer.clone(system.getForce(i)))
    if periodic and not out.usesPeriodicBoundaryConditions():
        out.addForce(periodic_marker())
    if periodic:
        # one box for all: the model's batch vector already keeps replicas apart
        stacked = np.concatenate([positions] * replicas)
    else:
        extent = float(np.ptp(positions[:, 0])) if len(positions) else 0.0
        shift = np.array([extent + 1.0, 0.0, 0.0])
        stacked = np.concatenate([positions + r * shift for r in range(replicas)])
    return _replicate_topology(topology, replicas), out, stacked


def coarse_grained_system(model, pdb_or_topology, positions=None, replicas: int = 1, *, mapping=None,
                          atom_types=None) -> CoarseGrainedSystem:
    """Build the bead topology, bead system and starting bead positions for ``model``.

    The mapping is the model's own if the molecule fits it; a transferable
    model re-makes its mapping rule for a new molecule; an explicit
    ``mapping`` overrides both (see :func:`molecule_mapping`). Anything that
    does not fit is a ``ValueError`` naming the mismatch. The returned System
    remembers its mapping, so a ``CGMLIntegrator`` in a Context of it uses the
    same one.

    Parameters
    ----------
    model : CGModel or path
    pdb_or_topology : str, os.PathLike or openmm.app.Topology
        A fine-grained structure file (PDB/PDBx, a fine trajectory .h5 or a
        reference system name/YAML) or a Topology (then ``positions`` are required).
    positions : Quantity compatible with nanometers, or array in nm, optional
        ``(n_atoms, 3)``; default: the file's.
    replicas : int
        Independent copies in one System, a whole number >= 1 (not a bool); the integrator
        simulates them as one batch.
    mapping : Mapping or path, optional
        An explicit mapping (a Mapping or a mapping file).
    atom_types : array_like of int, optional
        ``(n_atoms,)``; default: from the file if it has them, else atomic numbers.

    Returns
    -------
    CoarseGrainedSystem
    """
    model = as_model(model)
    if whole_number(replicas, "replicas") < 1:   # whole_number refuses bools, strings and fractions
        raise ValueError(f"replicas must be a whole number >= 1, got {replicas!r}")
    replicas = int(replicas)
    topology, atoms, box, file_types = read_structure(pdb_or_topology, positions)
    try:
        mapping = molecule_mapping(model, topology, atom_types if atom_types is not None else file_types, mapping)
    except ValueError as error:
        if isinstance(pdb_or_topology, app.Topology):
            raise
        # name the file: "the topology has 4 atoms" alone does not say which input was wrong
        raise ValueError(f"structure file {os.fspath(pdb_or_topology)}: {error}") from None
    if atoms.shape != (mapping.n_atoms, 3):
        raise ValueError(f"positions have shape {atoms.shape}, the mapping expects ({mapping.n_atoms}, 3)")
    finite = np.isfinite(atoms).all(axis=1)
    if not finite.all():  # a NaN start would only surface steps later, as an "unstable rollout"
        bad = int(np.flatnonzero(~finite)[0])
        where = "positions" if positions is not None or isinstance(pdb_or_topology, app.Topology) \
            else f"structure file {os.fspath(pdb_or_topology)}"
        raise ValueError(f"{where}: atom {bad} has non-finite coordinates {atoms[bad].tolist()} nm")
    beads = np.asarray(mapping.bead_positions(atoms, box=box), dtype=np.float64)
    top, system, stacked = _replicate(mapping.bead_topology(box), mapping.bead_system(box), beads, replicas,
                                      periodic=box is not None)
    system.cgml_mapping = mapping  # read by the integrator through Context._system
    return CoarseGrainedSystem(
        topology=top, system=system, positions=u.Quantity(stacked, u.nanometer),
        bead_features=model.embed_mapping(mapping), mapping=mapping, replicas=replicas,
    )


def reference_history(model, trajectory, end: int = -1, mapping=None) -> u.Quantity:
    """The ``k`` bead frames ending at frame ``end`` of a fine trajectory, one model step apart.

    The molecule is mapped as in :func:`coarse_grained_system`; the
    trajectory's save stride must divide the model's
    ``md_steps_per_model_step`` and its MD time step must be the model's.

    Parameters
    ----------
    model : CGModel or path
    trajectory : str, os.PathLike or FineTrajectory
        A fine HDF5 file from ``cgml generate`` (path or open ``FineTrajectory``).
    end : int
        Index of the last frame (negative counts from the end).
    mapping : Mapping or path, optional
        Overrides the mapping :func:`molecule_mapping` would choose.

    Returns
    -------
    Quantity
        ``(k, n_beads, 3)`` compatible with nanometers, for ``CGMLIntegrator.setHistory``: a start without warm-up.
    """
    from openmm_cgml.trajectory import FineTrajectory

    model = as_model(model)
    if not isinstance(trajectory, FineTrajectory):
        with FineTrajectory(trajectory) as opened:
            return reference_history(model, opened, end, mapping)
    mapping = molecule_mapping(model, trajectory.topology, trajectory.atom_types, mapping)
    md_steps, stride = model.md_steps_per_model_step, int(trajectory.stride)
    if stride <= 0 or md_steps % stride:
        raise ValueError(f"the trajectory saves every {stride} MD steps, which does not divide the model step "
                         f"of {md_steps} MD steps")
    md_timestep_ps = model.md_timestep.value_in_unit(u.picosecond)
    if not np.isclose(trajectory.timestep_ps, md_timestep_ps, rtol=1e-6):
        raise ValueError(f"the trajectory's MD time step {trajectory.timestep_ps} ps differs from the model's "
                         f"{md_timestep_ps} ps")
    lag, k, n = md_steps // stride, model.k, trajectory.n_frames
    last = end % n if -n <= end < n else None
    if last is None or last - (k - 1) * lag < 0:
        raise ValueError(f"frame {end} with k={k} frames {lag} apart needs {(k - 1) * lag + 1} frames up to it; "
                         f"the trajectory has {n}")
    frames = list(range(last - (k - 1) * lag, last + 1, lag))
    atoms = np.asarray(trajectory.positions[frames], dtype=np.float64)
    box = None
    if trajectory.is_periodic:
        box = np.stack([trajectory.box_vectors(f) for f in frames])
    return u.Quantity(mapping.bead_positions(atoms, box=box), u.nanometer)


def check_bead_system(system: openmm.System, mapping: Mapping) -> int:
    """Check that ``system`` holds whole copies of ``mapping``'s bead molecule; return the number of copies.

    Parameters
    ----------
    system : openmm.System
        The System a ``CGMLIntegrator`` is asked to step.
    mapping : Mapping
        The mapping of one molecule.

    Returns
    -------
    int
        Replicas: ``system.getNumParticles() // mapping.n_beads``.

    Raises
    ------
    ValueError
        Particle count not a multiple of the bead count, massless particles or virtual sites, or particle
        masses that are not the mapping's bead masses.
    """
    n_particles = system.getNumParticles()
    n_beads = int(mapping.n_beads)
    if n_particles == 0 or n_particles % n_beads:
        raise ValueError(
            f"the System has {n_particles} particles; the mapping has {n_beads} beads per molecule, "
            "so the System must hold a whole number of copies (use coarse_grained_system, and pass "
            "CGMLIntegrator(..., mapping=cg.mapping) if the System was copied or serialised)"
        )
    masses = np.array([system.getParticleMass(i).value_in_unit(u.dalton) for i in range(n_particles)])
    for i in range(n_particles):
        if system.isVirtualSite(i) or masses[i] <= 0:
            raise ValueError(f"particle {i} is massless or a virtual site: not a bead system")
    replicas = n_particles // n_beads
    expected = np.tile(mapping.bead_masses, replicas)
    if not np.allclose(masses, expected, rtol=1e-4):
        bead = int(np.flatnonzero(~np.isclose(masses, expected, rtol=1e-4))[0])
        raise ValueError(
            f"particle {bead} has mass {masses[bead]:g} amu but bead {bead % n_beads} of the mapping has "
            f"{expected[bead]:g} amu: the System was built for another molecule; pass "
            "CGMLIntegrator(..., mapping=cg.mapping) with the mapping it was built with")
    return replicas
