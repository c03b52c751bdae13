"""``cgml simulate``: run an exported model as an OpenMM integrator over beads.

    cgml simulate model.safetensors --pdb start.pdb --steps 10000 --out traj.dcd \\
        --report-interval 100 --checkpoint run.chk

The fine-grained start structure is mapped to beads with the model's mapping
(a transferable model re-makes its mapping rule for a new molecule; ``--mapping
FILE`` gives one explicitly);
the trajectory format follows the extension of ``--out`` (.dcd, .xtc, .pdb).
With ``--checkpoint FILE`` a checkpoint is written every report and an
existing one is resumed: the same command run again after an interruption
finishes the job (``--steps`` is the total step count), appending to the
trajectory. Nothing already written is ever truncated.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import openmm.app as app
import openmm.unit as u

__all__ = ["configure_parser", "run"]


def configure_parser(parser) -> None:
    parser.add_argument("model", help="exported model file (from `cgml export`) or a pretrained name")
    parser.add_argument("--trust-model", action="store_true",
                        help="allow a TorchScript (.pt) model that this package does not ship (it can run code)")
    parser.add_argument("--pdb", required=True,
                        help="fine-grained start structure: PDB/PDBx, a fine trajectory (.h5, first frame) or a "
                             "reference system name/YAML (the last two carry atom types, e.g. polymer bead types)")
    parser.add_argument("--mapping", default=None,
                        help="mapping file (JSON/YAML, see docs/coarse_graining.md) to use instead of the model's "
                             "own mapping or its re-made rule")
    parser.add_argument("--steps", type=int, required=True,
                        help="total number of model steps (a resumed run continues up to this count)")
    parser.add_argument("--out", required=True, help="trajectory file: .dcd, .xtc or .pdb")
    parser.add_argument("--report-interval", type=int, default=100,
                        help="model steps between trajectory frames and checkpoints (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--platform", default="auto",
                        help="OpenMM platform: auto (CUDA if usable, else CPU), CPU, CUDA, Reference")
    parser.add_argument("--temperature", type=float, default=None,
                        help="temperature in K; must be the model's training temperature (default: that temperature)")
    parser.add_argument("--replicas", type=int, default=1, help="independent copies simulated as one batch (default 1)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint file: resumed if it exists, written every report interval")
    parser.add_argument("--log", default=None, help="also write a StateDataReporter CSV log (step, time, speed)")
    parser.add_argument("--collision-distance", type=float, default=0.1,
                        help="stop when two beads come closer than this, nm (default 0.1; 0 disables)")
    parser.add_argument("--no-refine", action="store_true", help="skip the model's score-based refinement")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (never when resuming)")


def _check_outputs(out: Path, checkpoint, overwrite: bool) -> bool:
    """Refuse to clobber or misplace outputs; returns whether an existing checkpoint is resumed."""
    resuming = checkpoint is not None and checkpoint.exists()
    if not out.parent.exists():
        raise FileNotFoundError(f"--out {out}: directory {out.parent} does not exist")
    if out.exists() and not resuming and not overwrite:
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it, or --checkpoint to resume")
    if resuming and out.suffix.lower() != ".pdb" and not out.exists():
        print(f"note: resuming from {checkpoint} but {out} does not exist; starting a new trajectory file",
              file=sys.stderr)
    return resuming


def _simulation(args):
    """``(simulation, integrator, cg)`` for the model, structure and options on the command line."""
    from openmm_cgml.model_file import load
    from openmm_cgml.openmm.bead_system import coarse_grained_system
    from openmm_cgml.openmm.integrator import CGMLIntegrator
    from openmm_cgml.openmm.platform import choose_platform

    model = load(args.model, trusted=args.trust_model)
    cg = coarse_grained_system(model, args.pdb, replicas=args.replicas, mapping=args.mapping)
    temperature = None if args.temperature is None else args.temperature * u.kelvin
    integrator = CGMLIntegrator(model, temperature=temperature, seed=args.seed, refine=not args.no_refine,
                                collision_distance=args.collision_distance * u.nanometer, mapping=cg.mapping)
    try:
        platform = choose_platform(args.platform)
    except ValueError as error:
        raise ValueError(f"--platform {error}") from None
    simulation = app.Simulation(cg.topology, cg.system, integrator, platform)
    simulation.context.setPositions(cg.positions)
    return simulation, integrator, cg


def _resume(simulation, checkpoint: Path, out: Path) -> None:
    from openmm_cgml.openmm.reporters import dcd_last_step

    try:
        simulation.loadCheckpoint(str(checkpoint))
    except Exception as error:
        raise ValueError(f"--checkpoint {checkpoint}: cannot be loaded into this simulation (same model, "
                         f"structure, replicas and platform are needed): {error}") from None
    start = simulation.currentStep
    if out.suffix.lower() == ".dcd" and out.exists():
        last = dcd_last_step(out)
        if last is not None and last > start:
            print(f"warning: {out} has frames up to step {last} but {checkpoint} is at step {start} (the run was "
                  f"killed between the two writes); frames after step {start} will appear twice", file=sys.stderr)


def _add_reporters(simulation, cg, out: Path, args, append: bool):
    """Trajectory (plus its bead topology PDB), optional log and checkpoint; returns the progress reporter."""
    from openmm_cgml.openmm.reporters import ProgressReporter, trajectory_reporter

    if out.suffix.lower() in (".dcd", ".xtc"):
        topology_pdb = out.with_name(out.stem + "_beads.pdb")
        if not topology_pdb.exists():  # a DCD/XTC needs a topology to be read
            with open(topology_pdb, "w") as handle:
                app.PDBFile.writeFile(cg.topology, cg.positions, handle)
    try:
        simulation.reporters.append(trajectory_reporter(out, args.report_interval, append))
    except ValueError as error:
        raise ValueError(f"--out {error}") from None
    if args.log:
        simulation.reporters.append(app.StateDataReporter(args.log, args.report_interval, step=True, time=True,
                                                          speed=True, append=append))
    if args.checkpoint is not None:
        simulation.reporters.append(app.CheckpointReporter(str(args.checkpoint), args.report_interval))
    dt_ps = simulation.integrator.getStepSize().value_in_unit(u.picosecond)
    progress = ProgressReporter(args.report_interval, args.steps, simulation.currentStep, dt_ps)
    simulation.reporters.append(progress)
    return progress


def run(args) -> int:
    from openmm_cgml.openmm.rollout import UnstableRolloutError

    out = Path(args.out)
    if args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")
    if args.report_interval < 1:
        raise ValueError(f"--report-interval must be >= 1, got {args.report_interval}")
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    resuming = _check_outputs(out, checkpoint, args.overwrite)
    simulation, integrator, cg = _simulation(args)
    if resuming:
        _resume(simulation, checkpoint, out)
    start = simulation.currentStep
    if start >= args.steps:
        print(f"nothing to do: the run is at step {start}, --steps is {args.steps}", file=sys.stderr)
        return 0
    progress = _add_reporters(simulation, cg, out, args, append=resuming and out.exists())

    began = time.perf_counter()
    try:
        simulation.step(args.steps - start)
    except UnstableRolloutError as error:
        raise ValueError(f"{error} {out} keeps the frames written so far"
                         + (f"; {checkpoint} the last checkpoint" if checkpoint else "")) from None
    finally:
        progress.close()
    elapsed = time.perf_counter() - began
    done = simulation.currentStep - start
    if checkpoint is not None:
        simulation.saveCheckpoint(str(checkpoint))
    ns = done * integrator.getStepSize().value_in_unit(u.picosecond) * 1e-3
    print(f"wrote {out}: {done} model steps ({ns:.4g} ns simulated, {args.replicas} replica(s)) in {elapsed:.1f} s "
          f"= {ns / elapsed * 86400 if elapsed > 0 else float('inf'):.4g} ns/day"
          + (f"; warm-up: first {integrator.getHistoryLength() - 1} steps start from a resting history"
             if start == 0 else ""))
    return 0
