"""Model-step time of two checkouts of this package side by side (a code change's speed-up); prints JSON.

Each round runs the old checkout, then the new one, each in a fresh process pinned to one CPU with one torch
thread, timing ``step`` of the shipped models (refinement on, inputs validated once) at a few bead counts;
the best of 3 timings per process is kept. Reports the median over ``--rounds`` rounds and every round's
old/new ratio, so that a drift of the shared machine between rounds shows.

    git worktree add /tmp/old HEAD~3
    python bench/step_ab.py --old /tmp/old --new . --rounds 3

``--compiled`` times the step through ``CGModel.compile()`` instead (as a rollout calls it: the model's own
truncation and hard core, ``bench/propagator.py``'s ``time_model_steps``) at 10, 1,000 and 10,000 beads of
``polymer-chain-1ps`` and one alanine dipeptide; each process compiles first (PyTorch's on-disk cache makes
that quick after the first round).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# run inside each checkout: its own openmm_cgml and bench/propagator.py
_TIMING = r'''
import json, sys, torch
sys.path[:0] = [ROOT, ROOT + "/bench"]
torch.set_num_threads(1)
from openmm_cgml import pretrained
from openmm_cgml.model_file import load
import propagator
cases = (("polymer-chain-1ps", "polymer-chain", {"length": 4}, (1, 64, 512)),
         ("alanine-dipeptide", "alanine-dipeptide", {}, (1, 1667)))
out = {}
for name, system, params, copies in cases:
    model = load(pretrained.path(name))
    mapping, positions = propagator.reference_molecule(system, params, model)
    for n in copies:
        inputs = propagator.replicate(model, mapping, positions, n, 3.0, "cpu")
        steps = 200 if n == 1 else (40 if n < 100 else 6)
        propagator.time_steps(model.module, inputs, True, 30 if n == 1 else 5, "cpu")
        out[name + ":" + str(n * mapping.n_beads)] = min(
            propagator.time_steps(model.module, inputs, True, steps, "cpu") for _ in range(3))
print(json.dumps(out))
'''


# the same through CGModel.compile()
_COMPILED_TIMING = r'''
import json, sys, numpy as np, torch
sys.path[:0] = [ROOT, ROOT + "/bench"]
torch.set_num_threads(1)
from openmm_cgml import pretrained
from openmm_cgml.model_file import load
import propagator
cases = (("polymer-chain-1ps", "polymer-chain", {"length": 5}, (1, 100, 1000)),
         ("alanine-dipeptide", "alanine-dipeptide", {}, (1,)))
out = {}
with torch.inference_mode():
    for name, system, params, copies in cases:
        model = load(pretrained.path(name)).compile()
        mapping, positions = propagator.reference_molecule(system, params, model)
        for n in copies:
            inputs = propagator.replicate(model, mapping, positions, n, 3.0 * (1 + float(np.ptp(positions, 0).max())),
                                          "cpu")
            steps = 400 if n == 1 else (40 if n < 1000 else 10)
            propagator.time_model_steps(model, inputs, 3)
            out[name + ":" + str(n * mapping.n_beads)] = min(
                propagator.time_model_steps(model, inputs, steps) for _ in range(3))
print(json.dumps(out))
'''


def time_checkout(root: str, cpu: int, compiled: bool = False) -> dict:
    """ms per step of each case, in a fresh process of ``root``'s code pinned to ``cpu``."""
    script = _COMPILED_TIMING if compiled else _TIMING
    command = [sys.executable, "-c", script.replace("ROOT", repr(os.path.abspath(root)))]
    if hasattr(os, "sched_setaffinity"):
        command = ["taskset", "-c", str(cpu)] + command
    done = subprocess.run(command, capture_output=True, text=True, cwd="/", check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="checkout of the code before the change")
    parser.add_argument("--new", default=".", help="checkout of the code after the change")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=0, help="the CPU both run on")
    parser.add_argument("--compiled", action="store_true", help="time the step through CGModel.compile()")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for tag in ("old", "new"):
        if not os.path.isfile(os.path.join(getattr(args, tag), "bench", "propagator.py")):
            parser.error(f"--{tag} {getattr(args, tag)} is not a checkout of openmm-cgml (no bench/propagator.py)")
    runs = {"old": [], "new": []}
    for _ in range(args.rounds):
        for tag in ("old", "new"):
            runs[tag].append(time_checkout(getattr(args, tag), args.cpu, args.compiled))
    cases = {case: {"old_ms": statistics.median(r[case] for r in runs["old"]),
                    "new_ms": statistics.median(r[case] for r in runs["new"]),
                    "old_over_new_by_round": [round(o[case] / n[case], 3) for o, n in zip(runs["old"], runs["new"])]}
             for case in runs["old"][0]}
    print(json.dumps({"benchmark": "model step, two checkouts side by side", "refine": True,
                      "compiled": args.compiled, "torch_threads": 1,
                      "pinned_cpu": args.cpu, "rounds": args.rounds, "cpu_count": os.cpu_count(),
                      "cases": cases}, indent=1))


if __name__ == "__main__":
    main()
