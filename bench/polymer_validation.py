"""The polymer benchmark's validation objective over several rollout seeds, per model; prints JSON.

``cgml benchmark polymer`` chooses the refinement (and a rule in ``configs/`` chooses models) with one
rollout seed: the mean over the validation chains of Rg JS + bond-length JS. This script repeats that score
with other seeds, at a fixed refinement, so that a difference between models can be set against the spread
the seed alone makes. Validation chains only; the references come from the benchmark's cache.

    OMP_NUM_THREADS=1 python bench/polymer_validation.py polymer-chain runs/bm-10ps-k2/model.safetensors \\
        --cache runs/bench-cache > bench/results/polymer-validation-seeds.json
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from openmm_cgml.evaluation import benchmark, fidelity
from openmm_cgml.evaluation.references import chain_system_params, run_batches
from openmm_cgml.evaluation.rollouts import roll_out
from openmm_cgml.io import software_versions
from openmm_cgml.model_file import load


def objective(model, definition, split, model_dt: float, seed: int) -> float:
    """The benchmark's validation objective (its ``_tune`` score) for one rollout seed."""
    lag = benchmark.frames_per_step(model_dt, split.chains[0].dt_ps)
    starts = [benchmark._start(chain, model.k, lag) for chain in split.chains]
    result = roll_out(model, split.mappings, starts, int(definition["tune_model_steps"]), seed=seed, refine=True)
    total = 0.0
    for chain, frames in zip(split.chains, result["frames"]):
        reference = fidelity.observe(chain, n_boot=10)
        rolled = fidelity.observe(fidelity.Chain(chain.name, frames, model_dt, chain.masses, chain.bonds,
                                                 chain.bead_types), n_boot=10)
        total += fidelity._js(reference.rg, rolled.rg, 50) + fidelity._js(reference.bonds, rolled.bonds, 50)
    return total / len(split.chains)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model files or shipped names")
    parser.add_argument("--scale", default="small")
    parser.add_argument("--cache", default="runs/bench-cache", help="the benchmark's reference MD cache")
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9, 10, 11], help="7 is the benchmark's")
    parser.add_argument("--refine", type=float, nargs="*", default=[0.15], help="refinement levels ([]: off)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    definition = benchmark.load_definition("polymer", args.scale)
    params = chain_system_params(definition["system"], definition["system_params"])
    batches = benchmark._batches(definition, benchmark.design_splits(definition), params)
    paths = run_batches([b for b in batches if b.split == "validation"], args.cache, workers=1)
    report = {"check": "validation objective (mean Rg JS + bond JS) over rollout seeds", "split": "validation",
              "scale": args.scale, "refine_sigmas": args.refine, "seeds": args.seeds,
              "versions": software_versions(), "models": {}}
    for name in args.models:
        model = load(name)
        model.refine_sigmas = args.refine
        model_dt = float(model.model_timestep.value_in_unit(model.model_timestep.unit))
        split = benchmark._bead_chains(model, definition, batches, paths, "validation", 0)
        scores = [objective(model, definition, split, model_dt, seed) for seed in args.seeds]
        report["models"][name] = {"objective": scores, "mean": float(np.mean(scores)),
                                  "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else None}
        print(name, [round(s, 4) for s in scores], file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
