"""``cgml benchmark``: the fidelity benchmark, defined by a versioned YAML file.

    cgml benchmark polymer --scale small --out runs/bench-polymer [--model polymer-chain]
    cgml benchmark peptide --scale small --out runs/bench-peptide [--model alanine-dipeptide]

The work is :func:`openmm_cgml.evaluation.benchmark.run_benchmark`; see docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["configure_parser", "run"]

_BRIEF_KEYS = ("scale", "n_train", "n_val", "n_test", "n_test_long", "splits_disjoint", "reference_tau_split_half_r",
               "nan_rollouts", "hard_core_rate")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from openmm_cgml.evaluation.benchmark import available

    parser.add_argument("benchmark", help=f"benchmark name ({', '.join(available())}) or a definition YAML")
    parser.add_argument("--scale", default="small", help="scale defined in the benchmark file (default small)")
    parser.add_argument("--out", required=True, help="output folder: fidelity.json, report.md, plots")
    parser.add_argument("--model", default=None,
                        help="model file or pretrained name to evaluate (default: the shipped polymer-chain for "
                             "polymer benchmarks, alanine-dipeptide for peptide ones)")
    parser.add_argument("--cache", default=None, help="reference MD cache folder (default OUT/references)")
    parser.add_argument("--workers", type=int, default=None, help="parallel reference MD processes (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing fidelity.json")
    parser.add_argument("--platform", default="CPU",
                        help="OpenMM platform of the reference MD (default CPU; CUDA for the paper scale)")


def run(args: argparse.Namespace) -> int:
    from openmm_cgml.evaluation.benchmark import run_benchmark

    document = run_benchmark(args.benchmark, args.scale, args.out, model=args.model, cache=args.cache,
                             workers=args.workers, overwrite=args.overwrite, platform=args.platform,
                             log=lambda text: print(text, file=sys.stderr, flush=True))
    brief = {key: document[key] for key in _BRIEF_KEYS if key in document}
    brief.update({key: document[key] for key in ("backmap", "speedup") if document.get("kind") == "peptide"})
    brief["metrics"] = {name: {k: v for k, v in metric.items() if k in ("model", "ceiling", "ci95", "baseline")}
                        for name, metric in document["metrics"].items()}
    print(json.dumps(brief, indent=1))
    return 0
