"""openmm-cgml: learned coarse-grained molecular dynamics for OpenMM.

The data path, one module per stage::

    systems -> generate -> mapping -> data -> nn -> propagator -> train -> export -> integrator -> analysis

Heavy modules are imported on first use, so ``import openmm_cgml`` stays cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load": "openmm_cgml.export",
    "CGModel": "openmm_cgml.export",
    "CGMLIntegrator": "openmm_cgml.integrator",
    "coarse_grained_system": "openmm_cgml.integrator",
    "Mapping": "openmm_cgml.mapping",
    "ReferenceSystem": "openmm_cgml.systems",
    "generate": "openmm_cgml.generate",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in {"systems", "units", "trajectory", "mapping", "data", "nn", "propagator", "train",
                "export", "integrator", "analysis", "report", "cli"}:
        return importlib.import_module(f"openmm_cgml.{name}")
    raise AttributeError(f"module 'openmm_cgml' has no attribute {name!r}")
