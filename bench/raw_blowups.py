"""What a polymer model's learned step does with every correction off, on the benchmark's validation chains.

Rolls out the validation chains twice from the same starts and noise: with the truncated step off (and no
hard core), then with the model's own redraws. Per chain: the first model step at which its Rg passes
``blow_up_rg_factor`` times the reference's largest (a blow-up), the first step with a bead pair closer than
0.1 nm, the first step with a bond longer than the reference's longest, and its mean Rg over the reference's
before any blow-up. Prints JSON. Validation chains only (references from the benchmark's cache).

    OMP_NUM_THREADS=1 python bench/raw_blowups.py polymer-chain --cache runs/bench-cache
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from openmm_cgml.evaluation import analysis, benchmark
from openmm_cgml.evaluation.rollouts import roll_out
from openmm_cgml.io import software_versions
from openmm_cgml.model_file import load

CLOSE_NM = 0.1


def _first(mask: np.ndarray):
    hits = np.nonzero(mask)[0]
    return int(hits[0]) if len(hits) else None


def chain_events(frames: np.ndarray, chain, blow_up_factor: float) -> dict:
    """First steps of a blow-up, a pair under ``CLOSE_NM``, a bond past the reference's longest (None: never)."""
    reference_rg = analysis.radius_of_gyration(chain.positions, chain.masses)
    rg = analysis.radius_of_gyration(frames, chain.masses)
    distances = np.linalg.norm(frames[:, :, None] - frames[:, None], axis=-1)
    distances[:, np.arange(frames.shape[1]), np.arange(frames.shape[1])] = np.inf
    longest_bond = analysis.bond_lengths(chain.positions, chain.bonds).max()
    blow_up = _first(rg > blow_up_factor * reference_rg.max())
    return {"chain": chain.name, "blow_up_step": blow_up,
            "first_pair_under_0.1_nm": _first(distances.min((1, 2)) < CLOSE_NM),
            "first_bond_past_reference_max": _first(analysis.bond_lengths(frames, chain.bonds).max(1) > longest_bond),
            "mean_rg_over_reference": float(rg[:blow_up].mean() / reference_rg.mean()) if blow_up != 0 else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model file or shipped name")
    parser.add_argument("--cache", default="runs/bench-cache", help="the benchmark's reference MD cache")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    definition = benchmark.load_definition("polymer", "small")
    model = load(args.model)
    model_dt = float(model.model_timestep.value_in_unit(model.model_timestep.unit))
    split = benchmark.cached_split(model, definition, "validation", args.cache)
    lag = benchmark.frames_per_step(model_dt, split.chains[0].dt_ps)
    starts = [benchmark._start(chain, model.k, lag) for chain in split.chains]
    report = {"check": "validation rollouts with the truncated step off, then on", "model": args.model,
              "refine_sigmas": model.refine_sigmas, "steps": args.steps, "seed": args.seed,
              "versions": software_versions(), "runs": {}}
    for retries in (0, model.exclusion_retries):
        result = roll_out(model, split.mappings, starts, args.steps, seed=args.seed, refine=True,
                          exclusion_retries=retries)
        report["runs"][f"exclusion_retries={retries}"] = {
            "exclusion_events": list(result["exclusion_events"]),
            "chains": [chain_events(frames, chain, float(definition["blow_up_rg_factor"]))
                       for frames, chain in zip(result["frames"], split.chains)]}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
