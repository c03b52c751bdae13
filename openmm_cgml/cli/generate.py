"""``cgml generate``: run fine-grained reference MD into resumable HDF5 files.

    cgml generate polymer-chain --out fine/ --frames 1000 --sequences 8 --replicas 2
"""
from __future__ import annotations

from openmm_cgml.cli.options import add_param_argument, parse_overrides

__all__ = ["configure_parser", "run"]


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


def run(args) -> int:
    from openmm_cgml.generate import generate
    from openmm_cgml.trajectory import FineTrajectory

    paths = generate(args.system, args.out, frames=args.frames, stride=args.stride, replicas=args.replicas,
                     sequences=args.sequences, seed=args.seed, platform=args.platform,
                     equilibration_steps=args.equilibration_steps, save_forces=args.forces,
                     chunk_frames=args.chunk_frames, params=parse_overrides(args.param),
                     progress=not args.no_progress, cpu_threads=args.cpu_threads)
    for path in paths:
        with FineTrajectory(path) as trajectory:
            print(f"{path}  {trajectory.n_frames} frames x {trajectory.n_atoms} atoms, "
                  f"{trajectory.frame_interval_ps:g} ps apart, platform {trajectory.attrs['cgml_platform']}")
    return 0
