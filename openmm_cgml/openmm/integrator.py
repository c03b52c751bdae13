"""An exported coarse-grained propagator as a drop-in OpenMM integrator: ``CGMLIntegrator``.

::

    model = openmm_cgml.load("model.safetensors")
    cg = openmm_cgml.coarse_grained_system(model, "start.pdb", replicas=4)
    integrator = openmm_cgml.CGMLIntegrator(model, temperature=300 * kelvin, seed=1)
    simulation = Simulation(cg.topology, cg.system, integrator, platform)
    simulation.context.setPositions(cg.positions)
    simulation.step(1000)

The bead system comes from ``openmm_cgml.openmm.bead_system``, the torch loop
from ``openmm_cgml.openmm.rollout``; the Context bookkeeping lives in the
private ``openmm_cgml.openmm._context`` (see docs/integrator.md).
"""
from __future__ import annotations

import numpy as np
import openmm
import openmm.unit as u
import torch

from openmm_cgml.mapping import Mapping
from openmm_cgml.openmm._context import MAX_SEED, ContextLink, add_integer, explain_failure, get_integer, read_counters
from openmm_cgml.openmm.bead_system import as_model
from openmm_cgml.openmm.rollout import UnstableRolloutError, rollout
from openmm_cgml.units import COLLISION_DISTANCE_NM, strip, strip_array, whole_number

__all__ = ["CGMLIntegrator"]


def _model_constants(model):
    """``(k, model step ps, training temperature K)`` through the CGModel's properties."""
    try:
        k = model.k
        dt_ps = float(model.model_timestep.value_in_unit(u.picosecond))
        trained_K = float(model.temperature.value_in_unit(u.kelvin))
    except AttributeError as error:
        raise ValueError(f"the exported model lacks an attribute ({error}): re-export it with `cgml export`") \
            from None
    if k < 1:
        raise ValueError(f"the exported model has an invalid history length k={k}")
    return k, dt_ps, trained_K


def _collision_nm(collision_distance) -> float:
    """``collision_distance`` in nm; ``ValueError`` naming it unless a length >= 0 (a plain number is nm)."""
    distance = strip(collision_distance, u.nanometer, "collision_distance")
    if distance < 0:
        raise ValueError(f"collision_distance must be >= 0 nm (0 disables the check), got {collision_distance}")
    return distance


