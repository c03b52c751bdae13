"""Model-step time and bead collisions of the propagator, with and without Score refinement; prints JSON.

One run, side by side: for each bead count (copies of one molecule, each its
own graph, spaced beyond the cutoff) and each device, the exported model's
``step`` is timed as a rollout runs it (inputs validated once, then ``validate_inputs`` off: the
topology tables are reused, docs/propagator.md) with ``refine=False``/``True`` and each correction after a
step (none, the truncated step, the hard-core projection; interleaved, median of repeats, on a fixed equilibrium-like
configuration so the graph size is representative), then a rollout from the
same start, with the same noise and the same counting for every variant,
counts bead pairs closer than ``--threshold`` (default 0.1 nm).

    OMP_NUM_THREADS=1 python bench/propagator.py                      # untrained default-size model
    OMP_NUM_THREADS=1 python bench/propagator.py --model ala2.safetensors --system alanine-dipeptide \\
        --refine-sigmas 0.6 0.3 0.1

``--profile`` adds ``profile``: the per-op time breakdown of one step (``torch.profiler``, self CPU time
per step of the 25 costliest ops, refinement on, the model's own correction) at each bead count.
``--compile`` adds ``compiled``: the model file's step as a rollout calls it (refinement on, its own
truncation and hard core), scripted and through ``CGModel.compile()``, alternately, median of ``--repeats``
(``--compile-only``: only these rows).

``collision_rate`` = colliding bead pairs per bead per model step, averaged
over the rollout (0 = no collision ever); ``steps_with_collision`` counts model
steps with at least one. With an untrained model (no ``--model``) timings
are meaningful but collision rates are not; its hard core is set to 0.9 x
the closest bonded / non-bonded bead distances of the reference structure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import openmm.unit as u
import torch

from openmm_cgml import systems
from openmm_cgml.geometry import count_collisions
from openmm_cgml.io import software_versions
from openmm_cgml.mapping import Mapping
from openmm_cgml.model.propagator import CGPropagator, PropagatorConfig
from openmm_cgml.model_file import export_model, load


def reference_molecule(name: str, params: dict, model):
    """(mapping, bead positions (n_beads, 3) nm) of one molecule."""
    reference = systems.load(name, **params)
    if model is not None and model.mapping is not None:
        mapping = model.mapping
        mapping.check_fits(reference.topology)
    else:
        mapping = Mapping.metis(reference.topology, reference.masses, atoms_per_bead=1 if name.startswith("polymer")
                                else 4, atom_types=reference.atom_types)
    positions = reference.positions.value_in_unit(u.nanometer)
    return mapping, np.asarray(mapping.bead_positions(np.asarray(positions)), dtype=np.float32)


def untrained(mapping, positions, directory: str, k: int):
    distances = torch.cdist(torch.as_tensor(positions), torch.as_tensor(positions))
    bonded = torch.zeros_like(distances, dtype=torch.bool)
    bonds = torch.as_tensor(mapping.coarse_bonds, dtype=torch.long).reshape(-1, 2)
    bonded[bonds[:, 0], bonds[:, 1]] = bonded[bonds[:, 1], bonds[:, 0]] = True
    other = ~bonded & ~torch.eye(len(positions), dtype=torch.bool)
    minima = {"min_bonded_nm": 0.9 * float(distances[bonded].min()) if bool(bonded.any()) else 0.0,
              "min_nonbonded_nm": 0.9 * float(distances[other].min()) if bool(other.any()) else 0.0}
    module = CGPropagator.from_mapping(mapping, PropagatorConfig(k=k), transferable=True, accel_std_nm=0.05,
                                       velocity_std_nm=0.1, model_dt_ps=1.0, **minima)
    return load(export_model(module, os.path.join(directory, "model.safetensors"), {"mapping": mapping}))


def replicate(model, mapping, positions, n_copies: int, spacing_nm: float, device: str):
    """Inputs for ``n_copies`` molecules on a cubic grid, each its own graph."""
    side = int(np.ceil(n_copies ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_copies]
    centred = positions - positions.mean(0)
    start = torch.as_tensor((centred[None] + spacing_nm * grid[:, None]).reshape(-1, 3), dtype=torch.float32)
    features = model.embed_mapping(mapping).repeat(n_copies, 1)
    bonds = torch.as_tensor(mapping.coarse_bonds, dtype=torch.long).reshape(-1, 2).T
    edges = torch.cat([bonds, bonds.flip(0)], 1)
    offsets = torch.arange(n_copies).repeat_interleave(edges.shape[1]) * mapping.n_beads
    edges = edges.repeat(1, n_copies) + offsets
    batch = torch.arange(n_copies).repeat_interleave(mapping.n_beads)
    # a history at rest (thermal motion would only change the timing through the graph size)
    history = start.repeat(model.k, 1, 1)
    move = lambda t: t.to(device)  # noqa: E731
    return move(history), move(features), move(edges), move(batch), torch.zeros(3, 3, device=device)


def validated_once(module, inputs):
    """Check the inputs and store their topology tables once, then step without the checks, as ``rollout`` (and so
    ``CGMLIntegrator``) does; returns the switch to put back."""
    history, features, edges, batch, _ = inputs
    module.validate(history, features, edges, batch)
    module.validate_inputs = False
    return lambda: setattr(module, "validate_inputs", True)


def _ms_per_call(call, n_steps: int, device) -> float:
    """Milliseconds per ``call(i)`` over ``n_steps`` calls (the GPU's queue drained before and after)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(n_steps):
        call(i)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n_steps * 1e3


def time_steps(module, inputs, refine: bool, n_steps: int, device: str) -> float:
    history, features, edges, batch, box = inputs
    noise = torch.randn(n_steps, module.noise_draws(refine), history.shape[1], 3, device=device)
    restore = validated_once(module, inputs)
    ms = _ms_per_call(lambda i: module.step(history, features, edges, batch, box, noise[i], refine), n_steps, device)
    restore()
    return ms


def collision_rate(module, inputs, refine: bool, n_steps: int, threshold: float, seed: int) -> tuple[float, int, int]:
    """(colliding pairs per bead per step, steps completed, steps with a collision) over a rollout from the
    inputs' start; the same noise sequence for every variant."""
    history, features, edges, batch, box = inputs
    generator = torch.Generator(device=history.device).manual_seed(seed)
    pairs, done, steps_hit = 0, 0, 0
    for _ in range(n_steps):
        noise = torch.randn((module.noise_draws(refine),) + tuple(history.shape[1:]), generator=generator,
                            device=history.device)
        try:
            x = module.step(history, features, edges, batch, box, noise, refine)
        except (RuntimeError, torch.jit.Error):  # NaN/inf positions: the rollout diverged
            break
        history = torch.cat([history[1:], x[None]])
        close = count_collisions(x, threshold, batch)
        pairs += close
        steps_hit += int(close > 0)
        done += 1
    return (pairs / max(done, 1) / history.shape[1]), done, steps_hit


def time_model_steps(model, inputs, n_steps: int) -> float:
    """ms per step of ``model.step`` (a CGModel, compiled or not) as a rollout calls it: inputs validated once,
    refinement on, the model's own corrections, open boundaries as an empty box."""
    history, features, edges, batch, _ = inputs
    noise = torch.randn(model.noise_draws(True), history.shape[1], 3, device=history.device)
    box = torch.zeros(0, 3, 3, device=history.device)
    with model.validated(history, features, edges, batch):
        model.step(history, features, edges, batch, box, noise, True)
        return _ms_per_call(lambda _: model.step(history, features, edges, batch, box, noise, True), n_steps,
                            history.device)


def compiled_rows(path: str, mapping, positions, beads: list, device: str, repeats: int) -> list[dict]:
    """The model file's step, scripted and through ``CGModel.compile()`` (refinement on, its own corrections),
    timed alternately at each bead count; the first compiled step (compilation) is timed apart."""
    scripted, compiled = load(path, device=device), load(path, device=device).compile()
    rows = []
    for n in beads:
        copies = max(1, round(n / mapping.n_beads))
        inputs = replicate(scripted, mapping, positions, copies, 3.0 * (1 + float(np.ptp(positions, 0).max())), device)
        n_steps = max(5, min(200, 20000 // (copies * mapping.n_beads)))
        start = time.perf_counter()
        time_model_steps(compiled, inputs, 1)
        first = time.perf_counter() - start
        times = {"scripted": [], "compiled": []}
        for _ in range(repeats):
            for name, model in (("scripted", scripted), ("compiled", compiled)):
                times[name].append(time_model_steps(model, inputs, n_steps))
        scripted_ms, compiled_ms = statistics.median(times["scripted"]), statistics.median(times["compiled"])
        rows.append({"beads": copies * mapping.n_beads, "molecules": copies, "device": device, "refine": True,
                     "correction": "model", "scripted_ms_per_step": round(scripted_ms, 4),
                     "ms_per_step": round(compiled_ms, 4), "compiled": True,
                     "compiled_min_max_ms": [round(min(times["compiled"]), 4), round(max(times["compiled"]), 4)],
                     "scripted_over_compiled": round(scripted_ms / compiled_ms, 3),
                     "first_step_s": round(first, 1)})
        print(json.dumps(rows[-1]), flush=True, file=__import__("sys").stderr)
    return rows


def profile_step(module, inputs, refine: bool, n_steps: int = 20, top: int = 25) -> list[dict]:
    """The costliest ops of one model step: name, self CPU microseconds per step, calls per step."""
    history, features, edges, batch, box = inputs
    noise = torch.randn(module.noise_draws(refine), history.shape[1], 3, device=history.device)
    restore = validated_once(module, inputs)
    for _ in range(3):
        module.step(history, features, edges, batch, box, noise, refine)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(n_steps):
            module.step(history, features, edges, batch, box, noise, refine)
    restore()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return [{"op": e.key, "self_us_per_step": round(e.self_cpu_time_total / n_steps, 2),
             "calls_per_step": e.count / n_steps} for e in events]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="exported model (default: an untrained model of the default size)")
    parser.add_argument("--system", default="polymer-chain")
    parser.add_argument("--system-param", action="append", default=[],
                        help="KEY=VALUE override of the reference system (repeatable; polymer-chain: length=5)")
    parser.add_argument("--beads", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rollout-steps", type=int, default=200)
    parser.add_argument("--threshold", type=float, default=0.1, help="collision distance (nm)")
    parser.add_argument("--k", type=int, default=4, help="history length of the untrained model")
    parser.add_argument("--refine-sigmas", type=float, nargs="+", help="override the model's refinement levels")
    parser.add_argument("--profile", action="store_true", help="add a per-op time breakdown of one step")
    parser.add_argument("--compile", action="store_true",
                        help="add `compiled`: the model's step scripted and compiled (CGModel.compile()), alternately")
    parser.add_argument("--compile-only", action="store_true", help="only the `compiled` rows")
    return parser


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    params = _system_params(args.system, args.system_param)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as directory, torch.inference_mode():
        model = load(args.model) if args.model else None
        mapping, positions = reference_molecule(args.system, params, model)
        model = model or untrained(mapping, positions, directory, args.k)
        if args.refine_sigmas:
            model.refine_sigmas = args.refine_sigmas
        # the corrections after a step: none, the truncated step (redraws), the hard core (a projection)
        retries = model.exclusion_retries or 8
        modes = ("none", "truncation", "hard_core") if max(model.min_distances.values()) > 0 else ("none",)
        variants = [(refine, mode) for refine in (False, True) for mode in modes]

        def use(module, mode):
            module.hard_core = mode == "hard_core"
            module.exclusion_retries = retries if mode == "truncation" else 0
        rows, profiles = [], {}
        for device in args.devices if not args.compile_only else []:
            module = model.module.to(device)
            for beads in args.beads:
                copies = max(1, round(beads / mapping.n_beads))
                spacing = 3.0 * (1 + float(np.ptp(positions, 0).max()))
                inputs = replicate(model, mapping, positions, copies, spacing, device)
                n_steps = max(5, min(200, 20000 // (copies * mapping.n_beads)))
                for refine, mode in variants:  # warm-up: TorchScript profiling and allocator
                    use(module, mode)
                    time_steps(module, inputs, refine, 3, device)
                timings = {variant: [] for variant in variants}
                for _ in range(args.repeats):
                    for refine, mode in variants:
                        use(module, mode)
                        timings[refine, mode].append(time_steps(module, inputs, refine, n_steps, device))
                rollout_steps = max(10, min(args.rollout_steps, 200000 // (copies * mapping.n_beads)))
                for refine, mode in variants:
                    use(module, mode)
                    rate, done, hit = collision_rate(module, inputs, refine, rollout_steps, args.threshold, seed=1)
                    rows.append({"beads": copies * mapping.n_beads, "molecules": copies, "device": device,
                                 "refine": refine, "correction": mode,
                                 "ms_per_step": round(statistics.median(timings[refine, mode]), 4),
                                 "collision_rate": rate, "steps_with_collision": hit, "rollout_steps": done,
                                 "diverged": done < rollout_steps})
                use(module, "truncation" if model.exclusion_retries else "none")
                module.hard_core = model.hard_core
                if args.profile:
                    profiles[f"{device}:{copies * mapping.n_beads}"] = profile_step(module, inputs, True)
                print(json.dumps(rows[-len(variants):]), flush=True, file=__import__("sys").stderr)
        report = {
            "benchmark": "propagator model step",
            "model": args.model or "untrained, default PropagatorConfig (collision rates not meaningful)",
            "system": args.system, "system_params": params, "beads_per_molecule": mapping.n_beads,
            "threshold_nm": args.threshold, "refine_sigmas": model.refine_sigmas,
            "hard_core_nm": model.min_distances, "exclusion_retries": retries,
            "hardware": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                         "torch_threads": torch.get_num_threads(),
                         "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
            "versions": software_versions(),   # this run's; the model file's own are under model_versions
            "model_versions": model.metadata.get("versions"),
            "ratios": _ratios(rows, modes),
            "rows": rows,
        }
        if args.profile:
            report["profile"] = profiles
        if args.compile or args.compile_only:
            if not args.model:
                parser.error("--compile needs --model (a model file)")
            report["compiled"] = [row for device in args.devices
                                  for row in compiled_rows(args.model, mapping, positions, args.beads, device,
                                                           args.repeats)]
        print(json.dumps(report, indent=1))


def _system_params(system: str, items: list) -> dict:
    """The ``--system-param KEY=VALUE`` overrides (numbers and booleans parsed as JSON)."""
    params = {}
    for item in items:
        key, value = item.split("=", 1)
        params[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    if system == "polymer-chain" and not params:
        params = {"length": 5}  # a 10-bead chain
    return params


def _ratios(rows: list, modes: tuple) -> dict:
    """Per ``device:beads``: the step time with refinement over without, and each correction's over none."""
    ratios = {}
    for key in dict.fromkeys(f"{r['device']}:{r['beads']}" for r in rows):
        device, beads = key.split(":")
        ms = {(r["refine"], r["correction"]): r["ms_per_step"] for r in rows
              if r["device"] == device and str(r["beads"]) == beads}
        ratios[key] = {"refine_over_plain": round(ms[True, "none"] / ms[False, "none"], 3)}
        for mode in modes[1:]:
            ratios[key].update({f"{mode}_over_none_refined": round(ms[True, mode] / ms[True, "none"], 3),
                                f"{mode}_over_none_plain": round(ms[False, mode] / ms[False, "none"], 3)})
    return ratios


if __name__ == "__main__":
    main()
