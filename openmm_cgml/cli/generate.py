"""``cgml generate``: run fine-grained reference MD into resumable HDF5 files.

    cgml generate polymer-chain --out fine/ --frames 1000 --sequences 8 --replicas 2
    cgml generate polymer-chain --out fine/ --frames 1000 --sequences 8 --shard $SLURM_ARRAY_TASK_ID/8
"""
from __future__ import annotations

import re

from openmm_cgml.cli.options import add_param_argument, parse_overrides

__all__ = ["configure_parser", "run", "parse_shard"]


def configure_parser(parser) -> None:
    parser.add_argument("system", help="registered system name (see `cgml systems`) or path to a system YAML")
    parser.add_argument("--out", required=True, help="output folder for the HDF5 trajectories and PDBs")
    parser.add_argument("--frames", type=int, help="frames per trajectory (default: the system YAML's)")
    parser.add_argument("--stride", type=int, help="MD steps between saved frames (default: the system YAML's)")
    parser.add_argument("--replicas", type=int, default=1, help="independent trajectories per sequence")
    parser.add_argument("--sequences", type=int, help="polymer-chain: number of random sequences, one "
                                                      "trajectory set per sequence seed")
    parser.add_argument("--seed", type=int, default=0, help="base random seed")
    parser.add_argument("--platform", help="OpenMM platform (default: CUDA, then OpenCL, then CPU)")
    parser.add_argument("--equilibration-steps", type=int, help="MD steps before frame 0")
    parser.add_argument("--forces", action="store_true", help="also save forces")
    parser.add_argument("--chunk-frames", type=int, default=100, help="frames per write (resume granularity)")
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="CPU-platform threads (default 1: bit-reproducible; more is faster for big systems)")
    add_param_argument(parser, "override a system YAML key, e.g. -p length=30")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--shard", metavar="I/N",
                        help="run only share I (0-based) of N of the trajectories, for a job array: "
                             "trajectory j goes to shard j mod N, with the unsharded run's file names and seeds")


def parse_shard(text: str) -> tuple[int, int]:
    """``"3/8"`` -> ``(3, 8)``; a ``ValueError`` naming ``text`` for anything else or an index not below N.

    Parameters
    ----------
    text : str
        ``I/N``: the 0-based shard index and the number of shards.

    Returns
    -------
    tuple of int
        ``(index, count)``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise ValueError(f"--shard must be I/N (0-based shard index I of N shards, e.g. 0/8), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ValueError(f"--shard {text}: the number of shards N must be at least 1")
    if index >= count:
        raise ValueError(f"--shard {text}: the shard index must be in 0..{count - 1} (0-based) for {count} shards")
    return index, count


def run(args) -> int:
    from openmm_cgml.generate import generate
    from openmm_cgml.trajectory import FineTrajectory

    shard = None if args.shard is None else parse_shard(args.shard)
    paths = generate(args.system, args.out, frames=args.frames, stride=args.stride, replicas=args.replicas,
                     sequences=args.sequences, seed=args.seed, platform=args.platform,
                     equilibration_steps=args.equilibration_steps, save_forces=args.forces,
                     chunk_frames=args.chunk_frames, params=parse_overrides(args.param),
                     progress=not args.no_progress, cpu_threads=args.cpu_threads, shard=shard)
    if shard is not None and not paths:
        print(f"shard {args.shard}: no trajectory falls to this shard (there are fewer trajectories than shards)")
    for path in paths:
        with FineTrajectory(path) as trajectory:
            print(f"{path}  {trajectory.n_frames} frames x {trajectory.n_atoms} atoms, "
                  f"{trajectory.frame_interval_ps:g} ps apart, platform {trajectory.attrs['cgml_platform']}")
    return 0
