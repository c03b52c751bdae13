"""``cgml simulate``: run an exported model as an OpenMM integrator over beads.

    cgml simulate model.safetensors --pdb start.pdb --steps 10000 --out traj.dcd \\
        --report-interval 100 --checkpoint run.chk

The fine-grained start structure is mapped to beads with the model's mapping
(a transferable model re-makes its mapping rule for a new molecule; ``--mapping
FILE`` gives one explicitly);
the trajectory format follows the extension of ``--out`` (.dcd, .xtc, .pdb).
With ``--checkpoint FILE`` a checkpoint is written every report and an
existing one is resumed: the same command run again after an interruption
(even a SIGKILL) finishes the job (``--steps`` is the total step count),
appending to the trajectory. Beside the checkpoint, ``FILE.json`` records the
options that shape the output (model, mapping, replicas, report interval,
time step, seed, output file and format, ...); a resume with any of them
changed is refused, naming the option. Each report writes the frame, then the
log line, then the checkpoint (atomically), so a resume never misses a frame,
and frames a killed run wrote after its last checkpoint are not written twice.
Only a partial last frame or log line a kill left is cut; nothing complete
is ever truncated.

``--overwrite`` starts clean: the trajectory, its ``_beads.pdb``, the log,
the checkpoint and its record are replaced (only after the model and the
structure have been checked, so a failing run changes nothing).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
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
    parser.add_argument("--compile", action="store_true",
                        help="run the model step through torch.compile: same numbers, 2-3x faster for small "
                             "molecules on the CPU; the first steps compile (seconds to a minute; needs a C++ "
                             "compiler)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start clean: replace an existing --out and its side files (_beads.pdb, --log, "
                             "--checkpoint and its .json record) instead of refusing or resuming")


RECORD_FORMAT = "openmm-cgml-simulate-run"
# record key -> the option a user changes to change it (named in the refusal)
_RECORD_OPTIONS = {
    "model_sha256": "model", "mapping_sha256": "--pdb/--mapping", "replicas": "--replicas",
    "report_interval": "--report-interval", "timestep_ps": "model time step", "out": "--out",
    "out_format": "--out format", "seed": "--seed", "temperature_K": "--temperature", "refine": "--no-refine",
    "collision_distance_nm": "--collision-distance",
}


def record_path(checkpoint: Path) -> Path:
    """The run record beside ``checkpoint``: ``run.chk`` -> ``run.chk.json``."""
    return checkpoint.with_name(checkpoint.name + ".json")


def beads_path(out: Path) -> Path | None:
    """The bead topology PDB a DCD/XTC trajectory needs to be read (None for a PDB trajectory)."""
    return out.with_name(out.stem + "_beads.pdb") if out.suffix.lower() in (".dcd", ".xtc") else None


def _check_numbers(args) -> None:
    """ValueError naming the first option with an impossible value (before anything is loaded)."""
    from openmm_cgml.openmm.reporters import TRAJECTORY_FORMATS

    for option, value, low in (("--steps", args.steps, 1), ("--report-interval", args.report_interval, 1),
                               ("--replicas", args.replicas, 1), ("--seed", args.seed, 0)):
        if value < low:
            raise ValueError(f"{option} must be >= {low}, got {value}")
    if not math.isfinite(args.collision_distance) or args.collision_distance < 0:
        raise ValueError(f"--collision-distance must be a finite distance >= 0 nm, got {args.collision_distance}")
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ValueError(f"--temperature must be a positive temperature in K, got {args.temperature}")
    out = Path(args.out)
    if out.suffix.lower() not in TRAJECTORY_FORMATS:
        raise ValueError(f"--out {out}: unknown trajectory format {out.suffix.lower()!r}; use .dcd, .xtc or .pdb")
    if args.checkpoint and out.suffix.lower() == ".pdb":
        raise ValueError(f"--out {out}: a PDB trajectory cannot be appended to, so a --checkpoint run could not "
                         "be resumed; use .dcd or .xtc")


def _check_folder(option: str, path: Path) -> None:
    """The folder ``path`` is written in exists and is writable; ``path`` itself is no folder."""
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{option} {path}: directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: directory {folder} is not writable")
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a directory")


def _outputs(args, out: Path, checkpoint):
    """Check where outputs go; return whether a previous run is resumed.

    A run is resumed when its record exists beside ``--checkpoint`` (the
    checkpoint itself is absent if the run was killed before its first one).
    Without ``--overwrite`` a fresh run refuses any existing output file.
    """
    named = [("--out", out)] + ([("--checkpoint", checkpoint)] if checkpoint else []) + (
        [("--log", Path(args.log))] if args.log else [])
    for option, path in named:
        _check_folder(option, path)
    if args.overwrite:
        return False
    record = record_path(checkpoint) if checkpoint else None
    if checkpoint is not None and checkpoint.exists() and not record.exists():
        raise ValueError(f"--checkpoint {checkpoint} has no run record {record.name} beside it, so the options "
                         "it was run with cannot be checked; pass --overwrite to start again")
    if record is not None and record.exists():
        return True
    beads = beads_path(out)
    for option, path in named + ([("--out", beads)] if beads else []):
        if path.exists():
            raise FileExistsError(f"{option} {path} exists; pass --overwrite to replace it"
                                  + (", or --checkpoint to resume" if option == "--out" else ""))
    return False


def _simulation(args):
    """``(simulation, integrator, cg, model)`` for the model, structure and options on the command line."""
    from openmm_cgml.model_file import load
    from openmm_cgml.openmm.bead_system import coarse_grained_system
    from openmm_cgml.openmm.integrator import CGMLIntegrator
    from openmm_cgml.openmm.platform import choose_platform

    model = load(args.model, trusted=args.trust_model)
    if args.compile:
        model.compile()
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
    return simulation, integrator, cg, model


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_record(args, out: Path, simulation, cg, model) -> dict:
    """What a resume must not change: everything that shapes the trajectory, its time axis and its frames."""
    temperature = args.temperature if args.temperature is not None else model.metadata.get("temperature_K")
    return {
        "format": RECORD_FORMAT, "version": 1,
        "model_sha256": _sha256(model.path) if model.path else model.metadata.get("digest"),
        "mapping_sha256": hashlib.sha256(cg.mapping.to_json().encode()).hexdigest(),
        "replicas": args.replicas, "report_interval": args.report_interval,
        "timestep_ps": simulation.integrator.getStepSize().value_in_unit(u.picosecond),
        "out": os.path.abspath(out), "out_format": out.suffix.lower(), "seed": args.seed,
        "temperature_K": None if temperature is None else float(temperature), "refine": not args.no_refine,
        "collision_distance_nm": args.collision_distance,
        "platform": simulation.context.getPlatform().getName(),
        "log": os.path.abspath(args.log) if args.log else None,
    }


def _check_record(record_file: Path, record: dict) -> None:
    """ValueError naming the first option that differs from the recorded run."""
    try:
        saved = json.loads(record_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"run record {record_file}: unreadable ({error}); pass --overwrite to start again") from None
    if not isinstance(saved, dict) or saved.get("format") != RECORD_FORMAT:
        raise ValueError(f"run record {record_file}: not a cgml simulate run record; pass --overwrite to start again")
    for key, option in _RECORD_OPTIONS.items():
        if saved.get(key) != record[key]:
            shown = (lambda v: v[:12] if isinstance(v, str) and key.endswith("sha256") else v)
            raise ValueError(f"{option} differs from the run being resumed ({shown(record[key])!r} now, "
                             f"{shown(saved.get(key))!r} in {record_file}); use the same {option}, or pass "
                             "--overwrite to start again")


def _start_clean(out: Path, checkpoint, args, record: dict | None, cg) -> None:
    """Remove what an earlier run left (``--overwrite``), then write the record and the bead topology."""
    from openmm_cgml.openmm.reporters import write_atomic

    beads = beads_path(out)
    # the record and the checkpoint go first: a run killed now must not resume an old checkpoint into new files
    old = ([record_path(checkpoint), checkpoint] if checkpoint else []) + [out] + (
        [Path(args.log)] if args.log else []) + ([beads] if beads else [])
    for path in old:
        path.unlink(missing_ok=True)
    if beads is not None:
        _write_beads(beads, cg)
    if record is not None:
        write_atomic(record_path(checkpoint), json.dumps(record, indent=1, sort_keys=True) + "\n")


def _write_beads(beads: Path, cg) -> None:
    import io

    from openmm_cgml.openmm.reporters import write_atomic

    text = io.StringIO()
    app.PDBFile.writeFile(cg.topology, cg.positions, text)
    write_atomic(beads, text.getvalue())


def _resume(simulation, checkpoint: Path, out: Path, args, cg):
    """Load the checkpoint (if the run reached one); return ``(written, logged)``: the last steps already there."""
    from openmm_cgml.openmm.reporters import repair_dcd, repair_log, xtc_last_step

    if checkpoint.exists():
        try:
            simulation.loadCheckpoint(str(checkpoint))
        except Exception as error:
            raise ValueError(f"--checkpoint {checkpoint}: cannot be loaded into this simulation (same model, "
                             f"structure, replicas and platform are needed): {error}") from None
    start = simulation.currentStep
    beads = beads_path(out)
    if beads is not None and not beads.exists():
        _write_beads(beads, cg)
    written = -1
    if out.exists():
        if out.suffix.lower() == ".dcd":
            n_frames, first, interval, n_atoms = repair_dcd(out)
            if n_frames and (interval != args.report_interval or n_atoms != cg.topology.getNumAtoms()):
                raise ValueError(f"--out {out}: its frames are {interval} steps apart for {n_atoms} beads, "
                                 f"this run's {args.report_interval} for {cg.topology.getNumAtoms()}; pass "
                                 "--overwrite to start again")
            steps = [first + i * interval for i in range(n_frames)]
        else:
            _, steps = xtc_last_step(out)
        written = steps[-1] if steps else -1
        if written < start - start % args.report_interval:  # the last frame due at or before the checkpoint
            # the checkpoint is never ahead of the trajectory unless frames were lost: a gap would be silent
            held = f"frames up to step {written}" if steps else "no frames"
            raise ValueError(f"--out {out} holds {held}, but {checkpoint} resumes at step {start}: frames are "
                             "missing; pass --overwrite to start again")
    elif start > 0:
        print(f"note: resuming from {checkpoint} at step {start} but {out} does not exist; starting a new "
              "trajectory file", file=sys.stderr)
    logged = -1
    if args.log and Path(args.log).exists():
        last = repair_log(Path(args.log))
        logged = -1 if last is None else last
    return written, logged


def _add_reporters(simulation, out: Path, args, written: int, logged: int):
    """The run reporter (trajectory, log, checkpoint, in that order) and the progress reporter."""
    from openmm_cgml.openmm.reporters import ProgressReporter, RunReporter, trajectory_reporter

    trajectory = trajectory_reporter(out, args.report_interval, append=out.exists() and written >= 0)
    log = None
    if args.log:
        log = app.StateDataReporter(args.log, args.report_interval, step=True, time=True, speed=True,
                                    append=Path(args.log).exists() and logged >= 0)
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    simulation.reporters.append(RunReporter(args.report_interval, trajectory, log, checkpoint, written, logged))
    dt_ps = simulation.integrator.getStepSize().value_in_unit(u.picosecond)
    progress = ProgressReporter(args.report_interval, args.steps, simulation.currentStep, dt_ps)
    simulation.reporters.append(progress)
    return progress


def run(args) -> int:
    from openmm_cgml.openmm.reporters import save_checkpoint
    from openmm_cgml.openmm.rollout import UnstableRolloutError

    out = Path(args.out)
    _check_numbers(args)
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    resuming = _outputs(args, out, checkpoint)
    simulation, integrator, cg, model = _simulation(args)
    record = _run_record(args, out, simulation, cg, model) if checkpoint else None
    if resuming:
        _check_record(record_path(checkpoint), record)
        written, logged = _resume(simulation, checkpoint, out, args, cg)
    else:
        _start_clean(out, checkpoint, args, record, cg)
        written = logged = -1
    start = simulation.currentStep
    if start >= args.steps:
        print(f"nothing to do: the run is at step {start}, --steps is {args.steps}", file=sys.stderr)
        return 0
    progress = _add_reporters(simulation, out, args, written, logged)

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
        save_checkpoint(simulation, checkpoint)
    ns = done * integrator.getStepSize().value_in_unit(u.picosecond) * 1e-3
    print(f"wrote {out}: {done} model steps ({ns:.4g} ns simulated, {args.replicas} replica(s)) in {elapsed:.1f} s "
          f"= {ns / elapsed * 86400 if elapsed > 0 else float('inf'):.4g} ns/day"
          + (f"; warm-up: first {integrator.getHistoryLength() - 1} steps start from a resting history"
             if start == 0 else ""))
    return 0
