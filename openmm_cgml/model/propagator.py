"""The learned stochastic propagator :class:`CGPropagator`: Embedding, Dynamics and Score networks.

One model step jumps ``md_steps_per_model_step`` fine MD steps. Positions are
in nm throughout; the networks work internally in *scaled model-step units*:
velocities are finite differences ``x[t] - x[t-1]`` (nm per model step)
divided by the dataset's ``velocity_std_nm``, accelerations
``x[t+1] - 2 x[t] + x[t-1]`` (nm per model step^2) divided by its
``accel_std_nm``, so every network sees numbers of order one whatever the
system and the lag.

- Embedding (:class:`~openmm_cgml.model.embedding.EmbeddingGNN`) - message
  passing over the fine (atom) bond graph, from atom types only; atom
  features are mean-pooled per bead, once per molecule (``embed``).
- Dynamics network - a :class:`~openmm_cgml.nn.PaxNet` over the beads
  (radius graph globally, coarse bonds locally) whose vector inputs are the
  last ``k - 1`` velocities and scalar inputs their norms, the bead
  embedding and the bead mass (with ``chirality``, also reflection-odd
  signed volumes of the coarse bonds, :mod:`openmm_cgml.model.chirality`). It returns per bead an equivariant mean
  acceleration and an invariant, strictly positive internal std
  (``std = min_std + softplus(.)``), and per graph the std of the
  centre-of-mass acceleration (with ``noise: bonded``, the scales of
  :class:`~openmm_cgml.model.bonded_noise.BondedNoise` instead; with
  ``noise: internal``, the stds of
  :class:`~openmm_cgml.model.internal_coordinates.InternalCoordinateNoise`).
- Score network (:mod:`openmm_cgml.model.scores`, injected; by default the
  light :class:`~openmm_cgml.model.scores.PairScore`) - at the candidate
  positions, conditioned on the noise level and the dynamics latents, no
  vector inputs. It predicts the noise ``eps`` of a candidate
  ``x~ = x + sigma * eps`` (score ``-eps / sigma``). ``step`` refines a
  sampled step by a short reverse diffusion
  (:func:`~openmm_cgml.model.sampler.anneal_step`): the sample is re-noised
  to the first level, then taken down level by level (one network call
  each, default 3) instead of the 200 annealed-Langevin calls of the
  published method.
- Hard core (:mod:`openmm_cgml.model.hard_core`) - bead pairs closer than
  the learned minimum distances are pushed apart after the step.

``step`` samples ``a = mean + std * (noise[0] - z) + std_com * sqrt(n) * z``
(``z`` the graph mean of ``noise[0]``; with ``noise: bonded``, ``a = mean +``
the draw of :class:`~openmm_cgml.model.bonded_noise.BondedNoise` from
``noise[0:2]``), integrates semi-implicit Euler in model-step units
(``v = x[t] - x[t-1]; v += a; x += v``) and refines with the remaining draws.
With ``noise: internal`` the mean acceleration, integrated, gives the mean
positions, and the draw (``noise[0:3]``, ``noise[0:4]`` with torsion mixtures)
perturbs bond lengths, angles, torsions, orientation and centre instead
(:class:`~openmm_cgml.model.internal_coordinates.InternalCoordinateNoise`).
The whole module is TorchScript-able; see ``openmm_cgml.model_file``.
"""

import json
import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from openmm_cgml.model.batch import graph_box, graph_mean, unwrap
from openmm_cgml.model.bonded_noise import BondedNoise
from openmm_cgml.model.chirality import N_PSEUDO, dynamics_scalars
from openmm_cgml.model.config import PropagatorConfig
from openmm_cgml.model.embedding import EmbeddingGNN, check_embed_inputs, pool_beads, type_mass_table
from openmm_cgml.model.hard_core import (
    bonded_pairs,
    contact_graph,
    molecules_with,
    near_pairs,
    pair_minimum,
    project_hard_core,
    violating_beads,
)
from openmm_cgml.model.internal_coordinates import InternalCoordinateNoise, check_trees
from openmm_cgml.model.layers import VectorHead
from openmm_cgml.model.losses import gaussian_nll, training_losses
from openmm_cgml.model.sampler import (
    anneal_step,
    euler_step,
    internal_noise,
    log_spaced_sigmas,
    marginal_std,
    sample_acceleration,
)
from openmm_cgml.model.scores import build_score
from openmm_cgml.model.topology import TopologyCache
from openmm_cgml.nn import PaxNet
from openmm_cgml.nn.layers import Block, mlp

