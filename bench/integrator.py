"""Speed of CGMLIntegrator, side by side in one run; prints JSON.

(a) simulated ns/day of the coarse model (an exported, untrained
    CGPropagator of the default size: speed does not depend on the weights)
    against fine-grained OpenMM MD of the same molecule on the same platform;
(b) stepping through OpenMM (Simulation.step with a DCD-like reporter every
    100 steps) against the bare torch rollout of the same model
    (``openmm_cgml.openmm.integrator.rollout``, which the integrator itself calls),
    for 1 replica and for several replicas in one batch (``--replicas``).

    OMP_NUM_THREADS=1 python bench/integrator.py [--system alanine-dipeptide] [--steps 100] [--threads 1]

The model step is the model's own (``--md-steps-per-model-step`` fine MD
steps, 1000 by default), so ``speedup_simulated_time`` is simulated time per
wall time at that step against fine MD. torch's thread count is set
explicitly (``--threads``, default 1) and OpenMM's CPU platform gets the
same ``Threads``, so a setting left behind by an earlier ``train()`` in the
process cannot leak into the numbers.

The alternative design (the propagator inside an openmm-torch ``TorchForce``
driven by a ``CustomIntegrator``) is measured by ``bench/integrator_paths.py``
(see docs/integrator_paths.md), not here.

Timings are interleaved (bare, OpenMM, bare, OpenMM, ...) and the median is
reported, so load from other processes hits both sides alike.
``openmm_overhead`` is the median over back-to-back pairs of
(time per step through OpenMM) / (bare rollout) - 1; on a busy machine it is
noisy, so ``openmm_overhead_in_run`` also gives, within each OpenMM run, the
time spent outside ``rollout`` (Simulation, reporters, Context sync) over the
time inside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform as host
import statistics
import tempfile
import time

import openmm
import openmm.app as app
import openmm.unit as u
import torch  # before openmm: openmm-torch's plugin only loads when torch's libraries are already loaded

import openmm_cgml.openmm.integrator as integrator_module
from openmm_cgml import systems
from openmm_cgml.mapping import Mapping
from openmm_cgml.model.propagator import CGPropagator, PropagatorConfig
from openmm_cgml.model_file import export_model, load
from openmm_cgml.openmm.bead_system import coarse_grained_system
from openmm_cgml.openmm.integrator import CGMLIntegrator
from openmm_cgml.openmm.rollout import model_graph, rollout


class FrameReporter:
    """Fetches positions every ``interval`` steps, as a trajectory reporter does (without disk noise)."""

    def __init__(self, interval):
        self.interval = interval
        self.frames = 0

    def describeNextReport(self, simulation):
        return {"steps": self.interval - simulation.currentStep % self.interval, "include": ["positions"]}

    def report(self, simulation, state):
        state.getPositions(asNumpy=True)
        self.frames += 1


def fine_md(reference, platform, properties, steps):
    """A closure timing ``steps`` fine MD steps; returns seconds per step."""
    integrator = reference.integrator(seed=1)
    simulation = app.Simulation(reference.topology, reference.system, integrator, platform, properties)
    simulation.context.setPositions(reference.positions)
    simulation.minimizeEnergy(maxIterations=100)
    simulation.step(200)

    def run():
        start = time.perf_counter()
        simulation.step(steps)
        simulation.context.getState(getPositions=True)
        return (time.perf_counter() - start) / steps

    return run


def untrained_model(reference, directory, k, md_steps_per_model_step, atoms_per_bead):
    mapping = Mapping.metis(reference.topology, reference.masses, atoms_per_bead=atoms_per_bead,
                            atom_types=reference.atom_types)
    dt = reference.timestep.value_in_unit(u.picosecond)
    module = CGPropagator.from_mapping(
        mapping, PropagatorConfig(k=k), model_dt_ps=md_steps_per_model_step * dt,
        md_steps_per_model_step=md_steps_per_model_step, md_timestep_ps=dt,
        temperature_K=reference.temperature.value_in_unit(u.kelvin), accel_std_nm=1e-5, velocity_std_nm=1e-4)
    path = export_model(module, os.path.join(directory, "model.safetensors"), {"mapping": mapping})
    return load(path)


def coarse_timings(model, reference, platform, properties, steps, repeats, replicas, fine=None):
    cg = coarse_grained_system(model, reference.topology, reference.positions, replicas=replicas,
                               atom_types=reference.atom_types)
    # collisions are not the point here (an untrained model wanders): guard NaNs only
    integrator = CGMLIntegrator(model, seed=1, collision_distance=0.0)
    simulation = app.Simulation(cg.topology, cg.system, integrator, platform, properties)
    simulation.context.setPositions(cg.positions)
    simulation.reporters.append(FrameReporter(100))

    features = cg.bead_features.repeat(replicas, 1)
    edges, batch = model_graph(cg.mapping, replicas)
    start = torch.as_tensor(cg.positions.value_in_unit(u.nanometer), dtype=torch.float32)
    history = start.repeat(model.k, 1, 1)
    box = torch.zeros(3, 3)

    def bare(refine=True):
        t = time.perf_counter()
        rollout(model, history, features, edges, batch, box, steps, seed=1, collision_distance=0.0,
                n_replicas=replicas, refine=refine)
        return (time.perf_counter() - t) / steps

    inside = []  # seconds spent in rollout during one OpenMM run (the rest is OpenMM + sync)
    in_run = []

    def timed_rollout(*args, **kwargs):
        t = time.perf_counter()
        try:
            return rollout(*args, **kwargs)
        finally:
            inside.append(time.perf_counter() - t)

    def through_openmm():
        simulation.context.setPositions(cg.positions)  # same start, same work
        inside.clear()
        integrator_module.rollout = timed_rollout
        try:
            t = time.perf_counter()
            simulation.step(steps)
            total = time.perf_counter() - t
        finally:
            integrator_module.rollout = rollout
        in_run.append(total / sum(inside) - 1)
        return total / steps

    bare(), through_openmm(), bare(False)  # warm-up: TorchScript profiling runs, allocations
    in_run.clear()
    bare_s, openmm_s, no_refine_s, fine_s = [], [], [], []
    for _ in range(repeats):
        if fine is not None:  # fine MD interleaved too: the speed-up ratio sees the same load
            fine_s.append(fine())
        bare_s.append(bare())
        openmm_s.append(through_openmm())
        no_refine_s.append(bare(False))
    # overheads from back-to-back pairs: load from other processes cancels out
    timing = {"beads": cg.system.getNumParticles(),
              "ms_per_step_bare_rollout": statistics.median(bare_s) * 1e3,
              "ms_per_step_openmm": statistics.median(openmm_s) * 1e3,
              "ms_per_step_bare_rollout_no_refine": statistics.median(no_refine_s) * 1e3,
              "openmm_overhead": statistics.median(o / b for o, b in zip(openmm_s, bare_s)) - 1,
              # the same, measured inside each OpenMM run: time outside rollout() over time inside it
              "openmm_overhead_in_run": statistics.median(in_run)}
    if fine_s:
        timing["fine_s_per_step"] = statistics.median(fine_s)
    return timing


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="alanine-dipeptide")
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--steps", type=int, default=100, help="model steps per timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--fine-steps", type=int, default=1000, help="fine MD steps per timing")
    parser.add_argument("--k", type=int, default=8, help="history length (the coarse-grain default)")
    parser.add_argument("--md-steps-per-model-step", type=int, default=1000)
    parser.add_argument("--atoms-per-bead", type=float, default=4.0)
    parser.add_argument("--replicas", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads and OpenMM CPU-platform threads (default 1)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)  # explicit: never inherit an earlier train()'s setting
    platform = openmm.Platform.getPlatformByName(args.platform)
    properties = {"Threads": str(args.threads)} if args.platform == "CPU" else {}
    reference = systems.load(args.system)
    fine = fine_md(reference, platform, properties, args.fine_steps)
    fine()  # warm-up
    dt_fine = reference.timestep.value_in_unit(u.picosecond)
    result = {
        "hardware": {"cpu": host.processor() or host.machine(), "cores": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(), "openmm_cpu_threads": properties.get("Threads"),
                     "platform": args.platform,
                     "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                     "note": "shared machine; medians of interleaved repeats"},
        "versions": {"openmm": openmm.__version__, "torch": torch.__version__},
        "system": args.system, "n_atoms": reference.n_atoms,
    }
    with tempfile.TemporaryDirectory() as directory:
        model = untrained_model(reference, directory, args.k, args.md_steps_per_model_step, args.atoms_per_bead)
        dt_ps = model.module.model_dt_ps
        result["coarse"] = {"n_beads": model.mapping.n_beads, "k": model.k, "model_dt_ps": dt_ps,
                            "md_steps_per_model_step": model.md_steps_per_model_step,
                            "n_parameters": model.metadata.get("n_parameters"), "by_replicas": {}}
        for replicas in args.replicas:
            first = replicas == args.replicas[0]
            timing = coarse_timings(model, reference, platform, properties, args.steps, args.repeats, replicas,
                                    fine=fine if first else None)
            if first:
                fine_step_s = timing.pop("fine_s_per_step")
                fine_rate = dt_fine * 1e-3 / fine_step_s * 86400
                result["fine"] = {"ns_per_day": fine_rate, "ms_per_step": fine_step_s * 1e3, "timestep_ps": dt_fine,
                                  "integrator": "LangevinMiddleIntegrator", "steps_per_timing": args.fine_steps}
            # simulated time per wall day through OpenMM, summed over replicas
            timing["ns_per_day"] = replicas * dt_ps * 1e-3 / (timing["ms_per_step_openmm"] * 1e-3) * 86400
            timing["speedup_simulated_time"] = timing["ns_per_day"] / fine_rate  # summed over replicas
            result["coarse"]["by_replicas"][str(replicas)] = timing
    single = result["coarse"]["by_replicas"][str(args.replicas[0])]
    result["speedup_simulated_time"] = single["ns_per_day"] / fine_rate
    result["openmm_overhead"] = single["openmm_overhead"]
    result["openmm_overhead_in_run"] = single["openmm_overhead_in_run"]
    if len(args.replicas) > 1:
        best = max(result["coarse"]["by_replicas"].values(), key=lambda r: r["ns_per_day"])
        result["speedup_simulated_time_batched"] = best["ns_per_day"] / fine_rate
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
