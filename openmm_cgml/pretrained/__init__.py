"""Small pretrained propagators for the ready reference systems.

Each ``NAME.pt`` here is an exported model (``cgml export``) made by the
documented pipeline in ``examples/`` on its ``--small`` configuration;
``index.json`` records, per model, the command that made it, the training
data and the metrics of its evaluation. ``openmm_cgml.load(NAME)`` and
``cgml simulate NAME ...`` find them by name, so they work out of the box::

    cgml simulate alanine-dipeptide --pdb alanine-dipeptide --steps 1000 --out ala2.dcd
"""
from __future__ import annotations

import json
from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent

__all__ = ["PRETRAINED_DIR", "available", "path", "info"]


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(file.stem for file in PRETRAINED_DIR.glob("*.pt"))


def path(name: str) -> Path:
    """The file of the pretrained model ``name``; ``ValueError`` listing the names if unknown."""
    file = PRETRAINED_DIR / f"{name}.pt"
    if not file.is_file():
        raise ValueError(f"no pretrained model named {name!r}; shipped: {', '.join(available()) or 'none'}")
    return file


def info(name: str) -> dict:
    """Provenance and evaluation metrics of the pretrained model ``name`` (from index.json)."""
    index = PRETRAINED_DIR / "index.json"
    entries = json.loads(index.read_text()) if index.is_file() else {}
    return entries.get(name, {})
