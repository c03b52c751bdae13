"""``cgml train CONFIG.yaml``: train the propagator from a YAML config, with command-line overrides.

    cgml train configs/default.yaml --data coarse.h5 --out-dir runs/model --max-epochs 20
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from openmm_cgml.io import read_yaml

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training YAML (see configs/default.yaml)")
    parser.add_argument("--out-dir", help="override out_dir")
    parser.add_argument("--data", help="override data")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="resume from OUT_DIR/checkpoints/last.ckpt (default) or the given checkpoint")
    resume.add_argument("--no-resume", action="store_true", help="start afresh (refused if OUT_DIR has checkpoints)")
    parser.add_argument("--max-epochs", type=int, help="override train.max_epochs")
    parser.add_argument("--devices", help="override trainer.devices (e.g. 1, 4, auto)")


def _overridden(values: dict, args: argparse.Namespace) -> dict:
    """The YAML options with the command line's overrides applied (paths given here are relative to the cwd)."""
    if args.out_dir:
        values["out_dir"] = os.path.abspath(args.out_dir)
    if args.data:
        values["data"] = os.path.abspath(args.data)
    if args.resume:
        values["resume"] = args.resume
    if args.no_resume:
        values["resume"] = "never"
    if args.max_epochs is not None:
        values["train"] = _with(values.get("train"), "max_epochs", args.max_epochs)
    if args.devices is not None:
        devices = int(args.devices) if args.devices.isdigit() else args.devices
        values["trainer"] = _with(values.get("trainer"), "devices", devices)
    return values


def _with(section, key: str, value):
    """``section`` with ``key`` set; a section that is not a mapping is left for the config check to name."""
    if section is None:
        return {key: value}
    return {**section, key: value} if isinstance(section, dict) else section


def run(args: argparse.Namespace) -> int:
    from openmm_cgml.train import train
    from openmm_cgml.train_config import TrainConfig

    path = Path(args.config)
    config = TrainConfig.from_dict(_overridden(read_yaml(path, "config file"), args), base_dir=path.parent, source=path)
    last = Path(config.out_dir) / "checkpoints" / "last.ckpt"
    if args.resume == "auto" and not last.exists():
        raise FileNotFoundError(f"--resume: no checkpoint {last} to resume from")
    best = train(config)
    if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0":  # DDP: one message, from rank 0
        print(f"best checkpoint: {best}\nexport it with: cgml export {config.out_dir} --out model.safetensors")
    return 0
