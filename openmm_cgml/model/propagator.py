"""The learned stochastic propagator: Embedding, Dynamics and Score networks.

One model step jumps ``md_steps_per_model_step`` fine MD steps. Positions are
in nm throughout; the networks work internally in *scaled model-step units*:
velocities are finite differences ``x[t] - x[t-1]`` (nm per model step)
divided by the dataset's ``velocity_std_nm``, accelerations
``x[t+1] - 2 x[t] + x[t-1]`` (nm per model step^2) divided by its
``accel_std_nm``, so every network sees numbers of order one whatever the
system and the lag.

- :class:`EmbeddingGNN` - message passing over the fine (atom) bond graph,
  from atom types only; atom features are mean-pooled per bead, once per
  molecule (``embed``).
- Dynamics network - a :class:`~openmm_cgml.nn.PaxNet` over the beads
  (radius graph globally, coarse bonds locally) whose vector inputs are the
  last ``k - 1`` velocities and scalar inputs their norms, the bead
  embedding and the bead mass. It returns per bead an equivariant mean
  acceleration and an invariant, strictly positive internal std
  (``std = min_std + softplus(.)``), and per graph the std of the
  centre-of-mass acceleration.
- Score network - by default a light equivariant pair network
  (:class:`PairScore`; or a PaxNet) at the candidate positions, conditioned
  on the noise level and the dynamics latents. It predicts the noise ``eps``
  of a candidate ``x~ = x + sigma * eps`` (score ``-eps / sigma``). ``step``
  refines a sampled step by a short reverse diffusion (:func:`anneal_step`):
  the sample is re-noised to the first level, then taken down level by level
  (one network call each, default 3) instead of the 200 annealed-Langevin
  calls of the published method.

``step`` samples ``a = mean + std * (noise[0] - z) + std_com * sqrt(n) * z``
(``z`` the graph mean of ``noise[0]``), integrates semi-implicit Euler in
model-step units (``v = x[t] - x[t-1]; v += a; x += v``) and refines with
``noise[1:]``. The whole module is TorchScript-able; see ``openmm_cgml.model_file``.
"""

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from openmm_cgml.nn import PaxNet, edge_vectors, radius_graph
from openmm_cgml.nn.basis import BesselBasis, PolynomialEnvelope

__all__ = ["PropagatorConfig", "EmbeddingGNN", "CGPropagator", "gaussian_nll", 
           "log_spaced_sigmas", "anneal_step"]


@dataclass
class PropagatorConfig:
    """Hyperparameters of :class:`CGPropagator` (plain numbers; YAML key ``model``).

    Lengths in nm; ``min_std``, ``refine_sigmas`` in units of the dataset's
    acceleration std (``accel_std_nm``).
    """

    k: int = 4                       # history length (frames); k - 1 velocities
    embed_hidden: int = 32           # Embedding GNN width
    embed_layers: int = 3            # Embedding GNN message-passing steps
    hidden: int = 48                 # Dynamics PaxNet width
    n_layers: int = 2                # Dynamics PaxNet layers
    cutoff_nm: float = 1.0           # radius-graph cutoff (nm)
    n_rbf: int = 16
    n_sbf: int = 6
    min_std: float = 0.05            # floor of the predicted std (accel-std units)
    score_net: str = "pair"          # "pair": one equivariant pair-message round (fast); "paxnet"
    score_hidden: int = 32           # Score network width
    score_layers: int = 2            # Score PaxNet layers (score_net = "paxnet" only)
    refine_sigmas: List[float] = field(default_factory=lambda: [0.6, 0.3, 0.1])  # Tweedie steps at inference
    hard_core: bool = True           # project pairs closer than the learned minimum distances apart after each step
    hard_core_sweeps: int = 8        # projection sweeps (vectorised over all close pairs) per model step

    @classmethod
    def from_dict(cls, values: dict | None) -> "PropagatorConfig":
        """Build from a (YAML) dict; unknown keys are a ``ValueError`` naming them."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model option(s) {unknown}; known: {sorted(known)}")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if int(self.k) < 2:
            raise ValueError(f"model.k must be >= 2 (velocities need two frames), got {self.k}")
        for name in ("embed_hidden", "embed_layers", "hidden", "n_layers", "score_hidden", "score_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if not self.cutoff_nm > 0:
            raise ValueError(f"model.cutoff_nm must be > 0 nm, got {self.cutoff_nm}")
        if not self.min_std > 0:
            raise ValueError(f"model.min_std must be > 0, got {self.min_std}")
        if self.score_net not in ("pair", "paxnet"):
            raise ValueError(f"model.score_net must be 'pair' or 'paxnet', got {self.score_net!r}")
        if any(not s > 0 for s in self.refine_sigmas):
            raise ValueError(f"model.refine_sigmas must all be > 0, got {self.refine_sigmas}")
        if not isinstance(self.hard_core, bool):
            raise ValueError(f"model.hard_core must be true or false, got {self.hard_core!r}")
        if int(self.hard_core_sweeps) < 1:
            raise ValueError(f"model.hard_core_sweeps must be >= 1, got {self.hard_core_sweeps}")

    def to_dict(self) -> dict:
        return asdict(self)


def log_spaced_sigmas(high: float, low: float, n: int) -> Tensor:
    """``n`` noise levels from ``high`` down to ``low``, log-spaced (float32)."""
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


def gaussian_nll(target: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Mean Gaussian negative log-likelihood per bead (constant dropped).

    ``target``/``mean`` (N, 3), ``std`` (N, 1) isotropic, all in the same
    (scaled) units; summed over x, y, z, averaged over beads.
    """
    z = (target - mean) / std
    return (0.5 * z.pow(2).sum(-1) + 3.0 * torch.log(std.squeeze(-1))).mean()


