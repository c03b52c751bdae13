"""Small equivariant output blocks shared by the Dynamics head and the Score networks."""
from torch import Tensor

from openmm_cgml.nn.layers import Block, mlp

__all__ = ["VectorHead"]


class VectorHead(Block):
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

    def extra_repr(self) -> str:
        return str(self.hidden)

    def forward(self, s: Tensor, v: Tensor) -> Tensor:
        """One vector per node.

        Shapes:
            s (N, hidden) invariant, v (N, 3, hidden) equivariant -> (N, 3)
        """
        return (v * self.gate(s).unsqueeze(1)).sum(-1)
