"""Reference MD for a benchmark, cached by what defines it: isolated chains side by side, or peptide replicas.

A :class:`ReferenceBatch` (polymer benchmark) is one OpenMM Context of up to ``chains_per_context``
isolated chains (the ``polymer-chains`` builder) and one replica seed. Its
trajectory lives in ``CACHE/<hash>/``, where the hash covers everything that
defines the trajectory (force field, sequences, lengths, seeds), so a rerun,
or a run with another model, reuses it; a half-written one resumes.
Batches run in parallel worker processes, one CPU thread each, or one after
another on a GPU platform (``platform="CUDA"``), where one Context of many
chains already fills the device. :func:`replica_runs` (peptide benchmark)
runs independent replicas of one registered system the same way, one
``cgml generate`` shard per replica, into ``CACHE/<split>-<hash>/``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openmm_cgml import systems
from openmm_cgml.trajectory import FineTrajectory

__all__ = ["ReferenceBatch", "chain_system_params", "run_batches", "chain_atoms", "replica_runs"]


def chain_system_params(system: str, overrides: dict) -> dict:
    """Force-field parameters of ``system`` (a polymer-chain YAML) in the form the ``polymer-chains`` builder takes."""
    params = systems.load(system, **overrides).params
    allowed = systems.builder_keys("polymer-chains") | {"temperature_K", "friction_per_ps", "timestep_ps"}
    return {key: value for key, value in params.items() if key in allowed and key != "sequences"}


@dataclass(frozen=True)
class ReferenceBatch:
    """Chains of one split and one replica, integrated together; ``frames`` every ``stride`` MD steps."""
    split: str
    replica: int
    sequences: tuple[str, ...]
    frames: int
    stride: int
    equilibration_steps: int
    seed: int
    params: tuple  # sorted (key, JSON text of the value) pairs of the force field: hashable

    @classmethod
    def freeze(cls, params: dict) -> tuple:
        """The ``params`` field for a force-field dictionary."""
        return tuple(sorted((key, json.dumps(value, sort_keys=True)) for key, value in params.items()))

    @property
    def force_field(self) -> dict:
        return {key: json.loads(value) for key, value in self.params}

    @property
    def key(self) -> str:
        """Content hash of what defines the trajectory (not of where or by which version it is run)."""
        text = json.dumps({"sequences": self.sequences, "frames": self.frames, "stride": self.stride,
                           "equilibration_steps": self.equilibration_steps, "seed": self.seed,
                           "params": self.force_field}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def path(self, cache: Path) -> Path:
        return Path(cache) / self.key / "polymer-chains-r000.h5"

    @property
    def cost(self) -> int:
        """Bead-steps to integrate, for scheduling the largest first."""
        return self.frames * self.stride * sum(2 * len(s) for s in self.sequences)


def _run(batch: ReferenceBatch, cache: str, platform: str = "CPU") -> str:
    import torch

    torch.set_num_threads(1)
    from openmm_cgml.generate import generate

    params = dict(batch.force_field, sequences=list(batch.sequences))
    folder = Path(cache) / batch.key
    paths = generate("polymer-chains", folder, frames=batch.frames, stride=batch.stride, seed=batch.seed,
                     equilibration_steps=batch.equilibration_steps, params=params, progress=False,
                     platform=platform, cpu_threads=1)
    (folder / "definition.json").write_text(json.dumps({"split": batch.split, "replica": batch.replica,
                                                        "sequences": batch.sequences}, indent=1))
    return str(paths[0])


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a finished fine trajectory (absent, half-written or unreadable: no)."""
    if not path.is_file():
        return False
    try:
        with FineTrajectory(path) as trajectory:
            return bool(trajectory.complete)
    except (OSError, ValueError):
        return False


def _run_all(task, jobs: list[tuple], workers: int, platform: str) -> None:
    """``task(*job)`` for every job: in ``workers`` spawned processes on the CPU platform, else one after another
    here (a GPU platform is filled by one run).

    On the CPU platform each run is pinned to one CPU of its own (the workers to different ones): OpenMM's CPU
    platform hands every MD step to a worker thread, and on a virtual machine whose other CPU is idle each
    hand-off waits for it to wake, which made one-thread reference MD 3-4x slower here (alanine dipeptide:
    0.87 ms per step unpinned, 0.23 pinned; :func:`~openmm_cgml.evaluation.rollouts.pinned_cpus`).
    """
    from openmm_cgml.evaluation.rollouts import pinned_cpus

    if workers <= 1 or platform != "CPU":
        with pinned_cpus(1) if platform == "CPU" else contextlib.nullcontext():
            for job in jobs:
                task(*job)
        return
    context = multiprocessing.get_context("spawn")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [None]
    slots = context.Queue()
    for worker in range(workers):
        slots.put(cpus[worker % len(cpus)])
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_pin_worker,
                             initargs=(slots,)) as pool:
        for future in [pool.submit(task, *job) for job in jobs]:
            future.result()


