"""An exported coarse-grained propagator as a drop-in OpenMM integrator.

``CGMLIntegrator`` advances bead particles with a learned stochastic
propagator: one ``step`` is one *model* step (typically hundreds to thousands
of MD steps), taken by the TorchScript model from the last ``k`` bead
configurations. It is an ``openmm.CustomIntegrator`` subclass, so it works with
``openmm.app.Simulation``, every reporter, checkpoints and ``saveState``::

    model = openmm_cgml.load("model.pt")
    cg = openmm_cgml.coarse_grained_system(model, "start.pdb", replicas=4)
    integrator = openmm_cgml.CGMLIntegrator(model, temperature=300 * kelvin, seed=1)
    simulation = Simulation(cg.topology, cg.system, integrator, platform)
    simulation.context.setPositions(cg.positions)
    simulation.step(1000)

How it stays correct (see docs/integrator.md):

* The whole dynamic state lives in the Context: the current positions, the
  ``k``-frame history in per-DOF variables ``cgml_x0 .. cgml_x{k-1}``
  (oldest .. current), and the integers ``cgml_seed``, ``cgml_model_step``
  (the noise counter), ``cgml_warmup_left`` and ``cgml_sync`` (a token that
  changes on every write), each as two 24-bit globals ``NAME_hi``/``NAME_lo``
  so that even a single-precision platform holds them exactly. Checkpoints and ``saveState`` therefore carry it, and a
  resume is bit-exact.
* ``step(n)`` runs ``n`` model steps as one torch rollout on the platform's
  device (positions stay there) and syncs with the Context once at the end;
  the Context's time and step count are advanced by ``n`` model steps, so
  reporters print true simulated time.
* A ``cgml_sync`` token different from the one this object last wrote means
  the Context was restored (``loadCheckpoint``/``setState``): the history is
  re-read from the per-DOF variables. Positions different from the last ones
  produced mean the user moved the beads (``setPositions``, minimisation): the
  history restarts from the new structure (warm-up, see ``getWarmupSteps``).
* Noise is a pure function of ``(seed, model step index)``, so runs are
  reproducible and do not depend on how ``step`` calls are split.
"""
from __future__ import annotations

import gc
import json
import os
import random
import weakref
from dataclasses import dataclass
from typing import Optional

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import torch

from openmm_cgml.geometry import pair_distances_torch
from openmm_cgml.mapping import Mapping, periodic_marker
from openmm_cgml.units import strip, strip_array

__all__ = [
    "CGMLIntegrator",
    "CoarseGrainedSystem",
    "UnstableRolloutError",
    "coarse_grained_system",
    "rollout",
    "step_noise",
    "model_graph",
    "mapping_rule",
    "molecule_mapping",
    "periodic_marker",
    "reference_history",
]

# Integers live in OpenMM globals, which a single-precision GPU platform may hold
# as float32: store each as two exact 24-bit halves.
_HALF = 1 << 24
_MAX_SEED = _HALF * _HALF
_MASK64 = (1 << 64) - 1


# ----------------------------------------------------------------------------
# model access


def _as_model(model):
    """Accept a ``CGModel`` (from ``openmm_cgml.load``) or a path to an exported file."""
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


def _module_float(module, name: str) -> float:
    try:
        return float(getattr(module, name))
    except AttributeError:
        raise ValueError(f"the exported model has no '{name}' attribute: re-export it with `cgml export`") from None


# ----------------------------------------------------------------------------
# the bare torch rollout (one implementation, used by the integrator and the bench)


class UnstableRolloutError(RuntimeError):
    """A rollout produced a NaN or a bead collision.

    Attributes:

    * ``step``: the number of the step that produced the bad frame
      (``first_step + 1`` for the first step of a rollout; for the integrator,
      the Context step count the bad frame would have had);
    * ``beads``: global bead indices involved (empty when the model itself
      refused to go on, e.g. a NaN inside its refinement);
    * ``reason``: ``"nan"`` or ``"collision"``; ``distance``: nm, collisions only;
    * ``history``: the last good ``(k, N, 3)`` history; ``steps_done``: good
      steps completed before the bad one.
    """

    def __init__(self, message, *, step, beads, reason, distance, history, steps_done):
        super().__init__(message)
        self.step = step
        self.beads = beads
        self.reason = reason
        self.distance = distance
        self.history = history
        self.steps_done = steps_done


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_noise(generator: torch.Generator, seed: int, step: int, shape, dtype, device) -> torch.Tensor:
    """Standard normal noise for model step ``step``: a pure function of ``(seed, step)``.

    Re-seeding per step (about 10 us) is what makes a checkpoint resume
    bit-exact and the trajectory independent of how ``step(n)`` calls are split.
    """
    generator.manual_seed(_splitmix64(_splitmix64(int(seed)) ^ int(step)) >> 1)
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def _pair_distances(pos: torch.Tensor, n_replicas: int, box: Optional[torch.Tensor]) -> torch.Tensor:
    """(R, n, n) distances between the beads of each replica (minimum image if ``box``), inf on the diagonal."""
    d = pair_distances_torch(pos.view(n_replicas, -1, 3), box)
    d.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    return d


