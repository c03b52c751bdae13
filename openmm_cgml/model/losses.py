"""Training losses of the propagator (Python only; not in the exported file)."""
import torch
from torch import Tensor

from openmm_cgml.model.batch import graph_box, graph_mean, unwrap
from openmm_cgml.model.sampler import euler_step

__all__ = ["gaussian_nll", "dynamics_nll", "training_losses"]


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


def training_losses(model, pos_history: Tensor, pos_target: Tensor, bead_features: Tensor,
                    coarse_edge_index: Tensor, batch: Tensor, box: Tensor, history_sigma: Tensor,
                    score_sigma: Tensor) -> dict:
    """Training losses of ``model`` (a ``CGPropagator``) on a batch.

    ``pos_history`` (k, N, 3) nm, ``pos_target`` (N, 3) nm. ``history_sigma``
    and ``score_sigma`` (N, 1) are noise levels in accel-std units per bead
    (usually constant per graph). Returns ``nll`` (negative log-likelihood of
    the scaled acceleration under the model's noise model), ``dsm`` (denoising
    score matching, weighted by sigma^2, i.e. the mean squared error of the
    predicted unit noise) and ``accel_mse`` (of the mean, scaled units; a
    diagnostic).
    """
    boxes = graph_box(box, batch)
    pos_history = unwrap(pos_history, pos_history[-1], boxes, batch)
    pos_target = unwrap(pos_target, pos_history[-1], boxes, batch)
    # noisy history: the target acceleration is taken from the noisy frames,
    # so the model learns to correct the noise instead of integrating it
    noisy = pos_history + (history_sigma * model.accel_std_nm).unsqueeze(0) * torch.randn_like(pos_history)
    x_t, x_prev = noisy[-1], noisy[-2]
    accel = (pos_target - 2.0 * x_t + x_prev) / model.accel_std_nm
    tables = model.topology.compute(coarse_edge_index, pos_target.size(0))
    mean, params, latents = model._dynamics(noisy, bead_features, coarse_edge_index, batch, boxes, tables)
    if hasattr(model, "bonded_noise"):
        nll = model.bonded_noise.nll(accel - mean, params, x_t, coarse_edge_index, batch)
    elif hasattr(model, "coordinate_noise"):
        nll = model.coordinate_noise.nll(pos_target, x_t, euler_step(noisy, mean, model.accel_std_nm), params,
                                         bead_features[:, -1], coarse_edge_index, batch, tables["forest"])
    else:
        nll = dynamics_nll(accel, mean, params[:, :1], params[:, 1:], batch)
    eps = torch.randn_like(pos_target)
    candidate = pos_target + (score_sigma * model.accel_std_nm) * eps
    edge, shift = model.score.graph(candidate, batch, boxes)
    eps_pred = model.score(candidate, latents, torch.log(score_sigma), coarse_edge_index, batch, boxes, edge, shift)
    dsm = (eps_pred - eps).pow(2).sum(-1).mean()
    return {"nll": nll, "dsm": dsm, "accel_mse": (mean - accel).pow(2).sum(-1).mean().detach()}
