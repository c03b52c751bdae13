"""Hyperparameters of the propagator: :class:`PropagatorConfig` (YAML key ``model``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import List, Union

__all__ = ["PropagatorConfig", "SCORE_NETS", "NOISE_MODELS"]

# Names of the Score networks (``score_net``); openmm_cgml.model.scores maps each to its class.
SCORE_NETS = ("pair", "paxnet")
# Step noise models (``noise``): per-bead independent, correlated along the coarse bonds, or in internal coordinates.
NOISE_MODELS = ("independent", "bonded", "internal")


@dataclass
class PropagatorConfig:
    """Network sizes and sampler settings of :class:`~openmm_cgml.model.propagator.CGPropagator`.

    Plain numbers (the YAML key ``model``). Lengths are in nm; ``min_std`` and
    ``refine_sigmas`` are in units of the dataset's acceleration std
    (``accel_std_nm``).

    Parameters
    ----------
    k : int
        History length in frames (``k - 1`` velocities).
    embed_hidden, embed_layers : int
        Width and message-passing steps of the Embedding GNN.
    hidden, n_layers : int
        Width and layers of the Dynamics PaxNet.
    cutoff_nm : float
        Radius-graph cutoff in nm.
    n_rbf, n_sbf : int
        Radial and angular basis sizes.
    min_std : float
        Floor of the predicted std.
    noise : str
        The acceleration noise: ``"independent"`` (per bead, plus one centre-of-mass kick per
        molecule) or ``"bonded"`` (a Gaussian Markov chain along the coarse bonds, anisotropic
        about each bond: :class:`~openmm_cgml.model.bonded_noise.BondedNoise`) or ``"internal"``
        (Gaussians on the mean step's bond lengths, angles and torsions, orientation and centre:
        :class:`~openmm_cgml.model.internal_coordinates.InternalCoordinateNoise`; molecules whose
        coarse bonds start with three beads in a row). Files without the option load as ``"independent"``.
    torsion_components : int
        With ``noise: internal``, the Gaussians in each torsion's mixture (1: a single Gaussian).
    score_net : str
        ``"pair"`` (one equivariant pair-message round, fast) or ``"paxnet"``.
    score_hidden, score_layers : int
        Score network width, and its PaxNet layers (``score_net = "paxnet"`` only).
    refine_sigmas : list of float
        Noise levels of the refinement at inference, one Score call each.
    hard_core : bool
        Push pairs closer than the learned minimum distances apart after each step.
    hard_core_sweeps : int
        Projection sweeps (vectorised over all close pairs) per model step.
    exclusion_retries : int
        The truncated step: a molecule with a pair closer than its learned minimum distance redraws
        its step up to this many times (0: off); see docs/propagator.md.
    chirality : bool or "auto"
        Give the Dynamics network reflection-odd bead inputs (signed volumes of the coarse bonds,
        :mod:`openmm_cgml.model.chirality`), so it tells a molecule from its mirror image (SE(3)
        instead of E(3)). Off by default here, and files without the option load with it off;
        ``cgml train`` takes ``auto`` when the option is not given and resolves it from the data: on
        when a training molecule has a stereocentre (:func:`openmm_cgml.bond_graph.stereocentres`).
        A propagator needs it resolved.
    """

    k: int = 4
    embed_hidden: int = 32
    embed_layers: int = 3
    hidden: int = 48
    n_layers: int = 2
    cutoff_nm: float = 1.0
    n_rbf: int = 16
    n_sbf: int = 6
    min_std: float = 0.05
    noise: str = "independent"
    torsion_components: int = 1
    score_net: str = "pair"
    score_hidden: int = 32
    score_layers: int = 2
    refine_sigmas: List[float] = field(default_factory=lambda: [0.6, 0.3, 0.1])
    hard_core: bool = True
    hard_core_sweeps: int = 8
    exclusion_retries: int = 8
    chirality: Union[bool, str] = False

    @classmethod
    def from_dict(cls, values: dict | None) -> "PropagatorConfig":
        """Build from a (YAML) dict; unknown keys are a ``ValueError`` naming them.

        Parameters
        ----------
        values : dict or None
            Option name -> value; missing options take their defaults.

        Returns
        -------
        PropagatorConfig
            The validated configuration.
        """
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model option(s) {unknown}; known: {sorted(known)}")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option out of range."""
        if int(self.k) < 2:
            raise ValueError(f"model.k must be >= 2 (velocities need two frames), got {self.k}")
        for name in ("embed_hidden", "embed_layers", "hidden", "n_layers", "score_hidden", "score_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if not self.cutoff_nm > 0:
            raise ValueError(f"model.cutoff_nm must be > 0 nm, got {self.cutoff_nm}")
        if not self.min_std > 0:
            raise ValueError(f"model.min_std must be > 0, got {self.min_std}")
        if self.noise not in NOISE_MODELS:
            raise ValueError(f"model.noise must be one of {list(NOISE_MODELS)}, got {self.noise!r}")
        if int(self.torsion_components) < 1:
            raise ValueError(f"model.torsion_components must be >= 1, got {self.torsion_components}")
        if self.score_net not in SCORE_NETS:
            raise ValueError(f"model.score_net must be 'pair' or 'paxnet', got {self.score_net!r}")
        if any(not s > 0 for s in self.refine_sigmas):
            raise ValueError(f"model.refine_sigmas must all be > 0, got {self.refine_sigmas}")
        if not isinstance(self.hard_core, bool):
            raise ValueError(f"model.hard_core must be true or false, got {self.hard_core!r}")
        if int(self.hard_core_sweeps) < 1:
            raise ValueError(f"model.hard_core_sweeps must be >= 1, got {self.hard_core_sweeps}")
        if int(self.exclusion_retries) < 0:
            raise ValueError(f"model.exclusion_retries must be >= 0, got {self.exclusion_retries}")
        if not isinstance(self.chirality, bool) and self.chirality != "auto":
            raise ValueError(f"model.chirality must be true, false or auto, got {self.chirality!r}")

    def to_dict(self) -> dict:
        """The options as a plain dict (the ``config`` of a model's ``init_json``)."""
        return asdict(self)