def _bad_frame(pos: torch.Tensor, n_replicas: int, collision_distance: float,
               box: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scalar bool tensor: NaN/inf anywhere, or two beads of one replica closer than the threshold."""
    bad = ~torch.isfinite(pos).all()
    if collision_distance > 0 and pos.shape[0] > n_replicas:
        bad = bad | (_pair_distances(pos, n_replicas, box).amin() < collision_distance)
    return bad


def _describe_bad_frame(pos: torch.Tensor, n_replicas: int, box: Optional[torch.Tensor] = None):
    """(reason, global bead indices, distance or None) for a frame ``_bad_frame`` flagged."""
    finite = torch.isfinite(pos).all(dim=1)
    if not bool(finite.all()):
        return "nan", torch.nonzero(~finite).flatten().tolist(), None
    d = _pair_distances(pos, n_replicas, box)
    n = d.shape[1]
    replica, rest = divmod(int(torch.argmin(d)), n * n)
    i, j = divmod(rest, n)
    return "collision", [replica * n + i, replica * n + j], float(d[replica, i, j])


# no_grad, not inference_mode: inference tensors (the returned history, anything a module caches
# during the call) raise "cannot be saved for backward" if they later meet autograd code.
@torch.no_grad()
def rollout(
    model,
    history: torch.Tensor,
    bead_features: torch.Tensor,
    edge_index: torch.Tensor,
    batch: torch.Tensor,
    box: torch.Tensor,
    n_steps: int,
    seed: int = 0,
    first_step: int = 0,
    refine: bool = True,
    collision_distance: float = 0.1,
    n_replicas: int = 1,
    check_every: int = 64,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Run ``n_steps`` model steps in torch and return the new ``(k, N, 3)`` history (nm).

    ``model`` is a ``CGModel`` (``openmm_cgml.load``); ``history[-1]`` is the
    current configuration; ``first_step`` is the model step index of the first
    step taken (it selects the noise, see ``step_noise``). Everything stays on ``history.device``. A NaN, or two beads
    of one replica closer than ``collision_distance`` nm (0 disables), raises
    ``UnstableRolloutError`` carrying the last good history; checks are
    gathered over ``check_every`` steps so a GPU rollout syncs rarely.
    """
    if generator is None:
        generator = torch.Generator(device=history.device)
    periodic_box = box if bool((box != 0).any()) else None  # for minimum-image collision checks
    k = history.shape[0]
    dtype, device = history.dtype, history.device
    shape = (model.noise_draws(refine),) + tuple(history.shape[1:])
    done = 0
    while done < n_steps:
        block = min(check_every, n_steps - done)
        start = history
        frames, flags = [], []
        model_error = None
        for i in range(block):
            noise = step_noise(generator, seed, first_step + done + i, shape, dtype, device)
            try:
                new = model.step(history, bead_features, edge_index, batch, box, noise, refine)
            except ValueError as error:
                # The model refuses non-finite input, also inside a step (e.g. a NaN
                # mean fed to its refinement): that is an unstable step, not bad input.
                if (flags and bool(torch.stack(flags).any())) or any(
                        word in str(error).lower() for word in ("nan", "infinite")):
                    model_error = str(error)
                    break
                raise
            frames.append(new)
            flags.append(_bad_frame(new, n_replicas, collision_distance, periodic_box))
            history = torch.cat([history[1:], new.unsqueeze(0)], dim=0)
        flagged = torch.stack(flags) if flags else torch.zeros(0, dtype=torch.bool, device=device)
        if model_error is not None or bool(flagged.any()):  # the only host sync of the block
            bad = int(torch.nonzero(flagged)[0]) if bool(flagged.any()) else len(frames)
            good = torch.cat([start] + [f.unsqueeze(0) for f in frames[:bad]], dim=0)[-k:]
            if bad < len(frames):
                reason, beads, distance = _describe_bad_frame(frames[bad], n_replicas, periodic_box)
            else:
                reason, beads, distance = "nan", [], None
            step = first_step + done + bad + 1
            if reason == "collision":
                what = (f"collision: beads {beads[0]} and {beads[1]} are {distance:.4f} nm apart "
                        f"(threshold {collision_distance} nm)")
            elif beads:
                what = f"NaN/inf positions for beads {beads[:10]}{' ...' if len(beads) > 10 else ''}"
            else:
                what = f"the model failed ({model_error})"
            raise UnstableRolloutError(
                f"rollout stopped at model step {step}: {what}",
                step=step, beads=beads, reason=reason, distance=distance,
                history=good, steps_done=done + bad,
            )
        done += block
    return history


def model_graph(mapping, n_replicas: int, device="cpu"):
    """Coarse bond ``edge_index`` (2, 2*C*R, both directions) and ``batch`` (N,) for R replicas.

    Replica ``r`` owns beads ``r*n_beads .. (r+1)*n_beads-1``; the batch
    vector keeps every model edge inside one replica.
    """
    n = int(mapping.n_beads)
    bonds = torch.as_tensor(np.asarray(mapping.coarse_bonds, dtype=np.int64).reshape(-1, 2))
    one = torch.cat([bonds.T, bonds.T.flip(0)], dim=1)
    edges = torch.cat([one + r * n for r in range(n_replicas)], dim=1) if n_replicas else one[:, :0]
    batch = torch.arange(n_replicas).repeat_interleave(n)
    return edges.to(device), batch.to(device)


# ----------------------------------------------------------------------------
# building the bead system


@dataclass
class CoarseGrainedSystem:
    """What ``coarse_grained_system`` returns: everything a Simulation over beads needs.

    ``topology``/``system`` hold ``replicas`` copies of the bead molecule;
    ``positions`` (Quantity, nm) the starting bead positions; ``bead_features``
    the per-molecule features from ``model.embed`` (n_beads, F).
    """

    topology: app.Topology
    system: openmm.System
    positions: u.Quantity
    bead_features: torch.Tensor
    mapping: object
    replicas: int


def _read_structure(pdb_or_topology, positions):
    """(topology, atom positions nm, box nm or None, atom types or None) from a structure or a Topology.

    Files are read with ``mapping.load_structure``: PDB/PDBx, a fine trajectory
    (.h5, first frame) or a reference system name/YAML; the last two carry
    atom types (e.g. the bead types of a polymer), a PDB does not.
    """
    if isinstance(pdb_or_topology, app.Topology):
        if positions is None:
            raise ValueError("positions are required when a Topology is given")
        box = pdb_or_topology.getPeriodicBoxVectors()
        box = None if box is None else np.asarray(box.value_in_unit(u.nanometer), dtype=np.float64)
        return pdb_or_topology, strip_array(positions, u.nanometer, "positions"), box, None
    from openmm_cgml.mapping import load_structure

    topology, file_positions, _, types, box = load_structure(os.fspath(pdb_or_topology))
    atoms = file_positions if positions is None else strip_array(positions, u.nanometer, "positions")
    return topology, atoms, box, (None if types is None else np.asarray(types, dtype=np.int64))


# Mapping rules that depend only on the molecule (plus a stored seed), so they can be re-made for a new one.
_REMAKEABLE = ("metis", "residue")


def mapping_rule(model):
    """``(method, params)`` of the rule the model's mapping was made with, or None if it cannot be re-made.

    Taken from the model's own mapping, or, for a model trained on several
    molecules (no single mapping in the file), from its training data's
    ``mapping_method``/``mapping_params``. Only rules that depend on the
    molecule alone ("metis" with its seed, "residue") can be re-made.
    """
    model = _as_model(model)
    own = model.mapping
    if own is not None:
        method, params = own.method, dict(own.params)
    else:
        attrs = ((model.metadata.get("training") or {}).get("data") or {}).get("attrs") or {}
        method, params = attrs.get("mapping_method"), attrs.get("mapping_params") or {}
        try:
            params = json.loads(params) if isinstance(params, str) else dict(params)
        except (json.JSONDecodeError, TypeError, ValueError):
            return None
    return (method, params) if method in _REMAKEABLE else None


def _type_masses(model) -> np.ndarray:
    """The model's mass (amu) per atom type; 0 = a type never seen in training."""
    table = getattr(model.module, "type_masses", None)
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


def molecule_mapping(model, topology: app.Topology, atom_types=None, mapping=None) -> Mapping:
    """The atom-to-bead mapping to run ``model`` on the molecule(s) of ``topology``.

    * ``mapping`` given (a :class:`Mapping`, or a mapping file path): it is
      checked against the topology and used.
    * The model's own mapping, if the molecule fits it.
    * Otherwise, for a transferable model (``n_beads == 0``: trained on
      several molecules, or exported as transferable) whose mapping rule can
      be re-made (see :func:`mapping_rule`), the rule is applied to this
      molecule, deterministically (the stored METIS seed), with the model's
      mass per atom type. ``atom_types`` default to atomic numbers; every
      type must be one the model saw in training.
    * Anything else is a ``ValueError`` naming the mismatch.
    """
    model = _as_model(model)
    n_model = int(getattr(model.module, "n_beads", 0))
    types = None if atom_types is None else np.asarray(atom_types, dtype=np.int64).reshape(-1)
    if types is not None and len(types) != topology.getNumAtoms():
        raise ValueError(f"atom_types has {len(types)} entries but the topology has {topology.getNumAtoms()} atoms")
    if mapping is not None:
        if not isinstance(mapping, Mapping):
            # a saved Mapping (to_json) carries its own masses and types; a list of beads takes the model's
            # mass per type (types it never saw are refused just below, from the mapping's atom types)
            given = types if types is not None else _element_types(topology)
            table = _type_masses(model)
            known = (given >= 0) & (given < len(table))
            masses = np.where(known, table[np.where(known, given, 0)], 0.0)
            mapping = Mapping.from_file(mapping, topology, np.where(masses > 0, masses, 1.0), atom_types=types)
        mapping.check_fits(topology, where="the given mapping")
        if types is not None and not np.array_equal(types, mapping.atom_types):
            raise ValueError("atom_types differ from the given mapping's atom types")
        _check_vocabulary(model, mapping.atom_types, topology, "the given mapping")
        if n_model and mapping.n_beads % n_model:
            raise ValueError(f"the given mapping has {mapping.n_beads} beads; this model is molecule-specific "
                             f"({n_model} beads per molecule)")
        return mapping
    own = model.mapping
    rule = mapping_rule(model)
    if not n_model and types is None and rule is not None and rule[1].get("atom_types_from") == "given":
        # A transferable model of non-element types (e.g. polymer bead types): another sequence has the
        # same bond graph, so without types the molecule cannot be told from the model's own.
        raise ValueError("this transferable model uses given atom types (not atomic numbers), which a PDB does "
                         "not carry: pass atom_types=, or a fine trajectory (.h5) or system YAML that carries them")
    mismatch = "the model file carries no mapping"
    if own is not None:
        try:
            own.check_fits(topology, where="the model's mapping")
            if types is not None and not np.array_equal(types, own.atom_types):
                differ = int(np.flatnonzero(types != own.atom_types)[0])
                raise ValueError(f"the model's mapping does not fit: atom {differ} has type {int(types[differ])} "
                                 f"but {int(own.atom_types[differ])} in the model's mapping")
            return own
        except ValueError as error:
            mismatch = str(error)
    if n_model:
        raise ValueError(f"{mismatch}; this model is molecule-specific ({n_model} beads, trained on one molecule), "
                         "so it cannot be transferred to another molecule")
    if rule is None:
        raise ValueError(f"{mismatch}, and the model's mapping rule cannot be re-made for another molecule "
                         "(only metis and residue mappings can); pass mapping= (a Mapping or mapping file)")
    method, params = rule
    if params.get("atom_types_from") == "given" and types is None:
        raise ValueError(f"{mismatch}; the model's atom types are not atomic numbers (its {method} mapping was "
                         "made with given atom types): pass atom_types=, or a fine trajectory (.h5) or system "
                         "YAML that carries them")
    if method == "metis" and params.get("n_beads") is not None and own is not None \
            and topology.getNumAtoms() != own.n_atoms:
        raise ValueError(f"{mismatch}; the model's metis mapping fixes the total bead count (n_beads="
                         f"{params['n_beads']}), which is a different resolution for a molecule of another size: "
                         "pass mapping=")
    given = types if types is not None else _element_types(topology)
    _check_vocabulary(model, given, topology, "the molecule")
    params.pop("atom_types_from", None)
    # masses per type from the model: what it was trained with, and what its embedding assumes
    return Mapping.build(method, topology, _type_masses(model)[given], atom_types=types, **params)


def _element_types(topology: app.Topology) -> np.ndarray:
    return np.array([a.element.atomic_number if a.element is not None else 0 for a in topology.atoms()],
                    dtype=np.int64)


def _replicate(topology: app.Topology, system: openmm.System, positions: np.ndarray, replicas: int,
               periodic: bool):
    """R copies of a one-molecule bead topology/system; non-periodic copies are set side by side in x."""
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
    return top, out, stacked


def coarse_grained_system(model, pdb_or_topology, positions=None, replicas: int = 1, *, mapping=None,
                          atom_types=None) -> CoarseGrainedSystem:
    """Build the bead topology, bead system and starting bead positions for ``model``.

    ``pdb_or_topology`` is a fine-grained structure file (PDB/PDBx, a fine
    trajectory .h5 or a reference system name/YAML) or an
    ``openmm.app.Topology`` (then ``positions`` are required, a Quantity or
    nm). The mapping is the model's own if the molecule fits it; a
    transferable model re-makes its mapping rule for a new molecule; an
    explicit ``mapping`` (Mapping or file) overrides both (see
    :func:`molecule_mapping`). ``atom_types`` (n_atoms,) override the atom
    types (default: from the file if it has them, else atomic numbers).
    Anything that does not fit is a ``ValueError`` naming the mismatch.
    ``replicas`` independent copies go into one system; the integrator
    simulates them as one batch. The returned System remembers its mapping,
    so a ``CGMLIntegrator`` in a Context of it uses the same one.
    """
    model = _as_model(model)
    if int(replicas) != replicas or replicas < 1:
        raise ValueError(f"replicas must be a positive integer, got {replicas!r}")
    replicas = int(replicas)
    topology, atoms, box, file_types = _read_structure(pdb_or_topology, positions)
    mapping = molecule_mapping(model, topology, atom_types if atom_types is not None else file_types, mapping)
    if atoms.shape != (mapping.n_atoms, 3):
        raise ValueError(f"positions have shape {atoms.shape}, the mapping expects ({mapping.n_atoms}, 3)")
    beads = np.asarray(mapping.bead_positions(atoms, box=box), dtype=np.float64)
    top, system, stacked = _replicate(mapping.bead_topology(box), mapping.bead_system(box), beads, replicas,
                                      periodic=box is not None)
    system.cgml_mapping = mapping  # read by CGMLIntegrator._setup through Context._system
    return CoarseGrainedSystem(
        topology=top, system=system, positions=u.Quantity(stacked, u.nanometer),
        bead_features=model.embed_mapping(mapping), mapping=mapping, replicas=replicas,
    )


def reference_history(model, trajectory, end: int = -1, mapping=None) -> u.Quantity:
    """The ``k`` bead frames ending at frame ``end`` of a fine trajectory, one model step apart.

    ``trajectory`` is a fine HDF5 file from ``cgml generate`` (path or open
    ``FineTrajectory``); its molecule is mapped as in
    :func:`coarse_grained_system` (``mapping`` overrides); its save stride must divide
    the model's ``md_steps_per_model_step``. Returns a ``(k, n_beads, 3)``
    Quantity (nm) for ``CGMLIntegrator.setHistory``: a start without warm-up.
    """
    from openmm_cgml.trajectory import FineTrajectory

    model = _as_model(model)
    if not isinstance(trajectory, FineTrajectory):
        with FineTrajectory(trajectory) as opened:
            return reference_history(model, opened, end, mapping)
    mapping = molecule_mapping(model, trajectory.topology, trajectory.atom_types, mapping)
    md_steps, stride = int(model.md_steps_per_model_step), int(trajectory.stride)
    if stride <= 0 or md_steps % stride:
        raise ValueError(f"the trajectory saves every {stride} MD steps, which does not divide the model step "
                         f"of {md_steps} MD steps")
    if not np.isclose(trajectory.timestep_ps, float(model.module.md_timestep_ps), rtol=1e-6):
        raise ValueError(f"the trajectory's MD time step {trajectory.timestep_ps} ps differs from the model's "
                         f"{float(model.module.md_timestep_ps)} ps")
    lag, k, n = md_steps // stride, int(model.k), trajectory.n_frames
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


# ----------------------------------------------------------------------------
# the integrator


class CGMLIntegrator(openmm.CustomIntegrator):
    """An exported learned propagator as an OpenMM integrator over bead particles.

    Parameters
    ----------
    model : CGModel or path
        From ``openmm_cgml.load(path)`` (or the path itself).
    temperature : Quantity or float (K), optional
        Must equal the model's training temperature (default: that
        temperature): a learned propagator samples the ensemble it was trained
        on and has no thermostat to change it.
    seed : int
        Random seed, 0 <= seed < 2**48. Same seed, same start: same trajectory.
    refine : bool
        Use the model's score-based refinement after each step (if it has one).
    collision_distance : Quantity or float (nm)
        Stop with ``UnstableRolloutError`` when two beads of one replica come
        closer than this (default 0.1 nm); 0 disables the check. NaNs always stop.
    check_every : int
        Model steps between guard checks inside one ``step(n)`` (host syncs on GPU).
    mapping : Mapping, optional
        The molecule's mapping. Default: the one ``coarse_grained_system``
        built the Context's System with (it remembers it), else the model's own.

    ``getStepSize()`` is the model time step. The Context may hold ``R`` copies
    of the mapped molecule (see ``coarse_grained_system(..., replicas=R)``).

    Threads: on the CPU the model runs with torch's global thread count
    (``torch.get_num_threads()``; ``OMP_NUM_THREADS`` or
    ``torch.set_num_threads``), which the integrator does not change. Set it
    before stepping: ``openmm_cgml.train`` sets it for training, and that
    setting stays in force in the same process. For one small molecule 1-2
    threads are fastest; OpenMM's own CPU threads are idle during a model step.
    """

    def __init__(self, model, temperature=None, seed: int = 0, refine: bool = True,
                 collision_distance=0.1 * u.nanometer, check_every: int = 64, mapping=None):
        model = _as_model(model)
        module = model.module
        self._model = model
        self._k = int(getattr(module, "k", 0))
        if self._k < 1:
            raise ValueError(f"the exported model has an invalid history length k={self._k}")
        self._dt = _module_float(module, "model_dt_ps")
        trained = _module_float(module, "temperature_K")
        if temperature is not None:
            kelvin = strip(temperature, u.kelvin, "temperature")
            if abs(kelvin - trained) > 0.5:
                raise ValueError(
                    f"temperature {kelvin:g} K does not match the model's training temperature {trained:g} K; "
                    "a learned propagator samples the ensemble it was trained on: train a model at this temperature"
                )
        self._temperature = trained
        if mapping is not None and not isinstance(mapping, Mapping):
            raise ValueError(f"mapping must be an openmm_cgml.mapping.Mapping, got {type(mapping).__name__}")
        self._mapping = mapping
        n_model = int(getattr(module, "n_beads", 0))
        for candidate in (mapping, model.mapping):
            if candidate is not None and n_model and int(candidate.n_beads) % n_model:
                raise ValueError(f"model expects {n_model} beads per molecule but the mapping has "
                                 f"{candidate.n_beads}")
        seed = int(seed)
        if not 0 <= seed < _MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**48), got {seed}")
        self._refine = bool(refine)
        self._collision = strip(collision_distance, u.nanometer, "collision_distance")
        self._check_every = max(1, int(check_every))

        super().__init__(self._dt)
        # Empty program: OpenMM never integrates; step() below does. The state
        # lives in these variables so checkpoints and saveState carry it.
        for j in range(self._k):
            self.addPerDofVariable(f"cgml_x{j}", 0.0)
        for name, value in (("cgml_seed", seed), ("cgml_model_step", 0), ("cgml_warmup_left", self._k - 1),
                            ("cgml_sync", 0)):  # cgml_sync 0 = never stepped
            self.addGlobalVariable(f"{name}_hi", float(value // _HALF))
            self.addGlobalVariable(f"{name}_lo", float(value % _HALF))
        self.addComputeGlobal("cgml_sync_lo", "cgml_sync_lo")  # a no-op, so the program is not empty

        self._context_ref = None
        self._bound = None  # per-Context torch setup, see _setup
        self._history = None  # (k, N, 3) torch tensor on the device: the truth between syncs
        self._token = None
        self._last_positions = None  # numpy (N, 3) written to the Context last

    # -- public API -----------------------------------------------------------

    def getModel(self):
        """The ``CGModel`` this integrator runs."""
        return self._model

    def getTemperature(self):
        """The model's training temperature (Quantity, K)."""
        return self._temperature * u.kelvin

    def getHistoryLength(self) -> int:
        """``k``: the number of configurations the model looks at."""
        return self._k

    def getDevice(self) -> torch.device:
        """The torch device the rollout runs on (the Context's GPU on the CUDA platform, else the CPU)."""
        return self._setup(self._context())["device"]

    def getSeed(self) -> int:
        return self._get_int("cgml_seed")

    def getWarmupSteps(self) -> int:
        """Model steps left before the history holds only model-generated frames.

        After a start from one structure (or ``setPositions``) the history is
        ``k`` copies of that structure (beads at rest); the first ``k-1``
        frames carry that artificial past. Discard them as equilibration, or
        start from real frames with ``setHistory``.
        """
        return self._get_int("cgml_warmup_left")

    def getHistory(self) -> u.Quantity:
        """The ``(k, N, 3)`` history (oldest first, last = current positions), nm."""
        context = self._context()
        self._sync_in(context)
        return u.Quantity(self._history.detach().cpu().double().numpy(), u.nanometer)

    def setHistory(self, frames) -> None:
        """Start from real frames: the last ``k`` bead configurations, oldest first.

        ``frames`` is ``(F, N, 3)`` or ``(F, n_beads, 3)`` (then copied to every
        replica) with ``F >= k`` frames spaced by one model step, in nm or a
        Quantity; only the last ``k`` are used. Sets the Context positions to
        the last frame; no warm-up follows.
        """
        context = self._context()
        setup = self._setup(context)
        array = strip_array(frames, u.nanometer, "history frames")
        if array.ndim != 3:
            raise ValueError(f"history frames must have shape (frames, beads, 3), got {array.shape}")
        n_mol = setup["n_beads"]
        if array.shape[1] == n_mol and setup["replicas"] > 1:
            array = np.tile(array, (1, setup["replicas"], 1))
        if array.shape[1] != setup["n_particles"]:
            raise ValueError(
                f"history frames have {array.shape[1]} beads; the Context has {setup['n_particles']} "
                f"({setup['replicas']} replicas of {n_mol})"
            )
        if array.shape[0] < self._k:
            raise ValueError(f"the model needs k={self._k} history frames, got {array.shape[0]}")
        state = self._read_globals()
        self._history = torch.as_tensor(array[-self._k:], dtype=setup["dtype"], device=setup["device"])
        state["warmup_left"] = 0
        self._sync_out(context, state, advanced=0)

    # -- stepping -------------------------------------------------------------

    def step(self, steps: int) -> None:
        """Advance ``steps`` model steps (``steps * getStepSize()`` of simulated time)."""
        steps = int(steps)
        if steps <= 0:
            return
        context = self._context()
        state = self._sync_in(context)
        setup = self._bound
        try:
            self._history = rollout(
                self._model, self._history, setup["features"], setup["edge_index"], setup["batch"],
                setup["box"], steps, seed=state["seed"], first_step=state["model_step"], refine=self._refine,
                collision_distance=self._collision, n_replicas=setup["replicas"],
                check_every=self._check_every, generator=setup["generator"],
            )
            advanced = steps
        except UnstableRolloutError as error:
            # keep the last good state in the Context, then report which beads failed
            self._history = error.history
            self._sync_out(context, state, advanced=error.steps_done)
            bad_step = context.getStepCount() + 1
            raise UnstableRolloutError(
                self._explain(error, context, bad_step), step=bad_step, beads=error.beads, reason=error.reason,
                distance=error.distance, history=error.history, steps_done=error.steps_done,
            ) from None
        self._sync_out(context, state, advanced=advanced)

    def _explain(self, error, context, bad_step: int) -> str:
        names = list(getattr(self._bound["mapping"], "bead_names", []) or [])
        n = self._bound["n_beads"]
        described = []
        for b in error.beads[:10]:
            replica, index = divmod(b, n)
            name = f" {names[index]}" if index < len(names) else ""
            described.append(f"{b} (replica {replica}, bead {index}{name})")
        if error.reason == "collision":
            what = (f"beads came {error.distance:.4f} nm apart, closer than the collision threshold "
                    f"{self._collision:g} nm")
        elif error.beads:
            what = "the model produced NaN/inf positions"
        else:
            what = str(error).split(": ", 1)[-1]  # the model's own message
        more = f" and {len(error.beads) - 10} more" if len(error.beads) > 10 else ""
        beads = f"; beads: {', '.join(described)}{more}" if described else ""
        return (f"CGMLIntegrator stopped at model step {bad_step}: {what}{beads}. "
                f"The Context keeps the last good state (step {bad_step - 1}, "
                f"time {context.getTime().value_in_unit(u.picosecond):g} ps).")

    # -- Context binding and sync ---------------------------------------------

    def _context(self) -> openmm.Context:
        context = self._context_ref() if self._context_ref is not None else None
        if context is not None and getattr(context, "_integrator", None) is self:
            return context
        # openmm.Context keeps ``self._integrator``: find the Context that owns us
        for ref in gc.get_referrers(self):
            candidates = [ref] if isinstance(ref, openmm.Context) else []
            if isinstance(ref, dict):
                candidates = [c for c in gc.get_referrers(ref) if isinstance(c, openmm.Context)]
            for candidate in candidates:
                if getattr(candidate, "_integrator", None) is self:
                    self._context_ref = weakref.ref(candidate)
                    self._bound = None
                    self._history = None
                    self._token = None
                    return candidate
        raise ValueError(
            "CGMLIntegrator is not bound to a Context: create openmm.app.Simulation(topology, system, "
            "integrator, platform) or openmm.Context(system, integrator) first"
        )

    def _setup(self, context) -> dict:
        if self._bound is not None and self._bound["context"] is context:
            return self._bound
        platform = context.getPlatform()
        device = torch.device("cpu")
        if platform.getName() == "CUDA":
            if not torch.cuda.is_available():
                raise ValueError("the Context runs on the CUDA platform but torch sees no CUDA device")
            index = platform.getPropertyValue(context, "DeviceIndex").split(",")[0] or "0"
            device = torch.device(f"cuda:{int(index)}")
        system = context.getSystem()
        # the mapping: given, else the one coarse_grained_system built this System with, else the model's own
        mapping = self._mapping or getattr(getattr(context, "_system", None), "cgml_mapping", None) \
            or self._model.mapping
        if mapping is None:
            raise ValueError("the model file carries no mapping (a transferable model): build the System with "
                             "coarse_grained_system, or pass CGMLIntegrator(..., mapping=cg.mapping)")
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
        if device.type != "cpu":
            self._model.to(device)  # the ScriptModule moves once; positions then stay on the device
        features = self._model.embed_mapping(mapping).to(device)
        edge_index, batch = model_graph(mapping, replicas, device)
        self._bound = dict(
            context=context, device=device, mapping=mapping, dtype=features.dtype if features.is_floating_point() else torch.float32,
            n_particles=n_particles, n_beads=n_beads, replicas=replicas,
            features=features.repeat(replicas, 1), edge_index=edge_index, batch=batch,
            periodic=system.usesPeriodicBoundaryConditions(),
            box=torch.zeros(3, 3, dtype=torch.float32, device=device),
            generator=torch.Generator(device=device),
        )
        self._bound["box"] = self._bound["box"].to(self._bound["dtype"])
        return self._bound

    def _get_int(self, name: str) -> int:
        return int(self.getGlobalVariableByName(f"{name}_hi")) * _HALF + int(self.getGlobalVariableByName(f"{name}_lo"))

    def _set_int(self, name: str, value: int) -> None:
        self.setGlobalVariableByName(f"{name}_hi", float(value // _HALF))
        self.setGlobalVariableByName(f"{name}_lo", float(value % _HALF))

    def _read_globals(self) -> dict:
        return dict(
            seed=self._get_int("cgml_seed"),
            model_step=self._get_int("cgml_model_step"),
            warmup_left=self._get_int("cgml_warmup_left"),
        )

    def _sync_in(self, context) -> dict:
        """Make ``self._history`` match the Context; returns the globals."""
        setup = self._setup(context)
        dev, dtype = setup["device"], setup["dtype"]
        snapshot = context.getState(getPositions=True)
        positions = snapshot.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        if setup["periodic"]:
            box = snapshot.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
            setup["box"] = torch.as_tensor(np.asarray(box), dtype=dtype, device=dev)
        if not np.all(np.isfinite(positions)):
            bad = np.nonzero(~np.isfinite(positions).all(axis=1))[0]
            raise ValueError(f"the Context positions contain NaN/inf for beads {bad[:10].tolist()}")
        token = self._get_int("cgml_sync")
        state = self._read_globals()
        if token == 0:
            moved = True  # never stepped: start from the Context positions
        elif token != self._token or self._history is None:
            # restored from a checkpoint/State (or another object stepped it): re-read the history
            stored = np.stack([np.asarray(self.getPerDofVariableByName(f"cgml_x{j}")) for j in range(self._k)])
            moved = not np.allclose(stored[-1], positions, rtol=0, atol=1e-5)
            if not moved:
                self._history = torch.as_tensor(stored, dtype=dtype, device=dev)
                self._last_positions = positions
        else:
            moved = not np.allclose(self._last_positions, positions, rtol=0, atol=1e-5)
        if moved:
            current = torch.as_tensor(positions, dtype=dtype, device=dev)
            self._history = current.unsqueeze(0).repeat(self._k, 1, 1)
            state["warmup_left"] = self._k - 1
            self._sync_out(context, state, advanced=0)
        return state

    def _sync_out(self, context, state: dict, advanced: int) -> None:
        """Write positions, velocities, history, counters, time and step count to the Context."""
        history = self._history.detach().to("cpu", torch.float64).numpy()
        current = history[-1]
        velocities = (current - history[-2]) / self._dt if self._k > 1 else np.zeros_like(current)
        if advanced:
            time_ps = context.getTime().value_in_unit(u.picosecond) + advanced * self._dt
            context.setTime(time_ps)
            context.setStepCount(context.getStepCount() + advanced)
        context.setPositions(current)
        context.setVelocities(velocities)
        for j in range(self._k):
            self.setPerDofVariableByName(f"cgml_x{j}", history[j])
        state["model_step"] += advanced
        state["warmup_left"] = max(0, state["warmup_left"] - advanced)
        self._set_int("cgml_model_step", state["model_step"])
        self._set_int("cgml_warmup_left", state["warmup_left"])
        token = random.getrandbits(47) + 1
        self._set_int("cgml_sync", token)
        self._token = token
        self._last_positions = current
