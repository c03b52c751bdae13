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
    "export": ("openmm_cgml.cli.export", "export a training checkpoint (or convert a model) to one model file"),
    "simulate": ("openmm_cgml.cli.simulate", "run an exported model as an OpenMM integrator"),
    "backmap": ("openmm_cgml.cli.backmap", "bead trajectories back to atoms: fragments, restrained minimisation"),
    "evaluate": ("openmm_cgml.cli.evaluate", "compare rollouts with reference MD: JSON and report"),
    "benchmark": ("openmm_cgml.cli.benchmark", "fidelity benchmark: held-out chains, ceilings, CIs, baseline"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``cgml`` parser. Only the module of ``command`` is imported (torch and
    Lightning are slow to import), so ``cgml generate`` does not pay for ``train``."""
    parser = argparse.ArgumentParser(prog="cgml", description="Learned coarse-grained MD for OpenMM.")
    from openmm_cgml import __version__

    parser.add_argument("--version", action="version", version=f"openmm-cgml {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.configure_parser(stage)
            stage.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``cgml`` command.

    Parameters
    ----------
    argv : list of str, optional
        The command line after ``cgml`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: the command's (0 on success), 1 with no command or on an internal error,
        2 on bad input (one line ``cgml COMMAND: error: ...`` on stderr), 130 when interrupted.
        A malformed command line is argparse's: usage on stderr and ``SystemExit(2)``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in argv if word in COMMANDS), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        result = args._run(args)
    except KeyboardInterrupt:
        print(f"cgml {args.command}: interrupted; files written so far are kept", file=sys.stderr)
        return 130
    except USER_ERRORS as error:  # bad input: the message names the file, field or value
        if args.debug:
            raise
        print(f"cgml {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug, not bad input: still one line, and the way to the traceback
        if args.debug:
            raise
        print(f"cgml {args.command}: internal error: {type(error).__name__}: {one_line(error)} "
              f"(run 'cgml --debug {args.command} ...' for the traceback, and please report it)", file=sys.stderr)
        return 1
    return int(result or 0)


# What bad input raises. OSError covers missing, unwritable and unreadable files (h5py raises it for a
# damaged HDF5 file); KeyError is not here: a KeyError is a bug unless the code turned it into a ValueError.
USER_ERRORS = (ValueError, OSError)


def one_line(error: BaseException) -> str:
    """The error's message on one line (OpenMM and h5py messages can span several)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:2000]


if __name__ == "__main__":
    sys.exit(main())
