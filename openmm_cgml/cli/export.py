"""``cgml export CHECKPOINT --out model.pt``: a training checkpoint to one TorchScript model file.

    cgml export runs/model --out model.pt          # the run's best (else last) checkpoint
"""
from __future__ import annotations

import argparse

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="Lightning checkpoint (.ckpt) or a training output directory")
    parser.add_argument("--out", "-o", required=True, help="output TorchScript file, e.g. model.pt")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from openmm_cgml.model_file import export, load

    path = export(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"wrote {path}: {load(path)!r}")
    return 0
