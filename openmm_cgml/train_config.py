"""What a training run is: the YAML sections of ``cgml train`` as checked dataclasses.

:class:`TrainConfig` holds ``data``, ``out_dir``, ``resume``, ``model`` (the
fields of :class:`~openmm_cgml.model.config.PropagatorConfig`), ``train``
(:class:`OptimConfig`) and ``trainer`` (:class:`TrainerConfig`), with the
defaults and comments of ``configs/default.yaml``. Unknown keys and bad values
raise ``ValueError`` naming the key. How a run executes (Lightning) is in
:mod:`openmm_cgml.train`, which needs Lightning; this module does not.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from openmm_cgml.io import read_yaml

__all__ = ["TrainConfig", "OptimConfig", "TrainerConfig", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def _from_dict(cls, values, section: str):
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in section '{section}'; known: {sorted(known)}")
    return cls(**values)


@dataclass
class OptimConfig:
    """YAML section ``train``: optimisation and loss settings (noise levels in units of the dataset's accel std)."""

    batch_size: int = 32
    max_epochs: int = 20
    max_steps: int = -1                  # -1: no limit (max_epochs decides)
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"          # cosine | plateau | constant
    warmup_steps: int = 50
    gradient_clip: float = 1.0
    history_noise: list = field(default_factory=lambda: [0.1, 0.01])   # accel-std units, high..low
    n_history_noise: int = 4
    score_sigmas: list = field(default_factory=lambda: [1.0, 0.01])    # accel-std units, high..low
    n_score_sigmas: int = 10
    score_weight: float = 1.0
    num_workers: int = 0
    threads: int = 0                     # CPU threads for torch; 0 = min(cores, 8)
    limit_train_batches: float = 1.0     # fraction (<=1) or number of batches per epoch
    limit_val_batches: float = 1.0
    val_every_n_epochs: int = 1
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option (``train.<name>``) with a bad value."""
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.lr_schedule not in {"cosine", "plateau", "constant"}:
            raise ValueError(f"train.lr_schedule must be cosine, plateau or constant, got {self.lr_schedule!r}")
        for name in ("history_noise", "score_sigmas"):
            value = getattr(self, name)
            if len(value) != 2 or not all(float(v) > 0 for v in value):
                raise ValueError(f"train.{name} must be [high, low], two numbers > 0, got {value}")


@dataclass
class TrainerConfig:
    """YAML section ``trainer``: passed to ``lightning.Trainer`` as it is."""

    accelerator: str = "auto"
    devices: object = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True


@dataclass
class TrainConfig:
    """A training run, as in ``configs/default.yaml``.

    Parameters
    ----------
    data : str
        The coarse dataset (HDF5 from ``cgml coarse-grain``).
    out_dir : str
        Output directory (checkpoints, logs, ``loss.png``, ``config.yaml``).
    resume : str
        ``"auto"`` (resume from ``out_dir`` if it has ``checkpoints/last.ckpt``),
        ``"never"`` or a checkpoint path.
    model : dict
        :class:`~openmm_cgml.model.config.PropagatorConfig` fields; ``k`` defaults to the dataset's.
    train : OptimConfig
    trainer : TrainerConfig
    """

    data: str = ""
    out_dir: str = "runs/model"
    resume: str = "auto"
    model: dict = field(default_factory=dict)
    train: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    @classmethod
    def from_dict(cls, values: dict, base_dir: Path | None = None) -> "TrainConfig":
        """A checked config from YAML-like ``values``; relative paths are taken relative to ``base_dir`` if given.

        Raises
        ------
        ValueError
            For an unknown key or a bad value (the message names it).
        """
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown top-level option(s) {unknown}; known: {sorted(known)}")
        config = cls(data=str(values.get("data", "")), out_dir=str(values.get("out_dir", "runs/model")),
                     resume=str(values.get("resume", "auto")), model=dict(values.get("model") or {}),
                     train=_from_dict(OptimConfig, values.get("train"), "train"),
                     trainer=_from_dict(TrainerConfig, values.get("trainer"), "trainer"))
        if base_dir is not None:  # paths in a YAML file are relative to that file
            for name in ("data", "out_dir"):
                value = getattr(config, name)
                if value and not os.path.isabs(value):
                    setattr(config, name, str((base_dir / value).resolve()))
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path) -> "TrainConfig":
        """A checked config from a YAML file (relative paths in it are relative to the file)."""
        return cls.from_dict(read_yaml(path, "config file"), base_dir=Path(path).parent)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first missing or bad option."""
        if not self.data:
            raise ValueError("the config needs 'data': the coarse dataset (.h5) from `cgml coarse-grain`")
        self.train.validate()
        from openmm_cgml.model.config import PropagatorConfig

        PropagatorConfig.from_dict({"k": 2, **self.model})  # names and values of the model section

    def to_dict(self) -> dict:
        return asdict(self)
