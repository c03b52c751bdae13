"""Fine-grained reference MD into self-describing HDF5 files (``cgml generate``).

For each trajectory: minimise, assign Maxwell-Boltzmann velocities,
equilibrate, then run Langevin dynamics (``LangevinMiddleIntegrator``) and
save positions, velocities and potential energy (forces optional) every
``stride`` steps through :class:`openmm_cgml.trajectory.FineTrajectory`.

Runs are resumable: frames are written in chunks, each followed by the
OpenMM checkpoint of its last frame. Rerunning the same command continues an
interrupted file from that checkpoint (no frame lost or duplicated), skips a
completed one, and extends a completed one when more frames are asked for.
For a given seed and platform the frames are reproducible (forces are
computed with ``DeterministicForces`` where the platform offers it).

``shard=(i, n)`` runs every n-th trajectory, starting with the i-th, of the
same command, so that a job array of n tasks writes, between them, the files
of the unsharded run (same names, seeds and frames).
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import openmm as mm
import openmm.app as app

from openmm_cgml import systems as systems_module
from openmm_cgml.io import atomic_path, software_versions
from openmm_cgml.trajectory import FineTrajectory
from openmm_cgml.units import KELVIN, NM, PS

__all__ = ["generate", "best_platform", "platform_properties", "trajectory_seed"]

_PLATFORM_ORDER = ("CUDA", "OpenCL", "CPU")
_MINIMIZE_TOLERANCE = 10.0  # kJ/mol/nm


def best_platform() -> str:
    """Name of the fastest working OpenMM platform: CUDA, then OpenCL, then CPU."""
    for name in _PLATFORM_ORDER:
        if _platform_works(name):
            return name
    return "Reference"


def _platform_works(name: str) -> bool:
    try:
        platform = mm.Platform.getPlatformByName(name)
        system = mm.System()
        system.addParticle(1.0)
        mm.Context(system, mm.VerletIntegrator(0.001), platform)
        return True
    except Exception:  # platform missing, or present without a usable device
        return False


def platform_properties(name: str, cpu_threads: int = 1) -> dict:
    """Context properties that make a platform reproducible (and mixed precision on GPUs).

    On the CPU platform bit-reproducibility needs ``DeterministicForces`` and
    a single thread (with several threads the neighbour list, and so the
    force summation order, varies from run to run at the 1e-7 nm level).
    """
    if name == "CPU":
        return {"DeterministicForces": "true", "Threads": str(int(cpu_threads))}
    if name in ("CUDA", "OpenCL", "HIP"):
        return {"DeterministicForces": "true", "Precision": "mixed"}
    return {}


def trajectory_seed(seed: int, replica: int, sequence_seed: int | None = None) -> int:
    """The integrator/velocity seed of one trajectory: distinct per replica and sequence, never 0
    (OpenMM takes 0 to mean 'pick a random seed')."""
    entropy = [int(seed), int(replica)] + ([] if sequence_seed is None else [int(sequence_seed)])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] % (2**31 - 2)) + 1


def generate(system, out, *, frames: int | None = None, stride: int | None = None, replicas: int = 1,
             sequences: int | Iterable[int] | None = None, seed: int = 0, platform: str | None = None,
             equilibration_steps: int | None = None, save_forces: bool = False,
             chunk_frames: int | None = None, params: dict | None = None, progress: bool = True,
             cpu_threads: int = 1, on_chunk: Callable[[Path, int], None] | None = None,
             shard: tuple[int, int] | None = None) -> list[Path]:
    """Run reference MD and write one HDF5 trajectory (+ a PDB of its first frame) per replica and sequence.

    Parameters
    ----------
    system : a registered name, a YAML path, or a :class:`~openmm_cgml.systems.ReferenceSystem`.
    out : output folder (created if needed).
    frames : frames per trajectory, the first one being the equilibrated start (default: the YAML's).
    stride : MD steps between saved frames (default: the YAML's).
    replicas : independent trajectories (different seeds) per sequence.
    sequences : for systems with a ``sequence_seed`` (polymers): a count N (sequence seeds
        ``sequence_seed .. sequence_seed + N - 1``) or an explicit list of sequence seeds.
    seed : base seed; each trajectory's integrator/velocity seed derives from it (:func:`trajectory_seed`).
    platform : OpenMM platform name; default :func:`best_platform`, or the one a file being resumed used.
    equilibration_steps : MD steps after minimisation before frame 0 (default: the YAML's).
    save_forces : also store forces (kJ/mol/nm).
    chunk_frames : frames per write; a kill loses at most one chunk of work (default: 100).
        A resumed file keeps the chunk size it was started with (part of the reproducible recipe).
    params : overrides for :func:`openmm_cgml.systems.load`.
    cpu_threads : threads on the CPU platform; 1 (default) keeps runs bit-reproducible.
    on_chunk : called as ``on_chunk(path, n_frames_written)`` after each chunk is safely on disk.
    shard : ``(index, count)``: run only share ``index`` (0-based) of ``count`` of the trajectories, for a
        job array. Trajectory ``j`` of the unsharded run (sequence-major, then replica) belongs to shard
        ``j % count``, under the same file name and seeds, so the shards' files together are the unsharded
        run's, frame for frame. A shard with no trajectory (more shards than trajectories) runs nothing.

    Returns the trajectory paths (of this shard), in order.

    Raises
    ------
    ValueError
        For bad settings, among them a shard whose count is below 1 or whose index is not in
        ``0 .. count - 1`` (checked before anything is written).
    """
    params = dict(params or {})
    index, count = _checked_shard(shard)
    out = _prepare_out(out)
    if isinstance(system, systems_module.ReferenceSystem):
        if sequences is not None or params:
            raise ValueError("sequences/params need a system name or YAML path, not a built ReferenceSystem")
        jobs = [(system, None)]
    else:
        jobs = _jobs(system, sequences, params)
    replicas = int(replicas)
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    # every shard checks every job's settings, so that all shards of a bad command fail alike
    settings = [_settings(ref, frames, stride, equilibration_steps) for ref, _ in jobs]
    trajectories = [(ref, sequence_seed, n_settings, replica)
                    for (ref, sequence_seed), n_settings in zip(jobs, settings) for replica in range(replicas)]
    paths = []
    for ref, sequence_seed, (n_frames, n_stride, n_eq), replica in trajectories[index::count]:
        stem = ref.name if sequence_seed is None else f"{ref.name}-s{sequence_seed:03d}"
        path = out / f"{stem}-r{replica:03d}.h5"
        _run_trajectory(ref, path, n_frames=n_frames, stride=n_stride, equilibration_steps=n_eq,
                        seed=int(seed), replica=replica, sequence_seed=sequence_seed, platform=platform,
                        save_forces=save_forces, chunk_frames=100 if chunk_frames is None else int(chunk_frames),
                        progress=progress, cpu_threads=int(cpu_threads), on_chunk=on_chunk)
        paths.append(path)
    return paths


def _checked_shard(shard) -> tuple[int, int]:
    """``(index, count)`` of a shard (``(0, 1)`` for None: the whole run), or a ``ValueError`` naming it."""
    if shard is None:
        return 0, 1
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise ValueError(f"shard must be a pair (index, count), got {shard!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (index, count)):
        raise ValueError(f"shard index and count must be integers, got {shard!r}")
    if count < 1:
        raise ValueError(f"shard count must be at least 1, got {index}/{count}")
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in 0..{count - 1} for {count} shards, got {index}/{count}")
    return int(index), int(count)


def _settings(ref, frames, stride, equilibration_steps) -> tuple[int, int, int]:
    """Frames, stride and equilibration steps of one system: the arguments, else its YAML's defaults."""
    defaults = ref.params.get("generate", {}) or {}
    n_frames = int(frames if frames is not None else defaults.get("frames", 100))
    n_stride = int(stride if stride is not None else defaults.get("stride", 100))
    n_eq = int(equilibration_steps if equilibration_steps is not None else defaults.get("equilibration_steps", 1000))
    if n_frames < 1 or n_stride < 1 or n_eq < 0:
        raise ValueError(f"frames and stride must be positive and equilibration_steps non-negative "
                         f"(got frames={n_frames}, stride={n_stride}, equilibration_steps={n_eq})")
    return n_frames, n_stride, n_eq


def _prepare_out(out) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"cannot create output folder {out}: {error.strerror or error}") from None
    try:  # a real write: os.access says yes to root even on read-only mounts
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise PermissionError(f"output folder {out} is not writable: {error.strerror or error}") from None
    return out


def _jobs(name, sequences, params):
    if sequences is None:
        return [(systems_module.load(name, **params), None)]
    first = systems_module.load(name, **params)
    if "sequence_seed" not in first.params:
        raise ValueError(f"--sequences needs a system with random sequences (polymer-chain); {first.name} has none")
    base = int(first.params["sequence_seed"])
    seeds = list(range(base, base + int(sequences))) if isinstance(sequences, int) else [int(s) for s in sequences]
    if not seeds:
        raise ValueError(f"sequences must be a positive count or a non-empty list of sequence seeds, got {sequences!r}")
    return [(systems_module.load(name, **{**params, "sequence_seed": s}), s) for s in seeds]


def _run_attrs(ref, stride, equilibration_steps, seed, replica, sequence_seed, platform) -> dict:
    return {
        "cgml_system": ref.name,
        "cgml_params": ref.params,
        "cgml_timestep_ps": float(ref.timestep.value_in_unit(PS)),
        "cgml_stride": int(stride),
        "cgml_temperature_K": float(ref.temperature.value_in_unit(KELVIN)),
        "cgml_friction_per_ps": float(ref.friction.value_in_unit(PS**-1)),
        "cgml_seed": int(seed),
        "cgml_replica": int(replica),
        "cgml_sequence_seed": -1 if sequence_seed is None else int(sequence_seed),
        "cgml_integrator_seed": trajectory_seed(seed, replica, sequence_seed),
        "cgml_equilibration_steps": int(equilibration_steps),
        "cgml_platform": platform,
        "cgml_versions": software_versions(python=False),
    }


# attributes that must match for a file to be resumed (versions and platform are checked separately)
_RESUME_KEYS = ("cgml_system", "cgml_params", "cgml_timestep_ps", "cgml_stride", "cgml_temperature_K",
                "cgml_friction_per_ps", "cgml_seed", "cgml_replica", "cgml_sequence_seed",
                "cgml_equilibration_steps")


def _check_resumable(path: Path, stored: dict, attrs: dict) -> None:
    for key in _RESUME_KEYS:
        old, new = stored.get(key), attrs[key]
        if json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True):
            raise ValueError(f"{path} exists from a run with different settings ({key}: {old} there, "
                             f"{new} now); choose another output folder or remove that file")


def _run_trajectory(ref, path: Path, *, n_frames, stride, equilibration_steps, seed, replica, sequence_seed,
                    platform, save_forces, chunk_frames, progress, cpu_threads, on_chunk) -> None:
    if chunk_frames < 1 or cpu_threads < 1:
        raise ValueError(f"chunk_frames and cpu_threads must be positive, got {chunk_frames} and {cpu_threads}")
    stored = None
    if path.exists():
        # inspect read-only first, so that a refused resume leaves the file byte-for-byte untouched
        with FineTrajectory(path) as existing:
            stored = existing.attrs
            resumable = existing.checkpoint is not None
            done = existing.complete and existing.n_frames >= n_frames
            save_forces = existing.forces is not None
        if platform is not None and platform != stored.get("cgml_platform") and resumable:
            raise ValueError(f"{path} was written on the {stored.get('cgml_platform')} platform and can only be "
                             f"resumed there (OpenMM checkpoints are platform-specific); got platform {platform}")
        platform = stored.get("cgml_platform")
        chunk_frames = int(stored.get("cgml_chunk_frames", chunk_frames))
    platform = platform or best_platform()
    available = [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]
    if platform not in available:
        raise ValueError(f"unknown OpenMM platform {platform!r}; available here: {', '.join(available)}")
    attrs = _run_attrs(ref, stride, equilibration_steps, seed, replica, sequence_seed, platform)
    if stored is not None:
        _check_resumable(path, stored, attrs)
        if done:
            return  # a completed file is never re-run

    integrator = ref.integrator(attrs["cgml_integrator_seed"])
    context = mm.Context(ref.system, integrator, mm.Platform.getPlatformByName(platform),
                         platform_properties(platform, cpu_threads))
    if stored is None:
        trajectory = FineTrajectory.create(path, topology=ref.topology, masses=ref.masses,
                                           atom_types=ref.atom_types, charges=ref.charges, attrs=attrs,
                                           periodic=ref.is_periodic, save_forces=save_forces,
                                           chunk_frames=chunk_frames)
    else:
        trajectory = FineTrajectory(path, mode="a")
    with trajectory:
        start = trajectory.truncate_uncommitted()  # drops frames a kill left after the last checkpoint
        if start > 0:
            try:
                context.loadCheckpoint(trajectory.checkpoint)
            except Exception as error:
                raise ValueError(f"cannot resume {path}: its checkpoint does not load ({error})") from None
        else:
            _equilibrate(ref, context, equilibration_steps, attrs["cgml_integrator_seed"])
        trajectory.set_attrs(cgml_complete=False, cgml_n_frames_requested=int(n_frames),
                             cgml_chunk_frames=int(chunk_frames), cgml_cpu_threads=int(cpu_threads),
                             cgml_versions=attrs["cgml_versions"])
        _write_frames(context, trajectory, path, ref, start, n_frames, stride, save_forces, chunk_frames,
                      progress, on_chunk)
        trajectory.mark_complete()


def _equilibrate(ref, context: mm.Context, steps: int, velocity_seed: int) -> None:
    context.setPositions(ref.positions)
    if ref.is_periodic:
        context.setPeriodicBoxVectors(*ref.system.getDefaultPeriodicBoxVectors())
    mm.LocalEnergyMinimizer.minimize(context, _MINIMIZE_TOLERANCE)
    context.setVelocitiesToTemperature(ref.temperature, int(velocity_seed))
    try:
        context.getIntegrator().step(int(steps))
    except mm.OpenMMException as error:
        raise ValueError(f"{ref.name}: the MD blew up during the {steps} equilibration steps: "
                         f"{_first_sentence(error)} (a smaller timestep_ps or a better start structure may help)"
                         ) from None
    # frame 0 is the equilibrated state at t = 0
    context.setTime(0.0)
    context.setStepCount(0)
    energy = context.getState(getEnergy=True).getPotentialEnergy()._value
    if not math.isfinite(energy):
        raise ValueError(f"{ref.name}: the energy is not finite after minimisation and equilibration")


def _write_frames(context, trajectory, path, ref, start, n_frames, stride, save_forces, chunk_frames, progress,
                  on_chunk) -> None:
    from tqdm.auto import tqdm

    n_atoms = ref.n_atoms
    chunk = max(1, min(chunk_frames, n_frames - start)) if n_frames > start else 1
    positions = np.empty((chunk, n_atoms, 3), np.float32)
    velocities = np.empty((chunk, n_atoms, 3), np.float32)
    forces = np.empty((chunk, n_atoms, 3), np.float32) if save_forces else None
    times = np.empty(chunk, np.float64)
    energies = np.empty(chunk, np.float64)
    boxes = np.empty((chunk, 3, 3), np.float64) if ref.is_periodic else None
    integrator = context.getIntegrator()
    resync = context.getPlatform().getName() == "CPU"
    ns_per_frame = stride * ref.timestep.value_in_unit(PS) * 1e-3
    bar = tqdm(total=n_frames, initial=start, unit="frame", desc=path.name, disable=not progress, leave=False)
    began = time.perf_counter()
    filled = 0
    try:
        for frame in range(start, n_frames):
            if frame > 0:
                try:
                    integrator.step(stride)
                except mm.OpenMMException as error:  # "Particle coordinate is NaN": the MD blew up
                    raise _blow_up(path, trajectory, frame, stride, error) from None
            # only what is stored; positions unwrapped so molecules stay whole
            state = context.getState(getPositions=True, getVelocities=True, getEnergy=True, getForces=save_forces)
            positions[filled] = state.getPositions(asNumpy=True)._value
            velocities[filled] = state.getVelocities(asNumpy=True)._value
            if save_forces:
                forces[filled] = state.getForces(asNumpy=True)._value
            if boxes is not None:
                boxes[filled] = state.getPeriodicBoxVectors(asNumpy=True)._value
            times[filled] = state.getTime()._value
            energies[filled] = state.getPotentialEnergy()._value
            # float32 on disk: an energy past its range is as blown up as a NaN
            if not (abs(energies[filled]) < _FLOAT32_MAX and np.isfinite(positions[filled]).all()):
                raise _blow_up(path, trajectory, frame, stride, "the energy or positions are not finite")
            filled += 1
            if filled == chunk or frame == n_frames - 1:
                trajectory.append(positions[:filled], velocities[:filled], times[:filled], energies[:filled],
                                  forces=None if forces is None else forces[:filled],
                                  box_vectors=None if boxes is None else boxes[:filled])
                trajectory.commit(context.createCheckpoint())
                if resync:
                    # Continue exactly as a resumed run would: from a freshly loaded checkpoint. On the
                    # CPU platform a reloaded Context rebuilds its neighbour list, which changes the
                    # force summation order at the 1e-7 level; doing it at every chunk in every run keeps
                    # interrupted-and-resumed runs bit-identical to uninterrupted ones (costs ~ms).
                    context.reinitialize(preserveState=True)
                _write_first_frame_pdb(path, ref.topology, trajectory)  # no-op once it exists
                bar.update(filled)
                elapsed = time.perf_counter() - began
                if elapsed > 0:
                    bar.set_postfix_str(f"{(frame - start) * ns_per_frame / elapsed * 86400:.1f} ns/day")
                filled = 0
                if on_chunk is not None:
                    on_chunk(path, trajectory.n_frames)
    finally:
        bar.close()


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _blow_up(path: Path, trajectory: FineTrajectory, frame: int, stride: int, why: str) -> ValueError:
    """The error for MD that blew up before ``frame``: where, and what was kept."""
    return ValueError(f"{path}: the MD blew up before frame {frame} (MD step {frame * stride}): "
                      f"{_first_sentence(why)}; "
                      f"the {trajectory.n_frames} frames committed before are kept (a smaller timestep_ps "
                      "or a better start structure may help)")


def _first_sentence(error) -> str:
    """OpenMM's message without its trailing FAQ link, on one line."""
    return " ".join(str(error).split()).split(". For more information")[0]


def _write_first_frame_pdb(path: Path, topology: app.Topology, trajectory: FineTrajectory) -> None:
    """PDB of frame 0 next to the HDF5 file, written atomically (a kill never leaves half a PDB)."""
    pdb_path = path.with_suffix(".pdb")
    if pdb_path.exists():
        return
    box = trajectory.box_vectors(0)
    if box is not None:
        topology = _copy_with_box(topology, box)
    with atomic_path(pdb_path) as temporary, open(temporary, "w") as handle:
        app.PDBFile.writeFile(topology, trajectory.positions[0].astype(np.float64) * NM, handle, keepIds=True)


def _copy_with_box(topology: app.Topology, box: np.ndarray) -> app.Topology:
    copy = app.Topology()
    copy.setPeriodicBoxVectors(box * NM)
    atoms = {}
    for chain in topology.chains():
        new_chain = copy.addChain(chain.id)
        for residue in chain.residues():
            new_residue = copy.addResidue(residue.name, new_chain, residue.id)
            for atom in residue.atoms():
                atoms[atom] = copy.addAtom(atom.name, atom.element, new_residue, atom.id)
    for bond in topology.bonds():
        copy.addBond(atoms[bond.atom1], atoms[bond.atom2])
    return copy
