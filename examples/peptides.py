"""Peptides end to end: free-energy surfaces of a learned coarse-grained propagator.

Reference MD of alanine dipeptide (and chignolin in ``--full``, or at small
scale with ``--set peptides=alanine-dipeptide,chignolin``) in implicit solvent
-> backbone coarse-graining (N, CA, C and CB beads: phi and psi exact, CA's
handedness on the beads) -> training one
propagator per peptide, its step drawn in internal coordinates with mixtures
of Gaussians for the torsions (the recipe of the shipped model) ->
rollouts with ``CGMLIntegrator`` inside an ordinary ``openmm.app.Simulation``
(DCDReporter, several replicas in one batch), started from held-out reference
states -> ``cgml evaluate``: TICA free-energy surfaces (TICA fitted on the
reference, rollouts projected on it), Jensen-Shannon divergences of the
structural distributions, bead collisions and the speed-up -> backmapping of
the first rollout frames to atoms (fragments from the training runs, then a
restrained minimisation with the fine force field: ``rollout_atoms.dcd``).

    OMP_NUM_THREADS=1 python examples/peptides.py            # --small: 2 CPU cores, ~7-15 min
    python examples/peptides.py --full --out runs/peptides-full  # GPU, hours

Stages whose output exists are skipped (reference runs resume, training
resumes from its last checkpoint); nothing is deleted. The metrics are
printed as JSON and written to ``OUT/report/``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from polymer_chains import command_line, reference_speed, train_example  # noqa: E402  (shared helpers)

from openmm_cgml import CGMLIntegrator, coarse_grained_system, systems  # noqa: E402
from openmm_cgml.data import coarse_grain  # noqa: E402
from openmm_cgml.evaluation import analysis, report  # noqa: E402
from openmm_cgml.generate import generate  # noqa: E402
from openmm_cgml.model_file import export, load  # noqa: E402
from openmm_cgml.openmm import UnstableRolloutError, reference_history  # noqa: E402
from openmm_cgml.trajectory import FineTrajectory  # noqa: E402

# Units: MD steps of 2 fs. Frames every `stride` steps; one model step = `model_steps` MD steps.
CONFIGS = {
    "small": dict(peptides="alanine-dipeptide", train_replicas=3, train_frames=2000, test_frames=4000, stride=50,
                  model_steps=1000, k=4, mapping="backbone", backbone_extra=["CB"], rollout_steps=400,
                  rollout_replicas=4,
                  model=dict(hidden=32, n_layers=2, embed_hidden=16, embed_layers=2, score_hidden=16, score_layers=1,
                             noise="internal", torsion_components=3, refine_sigmas=[]),
                  train=dict(max_epochs=60, batch_size=32, limit_train_batches=60, limit_val_batches=10, lr=2e-3,
                             warmup_steps=50, threads=0)),
    # one GPU: 8 x 100 ns of training data per peptide (chignolin folds on this scale), 10 ps model steps
    "full": dict(peptides="alanine-dipeptide,chignolin", train_replicas=8, train_frames=100000, test_frames=100000,
                 stride=500, model_steps=5000, k=4, mapping="backbone", backbone_extra=["CB"], rollout_steps=20000,
                 rollout_replicas=16,
                 model=dict(hidden=128, n_layers=4, embed_hidden=64, embed_layers=4, score_hidden=64, score_layers=3,
                            noise="internal", torsion_components=5, refine_sigmas=[]),
                 train=dict(max_epochs=50, batch_size=64, lr=1e-3, warmup_steps=500)),
}


def roll_out(model, fine_path: Path, lag: int, n_steps: int, replicas: int, seed: int, dcd: Path, pdb: Path):
    """Run ``replicas`` copies with CGMLIntegrator from the reference's first k states.

    Returns (wall seconds, simulated ps of one replica).

    A plain OpenMM Simulation: bead topology/system from ``coarse_grained_system``,
    real starting history via ``setHistory`` (no warm-up), one DCD frame per model step.
    """
    with FineTrajectory(fine_path) as fine:
        cg = coarse_grained_system(model, fine.topology, positions=fine.positions[0] * u.nanometer,
                                   replicas=replicas)
        # the reference's first k states, one model step apart: frames 0, lag, ..., (k-1)*lag
        history = reference_history(model, fine, end=(model.k - 1) * lag, mapping=cg.mapping)
    integrator = CGMLIntegrator(model, seed=seed, collision_distance=0.0)  # collisions: counted by the evaluation
    simulation = app.Simulation(cg.topology, cg.system, integrator, openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(cg.positions)
    # TorchScript optimises a model on its first calls: take that one-off cost before timing, then restart
    integrator.setHistory(history)
    simulation.step(3)
    integrator.setHistory(history)  # copied to every replica; the noise differs per replica
    simulation.currentStep = 0
    simulation.context.setTime(0.0)
    with open(pdb, "w") as handle:
        app.PDBFile.writeFile(cg.topology, cg.positions, handle)
    simulation.reporters.append(app.DCDReporter(str(dcd), 1))
    start = time.perf_counter()
    try:
        simulation.step(n_steps)
    except UnstableRolloutError as error:  # NaN: the DCD keeps the frames written so far
        print(f"      {fine_path.stem}: {error}", file=sys.stderr)
    # Speed of ONE trajectory: replicas share the batch, so counting all of them would flatter the
    # comparison with the single-trajectory reference MD speed.
    return time.perf_counter() - start, simulation.currentStep * model.model_timestep.value_in_unit(u.picosecond)


def run_peptide(name: str, config: dict, out: Path, seed: int, log) -> tuple:
    """Reference MD, dataset, training, export, rollout and backmapping of one peptide; returns what evaluation
    needs and the backmapping summary."""
    log(f"[{name}] reference MD: {config['train_replicas']} training runs of {config['train_frames']} frames, "
        f"1 held-out run of {config['test_frames']} frames, every {config['stride']} steps")
    started = time.perf_counter()
    train_paths = generate(name, out / "fine-train", frames=config["train_frames"], stride=config["stride"],
                           replicas=config["train_replicas"], seed=seed, progress=False)
    (test_path,) = generate(name, out / "fine-test", frames=config["test_frames"], stride=config["stride"],
                            seed=seed + 1, progress=False)
    log(f"      {time.perf_counter() - started:.0f} s")

    dataset = out / "coarse.h5"
    if not dataset.exists():
        log(f"[{name}] coarse-graining ({config['mapping']} mapping)")
        coarse_grain(train_paths, dataset, mapping=config["mapping"], extra=config["backbone_extra"], k=config["k"],
                     model_steps=config["model_steps"], split=(0.8, 0.2, 0.0), split_by="trajectory")

    log(f"[{name}] training")
    started = time.perf_counter()
    model = load(export(train_example(config, dataset, out / "training"), out / "model.safetensors", overwrite=True))
    log(f"      {time.perf_counter() - started:.0f} s; {model!r}")

    log(f"[{name}] rollout: {config['rollout_replicas']} replicas x {config['rollout_steps']} model steps "
        f"({model.model_timestep} each)")
    # A bead model of a few dozen beads is bound by per-operation overhead: one thread is fastest, and
    # on a busy machine more threads wait on each other at every operation (training set 2+).
    torch.set_num_threads(1)
    dcd, pdb = out / "rollout.dcd", out / "rollout_beads.pdb"
    lag = config["model_steps"] // config["stride"]
    wall, simulated_ps = roll_out(model, test_path, lag, config["rollout_steps"], config["rollout_replicas"],
                                  seed, dcd, pdb)
    log(f"[{name}] backmapping the first rollout frames to atoms")
    backmapped = backmap_rollout(model, train_paths, dcd, pdb, out / "rollout_atoms.dcd")
    log(f"      {backmapped}")
    return (test_path, dcd, pdb, analysis.ns_per_day(simulated_ps, wall), reference_speed(systems.load(name)),
            backmapped)


def backmap_rollout(model, train_paths, dcd: Path, pdb: Path, out: Path, frames: int = 20) -> dict:
    """Backmap the first ``frames`` frames of the first replica of a rollout; write them; their quality."""
    import mdtraj

    from openmm_cgml.backmap import Backmapper
    from openmm_cgml.evaluation.structures import backmap_summary

    backmapper = Backmapper.from_references(model.mapping, train_paths, library_frames=1000)
    beads = mdtraj.load(str(dcd), top=str(pdb)).xyz[:frames, :model.mapping.n_beads].astype(np.float64)
    result = backmapper.backmap(beads)
    with FineTrajectory(train_paths[0]) as reference:
        topology, reference_atoms = reference.topology, np.asarray(reference.positions[:])
    atoms = result.positions.value_in_unit(u.nanometer)
    mdtraj.Trajectory(atoms.astype(np.float32), mdtraj.Topology.from_openmm(topology)).save_dcd(str(out))
    return {**backmap_summary(result, topology, reference_atoms), "atoms_dcd": str(out)}


def run(config: dict, out: Path, seed: int = 0, log=print) -> dict:
    """All peptides, then one evaluation over them; returns the summary (also in ``out/report``)."""
    out.mkdir(parents=True, exist_ok=True)
    names = [name.strip() for name in config["peptides"].split(",") if name.strip()]
    results = [run_peptide(name, config, out / name, seed, log) for name in names]
    log("evaluation")
    # the speed-up is per peptide; evaluate() takes one pair of speeds, so evaluate each, then all together
    summaries = {}
    for name, (ref, dcd, pdb, rollout_speed, reference_speed_, backmapped) in zip(names, results):
        summaries[name] = report.evaluate([ref], [dcd], out / name / "report", topology=pdb,
                                          model=out / name / "model.safetensors", reference_ns_per_day=reference_speed_,
                                          rollout_ns_per_day=rollout_speed, names=[name], overwrite=True)["summary"]
        summaries[name]["backmap"] = backmapped
        log(f"      {name}: {out / name / 'report' / 'report.md'}")
    combined = {key: summaries[names[0]][key] for key in ("js_divergence", "collisions", "speedup")} \
        if len(names) == 1 else {
            "js_divergence": float(np.mean([s["js_divergence"] for s in summaries.values()])),
            "collisions": int(sum(s["collisions"] for s in summaries.values())),
            "speedup": float(np.mean([s["speedup"] for s in summaries.values()]))}
    return {**combined, "per_peptide": summaries}


def main(argv=None) -> int:
    return command_line(__doc__, CONFIGS, run, "peptides", "GPU: + chignolin, long runs",
                        "rollout_steps=1000 train.max_epochs=20", argv)


if __name__ == "__main__":
    sys.exit(main())
