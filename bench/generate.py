"""Overhead of ``openmm_cgml.generate.generate`` against a plain OpenMM loop, side by side in one run.

Both paths get the same built system (building it is not timed), minimise, equilibrate the same number of
steps, then run the same LangevinMiddleIntegrator with the same reporting
stride on the same platform and context properties. The plain loop keeps
what generate stores (positions, velocities, potential energy) in memory;
generate also writes the HDF5 file in chunks with a checkpoint per chunk.
Each measurement is the best of ``--repeats`` alternating runs (the machine
is shared). Prints JSON; ``overhead_ratio`` = time per ns through generate /
time per ns of the plain loop, in process CPU time (robust when other jobs share
the machine; with one CPU thread it is the work done); the wall-clock ratio is
printed as well.

    python bench/generate.py [--repeats 3] [--systems polymer-chain alanine-dipeptide]
"""
from __future__ import annotations

import argparse
import json
import os
import platform as host
import tempfile
import time

import numpy as np
import openmm as mm

from openmm_cgml import systems
from openmm_cgml.generate import generate, platform_properties, trajectory_seed

CASES = {  # system -> (frames, stride)
    "polymer-chain": (200, 100),
    "alanine-dipeptide": (200, 50),
    "polymer-melt": (100, 100),
}
EQUILIBRATION = 200


def plain_openmm(ref, frames: int, stride: int, platform: str, properties: dict) -> tuple[float, float]:
    """The script a user would write: returns (wall, CPU) seconds for the whole run."""
    began, cpu = time.perf_counter(), time.process_time()
    integrator = mm.LangevinMiddleIntegrator(ref.temperature, ref.friction, ref.timestep)
    integrator.setRandomNumberSeed(trajectory_seed(0, 0))
    context = mm.Context(ref.system, integrator, mm.Platform.getPlatformByName(platform), properties)
    context.setPositions(ref.positions)
    mm.LocalEnergyMinimizer.minimize(context, 10.0)
    context.setVelocitiesToTemperature(ref.temperature, trajectory_seed(0, 0))
    integrator.step(EQUILIBRATION)
    positions, velocities, energies = [], [], []
    for frame in range(frames):
        if frame:
            integrator.step(stride)
        state = context.getState(getPositions=True, getVelocities=True, getEnergy=True)
        positions.append(state.getPositions(asNumpy=True)._value.astype(np.float32))
        velocities.append(state.getVelocities(asNumpy=True)._value.astype(np.float32))
        energies.append(state.getPotentialEnergy()._value)
    return time.perf_counter() - began, time.process_time() - cpu


def through_generate(ref, frames: int, stride: int, platform: str, cpu_threads: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        began, cpu = time.perf_counter(), time.process_time()
        generate(ref, out, frames=frames, stride=stride, equilibration_steps=EQUILIBRATION, platform=platform,
                 progress=False, cpu_threads=cpu_threads)
        return time.perf_counter() - began, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--systems", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--cpu-threads", type=int, default=1)
    args = parser.parse_args()
    properties = platform_properties(args.platform, args.cpu_threads)
    results = {}
    through_generate(systems.load("polymer-chain", length=2), 2, 1, args.platform, 1)  # warm-up: imports
    for name in args.systems:
        frames, stride = CASES[name]
        ref = systems.load(name)
        ns = (frames - 1) * stride * ref.timestep._value * 1e-3
        steps = (frames - 1) * stride + EQUILIBRATION
        plain, ours = [], []
        for _ in range(args.repeats):  # alternate so both see the same machine load
            plain.append(plain_openmm(ref, frames, stride, args.platform, properties))
            ours.append(through_generate(ref, frames, stride, args.platform, args.cpu_threads))
        plain_wall, plain_cpu = min(t[0] for t in plain), min(t[1] for t in plain)
        ours_wall, ours_cpu = min(t[0] for t in ours), min(t[1] for t in ours)
        results[name] = {
            "n_particles": ref.n_atoms, "frames": frames, "stride": stride, "md_steps": steps,
            "timestep_ps": ref.timestep._value,
            "plain_wall_s": round(plain_wall, 4), "generate_wall_s": round(ours_wall, 4),
            "plain_cpu_s": round(plain_cpu, 4), "generate_cpu_s": round(ours_cpu, 4),
            "plain_ns_per_day": round(ns / plain_wall * 86400, 1),
            "generate_ns_per_day": round(ns / ours_wall * 86400, 1),
            "generate_md_steps_per_s": round(steps / ours_wall, 1),
            "overhead_ratio": round(ours_cpu / plain_cpu, 4),
            "overhead_ratio_wall": round(ours_wall / plain_wall, 4),
        }
    print(json.dumps({
        "benchmark": "cgml generate vs plain OpenMM loop (same system, integrator, stride, platform)",
        "platform": args.platform, "context_properties": properties,
        "hardware": f"{host.processor() or host.machine()}, {os.cpu_count()} CPU cores (shared)",
        "openmm": mm.__version__, "repeats": args.repeats,
        "overhead_ratio": max(r["overhead_ratio"] for r in results.values()),
        "note": "overhead_ratio uses CPU time (robust on a shared machine); overhead_ratio_wall is wall time",
        "systems": results,
    }, indent=2))


if __name__ == "__main__":
    main()
