"""Small equivariant output blocks shared by the Dynamics head and the Score networks."""
from torch import Tensor, nn

from openmm_cgml.nn.layers import mlp, reset_children

__all__ = ["VectorHead"]


class VectorHead(nn.Module):
    """Equivariant vector output: channels mixed by weights gated by invariant scalars.

    Parameters
    ----------
    hidden : int
        Channel count of both the scalar and the vector features.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = int(hidden)
        self.gate = mlp(hidden, hidden, hidden)

    def reset_parameters(self) -> None:
        reset_children(self)

    def forward(self, s: Tensor, v: Tensor) -> Tensor:
        """One vector per node.

        Shapes:
            s (N, hidden) invariant, v (N, 3, hidden) equivariant -> (N, 3)
        """
        return (v * self.gate(s).unsqueeze(1)).sum(-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hidden})"
