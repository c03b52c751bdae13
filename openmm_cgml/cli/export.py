"""``cgml export SOURCE --out FILE``: a training checkpoint (or another model file) to one model file.

    cgml export runs/model --out model.safetensors   # the run's best (else last) checkpoint, weights only
    cgml export model.safetensors --out model.pt     # TorchScript, for openmm-torch

The suffix of ``--out`` picks the form (:mod:`openmm_cgml.model_formats`).
"""
from __future__ import annotations

import argparse

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="Lightning checkpoint (.ckpt), a training output directory, or a model "
                                       "file / pretrained name to convert")
    parser.add_argument("--out", "-o", required=True,
                        help="model file: .safetensors (weights only, safe to share) or .pt (TorchScript)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--trust-model", action="store_true",
                        help="allow a TorchScript SOURCE that this package does not ship (it can run code)")


def run(args: argparse.Namespace) -> int:
    from openmm_cgml.model_file import check_output, export, load
    from openmm_cgml.model_formats import TORCHSCRIPT_SUFFIX

    check_output(args.out, name="--out")   # before any work, the messages naming the option
    path = export(args.source, args.out, overwrite=args.overwrite, trusted=args.trust_model)
    print(f"wrote {path}: {load(path, trusted=True)!r}")  # our own output, written just now
    if path.suffix == TORCHSCRIPT_SUFFIX:
        print(f"TorchScript runs code when loaded: openmm_cgml.load({str(path)!r}, trusted=True) "
              "or cgml simulate --trust-model, for files from a source you trust")
    return 0
