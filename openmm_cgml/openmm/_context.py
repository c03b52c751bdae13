"""Private machinery of ``CGMLIntegrator``: its Context, the torch setup for it, and syncing state in and out.

``ContextLink`` is the Python side of one integrator: it finds the Context
that owns the integrator, builds the torch tensors a rollout needs on the
Context's device (``BeadSetup``), and moves the history between torch and the
integrator's per-DOF and global variables, where checkpoints see it. Integer
state is kept in globals as two exact 24-bit halves (``add_integer`` and
friends) because a single-precision GPU platform may hold globals as float32.
"""
from __future__ import annotations

import gc
import random
import weakref
from dataclasses import dataclass

import numpy as np
import openmm
import openmm.unit as u
import torch

from openmm_cgml.openmm.bead_system import check_bead_system
from openmm_cgml.openmm.rollout import model_graph
from openmm_cgml.structure import atom_masses

_HALF = 1 << 24
MAX_SEED = _HALF * _HALF
# Positions that moved by more than this (nm) since the last sync were moved from outside: a warm-up follows.
_MOVED_NM = 1e-5
_VELOCITY_STREAM = 0x7E10C  # keeps the velocity draws apart from any other use of (seed, step)


def add_integer(integrator: openmm.CustomIntegrator, name: str, value: int) -> None:
    """Add the global pair ``NAME_hi``/``NAME_lo`` holding ``value`` exactly."""
    integrator.addGlobalVariable(f"{name}_hi", float(value // _HALF))
    integrator.addGlobalVariable(f"{name}_lo", float(value % _HALF))


def get_integer(integrator: openmm.CustomIntegrator, name: str) -> int:
    return (int(integrator.getGlobalVariableByName(f"{name}_hi")) * _HALF
            + int(integrator.getGlobalVariableByName(f"{name}_lo")))


def set_integer(integrator: openmm.CustomIntegrator, name: str, value: int) -> None:
    integrator.setGlobalVariableByName(f"{name}_hi", float(value // _HALF))
    integrator.setGlobalVariableByName(f"{name}_lo", float(value % _HALF))


def read_counters(integrator) -> dict:
    """The run's integers from the Context: ``seed``, ``model_step`` (the noise counter), ``warmup_left``."""
    return dict(seed=get_integer(integrator, "cgml_seed"), model_step=get_integer(integrator, "cgml_model_step"),
                warmup_left=get_integer(integrator, "cgml_warmup_left"))


@dataclass
class BeadSetup:
    """What a rollout in one Context needs, on the Context's device."""

    context: openmm.Context
    device: torch.device
    mapping: object
    dtype: torch.dtype
    n_particles: int
    n_beads: int
    replicas: int
    features: torch.Tensor
    edge_index: torch.Tensor
    batch: torch.Tensor
    periodic: bool
    box: torch.Tensor
    generator: torch.Generator
    thermal_speed: np.ndarray   # (n_particles, 1) sqrt(kT/M) in nm/ps: the Maxwell-Boltzmann std per bead


def _device(context: openmm.Context) -> torch.device:
    """The Context's GPU on the CUDA platform, else the CPU."""
    platform = context.getPlatform()
    if platform.getName() != "CUDA":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("the Context runs on the CUDA platform but torch sees no CUDA device")
    index = platform.getPropertyValue(context, "DeviceIndex").split(",")[0] or "0"
    return torch.device(f"cuda:{int(index)}")


def bind(model, mapping, context: openmm.Context, temperature_K: float) -> BeadSetup:
    """Check the Context's System against the mapping and build the rollout's tensors on its device.

    ``mapping``: the one given to the integrator, else the one ``coarse_grained_system`` built the System
    with (``System.cgml_mapping``), else the model's own.
    """
    device = _device(context)
    system = context.getSystem()
    mapping = mapping or getattr(getattr(context, "_system", None), "cgml_mapping", None) or model.mapping
    if mapping is None:
        raise ValueError("the model file carries no mapping (a transferable model): build the System with "
                         "coarse_grained_system, or pass CGMLIntegrator(..., mapping=cg.mapping)")
    replicas = check_bead_system(system, mapping)
    if device.type != "cpu":
        model.to(device)  # the ScriptModule moves once; positions then stay on the device
    features = model.embed_mapping(mapping).to(device)
    dtype = features.dtype if features.is_floating_point() else torch.float32
    edge_index, batch = model_graph(mapping, replicas, device)
    masses = atom_masses(system, system.getNumParticles())
    # kJ/mol over g/mol is (nm/ps)^2: the velocity std of a bead of mass M at temperature T
    kT = (u.MOLAR_GAS_CONSTANT_R * temperature_K * u.kelvin).value_in_unit(u.kilojoule_per_mole)
    thermal_speed = np.sqrt(kT / np.where(masses > 0, masses, np.inf))[:, None]
    return BeadSetup(
        context=context, device=device, mapping=mapping, dtype=dtype, n_particles=system.getNumParticles(),
        n_beads=int(mapping.n_beads), replicas=replicas, features=features.repeat(replicas, 1),
        edge_index=edge_index, batch=batch, periodic=system.usesPeriodicBoundaryConditions(),
        box=torch.zeros(3, 3, dtype=dtype, device=device), generator=torch.Generator(device=device),
        thermal_speed=thermal_speed,
    )


class ContextLink:
    """The Python side of one ``CGMLIntegrator``: its Context, the torch setup and the history between syncs.

    ``history`` (``(k, N, 3)`` torch, on the device) is the truth between
    syncs; ``sync_in`` makes it match the Context (re-read after a restore,
    restarted after the user moved the beads) and ``sync_out`` writes it back.
    """

    def __init__(self, model, mapping, k: int, dt_ps: float, temperature_K: float):
        self.model, self.mapping, self.k, self.dt_ps = model, mapping, k, dt_ps
        self.temperature_K = temperature_K
        self.history = None
        self._context_ref = None
        self._setup = None
        self._token = None  # the cgml_sync value this object wrote last
        self._last_positions = None  # numpy (N, 3) written to the Context last

    def context(self, integrator) -> openmm.Context:
        """The Context that owns ``integrator`` (openmm.Context keeps ``_integrator``)."""
        context = self._context_ref() if self._context_ref is not None else None
        if context is not None and getattr(context, "_integrator", None) is integrator:
            return context
        for ref in gc.get_referrers(integrator):
            candidates = [ref] if isinstance(ref, openmm.Context) else []
            if isinstance(ref, dict):
                candidates = [c for c in gc.get_referrers(ref) if isinstance(c, openmm.Context)]
            for candidate in candidates:
                if getattr(candidate, "_integrator", None) is integrator:
                    self._context_ref = weakref.ref(candidate)
                    self._setup = self.history = self._token = None
                    return candidate
        raise ValueError(
            "CGMLIntegrator is not bound to a Context: create openmm.app.Simulation(topology, system, "
            "integrator, platform) or openmm.Context(system, integrator) first"
        )

    def setup(self, context: openmm.Context) -> BeadSetup:
        if self._setup is None or self._setup.context is not context:
            self._setup = bind(self.model, self.mapping, context, self.temperature_K)
        return self._setup

    def _read_positions(self, context, setup: BeadSetup) -> np.ndarray:
        snapshot = context.getState(getPositions=True)
        positions = snapshot.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        if setup.periodic:
            box = snapshot.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
            setup.box = torch.as_tensor(np.asarray(box), dtype=setup.dtype, device=setup.device)
        if not np.all(np.isfinite(positions)):
            bad = np.nonzero(~np.isfinite(positions).all(axis=1))[0]
            raise ValueError(f"the Context positions contain NaN/inf for beads {bad[:10].tolist()}")
        return positions

    def _moved(self, integrator, positions: np.ndarray, setup: BeadSetup) -> bool:
        """Whether the beads moved since this object last wrote them; re-reads the history after a restore."""
        token = get_integer(integrator, "cgml_sync")
        if token == 0:
            return True  # never stepped: start from the Context positions
        if token == self._token and self.history is not None:
            return not np.allclose(self._last_positions, positions, rtol=0, atol=_MOVED_NM)
        # restored from a checkpoint/State (or another object stepped it): re-read the history
        stored = np.stack([np.asarray(integrator.getPerDofVariableByName(f"cgml_x{j}")) for j in range(self.k)])
        if not np.allclose(stored[-1], positions, rtol=0, atol=_MOVED_NM):
            return True
        self.history = torch.as_tensor(stored, dtype=setup.dtype, device=setup.device)
        self._last_positions = positions
        return False

    def sync_in(self, integrator, context: openmm.Context) -> dict:
        """Make ``history`` match the Context; returns the counters (see ``read_counters``)."""
        setup = self.setup(context)
        positions = self._read_positions(context, setup)
        counters = read_counters(integrator)
        if self._moved(integrator, positions, setup):
            current = torch.as_tensor(positions, dtype=setup.dtype, device=setup.device)
            self.history = current.unsqueeze(0).repeat(self.k, 1, 1)
            counters["warmup_left"] = self.k - 1
            self.sync_out(integrator, context, counters, advanced=0)
        return counters

    def sync_out(self, integrator, context: openmm.Context, counters: dict, advanced: int) -> None:
        """Write positions, velocities, history, counters, time and step count to the Context.

        The velocities are thermal: drawn from Maxwell-Boltzmann at the model's temperature, from a
        generator that is a pure function of ``(seed, model step)``. Over a model step of a few
        velocity relaxation times, the bead velocity at the step's end is nearly independent of the
        displacement the model produced, and its distribution is Maxwell-Boltzmann; the model never
        reads them (its state is the position history), so a resume stays bit-exact.
        """
        history = self.history.detach().to("cpu", torch.float64).numpy()
        current = history[-1]
        step = counters["model_step"] + advanced
        normal = np.random.default_rng([counters["seed"], step, _VELOCITY_STREAM]).standard_normal(current.shape)
        velocities = self.setup(context).thermal_speed * normal
        if advanced:
            context.setTime(context.getTime().value_in_unit(u.picosecond) + advanced * self.dt_ps)
            context.setStepCount(context.getStepCount() + advanced)
        context.setPositions(current)
        context.setVelocities(velocities)
        for j in range(self.k):
            integrator.setPerDofVariableByName(f"cgml_x{j}", history[j])
        counters["model_step"] += advanced
        counters["warmup_left"] = max(0, counters["warmup_left"] - advanced)
        set_integer(integrator, "cgml_model_step", counters["model_step"])
        set_integer(integrator, "cgml_warmup_left", counters["warmup_left"])
        token = random.getrandbits(47) + 1
        set_integer(integrator, "cgml_sync", token)
        self._token = token
        self._last_positions = current


def explain_failure(error, setup: BeadSetup, collision_nm: float, context: openmm.Context, bad_step: int) -> str:
    """The integrator's message for a failed rollout: the step, what went wrong, which beads (named)."""
    names = list(getattr(setup.mapping, "bead_names", []) or [])
    described = []
    for b in error.beads[:10]:
        replica, index = divmod(b, setup.n_beads)
        name = f" {names[index]}" if index < len(names) else ""
        described.append(f"{b} (replica {replica}, bead {index}{name})")
    if error.reason == "collision":
        what = (f"beads came {error.distance:.4f} nm apart, closer than the collision threshold "
                f"{collision_nm:g} nm")
    elif error.beads:
        what = "the model produced NaN/inf positions"
    else:
        what = str(error).split(": ", 1)[-1]  # the model's own message
    more = f" and {len(error.beads) - 10} more" if len(error.beads) > 10 else ""
    beads = f"; beads: {', '.join(described)}{more}" if described else ""
    return (f"CGMLIntegrator stopped at model step {bad_step}: {what}{beads}. "
            f"The Context keeps the last good state (step {bad_step - 1}, "
            f"time {context.getTime().value_in_unit(u.picosecond):g} ps).")