# PropagatorConfig, gaussian_nll, log_spaced_sigmas, anneal_step, type_mass_table: re-exported (older imports)
__all__ = ["PropagatorConfig", "EmbeddingGNN", "CGPropagator", "gaussian_nll", "log_spaced_sigmas", "anneal_step",
           "type_mass_table"]


def _check_positive_scales(scales: dict, strict: bool) -> None:
    """``ValueError`` unless every value is finite and > 0 (``strict``) or >= 0."""
    for name, value in scales.items():
        if not (math.isfinite(value) and (value > 0 if strict else value >= 0)):
            raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} 0"
                             f"{'' if strict else ' nm'}, got {value}")


def _checked_init(config: PropagatorConfig, type_masses, scales: dict, distances: dict) -> Tensor:
    """``ValueError`` naming the first bad constructor argument; the type masses as a float32 vector."""
    config.validate()
    if not isinstance(config.chirality, bool):   # cgml train resolves 'auto' from the data
        raise ValueError("model.chirality must be resolved to true or false before building a propagator")
    type_masses = torch.as_tensor(type_masses, dtype=torch.float32).flatten()
    if type_masses.numel() == 0 or not bool((type_masses >= 0).all()):
        raise ValueError("type_masses must be a non-empty array of masses >= 0 (amu)")
    _check_positive_scales(scales, strict=True)
    _check_positive_scales(distances, strict=False)
    return type_masses


def _check_step_inputs(pos_history: Tensor, bead_features: Tensor, coarse_edge_index: Tensor, batch: Tensor,
                       k: int, model_beads: int, n_features: int) -> None:
    """``ValueError`` naming the first input of ``step``/``predict`` with a wrong shape or value."""
    if pos_history.dim() != 3 or pos_history.size(0) != k or pos_history.size(2) != 3:
        raise ValueError("pos_history must have shape (k, n_beads, 3) with k = " + str(k)
                         + ", got " + str(pos_history.shape))
    n = pos_history.size(1)
    if model_beads > 0 and (n == 0 or n % model_beads != 0):
        raise ValueError("this model is for a molecule of " + str(model_beads) + " beads, got "
                         + str(n) + " beads (not a whole number of copies)")
    if bead_features.dim() != 2 or bead_features.size(0) != n or bead_features.size(1) != n_features:
        raise ValueError("bead_features must have shape (" + str(n) + ", " + str(n_features)
                         + ") as returned by embed(), got " + str(bead_features.shape))
    if batch.dim() != 1 or batch.size(0) != n:
        raise ValueError("batch must have shape (" + str(n) + ",), got " + str(batch.shape))
    if coarse_edge_index.dim() != 2 or coarse_edge_index.size(0) != 2:
        raise ValueError("coarse_edge_index must have shape (2, E), got " + str(coarse_edge_index.shape))
    if coarse_edge_index.numel() > 0 and (int(coarse_edge_index.min()) < 0 or int(coarse_edge_index.max()) >= n):
        raise ValueError("coarse_edge_index refers to beads outside 0.." + str(n - 1))
    if not bool(torch.isfinite(pos_history).all()):
        raise ValueError("pos_history contains NaN or infinite positions")


