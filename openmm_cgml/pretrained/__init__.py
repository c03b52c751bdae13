"""Small pretrained propagators for the ready reference systems.

Each ``NAME.safetensors`` here is an exported model (``cgml export``, the
weights-only form) made by the documented pipeline in ``examples/`` on its
``--small`` configuration; ``index.json`` records, per model, the command
that made it, the training data, the metrics of its evaluation, the file's
SHA-256, and ``torchscript_sha256``: the SHA-256 of the TorchScript file
the same model was shipped as before the weights form, which
:func:`openmm_cgml.load` still accepts without ``trusted=True``. ``openmm_cgml.load(NAME)`` and
``cgml simulate NAME ...`` find them by name, so they work out of the box::

    cgml simulate alanine-dipeptide --pdb alanine-dipeptide --steps 1000 --out ala2.dcd
"""
from __future__ import annotations

import json
from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent

__all__ = ["PRETRAINED_DIR", "SUFFIX", "available", "path", "info", "index"]

SUFFIX = ".safetensors"


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(file.stem for file in PRETRAINED_DIR.glob(f"*{SUFFIX}"))


def path(name: str) -> Path:
    """The file of the pretrained model ``name``; ``ValueError`` listing the names if unknown."""
    file = PRETRAINED_DIR / f"{name}{SUFFIX}"
    if not file.is_file():
        raise ValueError(f"no pretrained model named {name!r}; shipped: {', '.join(available()) or 'none'}")
    return file


def info(name: str) -> dict:
    """Provenance and evaluation metrics of the pretrained model ``name`` (from index.json)."""
    return index().get(name, {})


def index() -> dict:
    """The whole of index.json: ``{name: entry}``."""
    file = PRETRAINED_DIR / "index.json"
    return json.loads(file.read_text()) if file.is_file() else {}
