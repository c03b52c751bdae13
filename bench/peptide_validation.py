"""Validation scores of peptide models, for choices made outside the benchmark (data, size, step); prints JSON.

For each model: rollouts from the starts of the peptide benchmark's *validation* replicas (never its test
replicas), no refinement, one rollout per seed, scored exactly as the benchmark's validation step scores a
refinement candidate (Ramachandran, phi and psi JS against the validation MD; basin populations; the fraction
of frames that keep the reference's handedness at the stereocentres among the beads). ``one_step``: from every
5th validation MD state, the probability of leaving C7eq/C5 for alpha-R and back within one model step, the
MD's next frame against one model step from the same history (a kernel bias shows here before it shows in
populations). The reference MD comes
from the benchmark's cache (it is generated there first if missing).

    OMP_NUM_THREADS=1 python bench/peptide_validation.py alanine-dipeptide runs/new/model.safetensors \\
        --scale long --cache runs/bench-peptide-cache --seeds 52 152 252
"""
from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch

from openmm_cgml import systems
from openmm_cgml.evaluation import peptide as P
from openmm_cgml.evaluation.benchmark import frames_per_step, load_definition
from openmm_cgml.evaluation.references import replica_runs
from openmm_cgml.evaluation.rollouts import roll_out
from openmm_cgml.model_file import load
from openmm_cgml.openmm.bead_system import molecule_mapping


def validation_scores(model, definition: dict, reference, cache: str, seeds: list[int]) -> dict:
    """Scores of one model's validation rollouts, one entry per seed, their means and the one-step transitions."""
    model.refine_sigmas = []
    mapping = molecule_mapping(model, reference.topology, reference.atom_types)
    paths = {split: replica_runs(definition["system"], definition["system_params"], split, definition[split],
                                 int(definition["frame_stride"]), int(definition["equilibration_steps"]), cache, 1,
                                 lambda *_: None)
             for split in ("library", "validation")}
    backmapper = P._library_backmapper(np.concatenate(P._read(paths["library"], mapping)[0]), mapping,
                                       reference.system)
    atoms, interval = P._read(paths["validation"], mapping)
    rollout_scores, n_steps = P._rollout_scorer(model, mapping, backmapper, atoms, interval, reference.topology,
                                                int(definition["torsion_bins"]))
    rows = []
    for seed in seeds:
        js, kept, ensemble = rollout_scores(seed, False)
        rows.append({"seed": seed, **js, "chirality_kept_fraction": kept,
                     "populations": P.basin_populations(ensemble.pooled("phi"), ensemble.pooled("psi"))})
    means = {key: statistics.mean(row[key] for row in rows)
             for key in ("phi_js", "psi_js", "rama_js", "chirality_kept_fraction")}
    truth = P._ensemble(atoms, [mapping.bead_positions(x) for x in atoms], interval, reference.topology)
    return {"rollouts": rows, "mean": means,
            "one_step": _one_step_transitions(model, mapping, backmapper, atoms, interval, reference.topology, seeds),
            "model_steps": int(n_steps), "replicas": len(atoms),
            "reference_populations": P.basin_populations(truth.pooled("phi"), truth.pooled("psi"))}


def _one_step_transitions(model, mapping, backmapper, atoms: list, interval: float, topology, seeds: list[int],
                          stride: int = 5) -> dict:
    """Basin-to-basin probabilities over one model step from validation MD states: the MD's own next frame
    against one model step from the same k-frame history (every ``stride``-th frame, each seed once)."""
    lag = frames_per_step(float(model.model_timestep._value), interval)
    histories, now, after = [], [], []
    for replica in atoms:
        beads = mapping.bead_positions(replica)
        for t in range((model.k - 1) * lag, len(replica) - lag, stride):
            histories.append(beads[t - (model.k - 1) * lag:t + 1:lag])
            now.append(replica[t])
            after.append(replica[t + lag])

    def basins(frames: np.ndarray) -> np.ndarray:
        ensemble = P._ensemble([frames], [mapping.bead_positions(frames)], interval, topology)
        return P.basin_labels(ensemble.pooled("phi"), ensemble.pooled("psi"))

    start, md_next = basins(np.asarray(now)), basins(np.asarray(after))
    model_next = []
    for seed in seeds:
        rolled = roll_out(model, [mapping] * len(histories), histories, 1, seed=seed, refine=False)
        placed = np.asarray([backmapper.place(frames[-1:])._value[0] for frames in rolled["frames"]])
        model_next.append(basins(placed))
    names = list(P.BASINS)

    def probabilities(nxt: np.ndarray, starts: np.ndarray) -> dict:
        return {f"{names[i]}->{names[j]}": float((nxt[starts == i] == j).mean())
                for i in range(2) for j in range(2) if i != j and (starts == i).any()}

    return {"starts": int(len(start)), "md": probabilities(md_next, start),
            "model": probabilities(np.concatenate(model_next), np.tile(start, len(seeds)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model files or shipped model names")
    parser.add_argument("--benchmark", default="peptide")
    parser.add_argument("--scale", default="long")
    parser.add_argument("--cache", default="runs/bench-peptide-cache")
    parser.add_argument("--seeds", type=int, nargs="+", default=[52, 152, 252])
    args = parser.parse_args()
    torch.set_num_threads(1)
    definition = load_definition(args.benchmark, args.scale)
    reference = systems.load(definition["system"], **definition["system_params"])
    result = {"benchmark": args.benchmark, "scale": args.scale, "split": "validation",
              "seed": definition["validation"]["seed"], "models": {}}
    try:   # every model is read before any rollout, so a bad file costs no work
        models = {name: load(name) for name in args.models}
    except (OSError, ValueError) as error:
        parser.error(str(error))
    for name, model in models.items():
        result["models"][name] = validation_scores(model, definition, reference, args.cache, args.seeds)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
