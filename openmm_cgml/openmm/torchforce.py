"""The openmm-torch ``TorchForce`` way to run a learned propagator in OpenMM (the road not taken).

``CGMLIntegrator`` is the project's way to run a model in OpenMM. This module
keeps the alternative, measured against it by ``bench/integrator_paths.py``
(docs/integrator_paths.md) and tested in ``tests/openmm/test_torchforce_path.py``:
the propagator inside an openmm-torch ``TorchForce`` (``setOutputsForces(True)``)
driven by a ``CustomIntegrator`` whose program is
``cgml_step += 1; v = f*c/dt; x = x + f*c`` (c = 1). The TorchScript module
(:class:`GuardedTorchForcePropagator`) keeps the k-frame history and a noise
table in buffers and returns the displacement ``x_{t+1} - x_t`` as "forces",
so OpenMM moves the beads exactly to the model's next frame.

The pitfalls it guards against: openmm-torch calls the module on EVERY force
evaluation (each ``getState(getForces/getEnergy)``, minimiser iteration, ...),
so the module advances only when the integrator's ``cgml_step`` counter moved
by one and the positions are the ones it produced last; and openmm-torch runs
the module with autograd on, so everything written into a buffer is detached.
What the guard cannot fix: the buffers are in no checkpoint or ``saveState``,
so a restored Context restarts with a warm-up instead of resuming bit-exactly.

openmm-torch is optional: ``torchforce_context`` raises ImportError without it.
"""
from __future__ import annotations

import openmm
import torch

from openmm_cgml.openmm.rollout import model_graph, step_noise

__all__ = ["GuardedTorchForcePropagator", "torchforce_context"]


class GuardedTorchForcePropagator(torch.nn.Module):
    """A CGPropagator as an openmm-torch TorchForce: "forces" = next frame - current frame (nm).

    ``forward(positions (N,3) nm, cgml_step)`` -> ``(energy 0, displacement (N,3) nm)``.
    Buffers: ``history`` (k, N, 3) float32, oldest first, last = the frame the
    Context should hold now; ``displacement``, the last answer (returned again
    on re-evaluation); ``last_step``; ``noise`` (T, D, N, 3), standard normal
    noise of model step i = ``noise[i % T]`` (from ``step_noise(seed, i)``,
    so the first T steps equal ``CGMLIntegrator``'s with the same seed).
    ``guard=False`` is the naive module that advances on every call (kept to
    show the pitfall in the tests).
    """

    def __init__(self, module, features, edges, batch, noise, k: int, guard: bool = True):
        super().__init__()
        self.model = module
        self.k = k
        self.guard = guard
        self.refine = True
        n = features.shape[0]
        self.register_buffer("features", features)
        self.register_buffer("edges", edges)
        self.register_buffer("batch", batch)
        self.register_buffer("box", torch.zeros(3, 3))
        self.register_buffer("noise", noise)
        self.register_buffer("history", torch.zeros(k, n, 3))
        self.register_buffer("displacement", torch.zeros(n, 3))
        self.register_buffer("last_step", torch.full((1,), -2, dtype=torch.long))

    def forward(self, positions: torch.Tensor, cgml_step: torch.Tensor):
        step = int(cgml_step.item())  # exact for counters < 2**24 even on single-precision platforms
        last = int(self.last_step.item())
        zero = torch.zeros((), dtype=positions.dtype, device=positions.device)
        if not self.guard:
            # the unguarded design: every call pushes the positions it gets and takes a model step
            x = positions.detach().to(torch.float32)
            if last < 0:
                self.history.copy_(x.unsqueeze(0).expand(self.k, -1, -1))
            else:
                self.history.copy_(torch.cat([self.history[1:], x.unsqueeze(0)], dim=0))
            step = max(last, -1) + 1  # its own call counter, from 0 (the guarded module's noise index too)
            noise = self.noise[step % self.noise.shape[0]]
            new = self.model.step(self.history, self.features, self.edges, self.batch, self.box, noise,
                                  self.refine).detach()
            self.last_step.fill_(step)
            return zero, new.to(positions.dtype) - positions.detach()
        if step == last:
            # a re-evaluation (getState(getForces/getEnergy), minimiser, reporter): do not advance
            return zero, self.displacement.to(positions.dtype)
        x = positions.detach().to(torch.float32)
        continuing = step == last + 1 and bool(torch.allclose(x, self.history[-1], rtol=0.0, atol=1e-5))
        if not continuing:
            # first step, positions moved from outside, or a restored Context: warm-up from here
            self.history.copy_(x.unsqueeze(0).expand(self.k, -1, -1))
        noise = self.noise[(step - 1) % self.noise.shape[0]]
        # detach (here and the positions above): openmm-torch runs the module with autograd on and passes
        # positions with requires_grad=True even with setOutputsForces(True); a buffer written from a tensor
        # that carries a graph chains every step's graph to the last one (time per step grows without bound)
        new = self.model.step(self.history, self.features, self.edges, self.batch, self.box, noise,
                              self.refine).detach()
        self.history.copy_(torch.cat([self.history[1:], new.unsqueeze(0)], dim=0))
        self.displacement.copy_(new - x)
        self.last_step.fill_(step)
        # displacement in the Context's precision from the full-precision positions: x + f lands on `new`
        return zero, new.to(positions.dtype) - positions.detach()



def torchforce_context(model, cg, platform, seed: int = 1, noise_steps: int = 256, properties=None,
                       guard: bool = True):
    """A Context running ``model`` through openmm-torch, positions set to ``cg.positions``.

    Parameters
    ----------
    model : CGModel
        From ``openmm_cgml.load``; runs on the CPU side of the plugin's module copy.
    cg : CoarseGrainedSystem
        From ``coarse_grained_system``; its System is cloned and gets the TorchForce.
    platform : openmm.Platform
    seed : int
        The noise of model step ``i`` is ``step_noise(seed, i)`` for ``i < noise_steps``, then repeats.
    noise_steps : int
        Rows of the precomputed noise table.
    properties : dict, optional
        Platform properties (e.g. ``{"Threads": "1"}`` on the CPU platform).
    guard : bool
        False gives the naive module that advances on every force evaluation.

    Returns
    -------
    context : openmm.Context
    integrator : openmm.CustomIntegrator
        Its step size is the model step.

    Raises
    ------
    ImportError
        When openmm-torch is not installed.
    """
    from openmmtorch import TorchForce

    replicas = cg.replicas
    edges, batch = model_graph(cg.mapping, replicas)
    n = cg.system.getNumParticles()
    generator = torch.Generator()
    shape = (model.noise_draws(True), n, 3)
    noise = torch.stack([step_noise(generator, seed, i, shape, torch.float32, "cpu") for i in range(noise_steps)])
    wrapper = GuardedTorchForcePropagator(model.module, cg.bead_features.repeat(replicas, 1).cpu(),
                                          edges, batch, noise, model.k, guard)
    force = TorchForce(torch.jit.script(wrapper))
    force.setOutputsForces(True)
    force.addGlobalParameter("cgml_step", 0.0)
    system = openmm.XmlSerializer.clone(cg.system)
    system.addForce(force)
    integrator = openmm.CustomIntegrator(model.model_timestep)
    integrator.addGlobalVariable("c", 1.0)  # displacement per unit "force" (nm per nm)
    integrator.addComputeGlobal("cgml_step", "cgml_step + 1")  # before f is read: one fresh evaluation
    integrator.addComputePerDof("v", "f * c / dt")
    integrator.addComputePerDof("x", "x + f * c")
    context = openmm.Context(system, integrator, platform, properties or {})
    context.setPositions(cg.positions)
    return context, integrator
