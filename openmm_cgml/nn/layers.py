"""Small layer helpers shared by the backbone and the propagator blocks."""
from __future__ import annotations

import torch
from torch.nn import Linear, Sequential, SiLU

__all__ = ["mlp", "reset_children"]


def mlp(n_in: int, hidden: int, n_out: int) -> Sequential:
    """Two-layer perceptron ``Linear(n_in, hidden) -> SiLU -> Linear(hidden, n_out)``.

    Parameters
    ----------
    n_in, hidden, n_out : int
        Input, hidden and output widths.

    Returns
    -------
    torch.nn.Sequential
        Indexed ``0`` (first Linear), ``1`` (SiLU), ``2`` (second Linear): the
        state-dict keys of every block built with it.
    """
    return Sequential(Linear(n_in, hidden), SiLU(), Linear(hidden, n_out))


def reset_children(module: torch.nn.Module) -> None:
    """Re-initialise the sub-modules of ``module``, each through its own ``reset_parameters``.

    A child without one (a ``Sequential``, a ``ModuleList``) is walked into, so
    every parameter is reset exactly once.

    Parameters
    ----------
    module : torch.nn.Module
        The block whose sub-modules (not itself) are reset, in registration order.
    """
    for child in module.children():
        if hasattr(child, "reset_parameters"):
            child.reset_parameters()
        else:
            reset_children(child)
