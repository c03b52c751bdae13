"""Reproduce the paper's headline numbers at small scale; prints one JSON object.

Runs ``examples/polymer_chains.py`` (train on random sequences, roll out
unseen ones: r^2 of mean Rg and of the Rg^2 relaxation time across test
chains) and ``examples/peptides.py`` (alanine dipeptide: JS divergences,
TICA free-energy surfaces), each end to end in its ``--small``
configuration, and reports side by side:

    rg_r2, relaxation_r2      Pearson r^2 across unseen polymers (Fu et al.: 0.90, 0.48)
    rg_R2_determination       1 - SS_res/SS_tot of the same (shows systematic bias)
    js_divergence             mean JS divergence (base 2), polymers and peptide
    collisions                bead pairs < 0.1 nm summed over all rollout frames
    speedup                   simulated time per wall second, rollout / reference MD (polymers;
                              per system in speedup_by_system)

    OMP_NUM_THREADS=1 python bench/reproduce.py [--full] [--out runs/reproduce] [--skip-peptides]

Small configurations take roughly 10-30 min on 2 CPU cores; ``--full`` is for
a GPU. Stages already done in ``--out`` are reused (see the examples).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import peptides  # noqa: E402
import polymer_chains  # noqa: E402


def hardware() -> dict:
    info = {"cpu_cores": os.cpu_count(), "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="paper-scale configurations (GPU)")
    parser.add_argument("--out", type=Path, default=Path("runs") / "reproduce")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-peptides", action="store_true")
    args = parser.parse_args(argv)
    size = "full" if args.full else "small"
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    started = time.perf_counter()
    polymer = polymer_chains.run(json.loads(json.dumps(polymer_chains.CONFIGS[size])), args.out / "polymer",
                                 seed=args.seed, log=log)
    polymer_wall = time.perf_counter() - started
    peptide, peptide_wall = None, None
    if not args.skip_peptides:
        started = time.perf_counter()
        peptide = peptides.run(json.loads(json.dumps(peptides.CONFIGS[size])), args.out / "peptides",
                               seed=args.seed, log=log)
        peptide_wall = time.perf_counter() - started

    js = [value for value in (polymer["js_divergence"], peptide and peptide["js_divergence"]) if value is not None]
    result = {
        "config": size,
        "rg_r2": polymer["rg_r2"],
        "relaxation_r2": polymer["relaxation_r2"],
        "rg_R2_determination": polymer["rg_R2_determination"],
        "js_divergence": sum(js) / len(js) if js else None,
        "collisions": polymer["collisions"] + (peptide["collisions"] if peptide else 0),
        "speedup": polymer["speedup"],
        "speedup_by_system": {"polymer": polymer["speedup"], "alanine_dipeptide": peptide and peptide["speedup"]},
        "polymer": polymer,
        "peptide": peptide,
        "wall_seconds": {"polymer": round(polymer_wall, 1),
                         "peptide": None if peptide_wall is None else round(peptide_wall, 1)},
        "paper": {"rg_r2": 0.90, "relaxation_r2": 0.48},
        "hardware": hardware(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
