"""A model trained on the polymer benchmark's own train split, for ``cgml benchmark polymer``.

The shipped ``polymer-chain-1ps`` and ``polymer-chain`` models come from here. This script trains a
model on the benchmark's training chains at the benchmark's model step (1 ps = 100 MD steps = one
reference frame; ``--model-steps`` for another), validated on the benchmark's validation chains:

1. reads the benchmark definition and finds the train and validation reference batches in the
   cache (``cgml benchmark`` writes them; missing ones are run). Test batches are never read:
   nothing here is chosen by looking at test data;
2. writes every chain of those batches as its own fine trajectory (``FineTrajectory``), with the
   topology and system of the ``polymer-chain`` builder for its sequence;
3. coarse-grains them with the benchmark's mapping (METIS, 2 atoms per bead) at a lag of one model step,
   train chains -> train split, validation chains -> val split (``coarse_grain(splits=...)``);
4. trains with ``configs/benchmark-polymer.yaml`` (``--config``) and exports ``OUT/model.safetensors``;
5. prints the command that benchmarks it.

    OMP_NUM_THREADS=1 python examples/benchmark_model.py --cache runs/bench-cache --out runs/bm-train

``--model-steps 1000 --config configs/benchmark-polymer-10ps.yaml`` trains at a 10 ps step (10 reference
frames per window) instead of the benchmark's own 1 ps; ``cgml benchmark`` scores any step that is a whole
number of reference frames.

Every stage is skipped when its output exists (training resumes from its last checkpoint).
Units: nm, ps, amu.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "benchmark-polymer.yaml"
# benchmark split name -> coarse dataset split; "test" and "test_long" are deliberately absent
DATASET_SPLIT = {"train": "train", "validation": "val"}
# Validation loss per epoch on the first VAL_FRAMES ps of every validation chain: all 8 sequences in
# about 50 batches (the loader reads val windows in order, so a batch limit would see one chain only).
VAL_FRAMES = 200


def reference_batches(name: str, scale: str, cache: Path, log=print):
    """``(definition, {batch: path})`` of the train and validation reference batches (run if missing)."""
    from openmm_cgml.evaluation.benchmark import _batches, design_splits, load_definition
    from openmm_cgml.evaluation.references import chain_system_params, run_batches

    definition = load_definition(name, scale)
    params = chain_system_params(definition["system"], definition["system_params"])
    # the test sequences are designed too (the design keeps splits disjoint) but their batches are dropped
    wanted = [b for b in _batches(definition, design_splits(definition), params) if b.split in DATASET_SPLIT]
    return definition, run_batches(wanted, cache, workers=1, log=log)


def _chain_energies(reference, positions: np.ndarray) -> np.ndarray:
    """Potential energy (kJ/mol) of one isolated chain in every frame, from its own System."""
    import openmm

    context = openmm.Context(reference.system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    energies = np.empty(len(positions))
    for index, frame in enumerate(positions):
        context.setPositions(frame)
        energies[index] = context.getState(getEnergy=True).getPotentialEnergy()._value
    return energies


def write_chain(path: Path, reference, batch_attrs: dict, positions, velocities, times, source: str) -> None:
    """One chain's frames as a complete fine trajectory at ``path`` (kept if it is already complete)."""
    from openmm_cgml.trajectory import FineTrajectory

    if path.exists():
        with FineTrajectory(path) as existing:
            if existing.complete and existing.n_frames == len(positions):
                return
        path.unlink()   # our own half-written file from an interrupted run
    attrs = {key: value for key, value in batch_attrs.items() if key.startswith("cgml_")
             and key not in ("cgml_complete", "cgml_params")}
    attrs.update(cgml_system="polymer-chain", cgml_params=reference.params, cgml_source_batch=source)
    trajectory = FineTrajectory.create(path, topology=reference.topology, masses=reference.masses,
                                       atom_types=reference.atom_types, charges=reference.charges, attrs=attrs,
                                       periodic=False)
    with trajectory:
        trajectory.append(positions, velocities, times, _chain_energies(reference, positions))
        trajectory.mark_complete()


