"""Polymer chains end to end: the paper's transferability test (Fu et al., TMLR 2023).

Reference MD of random-sequence bead-spring heteropolymers (four bead types,
after Webb et al.) -> METIS coarse-graining -> training one transferable
propagator on some sequences -> rollouts of *unseen* sequences started from
their reference states -> ``cgml evaluate``: the r^2 across test sequences of
the mean radius of gyration and of the Rg^2 relaxation time (the paper: 0.90
and 0.48), JS divergences, bead collisions and the speed-up.

    OMP_NUM_THREADS=1 python examples/polymer_chains.py            # --small: 2 CPU cores, ~18 min
    python examples/polymer_chains.py --full --out runs/polymer-full  # GPU, hours

Every stage keeps its output in ``--out`` and is skipped when its output
exists (reference runs resume; training resumes from its last checkpoint),
so an interrupted run continues where it stopped (nothing is deleted: use a
new ``--out`` for a new experiment).
The final metrics are printed as JSON and written to ``OUT/report/``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import torch

from openmm_cgml import systems
from openmm_cgml.data import coarse_grain
from openmm_cgml.evaluation import analysis, report
from openmm_cgml.generate import best_platform, generate, platform_properties
from openmm_cgml.mapping import Mapping
from openmm_cgml.model_file import export, load
from openmm_cgml.openmm import UnstableRolloutError, model_graph, reference_history, rollout
from openmm_cgml.train import TrainConfig, train
from openmm_cgml.trajectory import FineTrajectory

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"

# Units: MD steps of 0.01 ps (the polymer-chain system's time step).
CONFIGS = {
    # 2 CPU cores: short chains, few sequences, a small network
    # refine_sigmas: one Score refinement call at sigma 0.15 keeps these chains' Rg within ~1-3 % of the
    # reference on training-free checks (the default 0.6, 0.3, 0.1 shrinks them by ~9 %)
    "small": dict(length=8, train_sequences=10, test_sequences=8, frames=3000, stride=50, model_steps=1000,
                  k=4, atoms_per_bead=2, rollout_steps=1000, refine_sigmas=[0.15],
                  model=dict(hidden=48, n_layers=2, embed_hidden=16,
                  embed_layers=2, score_hidden=16, score_layers=1),
                  train=dict(max_epochs=40, batch_size=32, limit_train_batches=100, limit_val_batches=10, lr=2e-3,
                             warmup_steps=50, threads=0)),
    # one GPU: near the paper's scale (20-monomer chains, long runs): 100 sequences split 80/20 into
    # train/val by coarse_grain below (the paper: 90/10), and 40 held-out test sequences
    "full": dict(length=20, train_sequences=100, test_sequences=40, frames=10000, stride=100, model_steps=500,
                 k=16, atoms_per_bead=2, rollout_steps=20000, model=dict(hidden=128, n_layers=4, embed_hidden=64,
                 embed_layers=4, score_hidden=64, score_layers=3, refine_sigmas=[0.3, 0.1]),
                 train=dict(max_epochs=50, batch_size=64, lr=1e-3, warmup_steps=500)),
}
TEST_SEED_OFFSET = 10_000  # sequence seeds of test chains: disjoint from the training seeds


def reference_speed(ref, steps: int = 2000) -> float:
    """Fine MD speed (ns/day) of ``ref`` on the platform ``generate`` uses, timed after a warm-up."""
    name = best_platform()
    context = openmm.Context(ref.system, ref.integrator(1), openmm.Platform.getPlatformByName(name),
                             platform_properties(name))
    context.setPositions(ref.positions)
    context.getIntegrator().step(100)
    start = time.perf_counter()
    context.getIntegrator().step(steps)
    context.getState(positions=True)  # waits for a GPU to finish
    return analysis.ns_per_day(steps * ref.timestep, (time.perf_counter() - start) * u.second)


def roll_out(model, fine_path: Path, mapping: Mapping, lag: int, n_steps: int, seed: int):
    """A rollout started from the reference's first k states: its bead frames and the wall time it took.

    ``CGMLIntegrator`` runs transferable models on unseen molecules too (see
    ``examples/peptides.py`` for a rollout through OpenMM); this example
    calls the library's bare torch rollout (``openmm_cgml.openmm.rollout``,
    the loop the integrator itself runs) one model step at a time, to keep
    every frame in memory and time the model alone. ``lag`` is the model step
    in saved frames. Returns ``(frames, wall seconds)``: frames ``(n_steps + 1, n_beads, 3)`` nm, fewer if
    the rollout went unstable (NaN or a model refusal; what was simulated is kept).
    """
    # the reference's first k states, one model step apart: frames 0, lag, ..., (k-1)*lag
    reference = reference_history(model, fine_path, end=(model.k - 1) * lag, mapping=mapping)
    history = torch.as_tensor(reference.value_in_unit(u.nanometer), dtype=torch.float32)
    features = model.embed_mapping(mapping)
    edges, batch = model_graph(mapping, 1)
    box = torch.zeros(3, 3)
    frames = [history[-1].numpy().copy()]
    # TorchScript optimises a model on its first calls: keep that one-off cost out of the timing
    rollout(model, history, features, edges, batch, box, 3, seed=seed, collision_distance=0.0)
    start = time.perf_counter()
    for step in range(n_steps):  # one frame per model step; the noise depends only on (seed, step)
        try:
            history = rollout(model, history, features, edges, batch, box, 1, seed=seed, first_step=step,
                              collision_distance=0.0)  # collisions are counted by the evaluation, not fatal here
        except UnstableRolloutError as error:  # NaN: keep what was simulated
            reason = str(error).strip().splitlines()[-1]
            print(f"      {fine_path.stem}: rollout unstable at model step {step} ({reason}); "
                  f"keeping {len(frames)} frames", file=sys.stderr)
            break
        frames.append(history[-1].numpy().copy())
    return np.stack(frames), time.perf_counter() - start


def write_beads(frames: np.ndarray, mapping: Mapping, model_dt_ps: float, dcd: Path, pdb: Path) -> None:
    """A DCD + bead PDB with OpenMM's writers; the DCD header carries the model step as frame interval."""
    topology = mapping.bead_topology()
    with open(pdb, "w") as handle:
        app.PDBFile.writeFile(topology, frames[0] * u.nanometer, handle)
    with open(dcd, "wb") as handle:
        writer = app.DCDFile(handle, topology, model_dt_ps * u.picosecond, interval=1)
        for frame in frames:
            writer.writeModel(frame * u.nanometer)


