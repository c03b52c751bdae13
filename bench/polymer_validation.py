"""The polymer benchmark's validation objective over several rollout seeds, per model; prints JSON.

``cgml benchmark polymer`` chooses the refinement (and a rule in ``configs/`` chooses models) with one
rollout seed: the mean over the validation chains of Rg JS + bond-length JS
(:func:`openmm_cgml.evaluation.benchmark.validation_objective`). This script repeats that score with other
seeds, at a fixed refinement, so that a difference between models can be set against the spread the seed
alone makes. Validation chains only; the references come from the benchmark's cache.

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
from openmm_cgml.io import software_versions
from openmm_cgml.model_file import load


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
    report = {"check": "validation objective (mean Rg JS + bond JS) over rollout seeds", "split": "validation",
              "scale": args.scale, "refine_sigmas": args.refine, "seeds": args.seeds,
              "versions": software_versions(), "models": {}}
    for name in args.models:
        model = load(name)
        model.refine_sigmas = args.refine
        model_dt = float(model.model_timestep.value_in_unit(model.model_timestep.unit))
        split = benchmark.cached_split(model, definition, "validation", args.cache)
        references = [fidelity.observe(chain, n_boot=10) for chain in split.chains]
        scores = [benchmark.validation_objective(model, definition, split, references, model_dt, bool(args.refine),
                                                 seed) for seed in args.seeds]
        report["models"][name] = {"objective": scores, "mean": float(np.mean(scores)),
                                  "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else None}
        print(name, [round(s, 4) for s in scores], file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
