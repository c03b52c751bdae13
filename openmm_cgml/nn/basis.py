"""Radial and angular bases for message passing (TorchScript-compatible).

Distances are in nm. The smooth cutoff is a separate envelope so that every
message that involves a pair can be multiplied by it: energies and forces
then go to zero continuously (with continuous first and second derivatives)
as a pair leaves the cutoff sphere, which keeps MD energy conserving.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["PolynomialEnvelope", "BesselBasis", "legendre", "AngularBasis"]


class PolynomialEnvelope(torch.nn.Module):
    """Smooth cutoff u(r): 1 at r = 0, zero beyond ``cutoff`` (nm).

    u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), x = r / cutoff
    (Klicpera et al., DimeNet): value, slope and curvature vanish at x = 1.
    """

    def __init__(self, cutoff: float, exponent: int = 5):
        super().__init__()
        self.cutoff = float(cutoff)
        self.p = float(exponent)

    def forward(self, r: Tensor) -> Tensor:
        x = r / self.cutoff
        p = self.p
        xp = torch.pow(x, p)
        u = 1.0 - (p + 1.0) * (p + 2.0) / 2.0 * xp + p * (p + 2.0) * xp * x - p * (p + 1.0) / 2.0 * xp * x * x
        return torch.where(x < 1.0, u, torch.zeros_like(u))


class BesselBasis(torch.nn.Module):
    """Radial Bessel functions sin(f_n x) / (pi x), x = r / cutoff, f_n = n pi, n = 1..n_rbf.

    The zeroth spherical Bessel functions of DimeNet/PaiNN in the
    dimensionless x, so the features have the same O(1) amplitude whatever
    the length unit (nm here) and the same envelope 1/(pi x) for every
    frequency (a 1/f_n normalisation would starve the high frequencies,
    which resolve stiff bonds). Frequencies are trainable, as in NequIP.
    Defined for any r >= 0, also beyond ``cutoff`` (bonded edges may be longer).
    """

    def __init__(self, n_rbf: int, cutoff: float, trainable: bool = True):
        super().__init__()
        if n_rbf < 1:
            raise ValueError(f"n_rbf must be >= 1, got {n_rbf}")
        self.cutoff = float(cutoff)
        freq = torch.arange(1, n_rbf + 1, dtype=torch.get_default_dtype()) * math.pi
        self.freq = torch.nn.Parameter(freq, requires_grad=trainable)

    def reset_parameters(self) -> None:
        """Frequencies back to ``n pi`` (they are trainable)."""
        with torch.no_grad():
            self.freq.copy_(torch.arange(1, self.freq.numel() + 1, dtype=self.freq.dtype) * math.pi)

    def forward(self, r: Tensor) -> Tensor:
        x = (r / self.cutoff).unsqueeze(-1)
        # sin(f x) / x -> f at x -> 0; the clamp only avoids 0/0 for coincident atoms
        return torch.sin(self.freq * x) / (math.pi * x.clamp(min=1e-6))


def legendre(x: Tensor, n: int) -> Tensor:
    """Legendre polynomials P_0..P_{n-1} of ``x`` (cos of an angle), shape (..., n)."""
    out = [torch.ones_like(x)]
    if n > 1:
        out.append(x)
    for l in range(1, n - 1):
        out.append(((2.0 * l + 1.0) * x * out[l] - l * out[l - 1]) / (l + 1.0))
    return torch.stack(out, dim=-1)


class AngularBasis(torch.nn.Module):
    """Bessel(distance) x Legendre(cos angle): (T, n_radial * n_angular).

    Only the cosine enters, never a signed dihedral, so the basis is invariant
    under reflections as well as rotations (E(3), not just SE(3)).
    """

    def __init__(self, n_radial: int, n_angular: int, cutoff: float):
        super().__init__()
        self.n_angular = int(n_angular)
        self.radial = BesselBasis(n_radial, cutoff)

    def forward(self, r: Tensor, cos_angle: Tensor) -> Tensor:
        rad = self.radial(r)                                   # (T, n_radial)
        ang = legendre(cos_angle, self.n_angular)              # (T, n_angular)
        return (rad.unsqueeze(-1) * ang.unsqueeze(-2)).flatten(-2)
