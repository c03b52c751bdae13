"""openmm-cgml: learned coarse-grained molecular dynamics for OpenMM.

The data path, one room per stage (``docs/design.md``)::

    systems -> generate -> trajectory -> mapping -> data -> nn -> model -> train
            -> model_file -> openmm (integrator) -> evaluation, backmap (beads to atoms)

Heavy modules are imported on first use, so ``import openmm_cgml`` stays cheap.
The public names below are classes and functions; every other attribute of the
package is a submodule (``openmm_cgml.generate`` is the module, its function is
``openmm_cgml.generate.generate``).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load": "openmm_cgml.model_file",
    "load_program": "openmm_cgml.model_program",
    "CGModel": "openmm_cgml.model_file",
    "CGMLIntegrator": "openmm_cgml.openmm.integrator",
    "coarse_grained_system": "openmm_cgml.openmm.bead_system",
    "Mapping": "openmm_cgml.mapping",
    "ReferenceSystem": "openmm_cgml.systems",
    "FineTrajectory": "openmm_cgml.trajectory",
    "Backmapper": "openmm_cgml.backmap",
}
_SUBMODULES = {"systems", "generate", "trajectory", "units", "io", "mapping", "data", "nn", "model", "train",
               "model_file", "model_program", "openmm", "evaluation", "pretrained", "cli", "backmap"}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"openmm_cgml.{name}")
    raise AttributeError(f"module 'openmm_cgml' has no attribute {name!r}")