def _noise_heads(config: PropagatorConfig, accel_std_nm: float) -> dict:
    """The modules of the step's noise model (``config.noise``), by the attribute names the state dict uses."""
    if config.noise == "bonded":
        return {"bonded_noise": BondedNoise(config.hidden, config.min_std)}
    if config.noise == "internal":
        return {"coordinate_noise": InternalCoordinateNoise(config.hidden, accel_std_nm, config.torsion_components)}
    # per-bead std, and the std of the collective (centre-of-mass) acceleration of each graph from pooled latents
    return {"std_head": mlp(config.hidden, config.hidden, 1),
            "collective_std_head": mlp(config.hidden, config.hidden, 1)}


def _mapping_init(mapping, transferable: bool, scales: dict) -> Tuple[Tensor, dict]:
    """The type masses and constructor keywords of a propagator for ``mapping`` (``CGPropagator.from_mapping``)."""
    types = torch.as_tensor(mapping.atom_types, dtype=torch.long)
    type_masses = type_mass_table(types, torch.as_tensor(mapping.atom_masses, dtype=torch.float32))
    scales = dict(scales)
    scales.setdefault("mass_scale_amu", float(torch.as_tensor(mapping.bead_masses).double().mean()))
    if not transferable:
        scales.setdefault("n_beads", int(mapping.n_beads))
        scales.setdefault("n_atoms", int(mapping.n_atoms))
    return type_masses, scales


def _init_json(model, config: PropagatorConfig, type_masses: Tensor) -> str:
    """A propagator's ``init_json``: everything needed to rebuild it (before loading a state dict)."""
    keys = ("accel_std_nm", "velocity_std_nm", "mass_scale_amu", "model_dt_ps", "md_steps_per_model_step",
            "md_timestep_ps", "temperature_K", "n_beads", "n_atoms", "min_bonded_nm", "min_nonbonded_nm")
    return json.dumps({"config": config.to_dict(), "type_masses": type_masses.tolist(),
                       **{key: getattr(model, key) for key in keys}})


def _pairs(tables: Dict[str, List[Tensor]], box: Optional[Tensor]) -> Optional[Tensor]:
    """The molecules' bead pairs (:class:`~openmm_cgml.model.topology.TopologyCache`) where a step takes them
    instead of radius graphs: on open boundaries, when the molecules are small."""
    if box is None and "pairs" in tables:
        return tables["pairs"][0]
    return None


def _pair_minimum(edge: Tensor, tables: Dict[str, List[Tensor]], pairs: Optional[Tensor], x: Tensor,
                  min_distance_nm: Tensor) -> Tensor:
    """The minimum distance (E,) nm of each pair of ``edge``: the molecules' ``pairs`` know their bonds
    (topology tables), a radius graph looks them up."""
    if pairs is not None:
        bonded = tables["pairs"][1]
    else:
        bonded = bonded_pairs(edge, x.size(0), tables["bond_keys"][0])
    return pair_minimum(bonded, min_distance_nm, x.dtype)


