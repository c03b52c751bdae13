"""Model-step time of two model files side by side in one process (a model change's cost); prints JSON.

Each round times ``step`` of model A, then of model B, at every bead count, as a rollout calls it (refinement
on, each model's own truncation and hard core, inputs validated once: ``bench/propagator.py``'s
``time_model_steps``), on one torch thread. Alternating in one process keeps the shared machine's drift out
of the ratio; the JSON has the median, min and max of each model's time and of the per-round ratio B/A.

    OMP_NUM_THREADS=1 python bench/model_ab.py --models old.safetensors polymer-chain --system polymer-chain \\
        --beads 10 1000 --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from propagator import _system_params, reference_molecule, replicate, time_model_steps  # noqa: E402

from openmm_cgml.io import software_versions  # noqa: E402
from openmm_cgml.model_file import load  # noqa: E402


def _spread(values: list) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs=2, required=True, metavar=("A", "B"), help="model files or shipped names")
    parser.add_argument("--system", default="polymer-chain", help="the molecule each model steps (copies of it)")
    parser.add_argument("--system-param", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the reference system (default for polymer-chain: length=5, 10 beads)")
    parser.add_argument("--beads", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    params = _system_params(args.system, args.system_param)
    rows = []
    with torch.inference_mode():
        models = [load(name) for name in args.models]
        for beads in args.beads:
            cases = []
            for model in models:
                mapping, positions = reference_molecule(args.system, params, model)
                copies = max(1, round(beads / mapping.n_beads))
                spacing = 3.0 * (1 + float(np.ptp(positions, 0).max()))
                cases.append((model, replicate(model, mapping, positions, copies, spacing, "cpu"),
                              copies * mapping.n_beads))
            n_steps = max(5, min(200, 20000 // cases[0][2]))
            for model, inputs, _ in cases:   # warm-up: TorchScript's profiling runs, the allocator
                time_model_steps(model, inputs, 3)
            times = [[], []]
            for _ in range(args.rounds):
                for index, (model, inputs, _) in enumerate(cases):
                    times[index].append(time_model_steps(model, inputs, n_steps))
            ratios = [b / a for a, b in zip(*times)]
            rows.append({"beads": [case[2] for case in cases], "ms_per_step_a": _spread(times[0]),
                         "ms_per_step_b": _spread(times[1]), "ratio_b_over_a": _spread(ratios)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "model step, two model files alternating in one process",
                      "models": {"a": args.models[0], "b": args.models[1]}, "system": args.system,
                      "system_params": params, "rounds": args.rounds, "refine": True, "corrections": "each model's own",
                      "hardware": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                   "torch_threads": torch.get_num_threads()},
                      "versions": software_versions(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
