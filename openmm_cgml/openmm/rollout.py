"""The bare torch rollout: one implementation of "take n model steps", used by the integrator and the benches.

``rollout`` advances a ``(k, N, 3)`` bead history with a ``CGModel`` on the
history's device, with noise that is a pure function of ``(seed, model step)``
(``step_noise``) and guards against NaN/inf frames and bead collisions
(``UnstableRolloutError``). ``model_graph`` builds the coarse bond graph and
batch vector for ``R`` replicas of one mapped molecule.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from openmm_cgml.geometry import pair_distances_torch
from openmm_cgml.units import COLLISION_DISTANCE_NM

__all__ = ["UnstableRolloutError", "rollout", "step_noise", "model_graph"]

_MASK64 = (1 << 64) - 1


class UnstableRolloutError(RuntimeError):
    """A rollout produced a NaN or a bead collision.

    Attributes
    ----------
    step : int
        The number of the step that produced the bad frame (``first_step + 1``
        for the first step of a rollout; for the integrator, the Context step
        count the bad frame would have had).
    beads : list of int
        Global bead indices involved (empty when the model itself refused to
        go on, e.g. a NaN inside its refinement).
    reason : str
        ``"nan"`` or ``"collision"``.
    distance : float or None
        The closest distance in nm (collisions only).
    history : torch.Tensor
        The last good ``(k, N, 3)`` history.
    steps_done : int
        Good steps completed before the bad one.
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

    Parameters
    ----------
    generator : torch.Generator
        Re-seeded here; on the device the noise is drawn on.
    seed, step : int
        The run's seed and the model step index.
    shape, dtype, device
        Of the returned tensor (``(draws, N, 3)`` for a model step).

    Returns
    -------
    torch.Tensor
    """
    generator.manual_seed(_splitmix64(_splitmix64(int(seed)) ^ int(step)) >> 1)
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def _pair_distances(pos: torch.Tensor, n_replicas: int, box: Optional[torch.Tensor]) -> torch.Tensor:
    """(R, n, n) distances between the beads of each replica (minimum image if ``box``), inf on the diagonal."""
    d = pair_distances_torch(pos.view(n_replicas, -1, 3), box)
    d.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    return d


def _bad_frames(frames: list, n_replicas: int, collision_distance: float,
                box: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(S,) bool tensor for S frames (N, 3): NaN/inf anywhere, or two beads of one replica closer than the
    threshold; the frames are checked together, a few million pair distances at a time."""
    if not frames:
        return torch.zeros(0, dtype=torch.bool)
    pos = torch.stack(frames)
    bad = ~torch.isfinite(pos).flatten(1).all(dim=1)
    n = pos.shape[1] // n_replicas
    if collision_distance > 0 and n > 1:
        chunk = max(1, 4_000_000 // (n_replicas * n * n))
        closest = [_pair_distances(part.reshape(-1, 3), part.shape[0] * n_replicas, box).flatten(1).amin(dim=1)
                   .view(part.shape[0], n_replicas).amin(dim=1) for part in pos.split(chunk)]
        bad = bad | (torch.cat(closest) < collision_distance)
    return bad


def _describe_bad_frame(pos: torch.Tensor, n_replicas: int, box: Optional[torch.Tensor] = None):
    """(reason, global bead indices, distance or None) for a frame ``_bad_frames`` flagged."""
    finite = torch.isfinite(pos).all(dim=1)
    if not bool(finite.all()):
        return "nan", torch.nonzero(~finite).flatten().tolist(), None
    d = _pair_distances(pos, n_replicas, box)
    n = d.shape[1]
    replica, rest = divmod(int(torch.argmin(d)), n * n)
    i, j = divmod(rest, n)
    return "collision", [replica * n + i, replica * n + j], float(d[replica, i, j])


def _is_instability(error: ValueError, flags: torch.Tensor) -> bool:
    """Whether the model's refusal inside a step means the rollout went unstable (not bad input)."""
    # The model refuses non-finite input, also inside a step (e.g. a NaN mean fed to its refinement).
    if bool(flags.any()):
        return True
    return any(word in str(error).lower() for word in ("nan", "infinite"))


def _unstable(start, frames, flags, model_error, step_offset: int, collision_distance: float, n_replicas: int,
              box) -> Optional[UnstableRolloutError]:
    """The error for a block of steps with a bad frame or a model refusal, or None if the block is good."""
    any_flagged = bool(flags.any())  # the only host sync of the block
    if model_error is None and not any_flagged:
        return None
    bad = int(torch.nonzero(flags)[0]) if any_flagged else len(frames)
    good = torch.cat([start] + [f.unsqueeze(0) for f in frames[:bad]], dim=0)[-start.shape[0]:]
    if bad < len(frames):
        reason, beads, distance = _describe_bad_frame(frames[bad], n_replicas, box)
    else:
        reason, beads, distance = "nan", [], None
    step = step_offset + bad + 1
    if reason == "collision":
        what = (f"collision: beads {beads[0]} and {beads[1]} are {distance:.4f} nm apart "
                f"(threshold {collision_distance} nm)")
    elif beads:
        what = f"NaN/inf positions for beads {beads[:10]}{' ...' if len(beads) > 10 else ''}"
    else:
        what = f"the model failed ({model_error})"
    return UnstableRolloutError(f"rollout stopped at model step {step}: {what}", step=step, beads=beads,
                                reason=reason, distance=distance, history=good, steps_done=bad)


def _step_block(model, history: torch.Tensor, graph: tuple, refine: bool, noise, steps: range, n_replicas: int,
                collision_distance: float, box: Optional[torch.Tensor]):
    """Take the model steps ``steps`` from ``history`` without a host sync; stop early if the model refuses.

    ``graph`` is ``(bead_features, edge_index, batch, box)`` as ``model.step`` takes them, ``noise(step)``
    the noise of model step ``step`` and ``box`` the periodic box of the collision checks (or None).
    Returns ``(history, frames, flags, model_error)``: the history after the last step taken, each new
    frame, their ``_bad_frames`` flags (a tensor, not yet read) and the model's refusal message or None.
    """
    frames, model_error = [], None
    for step in steps:
        drawn = noise(step)
        try:
            new = model.step(history, *graph, drawn, refine)
        except ValueError as error:
            if not _is_instability(error, _bad_frames(frames, n_replicas, collision_distance, box)):
                raise
            model_error = str(error)
            break
        frames.append(new)
        history = torch.cat([history[1:], new.unsqueeze(0)], dim=0)
    return history, frames, _bad_frames(frames, n_replicas, collision_distance, box), model_error


# no_grad here, inference mode only inside CGModel's calls: inference tensors (the returned history)
# raise "cannot be saved for backward" if they later meet autograd code.
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
    collision_distance: float = COLLISION_DISTANCE_NM,
    n_replicas: int = 1,
    check_every: int = 64,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Run ``n_steps`` model steps in torch and return the new ``(k, N, 3)`` history (nm).

    Everything stays on ``history.device``. Checks are gathered over ``check_every`` steps so that a
    GPU rollout syncs with the host rarely; the failing step is still found exactly.

    Parameters
    ----------
    model : CGModel
        From ``openmm_cgml.load``.
    history : torch.Tensor
        ``(k, N, 3)`` bead positions in nm, oldest first; ``history[-1]`` is the current configuration.
    bead_features, edge_index, batch, box : torch.Tensor
        ``(N, F)`` features, ``(2, E)`` coarse bonds, ``(N,)`` replica index (see ``model_graph``) and
        ``(3, 3)`` box vectors in nm (all zeros = not periodic).
    n_steps, seed, first_step : int
        Model steps to take; the noise of step ``i`` of this call is ``step_noise(seed, first_step + i)``.
    refine : bool
        Use the model's score-based refinement.
    collision_distance : float
        nm; two beads of one replica closer than this stop the rollout (0 disables). NaNs always stop it.
    n_replicas, check_every : int
        Copies of the molecule in ``history`` (collisions are checked within each); steps per block of checks.
    generator : torch.Generator, optional
        Reused for the noise (one is made on the device if not given).

    Returns
    -------
    torch.Tensor
        The ``(k, N, 3)`` history after ``n_steps`` steps.

    Raises
    ------
    UnstableRolloutError
        On a NaN/inf frame, a collision or a model refusing a non-finite state; it carries the last good history.
    """
    if generator is None:
        generator = torch.Generator(device=history.device)
    periodic_box = box if bool((box != 0).any()) else None  # for minimum-image collision checks
    dtype, device = history.dtype, history.device
    shape = (model.noise_draws(refine),) + tuple(history.shape[1:])

    def noise(step: int) -> torch.Tensor:
        return step_noise(generator, seed, step, shape, dtype, device)

    # open boundaries as an empty box: the step then reads no box values (a host sync per step)
    graph = (bead_features, edge_index, batch, box if periodic_box is not None else box.new_zeros(0, 3, 3))
    with model.validated(history, bead_features, edge_index, batch):   # NaN frames: caught by the flags below
        return _run_blocks(model, history, graph, refine, noise, n_steps, first_step, check_every, n_replicas,
                           collision_distance, periodic_box)


def _run_blocks(model, history, graph, refine, noise, n_steps, first_step, check_every, n_replicas,
                collision_distance, periodic_box):
    """``rollout``'s loop: blocks of ``check_every`` steps, each checked once at its end."""
    done = 0
    while done < n_steps:
        block = min(check_every, n_steps - done)
        start = history
        steps = range(first_step + done, first_step + done + block)
        history, frames, flags, model_error = _step_block(model, history, graph, refine, noise, steps, n_replicas,
                                                          collision_distance, periodic_box)
        error = _unstable(start, frames, flags, model_error, first_step + done, collision_distance, n_replicas,
                          periodic_box)
        if error is not None:
            error.steps_done += done
            raise error
        done += block
    return history


def model_graph(mapping, n_replicas: int, device="cpu"):
    """Coarse bond graph and batch vector for ``n_replicas`` copies of one mapped molecule.

    Replica ``r`` owns beads ``r*n_beads .. (r+1)*n_beads-1``; the batch
    vector keeps every model edge inside one replica.

    Parameters
    ----------
    mapping : Mapping
        The molecule's mapping (``n_beads``, ``coarse_bonds``).
    n_replicas : int
    device : str or torch.device

    Returns
    -------
    edge_index : torch.Tensor
        ``(2, 2*C*R)`` long, both directions of every coarse bond.
    batch : torch.Tensor
        ``(N,)`` long, the replica of each bead.
    """
    n = int(mapping.n_beads)
    bonds = torch.as_tensor(np.asarray(mapping.coarse_bonds, dtype=np.int64).reshape(-1, 2))
    one = torch.cat([bonds.T, bonds.T.flip(0)], dim=1)
    edges = torch.cat([one + r * n for r in range(n_replicas)], dim=1) if n_replicas else one[:, :0]
    batch = torch.arange(n_replicas).repeat_interleave(n)
    return edges.to(device), batch.to(device)
