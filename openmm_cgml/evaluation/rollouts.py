"""Rollouts of a propagator over many different molecules at once, and interleaved speed measurement.

:func:`roll_out` batches molecules of any sizes into one graph (one batch
index per molecule), so one model call advances all of them; a molecule whose
rollout turns non-finite is dropped from the batch and recorded, and the
others go on. :func:`interleaved_speedup` times fine MD and the rollout of one
molecule alternately in this process, on the same thread count.
"""
from __future__ import annotations

import contextlib
import json
import os
import time

import numpy as np
import openmm
import torch

from openmm_cgml.openmm.rollout import UnstableRolloutError, rollout

__all__ = ["roll_out", "choose_refinement", "interleaved_speedup", "pinned_cpus"]


def _graph(model, mappings):
    """Concatenated bead features, coarse bond edges (both directions) and batch vector of the molecules."""
    features, edges, batch, offset = [], [], [], 0
    for index, mapping in enumerate(mappings):
        features.append(model.embed_mapping(mapping))
        bonds = torch.as_tensor(np.asarray(mapping.coarse_bonds, dtype=np.int64).reshape(-1, 2)) + offset
        edges.append(torch.cat([bonds.T, bonds.T.flip(0)], dim=1))
        batch.append(torch.full((mapping.n_beads,), index, dtype=torch.long))
        offset += mapping.n_beads
    return torch.cat(features), torch.cat(edges, dim=1), torch.cat(batch)


def roll_out(model, mappings, histories, n_steps: int, seed: int = 0, refine: bool = True,
             hard_core: bool = False, exclusion_retries: int | None = None) -> dict:
    """Roll out every molecule for ``n_steps`` model steps, all in one batch.

    Parameters
    ----------
    model : CGModel
    mappings : list of Mapping
        One per molecule (the model's rule applied to it).
    histories : list of ndarray, shape (k, n_beads_i, 3)
        The last ``k`` bead frames of each molecule (nm), oldest first.
    n_steps : int
        Model steps.
    seed : int
        Noise seed; the noise of a step depends only on (seed, step, batch layout).
    refine : bool
        Apply the model's Score refinement.
    hard_core : bool
        Apply the model's hard-core projection (a post-hoc correction: off for honest collision counts).
    exclusion_retries : int, optional
        Redraws of the truncated step (0: plain step); default the model's own setting.

    Returns
    -------
    dict
        ``frames``: list of (n_frames_i, n_beads_i, 3) arrays (the start frame, then one per model step;
        shorter for a molecule that went unstable); ``unstable``: {molecule index: model step};
        ``hard_core_events``: close pairs the projection pushed apart; ``bead_steps``: beads x steps run;
        ``exclusion_events``: (molecule-steps the truncation redrew, those still too close after its last
        redraw); ``molecule_steps``: molecules x steps run.
    """
    settings = {"hard_core": hard_core, "exclusion_retries": exclusion_retries}
    # only what changes is set (and set back): a file from before a setting existed refuses to set it
    previous = {name: getattr(model, name) for name, value in settings.items()
                if value is not None and value != getattr(model, name)}
    before = model.exclusion_events
    try:
        for name in previous:
            setattr(model, name, settings[name])
        result = _roll_out(model, list(mappings), [np.asarray(h, dtype=np.float32) for h in histories], n_steps,
                           seed, refine)
    finally:
        for name, value in previous.items():
            setattr(model, name, value)
    after = model.exclusion_events
    result["exclusion_events"] = (after[0] - before[0], after[1] - before[1])
    return result


def _roll_out(model, mappings, histories, n_steps, seed, refine) -> dict:
    alive = list(range(len(mappings)))
    frames = [[h[-1].copy()] for h in histories]
    unstable, bead_steps, molecule_steps = {}, 0, 0
    events_before = model.hard_core_events
    box = torch.zeros(3, 3)
    generator = torch.Generator()
    step = 0
    while step < n_steps and alive:
        features, edges, batch = _graph(model, [mappings[i] for i in alive])
        history = torch.as_tensor(np.concatenate([histories[i] for i in alive], axis=1))
        sizes = [mappings[i].n_beads for i in alive]
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        try:
            while step < n_steps:
                history = rollout(model, history, features, edges, batch, box, 1, seed=seed, first_step=step,
                                  refine=refine, collision_distance=0.0, generator=generator)
                last = history[-1].numpy()
                for slot, molecule in enumerate(alive):
                    frames[molecule].append(last[bounds[slot]:bounds[slot + 1]].copy())
                bead_steps += int(bounds[-1])
                molecule_steps += len(alive)
                step += 1
        except (UnstableRolloutError, torch.jit.Error, ValueError) as error:
            good = error.history if isinstance(error, UnstableRolloutError) else history
            good = good.numpy()
            bad_beads = getattr(error, "beads", None) or []
            bad = {int(np.searchsorted(bounds, b, side="right") - 1) for b in bad_beads}
            if not bad:  # the model failed without naming beads: drop the molecules with non-finite inputs
                bad = {slot for slot in range(len(alive))
                       if not np.isfinite(good[:, bounds[slot]:bounds[slot + 1]]).all()} or set(range(len(alive)))
            for slot in bad:
                unstable[alive[slot]] = step + 1
            for slot, molecule in enumerate(alive):
                histories[molecule] = good[:, bounds[slot]:bounds[slot + 1]]
            alive = [m for slot, m in enumerate(alive) if slot not in bad]
            step += 1  # the failed step is skipped for the survivors (their noise stays a function of the step)
    return {"frames": [np.stack(f) for f in frames], "unstable": unstable,
            "hard_core_events": model.hard_core_events - events_before, "bead_steps": bead_steps,
            "molecule_steps": molecule_steps}


