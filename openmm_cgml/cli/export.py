"""``cgml export SOURCE --out FILE``: a training checkpoint (or another model file) to one model file.

    cgml export runs/model --out model.safetensors   # the run's best (else last) checkpoint, weights only
    cgml export model.safetensors --out model.pt     # TorchScript, for openmm-torch

    cgml export polymer-chain-1ps --out step.pt2 --pdb chain.pdb --replicas 64   # torch.export step program

The suffix of ``--out`` picks the form (:mod:`openmm_cgml.model_formats`). A ``.pt2`` step program
(:mod:`openmm_cgml.model_program`) is the step of one bead system: ``--pdb`` (with ``--mapping`` and
``--replicas`` as for ``cgml simulate``) gives it.
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
    program = parser.add_argument_group("step program (--out *.pt2)")
    program.add_argument("--pdb", default=None,
                         help="the fine structure (file or reference system) whose bead system the program steps")
    program.add_argument("--mapping", default=None, help="mapping file (default: the model's own or its rule)")
    program.add_argument("--replicas", type=int, default=1, help="independent copies in one step (default 1)")
    program.add_argument("--no-refine", action="store_true", help="a step without the Score refinement")


def run(args: argparse.Namespace) -> int:
    from openmm_cgml.model_file import check_output, export, load
    from openmm_cgml.model_formats import PROGRAM_SUFFIX, TORCHSCRIPT_SUFFIX

    out = check_output(args.out, name="--out")   # before any work, the messages naming the option
    if out.suffix == PROGRAM_SUFFIX:
        return _export_program(args, out)
    given = [option for option, used in (("--pdb", args.pdb is not None), ("--mapping", args.mapping is not None),
                                         ("--replicas", args.replicas != 1), ("--no-refine", args.no_refine)) if used]
    if given:
        raise ValueError(f"{given[0]} is for a {PROGRAM_SUFFIX} step program; --out {out} is a model file")
    path = export(args.source, args.out, overwrite=args.overwrite, trusted=args.trust_model)
    print(f"wrote {path}: {load(path, trusted=True)!r}")  # our own output, written just now
    if path.suffix == TORCHSCRIPT_SUFFIX:
        print(f"TorchScript runs code when loaded: openmm_cgml.load({str(path)!r}, trusted=True) "
              "or cgml simulate --trust-model, for files from a source you trust")
    return 0


def _export_program(args: argparse.Namespace, out) -> int:
    """``--out *.pt2``: the step of the bead system ``--pdb`` gives, through ``torch.export``."""
    from openmm_cgml.model_file import load
    from openmm_cgml.model_program import export_program
    from openmm_cgml.openmm.bead_system import coarse_grained_system

    if args.pdb is None:
        raise ValueError(f"--out {out}: a step program is made for one bead system; give it with --pdb")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it")
    model = load(args.source, trusted=args.trust_model)
    system = coarse_grained_system(model, args.pdb, replicas=args.replicas, mapping=args.mapping)
    export_program(model, system.mapping, args.replicas, out, refine=not args.no_refine)
    print(f"wrote {out}: the step of {args.replicas} x {system.mapping.n_beads} beads; it runs code when loaded: "
          f"openmm_cgml.load_program({str(out)!r}, trusted=True), or torch.export.load")
    return 0