def split_chains(definition: dict, batches: dict, fine: Path, log=print) -> dict:
    """Every chain of every batch as its own file in ``fine``; returns ``{path: dataset split}``."""
    from openmm_cgml import systems
    from openmm_cgml.evaluation.references import chain_atoms
    from openmm_cgml.trajectory import FineTrajectory

    fine.mkdir(parents=True, exist_ok=True)
    splits = {}
    for batch, path in batches.items():
        atoms, _ = chain_atoms(path, batch.sequences)
        # velocities are cut at the same atom offsets as chain_atoms cuts the positions
        offsets = np.cumsum([0] + [chain.shape[1] for chain in atoms])
        with FineTrajectory(path) as trajectory:
            velocities = np.asarray(trajectory.velocities[: trajectory.n_frames])
            times, batch_attrs = trajectory.time_ps, trajectory.attrs
        frames = VAL_FRAMES if batch.split == "validation" else len(times)
        for index, (sequence, positions) in enumerate(zip(batch.sequences, atoms)):
            reference = systems.load(definition["system"], sequence=sequence, **definition["system_params"])
            if reference.n_atoms != positions.shape[1]:
                raise ValueError(f"{path}: chain {sequence} has {positions.shape[1]} atoms there but "
                                 f"{reference.n_atoms} in the {definition['system']} system")
            out = fine / f"{batch.split}-{batch.key}-{index:02d}-{sequence}.h5"
            write_chain(out, reference, batch_attrs, positions[:frames],
                        velocities[:frames, offsets[index]:offsets[index + 1]], times[:frames], batch.key)
            splits[out] = DATASET_SPLIT[batch.split]
        log(f"      {batch.split}: {len(batch.sequences)} chains x {frames} frames from {path}")
    return splits


def train_model(config_file: Path, dataset: Path, out: Path, overrides: dict, model_overrides: dict) -> Path:
    """Train with ``config_file`` (``overrides``: train-section values, ``model_overrides``: model-section
    values); returns the checkpoint."""
    from openmm_cgml.train import TrainConfig, train

    config = TrainConfig.from_yaml(config_file)
    config.data, config.out_dir = str(dataset), str(out / "training")
    for key, value in overrides.items():
        if value is not None:
            setattr(config.train, key, value)
    config.model.update({key: value for key, value in model_overrides.items() if value is not None})
    return train(config)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="polymer")
    parser.add_argument("--scale", default="small")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "bench-cache", help="reference MD cache")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bm-train")
    parser.add_argument("--config", type=Path, default=CONFIG, help="training configuration (default: %(default)s)")
    parser.add_argument("--model-steps", type=int, default=None,
                        help="MD steps per model step (default: the benchmark's own model step)")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the config's train.max_epochs")
    parser.add_argument("--limit-train-batches", type=int, default=None, help="override train.limit_train_batches")
    parser.add_argument("--noise", choices=["independent", "bonded"], default=None,
                        help="override model.noise (the acceleration noise model)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)   # the chains are a few dozen beads: one thread is fastest on a shared CPU
    from openmm_cgml.coarse_graining import coarse_grain
    from openmm_cgml.io import read_yaml
    from openmm_cgml.model_file import export

    def log(text):
        print(text, file=sys.stderr, flush=True)

    started = time.perf_counter()
    log("[1/4] train and validation reference batches")
    definition, batches = reference_batches(args.benchmark, args.scale, args.cache, log)
    log("[2/4] one fine trajectory per chain")
    splits = split_chains(definition, batches, args.out / "fine", log)
    dataset = args.out / "coarse.h5"
    if not dataset.exists():
        mapping = definition["mapping"]
        coarse_grain(list(splits), dataset, mapping=mapping["method"], atoms_per_bead=mapping["atoms_per_bead"],
                     k=int(read_yaml(args.config, "config file")["model"]["k"]),
                     model_steps=args.model_steps or int(definition["model_step_md_steps"]), splits=splits)
    log(f"      {dataset} ({time.perf_counter() - started:.0f} s)")
    log("[3/4] training")
    checkpoint = train_model(args.config, dataset, args.out, {"max_epochs": args.max_epochs,
                                                 "limit_train_batches": args.limit_train_batches},
                             {"noise": args.noise})
    log(f"      {checkpoint} ({time.perf_counter() - started:.0f} s)")
    log("[4/4] export")
    model = export(checkpoint, args.out / "model.safetensors", overwrite=True)
    print(f"wrote {model}; benchmark it with:\n  OMP_NUM_THREADS=1 cgml benchmark {args.benchmark} "
          f"--scale {args.scale} --model {model} --cache {args.cache} --out runs/bench-bm --overwrite --workers 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
