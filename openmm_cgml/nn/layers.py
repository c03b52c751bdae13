"""Small layer helpers shared by the backbone and the propagator blocks."""
from __future__ import annotations

import torch
from torch.nn import Linear, Sequential, SiLU

__all__ = ["mlp", "reset_children", "Block"]


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


class Block(torch.nn.Module):
    """A named network block (the PyG manner): ``reset_parameters()`` and a ``repr`` that gives its sizes.

    ``reset_parameters`` re-initialises every sub-module through :func:`reset_children`; a block
    with more to reset (a cache, a buffer) overrides it. ``repr`` is the class name with
    :meth:`extra_repr`, which each block defines to show the sizes it was built with, so
    ``print(model)`` reads as one line per block, not the whole tree of layers.
    """

    def reset_parameters(self) -> None:
        reset_children(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