def _pin_worker(slots) -> None:
    """Pool initializer: this worker process runs on the CPU it takes from ``slots`` (None: anywhere)."""
    cpu = slots.get()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def run_batches(batches: list[ReferenceBatch], cache, workers: int = 2, log=print, platform: str = "CPU") -> dict:
    """Run (or find in ``cache``) every batch; returns ``{batch: path}``. Missing ones run largest first.

    ``platform`` is the OpenMM platform of the reference MD; anything but CPU runs the
    batches one after another in this process. The platform is not part of the cache
    key: CPU and CUDA trajectories of one definition are the same ensemble.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    todo = sorted((b for b in batches if not is_complete(b.path(cache))), key=lambda b: -b.cost)
    if todo:
        log(f"      reference MD: {len(todo)} of {len(batches)} batches to run "
            f"({sum(b.cost for b in todo) / 1e6:.0f} M bead-steps) on {platform}, "
            f"{workers if platform == 'CPU' else 1} worker(s); cache {cache}")
        _run_all(_run, [(batch, str(cache), platform) for batch in todo], workers, platform)
    return {batch: batch.path(cache) for batch in batches}


def chain_atoms(path: Path, sequences) -> tuple[list[np.ndarray], float]:
    """Atom positions (F, n_atoms, 3) nm of each chain in a batch trajectory, and the frame interval (ps)."""
    offsets = np.concatenate([[0], np.cumsum([2 * len(s) for s in sequences])]).astype(int)
    with FineTrajectory(path) as trajectory:
        everything = np.asarray(trajectory.positions[:], dtype=np.float64)
        interval = float(trajectory.frame_interval_ps)
    return [everything[:, a:b] for a, b in zip(offsets[:-1], offsets[1:])], interval


def _run_replica(system: str, params: dict, folder: str, frames: int, stride: int, equilibration_steps: int,
                 seed: int, replica: int, replicas: int, platform: str) -> None:
    import torch

    torch.set_num_threads(1)
    from openmm_cgml.generate import generate

    generate(system, folder, frames=frames, stride=stride, replicas=replicas, seed=seed, params=params,
             equilibration_steps=equilibration_steps, progress=False, platform=platform, cpu_threads=1,
             shard=(replica, replicas))


def replica_runs(system: str, params: dict, split: str, spec: dict, stride: int, equilibration_steps: int,
                 cache, workers: int = 2, log=print, platform: str = "CPU") -> list[Path]:
    """Run (or find in ``cache``) ``spec["replicas"]`` independent replicas of a registered system; their paths.

    ``spec``: ``seed``, ``replicas``, ``reference_ns``; frames every ``stride`` MD steps after
    ``equilibration_steps``. The folder is ``CACHE/<split>-<hash>``, the hash over everything that defines
    the trajectories; a half-written replica resumes. Replicas run in parallel processes on the CPU.
    """
    dt = float(systems.load(system, **params).timestep._value)
    frames = int(round(float(spec["reference_ns"]) * 1000.0 / (stride * dt))) + 1
    replicas, seed = int(spec["replicas"]), int(spec["seed"])
    text = json.dumps({"system": system, "params": params, "frames": frames, "stride": stride,
                       "equilibration_steps": equilibration_steps, "seed": seed, "replicas": replicas}, sort_keys=True)
    folder = Path(cache) / f"{split}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    paths = [folder / f"{system}-r{replica:03d}.h5" for replica in range(replicas)]
    todo = [replica for replica, path in enumerate(paths) if not is_complete(path)]
    if todo:
        log(f"      reference MD ({split}): {len(todo)} of {replicas} replicas of {frames} frames to run "
            f"on {platform}; cache {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        args = [(system, params, str(folder), frames, stride, equilibration_steps, seed, r, replicas, platform)
                for r in todo]
        _run_all(_run_replica, args, workers, platform)
    return paths
