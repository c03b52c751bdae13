"""``cgml coarse-grain``: map fine trajectories to beads and write a windowed coarse dataset.

    cgml coarse-grain fine/*.h5 --out coarse.h5 --mapping metis --atoms-per-bead 4 --k 8

By default whole trajectories (or sequences) are dealt out to train/val/test at random by
``--split`` fractions. To fix the split yourself, name the validation and test files:
the positional files are then the training set.

    cgml coarse-grain train/*.h5 --val val/*.h5 --test test/*.h5 --out coarse.h5
"""
from __future__ import annotations

import argparse
from pathlib import Path

from openmm_cgml.cli.options import add_mapping_arguments

__all__ = ["configure_parser", "explicit_splits", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", help="fine trajectory HDF5 files (from cgml generate)")
    parser.add_argument("--out", required=True, help="coarse dataset HDF5 file to write")
    add_mapping_arguments(parser)
    parser.add_argument("--k", type=int, default=8, help="history length in frames (default 8)")
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--model-steps", type=int, default=None,
                      help="MD steps per model step, a multiple of the save stride (default: >= 1000)")
    step.add_argument("--lag", type=int, default=None, help="saved frames per model step")
    parser.add_argument("--split", default=None, help="train,val,test fractions of a random deal (default 0.8,0.1,0.1)")
    parser.add_argument("--split-by", choices=("auto", "trajectory", "sequence"), default="auto",
                        help="keep whole trajectories or whole sequences in one split (default auto)")
    parser.add_argument("--val", nargs="+", default=[], metavar="FILE",
                        help="fine trajectories for the validation split; with --val or --test the positional "
                             "files are the train split and no random deal is made")
    parser.add_argument("--test", nargs="+", default=[], metavar="FILE",
                        help="fine trajectories for the test split (see --val)")
    parser.add_argument("--chunk-frames", type=int, default=512, help="frames mapped at a time (memory bound)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def explicit_splits(train, val, test) -> tuple[list[str], dict | None]:
    """All input files and their ``splits`` mapping (None when neither ``val`` nor ``test`` is given).

    Raises
    ------
    ValueError
        A file named in two splits.
    """
    if not val and not test:
        return list(train), None
    splits = {}
    for name, files in (("train", train), ("val", val), ("test", test)):
        for path in files:
            key = str(Path(path).resolve())
            if key in splits:
                raise ValueError(f"{path} is given for both {splits[key]} and {name}")
            splits[key] = name
    return [*train, *val, *test], splits


def run(args: argparse.Namespace) -> int:
    import h5py

    from openmm_cgml.cli.options import mapping_options_from_args
    from openmm_cgml.coarse_graining import coarse_grain

    # refuses a bad --atoms-per-bead / --n-beads before any file is read
    _, params = mapping_options_from_args(args)
    data, splits = explicit_splits(args.data, args.val, args.test)
    out = coarse_grain(data, args.out, mapping=args.mapping, atoms_per_bead=args.atoms_per_bead,
                       n_beads=args.n_beads, center=args.center, seed=args.seed, k=args.k,
                       model_steps=args.model_steps, lag=args.lag, split=args.split, split_by=args.split_by,
                       splits=splits, chunk_frames=args.chunk_frames, overwrite=args.overwrite,
                       extra=params.get("extra", ()))
    with h5py.File(out, "r") as handle:
        attrs = handle.attrs
        print(f"wrote {out}: {len(handle['traj'])} trajectories, windows train/val/test = "
              f"{attrs['n_windows_train']}/{attrs['n_windows_val']}/{attrs['n_windows_test']}, "
              f"model step {attrs['md_steps_per_model_step']} MD steps ({attrs['model_dt_ps']:g} ps), "
              f"accel_std {attrs['accel_std_nm']:.4g} nm, velocity_std {attrs['velocity_std_nm']:.4g} nm")
    return 0
