"""``cgml evaluate``: compare rollouts with reference MD; writes metrics.json and the report.

    cgml evaluate --reference ref1.h5 ref2.h5 --rollout roll1.dcd roll2.dcd \\
        --topology roll1.pdb roll2.pdb --model model.safetensors --out report/

The work is :func:`openmm_cgml.evaluation.report.evaluate`; see docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from openmm_cgml.units import COLLISION_DISTANCE_NM

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from openmm_cgml.cli.options import add_mapping_arguments

    parser.add_argument("--reference", nargs="+", required=True, metavar="REF",
                        help="reference trajectories: fine HDF5 from 'cgml generate' or bead trajectories")
    parser.add_argument("--rollout", nargs="+", required=True, metavar="ROLL",
                        help="rollout bead trajectories (DCD/XTC/HDF5), one per reference, same order")
    parser.add_argument("--topology", nargs="+", default=None, metavar="PDB",
                        help="bead topology PDB for DCD/XTC files: one for all or one per rollout")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="directory for metrics.json and the report")
    parser.add_argument("--model", default=None, help="exported model: its mapping coarse-grains fine references")
    add_mapping_arguments(parser)
    parser.add_argument("--reference-interval", type=float, default=None, metavar="PS",
                        help="time between reference frames (ps) when the file does not say")
    parser.add_argument("--rollout-interval", type=float, default=None, metavar="PS",
                        help="time between rollout frames (ps) when the file does not say")
    parser.add_argument("--reference-ns-per-day", type=float, default=None, metavar="NS_PER_DAY",
                        help="reference MD speed, for the speed-up")
    parser.add_argument("--rollout-ns-per-day", type=float, default=None, metavar="NS_PER_DAY",
                        help="rollout speed, for the speed-up")
    parser.add_argument("--tica-lag", type=float, default=None, metavar="PS",
                        help="TICA lag time (ps); default the rollout frame interval")
    parser.add_argument("--contact-cutoff", type=float, default=0.8, metavar="NM", help="contact distance (nm)")
    parser.add_argument("--collision-threshold", type=float, default=COLLISION_DISTANCE_NM, metavar="NM",
                        help=f"beads closer than this collide (nm, default {COLLISION_DISTANCE_NM:g} as Fu et al.)")
    parser.add_argument("--no-plots", action="store_true", help="write metrics.json and the tables only")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report in REPORT_DIR")


def run(args: argparse.Namespace) -> int:
    from openmm_cgml.cli.options import mapping_options_from_args
    from openmm_cgml.evaluation.report import check_settings, evaluate

    # NaN, inf, zero and negative times, speeds and distances are refused before any file is read
    check_settings(vars(args), label=lambda name: "--" + name.replace("_", "-"))
    method, params = mapping_options_from_args(args)
    result = evaluate(args.reference, args.rollout, args.out, topology=args.topology, model=args.model,
                      mapping_method=method, mapping_params=params,
                      reference_interval=args.reference_interval, rollout_interval=args.rollout_interval,
                      reference_ns_per_day=args.reference_ns_per_day, rollout_ns_per_day=args.rollout_ns_per_day,
                      tica_lag=args.tica_lag, contact_cutoff=args.contact_cutoff,
                      collision_threshold=args.collision_threshold, plots=not args.no_plots,
                      overwrite=args.overwrite)
    summary = result["summary"]
    print(f"evaluated {summary['n_systems']} system(s); wrote {Path(args.out) / 'report.md'}")
    print(json.dumps(summary))
    return 0