class _MessageLayer(nn.Module):
    """One residual message-passing step on a plain graph (sum of neighbour messages)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.message = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.update = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor, edge_index: Tensor) -> Tensor:
        source, target = edge_index[0], edge_index[1]
        messages = self.message(torch.cat([h[source], h[target]], dim=-1))
        aggregated = torch.zeros_like(h).index_add(0, target, messages)
        return self.norm(h + self.update(torch.cat([h, aggregated], dim=-1)))


class EmbeddingGNN(nn.Module):
    """Atom features from the fine bond graph (atom types and bonds only: topological)."""

    def __init__(self, n_types: int, hidden: int = 32, n_layers: int = 3):
        super().__init__()
        self.type_embedding = nn.Embedding(n_types, hidden)
        self.layers = nn.ModuleList([_MessageLayer(hidden) for _ in range(n_layers)])

    def forward(self, atom_types: Tensor, edge_index: Tensor) -> Tensor:
        h = self.type_embedding(atom_types)
        for layer in self.layers:
            h = layer(h, edge_index)
        return h


class _VectorHead(nn.Module):
    """Equivariant vector output: channels mixed by weights gated by invariant scalars."""

    def __init__(self, hidden: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, s: Tensor, v: Tensor) -> Tensor:
        return (v * self.gate(s).unsqueeze(1)).sum(-1)


def graph_mean(x: Tensor, batch: Tensor) -> Tuple[Tensor, Tensor]:
    """Each node's graph mean of ``x`` (N, D) and its graph's node count (N, 1), without a device sync.

    Graph indices are < N, so N scatter slots always suffice.
    """
    ones = torch.ones(x.size(0), 1, dtype=x.dtype, device=x.device)
    counts = torch.zeros_like(ones).index_add(0, batch, ones)
    sums = torch.zeros_like(x).index_add(0, batch, x)
    return (sums / counts.clamp_min(1.0))[batch], counts[batch]


def _unwrap(frames: Tensor, reference: Tensor, box: Optional[Tensor], batch: Tensor) -> Tensor:
    """``frames`` (..., N, 3) moved by box vectors to their nearest image of ``reference`` (N, 3).

    Periodic positions may be wrapped between frames; unwrapping them around
    the current frame keeps finite-difference velocities physical.
    """
    if box is None:
        return frames
    cell = box[batch]                                                    # (N, 3, 3) rows = box vectors
    delta = frames - reference
    fractional = torch.linalg.solve(cell.transpose(1, 2), delta.unsqueeze(-1)).squeeze(-1)
    shift = torch.round(fractional)
    return frames - (shift.unsqueeze(-1) * cell).sum(-2)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))


class PairScore(nn.Module):
    """Light equivariant score network: one round of pair messages at the candidate positions.

    ``eps_i = sum_j c(d_ij, a_i + a_j) u_ij + sum_bonds b(d_ij, a_i + a_j) u_ij``
    with unit vectors ``u_ij`` (j -> i) and invariant coefficients from the
    node context ``a`` (dynamics latents and noise level) and a radial basis.
    Central, pairwise-symmetric terms: the correction never moves the centre
    of mass and carries no net torque, so refining a sampled step fixes the
    internal geometry (stretched bonds, overlaps) without damping the
    diffusion the dynamics network sampled. Pair terms see close contacts,
    bond terms the chain geometry.
    """

    def __init__(self, latent: int, hidden: int, cutoff: float, n_rbf: int, max_num_neighbors: int = 64):
        super().__init__()
        self.cutoff = float(cutoff)
        self.max_num_neighbors = int(max_num_neighbors)
        self.node = _mlp(latent + 1, hidden, hidden)
        self.rbf = BesselBasis(n_rbf, cutoff)
        self.envelope = PolynomialEnvelope(cutoff)
        self.pair = _mlp(hidden + n_rbf, hidden, 1)
        self.bond = _mlp(hidden + n_rbf, hidden, 1)

    def graph(self, candidate: Tensor, batch: Tensor, box: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Radius graph (edges, shifts) to reuse over the refinement calls of one step (beads move little)."""
        return radius_graph(candidate, self.cutoff, batch, box, self.max_num_neighbors)

    def forward(self, candidate: Tensor, latents: Tensor, log_sigma: Tensor, bonds: Tensor, batch: Tensor,
                box: Optional[Tensor], edge: Tensor, shift: Tensor) -> Tensor:
        a = self.node(torch.cat([latents, log_sigma], dim=-1))
        j, i = edge[0], edge[1]
        vec = candidate[i] - candidate[j] + shift
        dist = torch.linalg.vector_norm(vec, dim=-1, keepdim=True).clamp_min(1e-6)
        coeff = self.pair(torch.cat([a[i] + a[j], self.rbf(dist.squeeze(-1))], dim=-1)) \
            * self.envelope(dist.squeeze(-1)).unsqueeze(-1)
        eps = torch.zeros_like(candidate).index_add(0, i, coeff * vec / dist)
        if bonds.numel() > 0:
            bond_vec, _ = edge_vectors(candidate, bonds, batch, box)
            bond_dist = torch.linalg.vector_norm(bond_vec, dim=-1, keepdim=True).clamp_min(1e-6)
            bj, bi = bonds[0], bonds[1]
            bond_coeff = self.bond(torch.cat([a[bi] + a[bj], self.rbf(bond_dist.squeeze(-1))], dim=-1))
            eps = eps.index_add(0, bi, bond_coeff * bond_vec / bond_dist)
        return eps


