"""What a training run is: the YAML sections of ``cgml train`` as checked dataclasses.

:class:`TrainConfig` holds ``data``, ``out_dir``, ``resume``, ``model`` (the
fields of :class:`~openmm_cgml.model.config.PropagatorConfig`), ``train``
(:class:`OptimConfig`) and ``trainer`` (:class:`TrainerConfig`), with the
defaults and comments of ``configs/default.yaml``. Unknown keys and bad values
raise ``ValueError`` naming the key. How a run executes (Lightning) is in
:mod:`openmm_cgml.train`, which needs Lightning; this module does not.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from openmm_cgml.io import read_yaml
from openmm_cgml.units import is_number

__all__ = ["TrainConfig", "OptimConfig", "TrainerConfig", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def _mapping(values, section: str) -> dict:
    """A YAML section as a dict: an absent or empty one is ``{}``; anything but a mapping is refused."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"section '{section}' must be a mapping of options, got {type(values).__name__} "
                         f"{_shown(values)}")
    return dict(values)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _checked_value(name: str, value, default):
    """``value`` of option ``name`` checked against the type of its ``default`` (YAML gives no other check).

    A float option also takes a string that reads as a number, because PyYAML (YAML 1.1) reads
    ``1e-3`` without a dot as a string; anything else of the wrong type is a ``ValueError``.
    """
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {_shown(value)}")
        return value
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {_shown(value)}")
        return value
    if isinstance(default, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {_shown(value)}") from None
        if not is_number(value) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {_shown(value)}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {_shown(value)}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list) or not all(is_number(v) and math.isfinite(v) for v in value):
            raise ValueError(f"{name} must be a list of numbers, got {_shown(value)}")
        return value
    return value


def _from_dict(cls, values, section: str):
    values = _mapping(values, section)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in section '{section}'; known: {sorted(known)}")
    defaults = asdict(cls())
    return cls(**{key: value if key in _CHECKED_IN_VALIDATE
                  else _checked_value(f"{section}.{key}", value, defaults[key]) for key, value in values.items()})


# options whose value may be of several types (devices: 4, "auto" or [0, 1]; precision: "32-true" or 32)
_CHECKED_IN_VALIDATE = {"devices", "precision"}


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
        """Raise ``ValueError`` naming the first option (``train.<name>``) with a bad value.

        ``max_epochs`` must be >= 1, or -1 (no limit) when ``max_steps`` >= 1: a run that trains
        nothing would export an untrained model. ``max_steps`` is -1 (no limit) or >= 1.
        """
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if not (self.max_epochs >= 1 or (self.max_epochs == -1 and self.max_steps >= 1)):
            raise ValueError(f"train.max_epochs must be >= 1 (or -1 with train.max_steps >= 1), got {self.max_epochs}")
        if not (self.max_steps == -1 or self.max_steps >= 1):
            raise ValueError(f"train.max_steps must be >= 1, or -1 for no limit, got {self.max_steps}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "warmup_steps", "gradient_clip", "score_weight", "num_workers", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("n_history_noise", "n_score_sigmas", "val_every_n_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("limit_train_batches", "limit_val_batches"):
            value = getattr(self, name)
            # Lightning reads a float as a fraction and an int as a count of batches
            if not value > 0 or (isinstance(value, float) and value > 1 and not value.is_integer()):
                raise ValueError(f"train.{name} must be a fraction in (0, 1] or a number of batches >= 1, "
                                 f"got {value}")
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

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option (``trainer.<name>``) with a bad value."""
        devices = self.devices
        if isinstance(devices, bool) or not (
                (isinstance(devices, int) and (devices >= 1 or devices == -1)) or isinstance(devices, str)
                or (isinstance(devices, list) and devices
                    and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices))):
            raise ValueError(f"trainer.devices must be a count >= 1, -1, 'auto' or a list of device indices, "
                             f"got {_shown(devices)}")
        if isinstance(self.precision, bool) or not isinstance(self.precision, (str, int)):
            raise ValueError(f"trainer.precision must be a string such as '32-true' (or 32), "
                             f"got {_shown(self.precision)}")
        if self.num_nodes < 1:
            raise ValueError(f"trainer.num_nodes must be >= 1, got {self.num_nodes}")
        if self.log_every_n_steps < 1:
            raise ValueError(f"trainer.log_every_n_steps must be >= 1, got {self.log_every_n_steps}")


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
    def from_dict(cls, values: dict, base_dir: Path | None = None, source=None) -> "TrainConfig":
        """A checked config from YAML-like ``values``; relative paths are taken relative to ``base_dir`` if given.

        Parameters
        ----------
        values : dict
            The sections, as in ``configs/default.yaml``.
        base_dir : pathlib.Path, optional
            Folder that relative ``data`` and ``out_dir`` are relative to.
        source : str or os.PathLike, optional
            The YAML file the values come from: error messages start with it, and it is
            kept as :attr:`source` (not a config field) for later messages.

        Raises
        ------
        ValueError
            For an unknown key or a bad value (the message names the file, if given, and the key).
        """
        try:
            config = cls._checked(values, base_dir)
        except ValueError as error:
            if source is None:
                raise
            raise ValueError(f"{source}: {error}") from None
        config.source = None if source is None else str(source)
        return config

    @classmethod
    def _checked(cls, values, base_dir: Path | None) -> "TrainConfig":
        values = _mapping(values, "top level")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown top-level option(s) {unknown}; known: {sorted(known)}")
        paths = {}
        for name, default in (("data", ""), ("out_dir", "runs/model"), ("resume", "auto")):
            value = values.get(name, default)
            if value is None and name == "data":
                value = ""
            if not isinstance(value, (str, os.PathLike)) or isinstance(value, bool):
                raise ValueError(f"'{name}' must be a path (a string), got {_shown(value)}")
            paths[name] = os.fspath(value)
        if not paths["out_dir"]:
            raise ValueError("'out_dir' must not be empty")
        config = cls(**paths, model=_model_section(values.get("model")),
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
        return cls.from_dict(read_yaml(path, "config file"), base_dir=Path(path).parent, source=path)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first missing or bad option."""
        if not self.data:
            raise ValueError("the config needs 'data': the coarse dataset (.h5) from `cgml coarse-grain`")
        self.train.validate()
        self.trainer.validate()
        from openmm_cgml.model.config import PropagatorConfig

        PropagatorConfig.from_dict({"k": 2, **self.model})  # names and values of the model section

    def to_dict(self) -> dict:
        """The config as plain data (what ``config.yaml`` and the checkpoint record)."""
        return asdict(self)

    def where(self) -> str:
        """The YAML file this config was read from, for error messages ("the config" if none)."""
        return getattr(self, "source", None) or "the config"


def _model_section(values) -> dict:
    """The ``model`` section, each value checked against the type of its default in ``PropagatorConfig``."""
    from openmm_cgml.model.config import PropagatorConfig

    values = _mapping(values, "model")
    defaults = asdict(PropagatorConfig())
    # unknown names are PropagatorConfig.from_dict's to report (with the list of known ones)
    return {key: _checked_value(f"model.{key}", value, defaults[key]) if key in defaults else value
            for key, value in values.items()}
