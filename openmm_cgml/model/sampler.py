"""The stochastic step's sampling maths: the acceleration draw and the refinement by reverse diffusion.

All in the networks' scaled units (accelerations over ``accel_std_nm``) or
in nm where said; all TorchScript-compatible. The Score network calls stay
in :meth:`~openmm_cgml.model.propagator.CGPropagator._refine` (a scripted
function cannot take a module); this module holds everything around them.

- :func:`sample_acceleration`: per-bead internal noise plus one shared
  centre-of-mass kick per molecule;
- :func:`marginal_std`: the per-bead std of that draw (``predict``);
- :func:`internal_noise`: refinement noise with zero mean per molecule;
- :func:`anneal_step`: one reverse-diffusion step between noise levels;
- :func:`log_spaced_sigmas`: training noise levels;
- :func:`euler_step`: positions after one model step of an acceleration (nm).
"""
import math

import torch
from torch import Tensor

from openmm_cgml.model.batch import graph_mean

__all__ = ["log_spaced_sigmas", "anneal_step", "sample_acceleration", "marginal_std", "internal_noise",
           "euler_step"]


def log_spaced_sigmas(high: float, low: float, n: int) -> Tensor:
    """``n`` noise levels from ``high`` down to ``low``, log-spaced (float32).

    Parameters
    ----------
    high, low : float
        First and last level (> 0), in the units of the samples.
    n : int
        Number of levels; ``n = 1`` gives ``[high]``.
    """
    if n == 1:
        return torch.tensor([float(high)])
    return torch.logspace(math.log10(high), math.log10(low), n)


def anneal_step(x: Tensor, eps: Tensor, sigma: float, next_sigma: float, z: Tensor) -> Tensor:
    """One step of the reverse diffusion that refines a sample, from noise level ``sigma`` to ``next_sigma``.

    ``x`` holds a sample at level ``sigma`` (the clean distribution convolved
    with N(0, sigma^2)); ``eps`` is the predicted unit noise at ``x`` (score
    ``-eps / sigma``) and ``z`` fresh standard normal noise, both shaped like
    ``x``; levels are in the units of ``x``. The step is Euler-Maruyama on the
    reverse-time SDE of the variance-exploding diffusion (Song et al., ICLR 2021)::

        x' = x + (sigma^2 - next_sigma^2) score + sqrt(sigma^2 - next_sigma^2) z

    so noise is injected at every level and the refinement samples the learned
    distribution instead of collapsing onto its modes, as chained deterministic
    Tweedie steps do. ``next_sigma = 0`` ends with the Tweedie estimate
    ``x - sigma * eps`` (the posterior mean, no noise), the usual last step.
    """
    if next_sigma <= 0.0:
        return x - sigma * eps
    drop = sigma * sigma - next_sigma * next_sigma
    return x - (drop / sigma) * eps + math.sqrt(max(drop, 0.0)) * z


def sample_acceleration(mean: Tensor, std: Tensor, collective: Tensor, noise: Tensor, batch: Tensor) -> Tensor:
    """Acceleration sample: internal noise per bead plus one shared centre-of-mass kick per graph.

    Both parts are linear in ``noise``: the graph mean of the noise (times
    sqrt(n)) is itself standard normal and drives the centre of mass with
    std ``collective``; the rest (independent of it) drives the internal
    motion with std ``std`` per bead. Beads of a molecule thus move
    together as they do in MD, instead of being kicked apart.

    Shapes:
        mean (N, 3), std (N, 1), collective (N, 1) (one value per graph), noise (N, 3), batch (N,) -> (N, 3)
    """
    noise_mean, count = graph_mean(noise, batch)
    # noise - noise_mean is independent of noise_mean (Gaussian, zero covariance)
    return mean + std * (noise - noise_mean) + collective * torch.sqrt(count) * noise_mean


def marginal_std(std: Tensor, collective: Tensor, batch: Tensor) -> Tensor:
    """Per-bead std (N, 1) of :func:`sample_acceleration`'s draw.

    The internal part has n - 1 of n degrees of freedom per molecule of n beads.
    """
    _, count = graph_mean(std, batch)
    return torch.sqrt(std * std * (1.0 - 1.0 / count) + collective * collective)


def internal_noise(noise: Tensor, batch: Tensor) -> Tensor:
    """``noise`` (D, N, 3) less each draw's mean over every molecule (one scatter for all draws).

    The Score network sees relative positions only and cannot remove a
    centre-of-mass kick, which the dynamics' own centre-of-mass term already
    supplies; so the refinement injects noise of zero mean per molecule.
    """
    draws, n = noise.size(0), noise.size(1)
    per_bead = noise.transpose(0, 1).reshape(n, draws * 3)
    return noise - graph_mean(per_bead, batch)[0].reshape(n, draws, 3).transpose(0, 1)



def euler_step(pos_history: Tensor, accel: Tensor, accel_std_nm: float) -> Tensor:
    """Positions (N, 3) nm one model step after the last positions (k, N, 3) nm under the acceleration ``accel``
    (N, 3) in units of ``accel_std_nm``: semi-implicit Euler with dt = 1 model step (``v += a; x += v``).

    With the mean acceleration it gives the step's mean positions; with a drawn one, a sampled step."""
    x_t = pos_history[-1]
    return x_t + (x_t - pos_history[-2]) + accel * accel_std_nm
