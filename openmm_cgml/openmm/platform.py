"""The OpenMM platform a bead simulation runs on: CUDA when both OpenMM and torch can use a GPU, else CPU."""
from __future__ import annotations

import openmm

__all__ = ["choose_platform"]


def _platform_names() -> list[str]:
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def choose_platform(name: str = "auto") -> openmm.Platform:
    """The OpenMM platform called ``name``, or for ``"auto"`` CUDA if OpenMM and torch both see a GPU, else CPU.

    ``CGMLIntegrator`` runs the model on the Context's device, so CUDA is only
    worth choosing when torch can use it too.

    Parameters
    ----------
    name : str
        ``"auto"``, or a platform name (``"CPU"``, ``"CUDA"``, ``"Reference"``, ...).

    Returns
    -------
    openmm.Platform

    Raises
    ------
    ValueError
        If the named platform is not available (the message lists those that are).
    """
    if name == "auto":
        import torch

        return openmm.Platform.getPlatformByName(
            "CUDA" if "CUDA" in _platform_names() and torch.cuda.is_available() else "CPU")
    try:
        return openmm.Platform.getPlatformByName(name)
    except Exception:
        raise ValueError(f"{name}: not available; available: {', '.join(_platform_names())}") from None
