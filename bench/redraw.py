"""The truncation's redraw of the molecules that need it against a redraw of the whole batch, compiled; prints JSON.

``CGModel.compile()`` steps ``polymer-chain-1ps`` on copies of a 10-bead chain (as ``bench/propagator.py``
does) twice in one process: one model redraws the molecules with a pair under its minimum distance alone
(``redraw_subset_min_beads = 0``; uncompiled, as ``compile()`` runs it), the other redraws the whole batch
inside the compiled step (``redraw_subset_min_beads`` past any size). For each bead count the noise is the
first of a fixed series of seeds that makes some molecule redraw; the two alternate for ``--rounds``
rounds of timed steps. ``CGPropagator.redraw_subset_min_beads`` (4,096) comes from here.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/redraw.py
"""
from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import propagator  # bench/propagator.py: the molecule and its copies
import torch

from openmm_cgml.io import software_versions
from openmm_cgml.model_file import load


def _noise_with_a_redraw(model, inputs, seeds: int = 200):
    """Noise for one step in which some molecule redraws (the first such seed), and that seed."""
    history, features, edges, batch, _ = inputs
    box = torch.zeros(0, 3, 3)
    for seed in range(seeds):
        noise = torch.randn(model.noise_draws(True), history.shape[1], 3, generator=torch.Generator().manual_seed(seed))
        model.module.exclusion_events.zero_()
        with model.validated(history, features, edges, batch):
            model.step(history, features, edges, batch, box, noise, True)
        if int(model.module.exclusion_events[0]) > 0:
            return noise, seed
    raise RuntimeError(f"no redraw in {seeds} seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, nargs="+", default=[10, 100, 300, 600, 1000])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with torch.inference_mode():
        plain = load("polymer-chain-1ps")
        mapping, positions = propagator.reference_molecule("polymer-chain", {"length": 5}, plain)
        models = {"molecules_alone": load("polymer-chain-1ps").compile(),
                  "whole_batch": load("polymer-chain-1ps").compile()}
        models["molecules_alone"].module.redraw_subset_min_beads = 0
        models["whole_batch"].module.redraw_subset_min_beads = 1 << 62
        for n in args.molecules:
            inputs = propagator.replicate(plain, mapping, positions, n,
                                          3.0 * (1 + float(np.ptp(positions, 0).max())), "cpu")
            noise, seed = _noise_with_a_redraw(models["molecules_alone"], inputs)
            steps = 200 if n < 50 else (40 if n < 500 else 10)
            times = {name: [] for name in models}
            for _ in range(args.rounds):
                for name, model in models.items():
                    times[name].append(_timed(model, inputs, noise, steps))
            rows.append({"beads": n * mapping.n_beads, "molecules": n, "noise_seed": seed,
                         **{f"{name}_ms": round(statistics.median(t), 3) for name, t in times.items()},
                         "whole_over_alone_by_round": [round(w / a, 3) for w, a in
                                                       zip(times["whole_batch"], times["molecules_alone"])]})
            print(json.dumps(rows[-1]), flush=True, file=__import__("sys").stderr)
    print(json.dumps({"benchmark": "truncation redraws: the molecules alone (uncompiled) against the whole batch "
                                   "(compiled)", "model": "polymer-chain-1ps", "torch_threads": torch.get_num_threads(),
                      "rounds": args.rounds, "versions": software_versions(), "rows": rows}, indent=1))


def _timed(model, inputs, noise, steps: int) -> float:
    """ms per step of ``model.step`` with this noise, inputs validated once (as a rollout runs it)."""
    history, features, edges, batch, _ = inputs
    box = torch.zeros(0, 3, 3)
    with model.validated(history, features, edges, batch):
        model.step(history, features, edges, batch, box, noise, True)
        return propagator._ms_per_call(lambda _: model.step(history, features, edges, batch, box, noise, True),
                                       steps, "cpu")


if __name__ == "__main__":
    main()
