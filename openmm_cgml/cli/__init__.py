"""The ``cgml`` command: one sub-command per stage of the data path.

Each stage module defines ``configure_parser(parser)`` and ``run(args)``;
this file only wires them together and turns bad input into a one-line
error (exit code 2) instead of a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> (module, one-line help)
COMMANDS = {
    "systems": ("openmm_cgml.cli.systems", "list the ready reference systems"),
    "generate": ("openmm_cgml.cli.generate", "run fine-grained reference MD into HDF5 files"),
    "coarse-grain": ("openmm_cgml.cli.coarse_grain", "map fine trajectories to beads and write a windowed dataset"),
    "map-image": ("openmm_cgml.cli.map_image", "draw a mapping: beads coloured on the molecule (PNG)"),
    "train": ("openmm_cgml.cli.train", "train the propagator from a YAML config"),
    "export": ("openmm_cgml.cli.export", "export a training checkpoint to one TorchScript file"),
    "simulate": ("openmm_cgml.cli.simulate", "run an exported model as an OpenMM integrator"),
    "evaluate": ("openmm_cgml.cli.evaluate", "compare rollouts with reference MD: JSON and report"),
    "benchmark": ("openmm_cgml.cli.benchmark", "fidelity benchmark: held-out chains, ceilings, CIs, baseline"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``cgml`` parser. Only the module of ``command`` is imported (torch and
    Lightning are slow to import), so ``cgml generate`` does not pay for ``train``."""
    parser = argparse.ArgumentParser(prog="cgml", description="Learned coarse-grained MD for OpenMM.")
    from openmm_cgml import __version__

    parser.add_argument("--version", action="version", version=f"openmm-cgml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.configure_parser(stage)
            stage.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in argv if word in COMMANDS), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        result = args._run(args)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"cgml {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cgml {args.command}: interrupted; files written so far are kept", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