class PaxNetScore(nn.Module):
    """Score network on the PaxNet backbone (heavier; ``score_net: paxnet``); geometry and context only."""

    def __init__(self, latent: int, hidden: int, n_layers: int, cutoff: float, n_rbf: int, n_sbf: int):
        super().__init__()
        self.cutoff = float(cutoff)
        self.backbone = PaxNet(hidden=hidden, n_layers=n_layers, cutoff=cutoff, n_rbf=n_rbf, n_sbf=n_sbf,
                               vector_in=0, scalar_in=latent + 1)
        self.head = _VectorHead(hidden)

    def graph(self, candidate: Tensor, batch: Tensor, box: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """PaxNet builds its own graphs: nothing to precompute."""
        return (torch.zeros(2, 0, dtype=torch.long, device=candidate.device),
                torch.zeros(0, 3, dtype=candidate.dtype, device=candidate.device))

    def forward(self, candidate: Tensor, latents: Tensor, log_sigma: Tensor, bonds: Tensor, batch: Tensor,
                box: Optional[Tensor], edge: Tensor, shift: Tensor) -> Tensor:
        no_vectors = torch.zeros(candidate.size(0), 3, 0, dtype=candidate.dtype, device=candidate.device)
        s, v = self.backbone(torch.cat([latents, log_sigma], dim=-1), no_vectors, candidate, bonds, batch, box)
        return self.head(s, v)


class CGPropagator(nn.Module):
    """The full propagator; TorchScript-able (``embed``, ``step``, ``predict``).

    Args:
        config: network sizes (:class:`PropagatorConfig`).
        type_masses: (n_types,) atom mass in amu for each atom type seen in
            training (0 = unseen: ``embed`` refuses such atoms).
        accel_std_nm, velocity_std_nm: dataset scales (nm per model step^2,
            nm per model step).
        mass_scale_amu: typical bead mass, divides the mass input.
        model_dt_ps, md_steps_per_model_step, md_timestep_ps, temperature_K:
            what one model step stands for (carried into the exported file).
        n_beads, n_atoms: the molecule the model is for (0 = transferable);
            ``step``/``embed`` accept whole multiples of them (copies).
        min_bonded_nm, min_nonbonded_nm: hard-core distances (nm) for bead
            pairs joined by a coarse bond and for all other pairs, learned
            from the reference data (``openmm_cgml.train.reference_min_distances``);
            0 = unknown: no projection (models trained before the hard core).
    """

    refine_sigmas: List[float]

    def __init__(self, config: PropagatorConfig, type_masses: Tensor, accel_std_nm: float = 1.0,
                 velocity_std_nm: float = 1.0, mass_scale_amu: float = 1.0, model_dt_ps: float = 1.0,
                 md_steps_per_model_step: int = 1, md_timestep_ps: float = 1.0, temperature_K: float = 300.0,
                 n_beads: int = 0, n_atoms: int = 0, min_bonded_nm: float = 0.0, min_nonbonded_nm: float = 0.0):
        super().__init__()
        config.validate()
        type_masses = torch.as_tensor(type_masses, dtype=torch.float32).flatten()
        if type_masses.numel() == 0 or not bool((type_masses >= 0).all()):
            raise ValueError("type_masses must be a non-empty array of masses >= 0 (amu)")
        for name, value in (("accel_std_nm", accel_std_nm), ("velocity_std_nm", velocity_std_nm),
                            ("mass_scale_amu", mass_scale_amu), ("model_dt_ps", model_dt_ps)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        self.k = int(config.k)
        self.accel_std_nm = float(accel_std_nm)
        self.velocity_std_nm = float(velocity_std_nm)
        self.mass_scale_amu = float(mass_scale_amu)
        self.model_dt_ps = float(model_dt_ps)
        self.md_steps_per_model_step = int(md_steps_per_model_step)
        self.md_timestep_ps = float(md_timestep_ps)
        self.temperature_K = float(temperature_K)
        self.n_beads = int(n_beads)
        self.n_atoms = int(n_atoms)
        self.min_std = float(config.min_std)
        self.refine_sigmas = [float(s) for s in config.refine_sigmas]
        for name, value in (("min_bonded_nm", min_bonded_nm), ("min_nonbonded_nm", min_nonbonded_nm)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 nm, got {value}")
        self.min_bonded_nm = float(min_bonded_nm)
        self.min_nonbonded_nm = float(min_nonbonded_nm)
        self.hard_core = bool(config.hard_core) and max(self.min_bonded_nm, self.min_nonbonded_nm) > 0
        self.hard_core_sweeps = int(config.hard_core_sweeps)
        # [bonded, nonbonded] nm; not persistent, so checkpoints from before the hard core still load
        self.register_buffer("min_distance_nm", torch.tensor([self.min_bonded_nm, self.min_nonbonded_nm]),
                             persistent=False)
        # close pairs the projection has pushed apart since loading (a diagnostic)
        self.register_buffer("hard_core_events", torch.zeros((), dtype=torch.long), persistent=False)
        self.metadata = "{}"
        self.n_features = int(config.embed_hidden) + 1  # pooled embedding + scaled mass
        self.hidden = int(config.hidden)
        self.register_buffer("type_masses", type_masses)
        # everything needed to rebuild this module (before loading a state dict)
        self.init_json = json.dumps({
            "config": config.to_dict(), "type_masses": type_masses.tolist(), "accel_std_nm": self.accel_std_nm,
            "velocity_std_nm": self.velocity_std_nm, "mass_scale_amu": self.mass_scale_amu,
            "model_dt_ps": self.model_dt_ps, "md_steps_per_model_step": self.md_steps_per_model_step,
            "md_timestep_ps": self.md_timestep_ps, "temperature_K": self.temperature_K,
            "n_beads": self.n_beads, "n_atoms": self.n_atoms,
            "min_bonded_nm": self.min_bonded_nm, "min_nonbonded_nm": self.min_nonbonded_nm})

        self.embedding = EmbeddingGNN(type_masses.numel(), config.embed_hidden, config.embed_layers)
        n_vel = self.k - 1
        self.dynamics = PaxNet(hidden=config.hidden, n_layers=config.n_layers, cutoff=config.cutoff_nm,
                               n_rbf=config.n_rbf, n_sbf=config.n_sbf, vector_in=n_vel,
                               scalar_in=n_vel + self.n_features)
        self.accel_head = _VectorHead(config.hidden)
        self.std_head = nn.Sequential(nn.Linear(config.hidden, config.hidden), nn.SiLU(),
                                      nn.Linear(config.hidden, 1))
        # std of the collective (centre-of-mass) acceleration of each graph, from pooled latents
        self.collective_std_head = nn.Sequential(nn.Linear(config.hidden, config.hidden), nn.SiLU(),
                                                 nn.Linear(config.hidden, 1))
        # Score net context: dynamics latents + log noise level; vectors: offset of
        # the candidate from the mean prediction, and the last velocity.
        if config.score_net == "pair":
            self.score = PairScore(config.hidden, config.score_hidden, config.cutoff_nm, config.n_rbf)
        else:
            self.score = PaxNetScore(config.hidden, config.score_hidden, config.score_layers, config.cutoff_nm,
                                     config.n_rbf, config.n_sbf)

    # ------------------------------------------------------------------ helpers
    @classmethod
    def from_init_json(cls, text: str) -> "CGPropagator":
        """Rebuild an (untrained) module from its ``init_json`` (then load a state dict)."""
        init = json.loads(text)
        config = PropagatorConfig.from_dict(init.pop("config"))
        return cls(config, torch.tensor(init.pop("type_masses")), **init)

    @classmethod
    def from_mapping(cls, mapping, config: Optional[PropagatorConfig] = None, transferable: bool = False,
                     **scales) -> "CGPropagator":
        """An (untrained) propagator for the molecule of a :class:`~openmm_cgml.mapping.Mapping`.

        ``scales`` are the keyword arguments of the constructor
        (``accel_std_nm``, ``model_dt_ps``, ...). Masses per atom type are
        taken from the mapping; ``transferable=True`` leaves ``n_beads = 0``.
        """
        types = torch.as_tensor(mapping.atom_types, dtype=torch.long)
        masses = torch.as_tensor(mapping.atom_masses, dtype=torch.float32)
        type_masses = type_mass_table(types, masses)
        scales.setdefault("mass_scale_amu", float(torch.as_tensor(mapping.bead_masses).double().mean()))
        if not transferable:
            scales.setdefault("n_beads", int(mapping.n_beads))
            scales.setdefault("n_atoms", int(mapping.n_atoms))
        return cls(config or PropagatorConfig(), type_masses, **scales)

    def _graph_box(self, box: Tensor, batch: Tensor) -> Optional[Tensor]:
        """(B, 3, 3) periodic box per graph, or None when the box is all zeros (no periodicity)."""
        if box.numel() == 0 or not bool((box != 0).any()):
            return None
        box = box.reshape(-1, 3, 3)
        n_graphs = int(batch.max()) + 1 if batch.numel() > 0 else 1   # a device sync, periodic only
        if box.size(0) == n_graphs:
            return box
        return box[:1].expand(n_graphs, 3, 3)

    def _check_step_inputs(self, pos_history: Tensor, bead_features: Tensor, coarse_edge_index: Tensor,
                           batch: Tensor):
        if pos_history.dim() != 3 or pos_history.size(0) != self.k or pos_history.size(2) != 3:
            raise ValueError("pos_history must have shape (k, n_beads, 3) with k = " + str(self.k)
                             + ", got " + str(pos_history.shape))
        n = pos_history.size(1)
        if self.n_beads > 0 and (n == 0 or n % self.n_beads != 0):
            raise ValueError("this model is for a molecule of " + str(self.n_beads) + " beads, got "
                             + str(n) + " beads (not a whole number of copies)")
        if bead_features.dim() != 2 or bead_features.size(0) != n or bead_features.size(1) != self.n_features:
            raise ValueError("bead_features must have shape (" + str(n) + ", " + str(self.n_features)
                             + ") as returned by embed(), got " + str(bead_features.shape))
        if batch.dim() != 1 or batch.size(0) != n:
            raise ValueError("batch must have shape (" + str(n) + ",), got " + str(batch.shape))
        if coarse_edge_index.dim() != 2 or coarse_edge_index.size(0) != 2:
            raise ValueError("coarse_edge_index must have shape (2, E), got " + str(coarse_edge_index.shape))
        if coarse_edge_index.numel() > 0 and (int(coarse_edge_index.min()) < 0 or int(coarse_edge_index.max()) >= n):
            raise ValueError("coarse_edge_index refers to beads outside 0.." + str(n - 1))
        if not bool(torch.isfinite(pos_history).all()):
            raise ValueError("pos_history contains NaN or infinite positions")

    def _dynamics(self, pos_history: Tensor, bead_features: Tensor, coarse_edge_index: Tensor, batch: Tensor,
                  box: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Acceleration mean (N, 3), internal std (N, 1), collective std (N, 1, per graph) in accel-std
        units, and the scalar latents (N, hidden)."""
        velocities = (pos_history[1:] - pos_history[:-1]) / self.velocity_std_nm     # (k-1, N, 3)
        v_in = velocities.permute(1, 2, 0)                                            # (N, 3, k-1)
        s_in = torch.cat([torch.linalg.vector_norm(v_in, dim=1), bead_features], dim=-1)
        s, v = self.dynamics(s_in, v_in, pos_history[-1], coarse_edge_index, batch, box)
        mean = self.accel_head(s, v)
        std = self.min_std + nn.functional.softplus(self.std_head(s))
        pooled, _ = graph_mean(s, batch)
        collective = self.min_std + nn.functional.softplus(self.collective_std_head(pooled))
        return mean, std, collective, s

    def _sample(self, mean: Tensor, std: Tensor, collective: Tensor, noise: Tensor, batch: Tensor) -> Tensor:
        """Acceleration sample: internal noise per bead plus one shared centre-of-mass kick per graph.

        Both parts are linear in ``noise``: the graph mean of the noise (times
        sqrt(n)) is itself standard normal and drives the centre of mass with
        std ``collective``; the rest (independent of it) drives the internal
        motion with std ``std`` per bead. Beads of a molecule thus move
        together as they do in MD, instead of being kicked apart.
        """
        noise_mean, count = graph_mean(noise, batch)
        # noise - noise_mean is independent of noise_mean (Gaussian, zero covariance)
        return mean + std * (noise - noise_mean) + collective * torch.sqrt(count) * noise_mean

    def _score_eps(self, candidate: Tensor, latents: Tensor, sigma: Tensor, coarse_edge_index: Tensor,
                   batch: Tensor, box: Optional[Tensor], edge: Tensor, shift: Tensor) -> Tensor:
        """Predicted unit noise ``eps`` (N, 3) of ``candidate`` at noise level ``sigma`` (N, 1) accel-std units."""
        return self.score(candidate, latents, torch.log(sigma), coarse_edge_index, batch, box, edge, shift)

    def _hard_core(self, x: Tensor, masses: Tensor, bonds: Tensor, batch: Tensor, box: Optional[Tensor],
                   edge: Tensor, shift: Tensor) -> Tensor:
        """Push bead pairs closer than their minimum distance apart (SHAKE-like, for inequalities).

        ``x`` (N, 3) nm; ``edge``/``shift`` a radius graph (both directions)
        that holds every close pair; ``bonds`` the coarse bonds (either or both
        directions) select the bonded minimum, all other pairs get the
        non-bonded one. Each violating pair is moved apart along its pair
        vector by the violation, shared inversely to the masses, so the centre
        of mass never moves; Jacobi sweeps (all pairs at once), so a bead in
        several violations gets the sum of its corrections. Only pair vectors
        enter: exactly E(3)-equivariant, and the identity when no pair is too
        close (the common case costs one distance pass and one host sync).
        """
        limit = max(self.min_bonded_nm, self.min_nonbonded_nm)
        n = x.size(0)
        j_all, i_all = edge[0], edge[1]
        bond_keys = torch.cat([bonds[1] * n + bonds[0], bonds[0] * n + bonds[1]])
        counted = False
        for _ in range(3):  # re-select the close pairs from the whole graph after a round of corrections
            dist = torch.linalg.vector_norm(x[i_all] - x[j_all] + shift, dim=-1)
            # pairs within a margin of the limit: a correction can push a bead into a neighbour
            near = torch.nonzero(dist < 1.25 * limit).squeeze(1)
            if near.numel() == 0:
                return x
            i, j, pair_shift = i_all[near], j_all[near], shift[near]
            bonded = torch.isin(i * n + j, bond_keys)
            minimum = torch.where(bonded, self.min_distance_nm[0], self.min_distance_nm[1]).to(x.dtype)
            share = (masses[j] / (masses[i] + masses[j])).unsqueeze(-1)   # i moves by m_j / (m_i + m_j)
            moved = False
            for _sweep in range(self.hard_core_sweeps):
                vec = x[i] - x[j] + pair_shift
                dist = torch.linalg.vector_norm(vec, dim=-1).clamp_min(1e-9)
                push = (minimum - dist).clamp_min(0.0)
                if not bool((push > 0).any()):
                    break
                if not counted:
                    self.hard_core_events.add_((push > 0).sum() // 2)   # both directions of each pair
                    counted = True
                moved = True
                x = x.index_add(0, i, share * (push / dist).unsqueeze(-1) * vec)
            if not moved:
                return x
        return x

    # ------------------------------------------------------------- public API
    @torch.jit.export
    def embed(self, atom_types: Tensor, fine_edge_index: Tensor, bead_of_atom: Tensor, n_beads: int) -> Tensor:
        """Bead features (n_beads, n_features): pooled atom embeddings plus scaled bead mass; once per molecule."""
        n_atoms = atom_types.size(0)
        if atom_types.dim() != 1 or bead_of_atom.dim() != 1 or bead_of_atom.size(0) != n_atoms:
            raise ValueError("atom_types and bead_of_atom must both have shape (n_atoms,)")
        if self.n_beads > 0 and (n_beads == 0 or n_beads % self.n_beads != 0):
            raise ValueError("this model is for a molecule of " + str(self.n_beads) + " beads, got n_beads = "
                             + str(n_beads))
        if self.n_atoms > 0 and (n_atoms == 0 or n_atoms % self.n_atoms != 0
                                 or n_atoms // self.n_atoms != n_beads // self.n_beads):
            raise ValueError("this model is for a molecule of " + str(self.n_atoms) + " atoms in "
                             + str(self.n_beads) + " beads, got " + str(n_atoms) + " atoms in "
                             + str(n_beads) + " beads")
        if n_atoms == 0 or int(bead_of_atom.min()) < 0 or int(bead_of_atom.max()) >= n_beads:
            raise ValueError("bead_of_atom must number beads 0.." + str(n_beads - 1))
        if int(atom_types.min()) < 0 or int(atom_types.max()) >= self.type_masses.size(0):
            raise ValueError("atom types must be in 0.." + str(self.type_masses.size(0) - 1)
                             + " (the types seen in training)")
        atom_masses = self.type_masses[atom_types]
        if not bool((atom_masses > 0).all()):
            raise ValueError("atom type " + str(int(atom_types[atom_masses <= 0][0]))
                             + " was never seen in training (this model does not fit the molecule)")
        if fine_edge_index.dim() != 2 or fine_edge_index.size(0) != 2:
            raise ValueError("fine_edge_index must have shape (2, E)")
        if fine_edge_index.numel() > 0 and (int(fine_edge_index.min()) < 0 or int(fine_edge_index.max()) >= n_atoms):
            raise ValueError("fine_edge_index refers to atoms outside 0.." + str(n_atoms - 1))
        return self._embed(atom_types, fine_edge_index, bead_of_atom, n_beads)

    def _embed(self, atom_types: Tensor, fine_edge_index: Tensor, bead_of_atom: Tensor, n_beads: int) -> Tensor:
        h = self.embedding(atom_types, fine_edge_index)
        summed = torch.zeros(n_beads, h.size(1), dtype=h.dtype, device=h.device).index_add(0, bead_of_atom, h)
        ones = torch.ones(bead_of_atom.size(0), dtype=h.dtype, device=h.device)
        counts = torch.zeros(n_beads, dtype=h.dtype, device=h.device).index_add(0, bead_of_atom, ones)
        if bool((counts == 0).any()):
            raise ValueError("every bead needs at least one atom (empty bead in bead_of_atom)")
        mass = torch.zeros(n_beads, dtype=h.dtype, device=h.device).index_add(
            0, bead_of_atom, self.type_masses[atom_types].to(h.dtype))
        return torch.cat([summed / counts.unsqueeze(1), (mass / self.mass_scale_amu).unsqueeze(1)], dim=-1)

    @torch.jit.export
    def predict(self, pos_history: Tensor, bead_features: Tensor, coarse_edge_index: Tensor, batch: Tensor,
                box: Tensor) -> Tuple[Tensor, Tensor]:
        """Acceleration mean (N, 3) and isotropic std (N, 1) in nm per model step^2."""
        self._check_step_inputs(pos_history, bead_features, coarse_edge_index, batch)
        graph_box = self._graph_box(box, batch)
        pos_history = _unwrap(pos_history, pos_history[-1], graph_box, batch)
        mean, std, collective, _ = self._dynamics(pos_history, bead_features, coarse_edge_index, batch, graph_box)
        _, count = graph_mean(std, batch)
        # marginal per-bead std of the sampled acceleration (internal part has n-1 of n degrees of freedom)
        marginal = torch.sqrt(std * std * (1.0 - 1.0 / count) + collective * collective)
        return mean * self.accel_std_nm, marginal * self.accel_std_nm

    @torch.jit.export
    def noise_draws(self, refine: bool) -> int:
        """Standard normal (N, 3) draws one ``step`` consumes: 1 for the dynamics, plus one per refinement level."""
        if refine and len(self.refine_sigmas) > 0:
            return 1 + len(self.refine_sigmas)
        return 1

    @torch.jit.export
    def step(self, pos_history: Tensor, bead_features: Tensor, coarse_edge_index: Tensor, batch: Tensor,
             box: Tensor, noise: Tensor, refine: bool) -> Tensor:
        """Next positions (N, 3) nm from the last k positions (k, N, 3) nm.

        ``noise`` (D, N, 3) standard normal with ``D = noise_draws(refine)``:
        ``noise[0]`` drives the dynamics, ``noise[1:]`` the refinement.
        """
        self._check_step_inputs(pos_history, bead_features, coarse_edge_index, batch)
        draws = self.noise_draws(refine)
        if noise.dim() != 3 or noise.size(0) != draws or noise.shape[1:] != pos_history[-1].shape:
            raise ValueError("noise must have shape (" + str(draws) + ", n_beads, 3), got " + str(noise.shape))
        graph_box = self._graph_box(box, batch)
        pos_history = _unwrap(pos_history, pos_history[-1], graph_box, batch)
        mean, std, collective, latents = self._dynamics(pos_history, bead_features, coarse_edge_index, batch,
                                                        graph_box)
        x_t = pos_history[-1]
        velocity = x_t - pos_history[-2]
        # semi-implicit Euler with dt = 1 model step: v += a; x += v
        candidate = x_t + velocity + self._sample(mean, std, collective, noise[0], batch) * self.accel_std_nm
        edge = torch.zeros(2, 0, dtype=torch.long, device=candidate.device)
        shift = torch.zeros(0, 3, dtype=candidate.dtype, device=candidate.device)
        graph_at = candidate  # positions the Score graph (if any) was built at
        if draws > 1:
            candidate, graph_at, edge, shift = self._refine(candidate, latents, noise[1:], coarse_edge_index,
                                                            batch, graph_box)
        limit = max(self.min_bonded_nm, self.min_nonbonded_nm)
        if self.hard_core and limit > 0:
            # The Score graph (built at the re-noised start of the refinement) holds every pair now closer
            # than 2 * limit unless beads moved from there by more than the skin (as for a Verlet list); else, or
            # without one, a short-range graph at the final positions. 2 * limit: a correction moves
            # a bead by at most ~limit, so the beads it can be pushed into are in the graph too.
            reuse = edge.size(1) > 0  # the PaxNet Score network builds its own graphs: none to reuse
            if reuse:
                moved = torch.linalg.vector_norm(candidate - graph_at, dim=-1).max()
                reuse = bool(2.0 * moved + 2.0 * limit < self.score.cutoff)
            if not reuse:
                edge, shift = radius_graph(candidate, 2.0 * limit, batch, graph_box)
            candidate = self._hard_core(candidate, bead_features[:, -1], coarse_edge_index, batch, graph_box,
                                        edge, shift)
        return candidate

    def _refine(self, candidate: Tensor, latents: Tensor, noise: Tensor, coarse_edge_index: Tensor, batch: Tensor,
                box: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Reverse diffusion over ``refine_sigmas`` from the re-noised candidate.

        Returns the refined positions, the positions the Score graph was built
        at, and that graph (edges, shifts).

        The injected noise has zero mean per molecule: the Score network sees
        relative positions only and cannot remove a centre-of-mass kick, which
        the dynamics' own centre-of-mass term already supplies.
        """
        levels = [sigma * self.accel_std_nm for sigma in self.refine_sigmas]
        draws, n = noise.size(0), noise.size(1)
        per_bead = noise.transpose(0, 1).reshape(n, draws * 3)  # every draw's graph mean in one scatter
        internal = noise - graph_mean(per_bead, batch)[0].reshape(n, draws, 3).transpose(0, 1)
        x = candidate + levels[0] * internal[0]
        start = x
        edge, shift = self.score.graph(start, batch, box)
        sigma_column = torch.ones_like(candidate[:, :1])
        for i in range(len(levels)):
            eps = self._score_eps(x, latents, sigma_column * self.refine_sigmas[i], coarse_edge_index, batch, box,
                                  edge, shift)
            last = i + 1 == len(levels)
            x = anneal_step(x, eps, levels[i], 0.0 if last else levels[i + 1],
                            internal[0] if last else internal[i + 1])  # the last step takes no noise
        return x, start, edge, shift

    def forward(self, pos_history: Tensor, bead_features: Tensor, coarse_edge_index: Tensor, batch: Tensor,
                box: Tensor, noise: Tensor, refine: bool = True) -> Tensor:
        """Same as :meth:`step`."""
        return self.step(pos_history, bead_features, coarse_edge_index, batch, box, noise, refine)

    # --------------------------------------------------------------- training
    def losses(self, pos_history: Tensor, pos_target: Tensor, bead_features: Tensor, coarse_edge_index: Tensor,
               batch: Tensor, box: Tensor, history_sigma: Tensor, score_sigma: Tensor) -> dict:
        """Training losses on a batch (Python only; not in the exported file).

        ``pos_history`` (k, N, 3) nm, ``pos_target`` (N, 3) nm. ``history_sigma``
        and ``score_sigma`` (N, 1) are noise levels in accel-std units per bead
        (usually constant per graph). Returns ``nll`` (Gaussian NLL of the
        scaled acceleration), ``dsm`` (denoising score matching, weighted by
        sigma^2, i.e. the mean squared error of the predicted unit noise) and
        ``accel_mse`` (of the mean, scaled units; a diagnostic).
        """
        graph_box = self._graph_box(box, batch)
        pos_history = _unwrap(pos_history, pos_history[-1], graph_box, batch)
        pos_target = _unwrap(pos_target, pos_history[-1], graph_box, batch)
        # noisy history: the target acceleration is taken from the noisy frames,
        # so the model learns to correct the noise instead of integrating it
        noisy = pos_history + (history_sigma * self.accel_std_nm).unsqueeze(0) * torch.randn_like(pos_history)
        x_t, x_prev = noisy[-1], noisy[-2]
        accel = (pos_target - 2.0 * x_t + x_prev) / self.accel_std_nm
        mean, std, collective, latents = self._dynamics(noisy, bead_features, coarse_edge_index, batch, graph_box)
        # NLL of the internal accelerations (per bead) and of the centre-of-mass one (per graph)
        accel_com, count = graph_mean(accel, batch)
        mean_com, _ = graph_mean(mean, batch)
        nll = gaussian_nll(accel - accel_com, mean - mean_com, std)
        z = (accel_com - mean_com) / collective
        nll = nll + ((0.5 * z.pow(2).sum(-1) + 3.0 * torch.log(collective.squeeze(-1))) / count.squeeze(-1)).mean()
        eps = torch.randn_like(pos_target)
        candidate = pos_target + (score_sigma * self.accel_std_nm) * eps
        edge, shift = self.score.graph(candidate, batch, graph_box)
        eps_pred = self._score_eps(candidate, latents, score_sigma, coarse_edge_index, batch, graph_box, edge, shift)
        dsm = (eps_pred - eps).pow(2).sum(-1).mean()
        return {"nll": nll, "dsm": dsm, "accel_mse": (mean - accel).pow(2).sum(-1).mean().detach()}


def type_mass_table(atom_types: Tensor, atom_masses: Tensor, n_types: Optional[int] = None) -> Tensor:
    """(n_types,) mass (amu) of each atom type; 0 for types not present.

    Raises ``ValueError`` if one type has two different masses (the embedding
    derives bead masses from types, so types must determine masses).
    """
    atom_types = torch.as_tensor(atom_types, dtype=torch.long).flatten()
    atom_masses = torch.as_tensor(atom_masses, dtype=torch.float64).flatten()
    if atom_types.numel() != atom_masses.numel() or atom_types.numel() == 0:
        raise ValueError("atom_types and atom_masses must be non-empty and of equal length")
    if int(atom_types.min()) < 0:
        raise ValueError("atom types must be >= 0")
    size = max(int(atom_types.max()) + 1, n_types or 0)
    table = torch.zeros(size, dtype=torch.float64)
    table[atom_types] = atom_masses
    if not torch.allclose(table[atom_types], atom_masses, rtol=1e-4):
        bad = torch.unique(atom_types[~torch.isclose(table[atom_types], atom_masses, rtol=1e-4)]).tolist()
        raise ValueError(f"atom type(s) {bad} occur with different masses; the model needs one mass per type")
    if not bool((atom_masses > 0).all()):
        raise ValueError("atom masses must be > 0 amu")
    return table.float()
