"""Speed of CGMLIntegrator, side by side in one run; prints JSON.

(a) ``speedup_simulated_time``: simulated time per wall time of a shipped
    model (``--model``, default ``alanine-dipeptide``, at its own model step)
    through ``Simulation.step`` against fine-grained OpenMM MD of the same
    molecule on the same platform and threads. Fine MD and the model run in
    alternation in this one process for ``--repeats`` rounds (>= 3); the
    ratio of each round is kept and the median, min and max are reported;
(b) stepping through OpenMM (a DCD-like reporter every 100 steps) against
    the bare torch rollout of the same model (``rollout``, which the
    integrator itself calls), for 1 replica and several in one batch
    (``--replicas``): ``openmm_overhead``;
(c) ``throughput``: chain-steps per second of ``--throughput-model``
    (default ``polymer-chain-1ps``) on 8-bead chains, many replicas in one
    Context (``--throughput-replicas``, default 1, 8, 64, 512), at each of
    ``--throughput-threads`` (default 1 and every CPU the process may use),
    the settings alternating for ``--repeats`` rounds: median, min and max.

``--compile`` steps both models through ``torch.compile`` (``CGModel.compile()``; compilation happens in
the warm-up steps, outside every timing).

    OMP_NUM_THREADS=1 python bench/integrator.py [--model alanine-dipeptide] [--steps 100] [--threads 1]

torch's thread count is set explicitly (``--threads``, default 1) and
OpenMM's CPU platform gets the same ``Threads``, so a setting left behind by
an earlier ``train()`` in the process cannot leak into the numbers. On the
CPU platform the whole run is pinned to that many CPUs (``pinned_cpus``): unpinned, the fine MD ran
3-4x slower whenever the machine's other CPU was idle (its worker hand-offs
wait for a sleeping virtual CPU), which inflated earlier speed-ups.

The alternative design (the propagator inside an openmm-torch ``TorchForce``
driven by a ``CustomIntegrator``) is measured by ``bench/integrator_paths.py``
(see docs/integrator_paths.md), not here.

``openmm_overhead`` is the median over back-to-back pairs of (time per step
through OpenMM) / (bare rollout) - 1; on a busy machine it is noisy, so
``openmm_overhead_in_run`` also gives, within each OpenMM run, the time spent
outside ``rollout`` (Simulation, reporters, Context sync) over the time
inside it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform as host
import statistics
import time

import openmm
import openmm.app as app
import openmm.unit as u
import torch  # before openmm: openmm-torch's plugin only loads when torch's libraries are already loaded

import openmm_cgml.openmm.integrator as integrator_module
from openmm_cgml import systems
from openmm_cgml.evaluation.rollouts import pinned_cpus
from openmm_cgml.model_file import load
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
    timing = {"seconds_per_step_openmm": openmm_s,
              "beads": cg.system.getNumParticles(),
              "ms_per_step_bare_rollout": statistics.median(bare_s) * 1e3,
              "ms_per_step_openmm": statistics.median(openmm_s) * 1e3,
              "ms_per_step_bare_rollout_no_refine": statistics.median(no_refine_s) * 1e3,
              "openmm_overhead": statistics.median(o / b for o, b in zip(openmm_s, bare_s)) - 1,
              # the same, measured inside each OpenMM run: time outside rollout() over time inside it
              "openmm_overhead_in_run": statistics.median(in_run)}
    if fine_s:
        timing["fine_seconds_per_step"] = fine_s
    return timing


def chain_simulation(model, n_monomers, platform, properties, replicas):
    """``replicas`` chains of ``n_monomers`` in one Context driven by ``CGMLIntegrator``, warmed up."""
    reference = systems.load("polymer-chain", length=n_monomers)
    cg = coarse_grained_system(model, reference.topology, reference.positions, replicas=replicas,
                               atom_types=reference.atom_types)
    integrator = CGMLIntegrator(model, seed=1, collision_distance=0.0)
    simulation = app.Simulation(cg.topology, cg.system, integrator, platform, properties)
    simulation.context.setPositions(cg.positions)
    simulation.step(max(3, model.k))  # warm-up: TorchScript profiling runs, the history fills
    return simulation, cg.mapping.n_beads


def throughput(load_model, platform, steps, replicas_list, threads_list, rounds):
    """Chain-steps per second of 8-bead chains, many in one Context, through ``Simulation``.

    Every (replicas, threads) setting is timed once per round, the settings in
    turn, for ``rounds`` rounds; each timing runs pinned to ``threads`` CPUs
    with that many torch threads. Returns one row per setting with the
    median, min and max over the rounds. ``load_model()`` gives the model, one per thread count (a compiled
    step keeps the thread count it was compiled at).
    """
    settings = [(n, t) for t in threads_list for n in replicas_list]
    simulations, models = {}, {}
    for n, t in settings:
        with pinned_cpus(t):
            torch.set_num_threads(t)
            properties = {"Threads": str(t)} if platform.getName() == "CPU" else {}
            model = models.setdefault(t, load_model())
            simulations[(n, t)] = chain_simulation(model, 8, platform, properties, n)
    times = {setting: [] for setting in settings}
    for _ in range(rounds):
        for n, t in settings:
            simulation, _ = simulations[(n, t)]
            with pinned_cpus(t):
                torch.set_num_threads(t)
                start = time.perf_counter()
                simulation.step(steps)
                simulation.context.getState(getPositions=True)
                times[(n, t)].append(time.perf_counter() - start)
    rows = []
    for n, t in settings:
        rates = [n * steps / elapsed for elapsed in times[(n, t)]]
        rows.append({"replicas": n, "beads_per_replica": simulations[(n, t)][1], "threads": t,
                     "steps": steps, "rounds": rounds, "chain_steps_per_s": statistics.median(rates),
                     "chain_steps_per_s_min": min(rates), "chain_steps_per_s_max": max(rates),
                     "ms_per_step": statistics.median(times[(n, t)]) / steps * 1e3})
    return rows


def _load(name: str, compiled: bool):
    """The model file or shipped model ``name``, its step compiled if asked (``CGModel.compile()``)."""
    model = load(name)
    return model.compile() if compiled else model


def spread(values):
    """``{"median", "min", "max"}`` of a list of numbers."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="alanine-dipeptide", help="model file or shipped model name")
    parser.add_argument("--system", default=None, help="its fine system (default: the model's name)")
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--steps", type=int, default=100, help="model steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (at least 3)")
    parser.add_argument("--fine-steps", type=int, default=2000, help="fine MD steps per timing")
    parser.add_argument("--replicas", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--throughput-model", default="polymer-chain-1ps")
    parser.add_argument("--throughput-replicas", type=int, nargs="*", default=[1, 8, 64, 512])
    parser.add_argument("--throughput-steps", type=int, default=20)
    parser.add_argument("--throughput-threads", type=int, nargs="*", default=None,
                        help="thread counts of the throughput rows (default: 1 and all CPUs this process may use)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads and OpenMM CPU-platform threads (default 1)")
    parser.add_argument("--compile", action="store_true",
                        help="step the models through torch.compile (CGModel.compile())")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")
    if any(t < 1 for t in (args.throughput_threads or [])):
        parser.error("--throughput-threads must be whole numbers >= 1")

    # the CPU platform's worker hand-offs wait on idle CPUs unless pinned (pinned_cpus); a GPU run is left alone
    with pinned_cpus(args.threads) if args.platform == "CPU" else contextlib.nullcontext():
        result = run(args)
    # the throughput rows pin themselves, each to its own thread count
    platform = openmm.Platform.getPlatformByName(args.platform)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.throughput_threads or sorted({1, cpus})
    result["throughput_model"] = args.throughput_model
    result["throughput"] = throughput(lambda: _load(args.throughput_model, args.compile), platform,
                                      args.throughput_steps, args.throughput_replicas, threads, args.repeats)
    torch.set_num_threads(args.threads)
    print(json.dumps(result, indent=2))


def run(args) -> dict:
    """The timings of ``main`` but the throughput, pinned to ``args.threads`` CPUs."""
    torch.set_num_threads(args.threads)  # explicit: never inherit an earlier train()'s setting
    platform = openmm.Platform.getPlatformByName(args.platform)
    properties = {"Threads": str(args.threads)} if args.platform == "CPU" else {}
    model = _load(args.model, args.compile)
    system_name = args.system or (args.model if args.model in systems.available() else None)
    if system_name is None:
        raise SystemExit("bench/integrator.py: --system is needed for a model file")
    reference = systems.load(system_name)
    fine = fine_md(reference, platform, properties, args.fine_steps)
    fine()  # warm-up
    dt_fine = reference.timestep.value_in_unit(u.picosecond)
    dt_ps = float(model.module.model_dt_ps)
    result = {
        "hardware": {"cpu": host.processor() or host.machine(), "cores": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(), "openmm_cpu_threads": properties.get("Threads"),
                     "platform": args.platform,
                     "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                     "pinned_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                     "note": "shared machine; fine MD and the model interleaved in one process"},
        "versions": {"openmm": openmm.__version__, "torch": torch.__version__},
        "model": args.model, "compiled": bool(args.compile), "system": system_name, "n_atoms": reference.n_atoms,
        "coarse": {"n_beads": model.n_beads, "k": model.k, "model_dt_ps": dt_ps,
                   "md_steps_per_model_step": model.md_steps_per_model_step, "by_replicas": {}},
    }
    for replicas in args.replicas:
        first = replicas == args.replicas[0]
        timing = coarse_timings(model, reference, platform, properties, args.steps, args.repeats, replicas,
                                fine=fine if first else None)
        openmm_s = timing.pop("seconds_per_step_openmm")
        if first:
            fine_s = timing.pop("fine_seconds_per_step")
            # one ratio per round: the model's simulated time per wall time over fine MD's, same load
            ratios = [(dt_ps / o) / (dt_fine / f) for o, f in zip(openmm_s, fine_s)]
            result["fine"] = {"ns_per_day": dt_fine * 1e-3 / statistics.median(fine_s) * 86400,
                              "ms_per_step": statistics.median(fine_s) * 1e3, "timestep_ps": dt_fine,
                              "integrator": "LangevinMiddleIntegrator", "steps_per_timing": args.fine_steps}
            result["speedup_simulated_time"] = {**spread(ratios), "interleaved": True, "rounds": len(ratios),
                                                "model_step_ps": dt_ps, "replicas": replicas}
        timing["ns_per_day"] = replicas * dt_ps * 1e-3 / (timing["ms_per_step_openmm"] * 1e-3) * 86400
        result["coarse"]["by_replicas"][str(replicas)] = timing
    single = result["coarse"]["by_replicas"][str(args.replicas[0])]
    result["openmm_overhead"] = single["openmm_overhead"]
    result["openmm_overhead_in_run"] = single["openmm_overhead_in_run"]
    return result


if __name__ == "__main__":
    main()
