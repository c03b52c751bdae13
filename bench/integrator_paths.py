"""Two ways to run a learned propagator inside OpenMM, timed side by side; prints JSON.

Same exported model (an untrained ``CGPropagator`` of the default size, k = 8,
refinement on: speed does not depend on the weights), same molecule, same
platform, in one run:

(a) ``torchforce``: the propagator inside an openmm-torch ``TorchForce``
    (``setOutputsForces(True)``) driven by a ``CustomIntegrator`` whose
    program is ``cgml_step += 1; v = f*c/dt; x = x + f*c`` (c = 1). The
    TorchScript module (``openmm_cgml.openmm.torchforce.GuardedTorchForcePropagator``) keeps the k-frame
    history and a noise table in buffers and returns the displacement
    ``x_{t+1} - x_t`` as "forces", so OpenMM moves the beads exactly to the
    model's next frame. Positions live in the Context (on the GPU there).
(b) ``rollout``: ``openmm_cgml.CGMLIntegrator``, whose ``step(n)`` runs ``n``
    model steps in torch on the platform's device and syncs with the Context
    (setPositions/setVelocities/setTime/setStepCount + the per-DOF history)
    once per call; timed with a sync every 1, 10 and 100 model steps.
(c) ``bare``: the model call alone in a torch loop (``module.step`` + history
    shift), the floor both paths are measured against.

Each path fetches positions after every report interval (what a trajectory
reporter does). Bead counts: a bead-spring polymer chain (``polymer-chain``,
one bead per particle) of 10, 100 and 1000 beads.

    OMP_NUM_THREADS=1 python bench/integrator_paths.py [--beads 10 100 1000] [--repeats 3]

From --large-beads (500) beads on, a timing is --large-steps (10) model
steps, so the intervals that fit are 1 and 10 (a 1000-bead model step takes
~70 ms here; the sync is then a rounding error anyway).

Timings are interleaved (bare, rollout@1, rollout@10, ..., torchforce@1, ...,
bare, ...) and the median over repeats is reported, so load from other
processes hits all paths alike. The platform is CUDA (with the Context's
GPU as torch device) when both OpenMM and torch see one, else CPU.

The TorchForce path itself (the guarded module, its two pitfalls and what the
guard cannot fix) lives in ``openmm_cgml.openmm.torchforce``; see
docs/integrator_paths.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform as host
import statistics
import sys
import tempfile
import time

import openmm
import openmm.unit as u
import torch  # before openmm: openmm-torch's plugin only loads when torch's libraries are already loaded

from openmm_cgml import systems
from openmm_cgml.mapping import Mapping
from openmm_cgml.model.propagator import CGPropagator, PropagatorConfig
from openmm_cgml.model_file import export_model, load
from openmm_cgml.openmm import CGMLIntegrator, choose_platform, coarse_grained_system, model_graph, step_noise
from openmm_cgml.openmm.torchforce import torchforce_context


def polymer_model(n_beads: int, k: int, directory: str):
    """An exported, untrained propagator for a ``n_beads``-bead polymer chain (one bead per particle)."""
    if n_beads < 2 or n_beads % 2:
        raise ValueError(f"bead counts must be even and >= 2 (two beads per monomer), got {n_beads}")
    reference = systems.load("polymer-chain", length=n_beads // 2)
    mapping = Mapping.metis(reference.topology, reference.masses, atoms_per_bead=1,
                            atom_types=reference.atom_types)
    dt = reference.timestep.value_in_unit(u.picosecond)
    steps = 500  # one model step = 5 tau, as in the published polymer setup
    module = CGPropagator.from_mapping(
        mapping, PropagatorConfig(k=k), model_dt_ps=steps * dt, md_steps_per_model_step=steps, md_timestep_ps=dt,
        temperature_K=reference.temperature.value_in_unit(u.kelvin), accel_std_nm=1e-2, velocity_std_nm=1e-2)
    model = load(export_model(module, os.path.join(directory, f"polymer{n_beads}.safetensors"), {"mapping": mapping}))
    return model, reference


def platform_and_device(name: str):
    """``(openmm.Platform, torch.device)``: CUDA when both sides have it (for "auto"), else CPU."""
    platform = choose_platform(name)
    return platform, torch.device("cuda:0" if platform.getName() == "CUDA" else "cpu")


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_path(model, start, device, steps):
    """The floor: the model call alone on the device, from ``start`` with the noise of steps 0..steps-1."""
    model.to(device)
    features = model.embed_mapping().to(device)
    edges, batch = model_graph(model.mapping, 1, device)
    box = torch.zeros(3, 3, device=device)
    # Every path takes the same trajectory (same start, same noise: step_noise(seed 1, i) for step i of a
    # timing), so they do the same work: an untrained model's cost varies with the beads' neighbour counts.
    generator = torch.Generator()
    shape = (model.noise_draws(True), start.shape[0], 3)
    noise = torch.stack([step_noise(generator, 1, i, shape, torch.float32, "cpu") for i in range(steps)]).to(device)

    def bare():
        history = start.to(device).repeat(model.k, 1, 1)
        _synchronize(device)
        t = time.perf_counter()
        for i in range(steps):
            new = model.step(history, features, edges, batch, box, noise[i], True)  # no_grad, as rollout
            history = torch.cat([history[1:], new.unsqueeze(0)], dim=0)
        _synchronize(device)
        return (time.perf_counter() - t) / steps

    return bare


def stepped_path(cg, context, integrator, interval, steps):
    """Seconds per model step of ``integrator.step(interval)`` with a position fetch after each call."""
    def run():
        # same start (a warm-up from k copies) and noise from step 0: the same work for every repeat
        context.setPositions(cg.positions)
        if isinstance(integrator, CGMLIntegrator):
            integrator.setGlobalVariableByName("cgml_model_step_hi", 0.0)  # its noise counter
            integrator.setGlobalVariableByName("cgml_model_step_lo", 0.0)
        else:
            context.setParameter("cgml_step", 0.0)
        t = time.perf_counter()
        for _ in range(steps // interval):
            integrator.step(interval)
            context.getState(getPositions=True).getPositions(asNumpy=True)  # a trajectory reporter
        return (time.perf_counter() - t) / steps
    return run


def timing_paths(model, cg, platform, device, steps, intervals):
    """name -> closure returning seconds per model step, for every path of one molecule."""
    start = torch.as_tensor(cg.positions.value_in_unit(u.nanometer), dtype=torch.float32)
    paths = {"bare": bare_path(model, start, device, steps)}
    # (b) CGMLIntegrator: torch rollout, one Context sync per step(n) call
    # (collisions are not the point here, an untrained model wanders: guard NaNs only)
    rollout_integrator = CGMLIntegrator(model, seed=1, collision_distance=0.0)
    rollout_context = openmm.Context(cg.system, rollout_integrator, platform)
    rollout_context.setPositions(cg.positions)
    # (a) openmm-torch TorchForce + CustomIntegrator (its own copy of the module, on the Context's device).
    # On the CPU platform OpenMM's own worker threads (default: one per core) compete with torch for the
    # cores while the model runs: Threads=1 is the fair setting; the default is timed too, to show it.
    on_cpu = platform.getName() == "CPU"
    table = max(256, steps)
    tf_context, tf_integrator = torchforce_context(model, cg, platform, seed=1, noise_steps=table,
                                                   properties={"Threads": "1"} if on_cpu else None)
    for interval in intervals:
        paths[f"rollout_sync_every_{interval}"] = stepped_path(cg, rollout_context, rollout_integrator, interval,
                                                               steps)
    for interval in intervals:
        paths[f"torchforce_report_every_{interval}"] = stepped_path(cg, tf_context, tf_integrator, interval, steps)
    if on_cpu:
        default_threads = torchforce_context(model, cg, platform, seed=1, noise_steps=table)
        paths[f"torchforce_cpu_default_threads_report_every_{intervals[-1]}"] = stepped_path(
            cg, *default_threads, intervals[-1], steps)
    return paths


def time_config(model, reference, platform, device, steps, intervals, repeats):
    """Median ms per model step of every path for one molecule; paths interleaved per repeat."""
    cg = coarse_grained_system(model, reference.topology, reference.positions)
    paths = timing_paths(model, cg, platform, device, steps, intervals)
    for run in paths.values():  # warm-up: TorchScript profiling runs, allocations, plugin setup
        run()
    samples = {name: [] for name in paths}
    for _ in range(repeats):
        for name, run in paths.items():
            samples[name].append(run())
    ms = {name: statistics.median(values) * 1e3 for name, values in samples.items()}
    bare_ms = samples["bare"]
    result = {"n_beads": cg.system.getNumParticles(), "ms_per_step": ms,
              # ratios from the same repeat (back to back), then the median: load cancels
              "overhead_vs_bare": {name: statistics.median(s / b for s, b in zip(values, bare_ms)) - 1
                                   for name, values in samples.items() if name != "bare"},
              "spread_ms": {name: [min(v) * 1e3, max(v) * 1e3] for name, v in samples.items()}}
    result["torchforce_over_rollout"] = {
        str(i): statistics.median(t / r for t, r in zip(samples[f"torchforce_report_every_{i}"],
                                                        samples[f"rollout_sync_every_{i}"]))
        for i in intervals}
    result["fastest_path"] = min((name for name in paths if name != "bare"), key=ms.get)
    if platform.getName() == "CPU":
        result["torchforce_cpu_platform_threads"] = 1
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beads", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--intervals", type=int, nargs="+", default=[1, 10, 100],
                        help="model steps between syncs with the Context / position reports")
    parser.add_argument("--steps", type=int, default=100, help="model steps per timing (a multiple of every interval)")
    parser.add_argument("--large-steps", type=int, default=10,
                        help="model steps per timing from --large-beads beads on (the model step dominates there); "
                             "intervals that do not divide it are skipped")
    parser.add_argument("--large-beads", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=8, help="history length (the coarse-grain default)")
    parser.add_argument("--platform", default="auto", choices=["auto", "CPU", "CUDA", "Reference"])
    args = parser.parse_args()
    bad = [i for i in args.intervals if i < 1 or args.steps % i]
    if bad:
        parser.error(f"--steps {args.steps} must be a multiple of every interval; not of {bad}")

    platform, device = platform_and_device(args.platform)
    result = {
        "hardware": {"cpu": host.processor() or host.machine(), "cores": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(), "platform": platform.getName(),
                     "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                     "note": "medians of interleaved repeats; on a shared machine absolute numbers vary, "
                             "ratios from back-to-back runs less"},
        "versions": {"openmm": openmm.__version__, "torch": torch.__version__},
        "model": {"kind": "exported untrained CGPropagator (default size, refinement on)", "k": args.k,
                  "molecule": "polymer-chain, one bead per particle"},
        "steps_per_timing": {"below_large_beads": args.steps, "from_large_beads": args.large_steps,
                             "large_beads": args.large_beads}, "repeats": args.repeats,
        "notes": ["every path fetches positions once per interval (a trajectory reporter)",
                  "rollout = CGMLIntegrator.step(interval): torch loop + one Context sync per call, "
                  "noise re-seeded per step (step_noise)",
                  "torchforce noise comes from a precomputed table buffer (no per-step re-seeding)",
                  "torchforce Context on the CPU platform with Threads=1; the default thread count is "
                  "timed once as torchforce_cpu_default_threads_*"],
        "by_beads": {},
    }
    with tempfile.TemporaryDirectory() as directory:
        for n_beads in args.beads:
            model, reference = polymer_model(n_beads, args.k, directory)
            result["model"]["n_parameters"] = sum(p.numel() for p in model.module.parameters())
            steps = args.large_steps if n_beads >= args.large_beads else args.steps
            intervals = [i for i in args.intervals if steps % i == 0] or [steps]
            print(f"{n_beads} beads: {steps} model steps per timing, intervals {intervals}",
                  file=sys.stderr, flush=True)
            result["by_beads"][str(n_beads)] = time_config(model, reference, platform, device, steps,
                                                           intervals, args.repeats)
    # the verdict: which design is faster at each report interval, over all bead counts
    verdict = {}
    for interval in args.intervals:
        ratios = [r["torchforce_over_rollout"][str(interval)] for r in result["by_beads"].values()
                  if str(interval) in r["torchforce_over_rollout"]]
        verdict[str(interval)] = "rollout" if all(x > 1 for x in ratios) else (
            "torchforce" if all(x < 1 for x in ratios) else "mixed")
    result["faster_design_by_interval"] = verdict
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
