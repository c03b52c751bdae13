"""Training losses of the propagator (Python only; not in the exported file)."""
import torch
from torch import Tensor

from openmm_cgml.model.batch import graph_mean

__all__ = ["gaussian_nll", "dynamics_nll"]


def gaussian_nll(target: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Mean Gaussian negative log-likelihood per bead (constant dropped).

    Summed over x, y, z, averaged over beads; all in the same (scaled) units.

    Shapes:
        target (N, 3), mean (N, 3), std (N, 1) isotropic -> ()
    """
    z = (target - mean) / std
    return (0.5 * z.pow(2).sum(-1) + 3.0 * torch.log(std.squeeze(-1))).mean()


def dynamics_nll(accel: Tensor, mean: Tensor, std: Tensor, collective: Tensor, batch: Tensor) -> Tensor:
    """NLL of the internal accelerations (per bead) plus that of the centre-of-mass one (per graph).

    The density of :func:`~openmm_cgml.model.sampler.sample_acceleration`'s
    draw, in accel-std units.

    Shapes:
        accel, mean (N, 3), std (N, 1), collective (N, 1) (one value per graph), batch (N,) -> ()
    """
    accel_com, count = graph_mean(accel, batch)
    mean_com, _ = graph_mean(mean, batch)
    nll = gaussian_nll(accel - accel_com, mean - mean_com, std)
    z = (accel_com - mean_com) / collective
    return nll + ((0.5 * z.pow(2).sum(-1) + 3.0 * torch.log(collective.squeeze(-1))) / count.squeeze(-1)).mean()