def train_example(config: dict, dataset: Path, out_dir: Path) -> Path:
    """Train on ``dataset`` with configs/default.yaml plus the example's ``model``/``train`` settings."""
    train_config = TrainConfig.from_yaml(DEFAULT_CONFIG)
    train_config.data, train_config.out_dir = str(dataset), str(out_dir)
    train_config.model.update(config["model"])
    for key, value in config["train"].items():
        setattr(train_config.train, key, value)
    train_config.trainer.enable_progress_bar = False
    return train(train_config)


def run(config: dict, out: Path, seed: int = 0, log=print) -> dict:
    """The whole pipeline; returns the evaluation summary (also in ``out/report/metrics.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    params = {"length": config["length"]}
    train_seeds = list(range(config["train_sequences"]))
    test_seeds = list(range(TEST_SEED_OFFSET, TEST_SEED_OFFSET + config["test_sequences"]))

    log(f"[1/6] reference MD: {len(train_seeds)} training + {len(test_seeds)} unseen test sequences, "
        f"{config['frames']} frames every {config['stride']} steps")
    started = time.perf_counter()
    train_paths = generate("polymer-chain", out / "fine", frames=config["frames"], stride=config["stride"],
                           sequences=train_seeds, params=params, seed=seed, progress=False)
    test_paths = generate("polymer-chain", out / "fine", frames=config["frames"], stride=config["stride"],
                          sequences=test_seeds, params=params, seed=seed, progress=False)
    log(f"      {time.perf_counter() - started:.0f} s")

    log("[2/6] coarse-graining the training sequences (METIS, "
        f"{config['atoms_per_bead']} atoms per bead)")
    dataset = out / "coarse.h5"
    if not dataset.exists():
        coarse_grain(train_paths, dataset, mapping="metis", atoms_per_bead=config["atoms_per_bead"], k=config["k"],
                     model_steps=config["model_steps"], split=(0.8, 0.2, 0.0), split_by="sequence")

    log("[3/6] training")
    started = time.perf_counter()
    checkpoint = train_example(config, dataset, out / "training")
    log(f"      {time.perf_counter() - started:.0f} s")

    log("[4/6] export")
    model = load(export(checkpoint, out / "model.safetensors", overwrite=True))
    if config.get("refine_sigmas"):  # an inference setting: tuned on these chains, saved with the model
        model.refine_sigmas = config["refine_sigmas"]
        model.save(out / "model.safetensors", overwrite=True)

    # A bead model of a few dozen beads is bound by per-operation overhead: one thread is fastest, and
    # on a busy machine more threads wait on each other at every operation (training set 2+).
    torch.set_num_threads(1)
    log(f"[5/6] rollouts of the {len(test_paths)} unseen sequences, {config['rollout_steps']} model steps each")
    lag = config["model_steps"] // config["stride"]
    rollouts, topologies, wall, simulated = [], [], 0.0, 0.0
    for index, path in enumerate(test_paths):
        with FineTrajectory(path) as fine:
            mapping = Mapping.build("metis", fine.topology, fine.masses, atom_types=fine.atom_types,
                                    atoms_per_bead=config["atoms_per_bead"])
        frames, seconds = roll_out(model, path, mapping, lag, config["rollout_steps"], seed=seed + index)
        dcd, pdb = out / "rollouts" / f"{path.stem}.dcd", out / "rollouts" / f"{path.stem}.pdb"
        dcd.parent.mkdir(exist_ok=True)
        write_beads(frames, mapping, model.model_timestep.value_in_unit(u.picosecond), dcd, pdb)
        rollouts.append(dcd)
        topologies.append(pdb)
        wall += seconds
        simulated += (len(frames) - 1) * model.model_timestep.value_in_unit(u.picosecond)

    log("[6/6] evaluation")
    reference_ns_per_day = reference_speed(systems.load("polymer-chain", **params, sequence_seed=test_seeds[0]))
    result = report.evaluate(test_paths, rollouts, out / "report", topology=topologies, mapping_method="metis",
                             mapping_params={"atoms_per_bead": config["atoms_per_bead"]},
                             reference_ns_per_day=reference_ns_per_day,
                             rollout_ns_per_day=analysis.ns_per_day(simulated, wall),
                             names=[p.stem for p in test_paths], overwrite=True)
    log(f"      report: {out / 'report' / 'report.md'}")
    return result["summary"]


def apply_setting(config: dict, item: str) -> None:
    """Apply ``KEY=VALUE`` (``section.key=value`` inside ``model``/``train``), keeping the value's type."""
    key, sep, value = item.partition("=")
    if not sep:
        raise ValueError("expected KEY=VALUE")
    *sections, name = key.split(".")
    target = config
    for section in sections:
        target = target[section]
    if name not in target or isinstance(target[name], (dict, list)):
        raise KeyError(f"unknown setting {key!r}")
    target[name] = type(target[name])(value)