class CGMLIntegrator(openmm.CustomIntegrator):
    """An exported learned propagator as an OpenMM integrator over bead particles.

    One ``step`` is one *model* step (typically hundreds to thousands of MD
    steps), taken by the TorchScript model from the last ``k`` bead
    configurations. ``getStepSize()`` is the model time step. The Context may
    hold ``R`` copies of the mapped molecule (``coarse_grained_system(...,
    replicas=R)``), simulated as one batch.

    Algorithm: the CustomIntegrator program is a no-op; ``step(n)`` is
    overridden in Python:

    1. find the owning Context and read its positions. A ``cgml_sync`` token
       other than the one this object wrote last means the Context was
       restored (``loadCheckpoint``/``setState``): re-read the history from
       the per-DOF variables. Positions other than the last ones produced mean
       the beads were moved (``setPositions``, minimisation): restart the
       history as ``k`` copies of them (warm-up, see ``getWarmupSteps``);
    2. run ``n`` model steps as one torch rollout on the platform's device,
       with noise for model step ``i`` a pure function of ``(seed, i)``;
    3. write positions, the history and the counters back, and advance the
       Context's time and step count by ``n`` model steps, so reporters print
       true simulated time;
    4. thermostat the velocities: draw them from Maxwell-Boltzmann at the
       model's temperature (bead masses from the System), so that the
       temperature ``StateDataReporter`` prints is the bead kinetic
       temperature of the reference. The dynamics never read them.

    The whole dynamic state lives in the Context, so checkpoints and
    ``saveState`` carry it and a resume is bit-exact:

    * per-DOF ``cgml_x0 .. cgml_x{k-1}``: the history, oldest first;
    * globals ``cgml_seed``, ``cgml_model_step`` (the noise counter),
      ``cgml_warmup_left`` and ``cgml_sync``, each as two exact 24-bit halves
      ``NAME_hi``/``NAME_lo`` (a single-precision platform holds globals as float32).

    Parameters
    ----------
    model : CGModel or path
        From ``openmm_cgml.load(path)`` (or the path itself).
    temperature : Quantity compatible with kelvin, optional
        Must equal the model's training temperature (default: that
        temperature): a learned propagator samples the ensemble it was trained
        on; its thermostat (step 4) only draws the reported velocities and
        cannot change the ensemble.
    seed : int
        Random seed, a whole number 0 <= seed < 2**48. Same seed, same start: same trajectory,
        however ``step`` calls are split.
    refine : bool
        Use the model's score-based refinement after each step (if it has one).
    collision_distance : Quantity compatible with nanometers
        Stop with ``UnstableRolloutError`` when two beads of one replica come
        closer than this (default: 0.1*unit.nanometer); 0 disables the check. NaNs always stop.
    check_every : int
        Model steps (a whole number >= 1) between guard checks inside one ``step(n)`` (host syncs on GPU).
    mapping : Mapping, optional
        The molecule's mapping. Default: the one ``coarse_grained_system``
        built the Context's System with (it remembers it), else the model's own.

    Notes
    -----
    Threads: on the CPU the model runs with torch's global thread count
    (``torch.get_num_threads()``; ``OMP_NUM_THREADS`` or
    ``torch.set_num_threads``), which the integrator does not change. Set it
    before stepping: ``openmm_cgml.train`` sets it for training, and that
    setting stays in force in the same process. For one small molecule 1-2
    threads are fastest; OpenMM's own CPU threads are idle during a model step.
    """

    def __init__(self, model, temperature=None, seed: int = 0, refine: bool = True,
                 collision_distance=COLLISION_DISTANCE_NM * u.nanometer, check_every: int = 64, mapping=None):
        model = as_model(model)
        k, dt_ps, trained_K = _model_constants(model)
        if temperature is not None:
            kelvin = strip(temperature, u.kelvin, "temperature")
            if abs(kelvin - trained_K) > 0.5:
                raise ValueError(
                    f"temperature {kelvin:g} K does not match the model's training temperature {trained_K:g} K; "
                    "a learned propagator samples the ensemble it was trained on: train a model at this temperature"
                )
        if mapping is not None and not isinstance(mapping, Mapping):
            raise ValueError(f"mapping must be an openmm_cgml.mapping.Mapping, got {type(mapping).__name__}")
        for candidate in (mapping, model.mapping):
            if candidate is not None and model.n_beads and int(candidate.n_beads) % model.n_beads:
                raise ValueError(f"model expects {model.n_beads} beads per molecule but the mapping has "
                                 f"{candidate.n_beads}")
        seed = whole_number(seed, "seed")
        if not 0 <= seed < MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**48), got {seed}")
        self._model = model
        self._k = k
        self._temperature_K = trained_K
        self._refine = bool(refine)
        self._collision = _collision_nm(collision_distance)
        self._check_every = whole_number(check_every, "check_every")
        if self._check_every < 1:
            raise ValueError(f"check_every must be a whole number >= 1, got {self._check_every}")

        super().__init__(dt_ps)
        # Empty program: OpenMM never integrates; step() below does. The state
        # lives in these variables so checkpoints and saveState carry it.
        for j in range(k):
            self.addPerDofVariable(f"cgml_x{j}", 0.0)
        add_integer(self, "cgml_seed", seed)
        add_integer(self, "cgml_model_step", 0)
        add_integer(self, "cgml_warmup_left", k - 1)
        add_integer(self, "cgml_sync", 0)  # 0 = never stepped
        self.addComputeGlobal("cgml_sync_lo", "cgml_sync_lo")  # a no-op, so the program is not empty
        self._link = ContextLink(model, mapping, k, dt_ps, trained_K)

    # -- what it runs -----------------------------------------------------------

    def getModel(self):
        """The ``CGModel`` this integrator runs."""
        return self._model

    def getTemperature(self) -> u.Quantity:
        """The model's training temperature (Quantity compatible with kelvin)."""
        return self._temperature_K * u.kelvin

    def getHistoryLength(self) -> int:
        """``k``: the number of configurations the model looks at."""
        return self._k

    def getDevice(self) -> torch.device:
        """The torch device the rollout runs on (the Context's GPU on the CUDA platform, else the CPU)."""
        return self._link.setup(self._link.context(self)).device

    def getSeed(self) -> int:
        """The random seed (from the Context: a loaded checkpoint brings its own)."""
        return get_integer(self, "cgml_seed")

    # -- the history ------------------------------------------------------------

    def getWarmupSteps(self) -> int:
        """Model steps left before the history holds only model-generated frames.

        After a start from one structure (or ``setPositions``) the history is
        ``k`` copies of that structure (beads at rest); the first ``k-1``
        frames carry that artificial past. Discard them as equilibration, or
        start from real frames with ``setHistory``.
        """
        return get_integer(self, "cgml_warmup_left")

    def getHistory(self) -> u.Quantity:
        """The ``(k, N, 3)`` history (oldest first, last = current positions), compatible with nanometers."""
        context = self._link.context(self)
        self._link.sync_in(self, context)
        return u.Quantity(self._link.history.detach().cpu().double().numpy(), u.nanometer)

    def setHistory(self, frames) -> None:
        """Start from real frames: the last ``k`` bead configurations, oldest first; no warm-up follows.

        Sets the Context positions to the last frame.

        Parameters
        ----------
        frames : Quantity compatible with nanometers, or array in nm
            ``(F, N, 3)`` or ``(F, n_beads, 3)`` (then copied to every replica)
            with ``F >= k`` frames spaced by one model step; only the last ``k``
            are used (see ``bead_system.reference_history``).
        """
        context = self._link.context(self)
        setup = self._link.setup(context)
        array = strip_array(frames, u.nanometer, "history frames")
        if array.ndim != 3:
            raise ValueError(f"history frames must have shape (frames, beads, 3), got {array.shape}")
        if array.shape[1] == setup.n_beads and setup.replicas > 1:
            array = np.tile(array, (1, setup.replicas, 1))
        if array.shape[1] != setup.n_particles:
            raise ValueError(
                f"history frames have {array.shape[1]} beads; the Context has {setup.n_particles} "
                f"({setup.replicas} replicas of {setup.n_beads})"
            )
        if array.shape[0] < self._k:
            raise ValueError(f"the model needs k={self._k} history frames, got {array.shape[0]}")
        counters = read_counters(self)
        self._link.history = torch.as_tensor(array[-self._k:], dtype=setup.dtype, device=setup.device)
        counters["warmup_left"] = 0
        self._link.sync_out(self, context, counters, advanced=0)

    # -- stepping ---------------------------------------------------------------

    def step(self, steps: int) -> None:
        """Advance ``steps`` model steps (``steps * getStepSize()`` of simulated time).

        Raises
        ------
        UnstableRolloutError
            On a NaN or a collision; the Context keeps the last good state.
        """
        steps = int(steps)
        if steps <= 0:
            return
        link = self._link
        context = link.context(self)
        counters = link.sync_in(self, context)
        setup = link.setup(context)
        try:
            link.history = rollout(
                self._model, link.history, setup.features, setup.edge_index, setup.batch, setup.box, steps,
                seed=counters["seed"], first_step=counters["model_step"], refine=self._refine,
                collision_distance=self._collision, n_replicas=setup.replicas, check_every=self._check_every,
                generator=setup.generator,
            )
        except UnstableRolloutError as error:
            # keep the last good state in the Context, then report which beads failed
            link.history = error.history
            link.sync_out(self, context, counters, advanced=error.steps_done)
            bad_step = context.getStepCount() + 1
            raise UnstableRolloutError(
                explain_failure(error, setup, self._collision, context, bad_step), step=bad_step,
                beads=error.beads, reason=error.reason, distance=error.distance, history=error.history,
                steps_done=error.steps_done,
            ) from None
        link.sync_out(self, context, counters, advanced=steps)