def choose_refinement(model, candidates, score, objective: str, log=print) -> dict:
    """Try each list of Score refinement levels in ``candidates`` (``[]``: off) and keep the lowest score.

    ``score(refine)`` rolls out validation data with the model's current levels (refinement on or
    off) and returns the objective, lower is better. The model keeps the chosen levels, ``[]`` when
    the choice is no refinement, so that everything after the choice (test rollouts, timings) steps
    as chosen whether it asks for refinement or not. Returns ``{"value", "split", "objective", "scores"}``.
    """
    scores = {}
    for candidate in candidates:
        if candidate:
            model.refine_sigmas = candidate
        key = json.dumps(candidate)
        scores[key] = float(score(bool(candidate)))
        log(f"      validation: refine {candidate or 'off'}: {objective} {scores[key]:.4f}")
    best = json.loads(min(scores, key=scores.get))
    model.refine_sigmas = best
    return {"value": best, "split": "validation", "objective": objective, "scores": scores}


def _current_cpu() -> int | None:
    """The CPU this thread last ran on (Linux ``/proc/self/stat`` field 39), or None."""
    try:
        with open("/proc/self/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return None


@contextlib.contextmanager
def pinned_cpus(threads: int):
    """Run the block (and the threads it starts) on ``threads`` of the CPUs this process may use.

    OpenMM's CPU platform hands every MD step to its worker threads and waits
    for them. On a virtual machine whose other CPUs are idle, each hand-off
    waits for a sleeping CPU to wake: measured on this project's 2-CPU machine,
    the same alanine-dipeptide MD ran at 164-203 ns/day with the second CPU
    idle and at 625-690 ns/day with it busy or with the process pinned to one
    CPU, while the model's rollout (torch, no worker threads) was unchanged.
    Pinned, the fine MD runs as fast as the machine allows whatever else runs,
    so a speed-up over it is not inflated. Linux only; elsewhere a no-op.
    """
    if not hasattr(os, "sched_getaffinity"):
        yield
        return
    allowed = sorted(os.sched_getaffinity(0))
    here = _current_cpu()   # start from the CPU this runs on, so two pinned runs need not share one
    first = sorted(allowed, key=lambda cpu: cpu != here)
    os.sched_setaffinity(0, first[:max(1, int(threads))])
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def interleaved_speedup(reference, model, mapping, history, rounds: int = 3, md_steps: int = 20000,
                        model_steps: int = 2000, seed: int = 0, threads: int = 1) -> dict:
    """Simulated time per wall second of fine MD and of the rollout of one molecule, alternately.

    Both run in this process with ``threads`` CPU threads (OpenMM's CPU
    platform and torch). Each round times ``md_steps`` MD steps, then
    ``model_steps`` model steps of the library rollout in one call, with the
    model's inference settings (refinement on, as they are); one untimed
    warm-up of each comes first.
    Returns the per-round ratios and their median, min and max. The process
    is pinned to ``threads`` CPUs meanwhile (:func:`pinned_cpus`).
    """
    with pinned_cpus(threads):
        return _interleaved(reference, model, mapping, history, rounds, md_steps, model_steps, seed, threads)


def _interleaved(reference, model, mapping, history, rounds, md_steps, model_steps, seed, threads) -> dict:
    """``interleaved_speedup`` inside its CPU pinning."""
    torch.set_num_threads(threads)
    platform = openmm.Platform.getPlatformByName("CPU")
    context = openmm.Context(reference.system, reference.integrator(seed + 1), platform,
                             {"Threads": str(threads)})
    context.setPositions(reference.positions)
    openmm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(reference.temperature, seed + 1)
    integrator = context.getIntegrator()
    md_dt = reference.timestep.value_in_unit(openmm.unit.picosecond)
    model_dt = model.model_timestep.value_in_unit(openmm.unit.picosecond)

    def md(steps):
        start = time.perf_counter()
        integrator.step(steps)
        context.getState(getPositions=True)
        return steps * md_dt / (time.perf_counter() - start)

    features, edges, batch = _graph(model, [mapping])
    start_history = torch.as_tensor(np.asarray(history, dtype=np.float32))
    box = torch.zeros(3, 3)

    def coarse(steps):
        # the library rollout as CGMLIntegrator.step(n) runs it: n model steps in one call
        start = time.perf_counter()
        rollout(model, start_history, features, edges, batch, box, steps, seed=seed, collision_distance=0.0)
        return steps * model_dt / (time.perf_counter() - start)

    md(max(100, md_steps // 20))
    coarse(max(10, model_steps // 20))
    rows = []
    for _ in range(int(rounds)):
        fine_ps_per_s = md(md_steps)
        model_ps_per_s = coarse(model_steps)
        rows.append({"md_ps_per_s": fine_ps_per_s, "model_ps_per_s": model_ps_per_s,
                     "ratio": model_ps_per_s / fine_ps_per_s})
    ratios = np.array([row["ratio"] for row in rows])
    return {"median": float(np.median(ratios)), "min": float(ratios.min()), "max": float(ratios.max()),
            "interleaved": True, "rounds": rows, "threads": int(threads), "platform": "CPU",
            "pinned_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "md_steps_per_round": int(md_steps), "model_steps_per_round": int(model_steps)}