def command_line(doc: str, configs: dict, run_pipeline, name: str, full_help: str, example_setting: str,
                 argv=None) -> int:
    """The shared command line of the examples: --small/--full, --out, --seed, --set KEY=VALUE."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", dest="size", action="store_const", const="small", help="2 CPU cores (default)")
    size.add_argument("--full", dest="size", action="store_const", const="full", help=full_help)
    parser.add_argument("--out", type=Path, default=None, help=f"working folder (default runs/{name}-SIZE)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help=f"override a setting, e.g. --set {example_setting}")
    args = parser.parse_args(argv)
    size = args.size or "small"
    config = json.loads(json.dumps(configs[size]))
    for item in args.set:
        try:
            apply_setting(config, item)
        except (KeyError, ValueError) as error:
            parser.error(f"--set {item}: {error}")
    out = args.out or Path("runs") / f"{name}-{size}"
    summary = run_pipeline(config, out, seed=args.seed, log=lambda text: print(text, file=sys.stderr, flush=True))
    print(json.dumps(summary))
    return 0


def main(argv=None) -> int:
    return command_line(__doc__, CONFIGS, run, "polymer", "paper scale, one GPU",
                        "test_sequences=8 train.max_epochs=20", argv)


if __name__ == "__main__":
    sys.exit(main())