class CGPropagator(Block):
    """The full propagator; TorchScript-able (``embed``, ``step``, ``predict``, ``noise_draws``).

    Parameters
    ----------
    config : PropagatorConfig
        Network sizes and sampler settings.
    type_masses : Tensor
        (n_types,) atom mass in amu of each atom type seen in training (0 = unseen: ``embed`` refuses it).
    accel_std_nm, velocity_std_nm : float
        Dataset scales (nm per model step^2, nm per model step).
    mass_scale_amu : float
        Typical bead mass, divides the mass input.
    model_dt_ps, md_steps_per_model_step, md_timestep_ps, temperature_K : float, int, float, float
        What one model step stands for (carried into the exported file).
    n_beads, n_atoms : int
        The molecule the model is for (0 = transferable); ``step``/``embed`` accept whole multiples (copies).
    min_bonded_nm, min_nonbonded_nm : float
        Hard-core distances (nm) for bead pairs joined by a coarse bond and for all other pairs, learned from
        the reference data (``CoarseDataset.min_distances``); 0 = unknown: no projection (older models).
    score : torch.nn.Module, optional
        The Score network (:mod:`openmm_cgml.model.scores`), taking latents of width ``config.hidden``; default
        ``build_score(config)``, which ``init_json`` rebuilds.
    """

    refine_sigmas: List[float]

    def __init__(self, config: PropagatorConfig, type_masses: Tensor, accel_std_nm: float = 1.0,
                 velocity_std_nm: float = 1.0, mass_scale_amu: float = 1.0, model_dt_ps: float = 1.0,
                 md_steps_per_model_step: int = 1, md_timestep_ps: float = 1.0, temperature_K: float = 300.0,
                 n_beads: int = 0, n_atoms: int = 0, min_bonded_nm: float = 0.0, min_nonbonded_nm: float = 0.0,
                 score: Optional[nn.Module] = None):
        super().__init__()
        type_masses = _checked_init(config, type_masses, {"accel_std_nm": accel_std_nm,
                                                          "velocity_std_nm": velocity_std_nm,
                                                          "mass_scale_amu": mass_scale_amu, "model_dt_ps": model_dt_ps},
                                    {"min_bonded_nm": min_bonded_nm, "min_nonbonded_nm": min_nonbonded_nm})
        self.k = int(config.k)
        self.accel_std_nm, self.velocity_std_nm = float(accel_std_nm), float(velocity_std_nm)
        self.mass_scale_amu, self.model_dt_ps = float(mass_scale_amu), float(model_dt_ps)
        self.md_steps_per_model_step, self.md_timestep_ps = int(md_steps_per_model_step), float(md_timestep_ps)
        self.temperature_K = float(temperature_K)
        self.n_beads, self.n_atoms = int(n_beads), int(n_atoms)
        self.min_std, self.chirality = float(config.min_std), bool(config.chirality)  # chirality: SE(3) inputs
        self.refine_sigmas = [float(s) for s in config.refine_sigmas]
        self.min_bonded_nm, self.min_nonbonded_nm = float(min_bonded_nm), float(min_nonbonded_nm)
        self.hard_core = bool(config.hard_core) and max(self.min_bonded_nm, self.min_nonbonded_nm) > 0
        self.hard_core_sweeps = int(config.hard_core_sweeps)
        # redraws of a molecule's step while it has a pair under its minimum distance (0: no truncation)
        self.exclusion_retries = int(config.exclusion_retries)
        # False: `step` skips the checks (host syncs) and reuses the topology tables `validate` stored
        self.validate_inputs = True
        # fixed_shapes: each small molecule's bead pairs (all of them) instead of radius graphs on open
        # boundaries; fixed_work also does every redraw of the truncation and every hard-core sweep, so a step
        # reads nothing back to the host (docs/propagator.md, "Fixed work"). What torch.compile and CUDA graphs
        # need; the same numbers, to rounding
        self.fixed_work = False
        self.fixed_shapes = False
        # [bonded, nonbonded] nm; not persistent, so checkpoints from before the hard core still load
        self.register_buffer("min_distance_nm", torch.tensor([self.min_bonded_nm, self.min_nonbonded_nm]),
                             persistent=False)
        # close pairs the projection has pushed apart since loading (a diagnostic)
        self.register_buffer("hard_core_events", torch.zeros((), dtype=torch.long), persistent=False)
        # molecule-steps redrawn by the truncation, and those still too close after the last redraw
        self.register_buffer("exclusion_events", torch.zeros(2, dtype=torch.long), persistent=False)
        self.metadata = "{}"
        self.n_features = int(config.embed_hidden) + 1  # pooled embedding + scaled mass
        self.hidden = int(config.hidden)
        self.register_buffer("type_masses", type_masses)
        self.init_json = _init_json(self, config, type_masses)

        self.embedding = EmbeddingGNN(type_masses.numel(), config.embed_hidden, config.embed_layers)
        n_vel = self.k - 1
        self.dynamics = PaxNet(hidden=config.hidden, n_layers=config.n_layers, cutoff=config.cutoff_nm,
                               n_rbf=config.n_rbf, n_sbf=config.n_sbf, vector_in=n_vel,
                               scalar_in=n_vel + self.n_features + (N_PSEUDO if self.chirality else 0))
        self.accel_head = VectorHead(config.hidden)
        self.topology = TopologyCache(self.chirality, config.noise == "internal", not self.dynamics.use_local_cutoff)
        for name, head in _noise_heads(config, self.accel_std_nm).items():
            self.add_module(name, head)
        # standard normal (N, 3) draws the dynamics takes per step: with bonded noise a second (the rotation), with
        # internal-coordinate noise a second and a third (centre shift and rotation) and a fourth with mixtures
        self.dynamics_draws = (self.coordinate_noise.draws() if config.noise == "internal"
                               else 2 if config.noise == "bonded" else 1)
        # built last, so a default model's initial weights do not depend on where the Score network is made
        self.score = build_score(config) if score is None else score

    def extra_repr(self) -> str:
        return (f"k={self.k}, n_beads={self.n_beads or 'any'}, hidden={self.hidden}, n_features={self.n_features}, "
                f"score={self.score!r}, refine_sigmas={self.refine_sigmas}, hard_core={self.hard_core}")

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

        Parameters
        ----------
        mapping : Mapping
            Gives the mass per atom type, the typical bead mass and (unless
            ``transferable``) the bead and atom counts.
        config : PropagatorConfig, optional
            Default: ``PropagatorConfig()``.
        transferable : bool
            Leave ``n_beads = n_atoms = 0`` (any molecule of seen atom types).
        **scales
            Further keyword arguments of the constructor (``accel_std_nm``, ``model_dt_ps``, ...).
        """
        type_masses, scales = _mapping_init(mapping, transferable, scales)
        return cls(config or PropagatorConfig(), type_masses, **scales)

    def _dynamics(self, pos_history: Tensor, bead_features: Tensor, coarse_edge_index: Tensor, batch: Tensor,
                  box: Optional[Tensor], tables: Dict[str, List[Tensor]]) -> Tuple[Tensor, Tensor, Tensor]:
        """Acceleration mean (N, 3) and noise parameters in accel-std units, and the scalar latents (N, hidden).

        Noise parameters: ``[std, collective std]`` (N, 2) (internal, and per graph), or with bonded noise
        ``BondedNoise``'s (N, 7), or with internal-coordinate noise ``InternalCoordinateNoise``'s (N, 6 + 3K)."""
        velocities = (pos_history[1:] - pos_history[:-1]) / self.velocity_std_nm     # (k-1, N, 3)
        v_in = velocities.permute(1, 2, 0)                                            # (N, 3, k-1)
        s_in = dynamics_scalars(v_in, bead_features, pos_history[-1], coarse_edge_index, self.chirality,
                                tables.get("chirality"))
        s, v = self.dynamics(s_in, v_in, pos_history[-1], coarse_edge_index, batch, box, tables.get("local"),
                             _pairs(tables, box))
        mean = self.accel_head(s, v)
        if hasattr(self, "bonded_noise"):
            return mean, self.bonded_noise(s, batch), s
        if hasattr(self, "coordinate_noise"):
            return mean, self.coordinate_noise(s, batch), s
        std = self.min_std + nn.functional.softplus(self.std_head(s))
        pooled, _ = graph_mean(s, batch)
        collective = self.min_std + nn.functional.softplus(self.collective_std_head(pooled))
        return mean, torch.cat([std, collective], dim=1), s

    def _draw(self, mean: Tensor, params: Tensor, noise: Tensor, x: Tensor, coarse_edge_index: Tensor,
              batch: Tensor) -> Tensor:
        """An acceleration (N, 3) in accel-std units from standard normal ``noise`` (dynamics_draws, N, 3)."""
        if hasattr(self, "bonded_noise"):
            return mean + self.bonded_noise.sample(params, noise[0], noise[1], x, coarse_edge_index, batch)
        return sample_acceleration(mean, params[:, :1], params[:, 1:], noise[0], batch)

    # ------------------------------------------------------------- public API
    @torch.jit.export
    def embed(self, atom_types: Tensor, fine_edge_index: Tensor, bead_of_atom: Tensor, n_beads: int) -> Tensor:
        """Bead features (n_beads, n_features): pooled atom embeddings plus scaled bead mass; once per molecule."""
        check_embed_inputs(atom_types, fine_edge_index, bead_of_atom, n_beads, self.n_beads, self.n_atoms,
                           self.type_masses)
        return self._embed(atom_types, fine_edge_index, bead_of_atom, n_beads)

    def _embed(self, atom_types: Tensor, fine_edge_index: Tensor, bead_of_atom: Tensor, n_beads: int) -> Tensor:
        """``embed`` without the input checks (training batches of many molecules, already checked)."""
        h = self.embedding(atom_types, fine_edge_index)
        return pool_beads(h, bead_of_atom, self.type_masses[atom_types], n_beads, self.mass_scale_amu)

    @torch.jit.export
    def predict(self, pos_history: Tensor, bead_features: Tensor, coarse_edge_index: Tensor, batch: Tensor,
                box: Tensor) -> Tuple[Tensor, Tensor]:
        """Acceleration mean (N, 3) and isotropic std (N, 1) in nm per model step^2.

        With ``noise: internal`` the std is estimated from 64 draws (the global random stream)."""
        self.validate(pos_history, bead_features, coarse_edge_index, batch)
        tables = self.topology.tables
        boxes = graph_box(box, batch)
        pos_history = unwrap(pos_history, pos_history[-1], boxes, batch)
        mean, params, _ = self._dynamics(pos_history, bead_features, coarse_edge_index, batch, boxes, tables)
        if hasattr(self, "bonded_noise"):
            std = self.bonded_noise.marginal_std(params, pos_history[-1], coarse_edge_index, batch)
        elif hasattr(self, "coordinate_noise"):
            x_mean = euler_step(pos_history, mean, self.accel_std_nm)
            std = self.coordinate_noise.marginal_std(params, pos_history[-1], x_mean, bead_features[:, -1],
                                                     coarse_edge_index, batch, 64, tables["forest"]) / self.accel_std_nm
        else:
            std = marginal_std(params[:, :1], params[:, 1:], batch)
        return mean * self.accel_std_nm, std * self.accel_std_nm

    @torch.jit.export
    def validate(self, pos_history: Tensor, bead_features: Tensor, coarse_edge_index: Tensor, batch: Tensor) -> None:
        """``ValueError`` naming the first input of ``step`` with a wrong shape or value (NaN positions too);
        then stores the topology tables of these bonds for the steps that follow."""
        _check_step_inputs(pos_history, bead_features, coarse_edge_index, batch, self.k, self.n_beads,
                           self.n_features)
        self.topology.fill(coarse_edge_index, pos_history.size(1), self._pair_molecules(batch))
        if hasattr(self, "coordinate_noise"):   # read off the forest just stored
            check_trees(coarse_edge_index, pos_history.size(1), self.topology.tables["forest"][2])

    def _pair_molecules(self, batch: Tensor) -> Optional[Tensor]:
        """``batch`` where the topology tables are to hold the molecules' bead pairs (fixed shapes), else None."""
        return batch if self.fixed_work or self.fixed_shapes else None

    @torch.jit.export
    def noise_draws(self, refine: bool) -> int:
        """Standard normal (N, 3) draws one ``step`` consumes.

        Per attempt ``dynamics_draws`` (1; 2 with bonded noise, 3 or 4 with internal-coordinate noise) plus one per
        refinement level; ``1 + exclusion_retries`` attempts when the truncation is on (the model has minimum
        distances).
        """
        per_attempt = self.dynamics_draws + (len(self.refine_sigmas) if refine else 0)
        return per_attempt * (1 + self._retries())

    def _retries(self) -> int:
        return self.exclusion_retries if max(self.min_bonded_nm, self.min_nonbonded_nm) > 0 else 0

    @torch.jit.export
    def step(self, pos_history: Tensor, bead_features: Tensor, coarse_edge_index: Tensor, batch: Tensor,
             box: Tensor, noise: Tensor, refine: bool) -> Tensor:
        """Next positions (N, 3) nm from the last k positions (k, N, 3) nm.

        ``noise`` (D, N, 3) standard normal, ``D = noise_draws(refine)``: one block per attempt, its first draw
        for the dynamics, the rest for the refinement. A molecule with a pair under its minimum distance redraws
        its step up to ``exclusion_retries`` times (the truncated step, docs/propagator.md); then the hard core.
        """
        if self.validate_inputs:
            self.validate(pos_history, bead_features, coarse_edge_index, batch)
        tables, rounds = self.topology.get(coarse_edge_index, pos_history.size(1),   # validated: these inputs' own
                                           self._pair_molecules(batch))
        draws = self.noise_draws(refine)
        if noise.dim() != 3 or noise.size(0) != draws or noise.shape[1:] != pos_history[-1].shape:
            raise ValueError("noise must have shape (" + str(draws) + ", n_beads, 3), got " + str(noise.shape))
        boxes = graph_box(box, batch)
        pos_history = unwrap(pos_history, pos_history[-1], boxes, batch)
        mean, params, latents = self._dynamics(pos_history, bead_features, coarse_edge_index, batch, boxes, tables)
        attempts = 1 + self._retries()
        per_attempt = draws // attempts
        masses = bead_features[:, -1]
        candidate, graph_at, edge, shift = self._sample(pos_history, mean, params, latents, noise[:per_attempt],
                                                        masses, coarse_edge_index, batch, boxes, tables, rounds)
        limit = max(self.min_bonded_nm, self.min_nonbonded_nm)
        pairs = _pairs(tables, boxes)
        if pairs is not None:   # every pair of each molecule: holds every close pair, wherever the beads went
            edge, shift = pairs, torch.zeros(pairs.size(1), 3, dtype=candidate.dtype, device=candidate.device)
            if not self.fixed_work and limit > 0 and (attempts > 1 or self.hard_core):
                # the common case in one host read (one graph break when compiled): no pair is near a minimum
                # distance, so neither the truncation nor the hard core has anything to do
                if not bool(near_pairs(candidate, edge, shift, limit).any()):
                    return candidate
        for attempt in range(1, attempts + 1 if attempts > 1 else 1):   # no checks without truncation
            # truncation: a molecule with a pair under its minimum distance redraws its whole step
            if pairs is None:
                edge, shift = contact_graph(candidate, batch, boxes, limit, edge, shift, graph_at,
                                            self.score.cutoff)
            minimum = _pair_minimum(edge, tables, pairs, candidate, self.min_distance_nm)
            bad = violating_beads(candidate, batch, edge, shift, minimum)
            # fixed work redraws even when no molecule needs it: where() below keeps the candidate
            if not self.fixed_work and not bool(bad.any()):
                break
            # [redrawn, still too close after the last redraw], in molecule-steps
            self.exclusion_events[int(attempt == attempts)] += molecules_with(bad, batch)
            if attempt < attempts:
                retry, graph_at, score_edge, score_shift = self._sample(
                    pos_history, mean, params, latents, noise[attempt * per_attempt:(attempt + 1) * per_attempt],
                    masses, coarse_edge_index, batch, boxes, tables, rounds)
                if pairs is None:   # the Score graph, for contact_graph to reuse
                    edge, shift = score_edge, score_shift
                candidate = torch.where(bad.unsqueeze(-1), retry, candidate)
        if self.hard_core and limit > 0:
            if attempts == 1 and pairs is None:   # else the truncation's last check built it at this candidate
                edge, shift = contact_graph(candidate, batch, boxes, limit, edge, shift, graph_at, self.score.cutoff)
            candidate = project_hard_core(candidate, bead_features[:, -1], edge, shift,
                                          _pair_minimum(edge, tables, pairs, candidate, self.min_distance_nm), limit,
                                          self.hard_core_sweeps, self.hard_core_events, not self.fixed_work)
        return candidate

    def _sample(self, pos_history: Tensor, mean: Tensor, params: Tensor, latents: Tensor,
                noise: Tensor, masses: Tensor, coarse_edge_index: Tensor, batch: Tensor,
                boxes: Optional[Tensor], tables: Dict[str, List[Tensor]], rounds: int
                ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """One draw of the next positions (acceleration, then refinement if ``noise`` has levels), where the
        Score graph was built (the positions themselves without refinement) and that graph (empty without)."""
        if hasattr(self, "coordinate_noise"):
            x_mean = euler_step(pos_history, mean, self.accel_std_nm)
            candidate = self.coordinate_noise.sample(params, noise[:self.dynamics_draws], pos_history[-1], x_mean,
                                                     masses, coarse_edge_index, batch, tables["forest"], rounds)
        else:
            accel = self._draw(mean, params, noise[:self.dynamics_draws], pos_history[-1], coarse_edge_index, batch)
            candidate = euler_step(pos_history, accel, self.accel_std_nm)
        if noise.size(0) > self.dynamics_draws:
            return self._refine(candidate, latents, noise[self.dynamics_draws:], coarse_edge_index, batch, boxes,
                                _pairs(tables, boxes))
        edge = torch.zeros(2, 0, dtype=torch.long, device=candidate.device)
        shift = torch.zeros(0, 3, dtype=candidate.dtype, device=candidate.device)
        return candidate, candidate, edge, shift

    def _refine(self, candidate: Tensor, latents: Tensor, noise: Tensor, coarse_edge_index: Tensor, batch: Tensor,
                box: Optional[Tensor], pairs: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Reverse diffusion over ``refine_sigmas`` from the re-noised candidate (noise of zero mean per molecule).

        Returns the refined positions, the positions the Score graph was built
        at, and that graph (edges, shifts): the molecules' ``pairs`` where given (open boundaries).
        """
        levels = [sigma * self.accel_std_nm for sigma in self.refine_sigmas]
        internal = internal_noise(noise, batch)
        x = candidate + levels[0] * internal[0]
        start = x
        if pairs is not None:
            edge, shift = pairs, torch.zeros(pairs.size(1), 3, dtype=x.dtype, device=x.device)
        else:
            edge, shift = self.score.graph(start, batch, box)
        sigma_column = torch.ones_like(candidate[:, :1])
        for i in range(len(levels)):
            log_sigma = torch.log(sigma_column * self.refine_sigmas[i])
            eps = self.score(x, latents, log_sigma, coarse_edge_index, batch, box, edge, shift, pairs)
            last = i + 1 == len(levels)
            x = anneal_step(x, eps, levels[i], 0.0 if last else levels[i + 1],
                            internal[0] if last else internal[i + 1])  # the last step takes no noise
        return x, start, edge, shift

    def forward(self, pos_history: Tensor, bead_features: Tensor, coarse_edge_index: Tensor, batch: Tensor,
                box: Tensor, noise: Tensor, refine: bool = True) -> Tensor:
        """Same as :meth:`step`.

        Shapes:
            pos_history (k, N, 3) nm, bead_features (N, n_features), coarse_edge_index (2, E), batch (N,),
            box (3, 3) or (G, 3, 3) nm (zeros: not periodic), noise (noise_draws(refine), N, 3) -> (N, 3) nm
        """
        return self.step(pos_history, bead_features, coarse_edge_index, batch, box, noise, refine)

    # --------------------------------------------------------------- training
    def losses(self, pos_history: Tensor, pos_target: Tensor, bead_features: Tensor, coarse_edge_index: Tensor,
               batch: Tensor, box: Tensor, history_sigma: Tensor, score_sigma: Tensor) -> dict:
        """Training losses on a batch (Python only; not in the exported file): see
        :func:`~openmm_cgml.model.losses.training_losses`."""
        return training_losses(self, pos_history, pos_target, bead_features, coarse_edge_index, batch, box,
                               history_sigma, score_sigma)
