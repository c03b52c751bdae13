"""``cgml train CONFIG.yaml``: end-to-end training of the propagator with PyTorch Lightning.

Loss per batch (see :meth:`CGPropagator.losses`): Gaussian NLL of the scaled
acceleration ``a = x[t+1] - 2 x[t] + x[t-1]`` (Gaussian noise on the input
history, sigma log-spaced ``history_noise``) plus ``score_weight`` times
denoising score matching on candidate next positions (sigma log-spaced
``score_sigmas``, weighted by sigma^2).

The output directory holds ``config.yaml`` (resolved), ``checkpoints/``
(``best.ckpt`` by validation loss, ``last.ckpt``), ``logs/version_N/metrics.csv``
(one version per run; resuming never overwrites earlier logs) and
``loss.png``. A run resumes automatically from ``checkpoints/last.ckpt``
(``resume: auto``). ``trainer.devices``/``num_nodes``/``strategy`` go to
Lightning as they are (e.g. ``devices: 4, strategy: ddp`` for multi-GPU DDP).
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import yaml

from openmm_cgml.geometry import pair_distances_torch

__all__ = ["TrainConfig", "train", "PropagatorModule", "plot_losses", "reference_min_distances", "hard_core_distance",
           "configure_parser", "run"]

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
    """YAML section ``train``: optimisation and loss settings."""

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
    """YAML section ``trainer``: passed to ``lightning.Trainer``."""

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

    ``data``: coarse dataset (HDF5 from ``cgml coarse-grain``); ``out_dir``:
    output directory; ``resume``: ``auto`` (resume from ``out_dir`` if it has
    ``checkpoints/last.ckpt``), ``never`` or a checkpoint path.
    """

    data: str = ""
    out_dir: str = "runs/model"
    resume: str = "auto"
    model: dict = field(default_factory=dict)       # PropagatorConfig fields; k defaults to the dataset's
    train: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    @classmethod
    def from_dict(cls, values: dict, base_dir: Path | None = None) -> "TrainConfig":
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
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from None
        if values is not None and not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of options at the top level")
        return cls.from_dict(values or {}, base_dir=path.parent)

    def validate(self) -> None:
        if not self.data:
            raise ValueError("the config needs 'data': the coarse dataset (.h5) from `cgml coarse-grain`")
        self.train.validate()
        from openmm_cgml.model.propagator import PropagatorConfig

        PropagatorConfig.from_dict({"k": 2, **self.model})  # names and values of the model section

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- data helpers
def dataset_summary(path) -> dict:
    """What the model needs to know about a coarse dataset: scales, time steps, mappings, type masses."""
    from openmm_cgml.data import CoarseDataset
    from openmm_cgml.mapping import Mapping
    from openmm_cgml.model.propagator import type_mass_table

    dataset = CoarseDataset(path, split=None)   # checks the file is a coarse dataset
    attrs = dataset.attrs
    for key in ("accel_std_nm", "velocity_std_nm"):
        value = float(attrs.get(key, float("nan")))
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{path}: dataset attribute {key} = {value} is not a positive number "
                             "(is the train split empty?)")
    mappings, texts = [], set()
    handle = dataset._handle()
    for name in handle["traj"]:
        text = handle["traj"][name].attrs["mapping"]
        text = text.decode() if isinstance(text, bytes) else str(text)
        if text not in texts:
            texts.add(text)
            mappings.append(Mapping.from_json(text))
    if not mappings:
        raise ValueError(f"{path}: the dataset holds no trajectories")
    types = np.concatenate([m.atom_types for m in mappings])
    masses = np.concatenate([m.atom_masses for m in mappings])
    table = type_mass_table(torch.as_tensor(types), torch.as_tensor(masses))
    bead_masses = np.concatenate([m.bead_masses for m in mappings])
    return {
        "path": str(Path(path).resolve()),
        "attrs": {key: (value.decode() if isinstance(value, bytes) else value)
                  for key, value in attrs.items() if np.ndim(value) == 0},
        "type_masses": table.tolist(),
        "mass_scale_amu": float(bead_masses.mean()),
        "n_molecules": len(mappings),
        "single_mapping": mappings[0] if len(mappings) == 1 else None,
    }


COLLISION_NM = 0.1        # bead pairs closer than this count as collisions (evaluation threshold)
HARD_CORE_MARGIN = 0.95   # the hard core sits this fraction below the closest approach seen in the data
MAX_FRAMES_PER_TRAJ = 5000


def reference_min_distances(path, split: str = "train") -> dict:
    """Closest approach (nm) of bead pairs in the reference frames of one split of a coarse dataset.

    Returns ``{"bonded_nm", "nonbonded_nm", "frames"}``: the minimum over all
    frames (evenly subsampled to at most 5000 per trajectory) of the distance
    between beads joined by a coarse bond, and between all other bead pairs
    of a trajectory (within and between molecules). One global value per
    class: the small training sets here do not support one per pair of bead
    types. A class with no pairs gives 0 (no hard core for it).
    """
    from openmm_cgml.data import CoarseDataset

    handle = CoarseDataset(path, split=None)._handle()
    bonded, nonbonded, frames = math.inf, math.inf, 0
    for name in handle["traj"]:
        group = handle["traj"][name]
        split_name = group.attrs["split"]
        if (split_name.decode() if isinstance(split_name, bytes) else str(split_name)) != split:
            continue
        n_frames, n = group["positions"].shape[:2]
        if n < 2:
            continue
        is_bond = torch.zeros(n, n, dtype=torch.bool)
        bonds = torch.as_tensor(np.asarray(group["coarse_bonds"], dtype=np.int64).reshape(-1, 2))
        is_bond[bonds[:, 0], bonds[:, 1]] = True
        is_bond |= is_bond.clone().T
        other = ~is_bond & ~torch.eye(n, dtype=torch.bool)
        picks = np.unique(np.linspace(0, n_frames - 1, min(n_frames, MAX_FRAMES_PER_TRAJ)).astype(np.int64))
        chunk = max(1, int(2e7 // (n * n * 3)))
        for start in range(0, len(picks), chunk):
            rows = picks[start:start + chunk]
            box = np.asarray(group["box"][rows[0]:rows[-1] + 1])[rows - rows[0]] if "box" in group else None
            positions = np.asarray(group["positions"][rows[0]:rows[-1] + 1])[rows - rows[0]]
            cell = torch.as_tensor(box, dtype=torch.float64)[:, None, None] if box is not None and np.any(box) else None
            distances = pair_distances_torch(torch.as_tensor(positions, dtype=torch.float64), cell)
            if bool(is_bond.any()):
                bonded = min(bonded, float(distances[:, is_bond].min()))
            if bool(other.any()):
                nonbonded = min(nonbonded, float(distances[:, other].min()))
            frames += len(rows)
    if frames == 0:
        raise ValueError(f"{path}: no '{split}' frames to measure bead distances on")
    return {"bonded_nm": bonded if math.isfinite(bonded) else 0.0,
            "nonbonded_nm": nonbonded if math.isfinite(nonbonded) else 0.0, "frames": frames}


def hard_core_distance(observed_nm: float) -> float:
    """Hard-core distance (nm) for an observed closest approach: 5 % below it, but never below the
    collision threshold (0.1 nm) unless the data itself comes closer than that."""
    if not observed_nm > 0:
        return 0.0
    if observed_nm < COLLISION_NM:  # the reference itself has such contacts: keep the margin below them
        return HARD_CORE_MARGIN * observed_nm
    return max(HARD_CORE_MARGIN * observed_nm, COLLISION_NM)


def _noise_levels(bounds, n: int) -> torch.Tensor:
    from openmm_cgml.model.propagator import log_spaced_sigmas

    return log_spaced_sigmas(float(bounds[0]), float(bounds[1]), max(int(n), 1))


# ------------------------------------------------------------ lightning module
def _lightning():
    import lightning.pytorch as pl

    return pl


def _make_module_class():
    pl = _lightning()

    class PropagatorModule(pl.LightningModule):
        """Lightning wrapper of :class:`CGPropagator`; the hyper-parameters rebuild it for export."""

        def __init__(self, model_init: str, metadata: dict, optim: dict):
            super().__init__()
            from openmm_cgml.model.propagator import CGPropagator

            self.save_hyperparameters()
            self.model = CGPropagator.from_init_json(model_init)
            self.optim = OptimConfig(**optim)
            self.register_buffer("history_levels", _noise_levels(self.optim.history_noise, self.optim.n_history_noise),
                                 persistent=False)
            self.register_buffer("score_levels", _noise_levels(self.optim.score_sigmas, self.optim.n_score_sigmas),
                                 persistent=False)

        def _losses(self, batch, train: bool) -> dict:
            model = self.model
            n_beads = batch.pos_history.size(0)
            bead_batch = batch.batch
            n_graphs = int(batch.num_graphs)
            features = model._embed(batch.atom_types, batch.fine_edge_index, batch.bead_of_atom, n_beads)
            history = batch.pos_history[:, -model.k:].transpose(0, 1).contiguous()
            pick = torch.randint(len(self.history_levels), (n_graphs,), device=self.device)
            history_sigma = self.history_levels[pick][bead_batch].unsqueeze(1)
            if not train:
                history_sigma = torch.full_like(history_sigma, float(self.history_levels[-1]))
            pick = torch.randint(len(self.score_levels), (n_graphs,), device=self.device)
            score_sigma = self.score_levels[pick][bead_batch].unsqueeze(1)
            box = batch.box if hasattr(batch, "box") and batch.box is not None else torch.zeros(1, 3, 3)
            terms = model.losses(history, batch.pos_target, features, batch.coarse_edge_index, bead_batch,
                                 box, history_sigma, score_sigma)
            terms["loss"] = terms["nll"] + self.optim.score_weight * terms["dsm"]
            return terms

        def training_step(self, batch, batch_idx):
            terms = self._losses(batch, train=True)
            size = int(batch.num_graphs)
            self.log("train_loss", terms["loss"], prog_bar=True, batch_size=size)
            for name in ("nll", "dsm", "accel_mse"):
                self.log(f"train_{name}", terms[name], batch_size=size)
            return terms["loss"]

        def validation_step(self, batch, batch_idx):
            terms = self._losses(batch, train=False)
            size = int(batch.num_graphs)
            self.log("val_loss", terms["loss"], prog_bar=True, batch_size=size, sync_dist=True)
            for name in ("nll", "dsm", "accel_mse"):
                self.log(f"val_{name}", terms[name], batch_size=size, sync_dist=True)

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=self.optim.lr, weight_decay=self.optim.weight_decay)
            warmup = max(int(self.optim.warmup_steps), 0)
            if self.optim.lr_schedule == "plateau":
                scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
                return {"optimizer": optimizer,
                        "lr_scheduler": {"scheduler": scheduler, "monitor": self._monitor(), "interval": "epoch"}}
            total = max(int(self.trainer.estimated_stepping_batches), 1)

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / (warmup + 1)
                if self.optim.lr_schedule == "constant":
                    return 1.0
                progress = min((step - warmup) / max(total - warmup, 1), 1.0)
                return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

        def _monitor(self) -> str:
            return "val_loss" if self.hparams.metadata.get("training", {}).get("has_val") else "train_loss"

    # a module-level name for pickling (ddp_spawn, multiprocessing): found through __getattr__ below
    PropagatorModule.__qualname__ = "PropagatorModule"
    PropagatorModule.__module__ = __name__
    return PropagatorModule


_MODULE_CLASS = None


def __getattr__(name):  # Lightning is imported only when training
    global _MODULE_CLASS
    if name == "PropagatorModule":
        if _MODULE_CLASS is None:
            _MODULE_CLASS = _make_module_class()
        return _MODULE_CLASS
    raise AttributeError(name)


# ------------------------------------------------------------------- training
def _loaders(config: TrainConfig, k: int):
    """Train and (if the split is not empty) validation loaders with history length ``k``."""
    from openmm_cgml.data import CoarseDataset, make_loader

    opts = config.train
    kwargs = dict(batch_size=opts.batch_size, num_workers=opts.num_workers, k=k)
    if len(CoarseDataset(config.data, "train", k=k)) == 0:
        raise ValueError(f"{config.data}: no training windows (split 'train' is empty)")
    train_loader = make_loader(config.data, "train", shuffle=True, **kwargs)
    has_val = len(CoarseDataset(config.data, "val", k=k)) > 0
    val_loader = make_loader(config.data, "val", shuffle=False, **kwargs) if has_val else None
    return train_loader, val_loader


def _resume_path(config: TrainConfig, out_dir: Path) -> str | None:
    last = out_dir / "checkpoints" / "last.ckpt"
    if config.resume == "never":
        return None
    if config.resume == "auto":
        return str(last) if last.exists() else None
    path = Path(config.resume)
    if not path.exists():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist")
    return str(path)


def build_model_init(config: TrainConfig, summary: dict) -> str:
    """The propagator's ``init_json`` for a config and a dataset summary (with ``min_distances`` from
    :func:`reference_min_distances`, if measured: the hard core)."""
    from openmm_cgml.model.propagator import CGPropagator, PropagatorConfig

    attrs = summary["attrs"]
    model_options = dict(config.model)
    data_k = int(attrs["k"])
    model_options.setdefault("k", data_k)
    if int(model_options["k"]) > data_k:
        raise ValueError(f"model.k = {model_options['k']} exceeds the dataset's history length k = {data_k}")
    mapping = summary["single_mapping"]
    model = CGPropagator(
        PropagatorConfig.from_dict(model_options), torch.tensor(summary["type_masses"]),
        accel_std_nm=float(attrs["accel_std_nm"]), velocity_std_nm=float(attrs["velocity_std_nm"]),
        mass_scale_amu=summary["mass_scale_amu"], model_dt_ps=float(attrs["model_dt_ps"]),
        md_steps_per_model_step=int(attrs.get("md_steps_per_model_step", 1)),
        md_timestep_ps=float(attrs.get("md_timestep_ps", attrs["model_dt_ps"])),
        temperature_K=float(attrs.get("temperature_K", 300.0)),
        n_beads=mapping.n_beads if mapping is not None else 0,
        n_atoms=mapping.n_atoms if mapping is not None else 0,
        min_bonded_nm=hard_core_distance(summary.get("min_distances", {}).get("bonded_nm", 0.0)),
        min_nonbonded_nm=hard_core_distance(summary.get("min_distances", {}).get("nonbonded_nm", 0.0)))
    return model.init_json


def train(config: TrainConfig | dict | str | os.PathLike) -> Path:
    """Train from a config (object, dict or YAML path); returns the best checkpoint's path."""
    if isinstance(config, (str, os.PathLike)):
        config = TrainConfig.from_yaml(config)
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    # torch settings are process-global: restored afterwards, so later rollouts in this process keep theirs
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    try:
        return _train(config)
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)


def _train(config: TrainConfig) -> Path:
    pl = _lightning()
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    opts = config.train
    torch.set_num_threads(opts.threads or min(os.cpu_count() or 1, 8))
    torch.set_float32_matmul_precision("high")
    pl.seed_everything(opts.seed, workers=True, verbose=False)
    out_dir = Path(config.out_dir)
    resume = _resume_path(config, out_dir)
    if resume is None and (out_dir / "checkpoints").exists() and any((out_dir / "checkpoints").iterdir()):
        raise FileExistsError(f"{out_dir} already holds checkpoints; use resume: auto, or another out_dir")
    out_dir.mkdir(parents=True, exist_ok=True)

    summary = dataset_summary(config.data)
    summary["min_distances"] = reference_min_distances(config.data, "train")
    model_init = build_model_init(config, summary)
    train_loader, val_loader = _loaders(config, json.loads(model_init)["config"]["k"])
    mapping = summary.pop("single_mapping")
    metadata = {
        "mapping": mapping.to_json() if mapping is not None else None,
        "training": {"data": summary, "config": config.to_dict(), "has_val": val_loader is not None,
                     "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    module_class = __getattr__("PropagatorModule")
    if resume:
        from openmm_cgml.model_file import propagator_from_checkpoint

        _, hparams, _ = propagator_from_checkpoint(resume)  # safe load, clear error if corrupted
        if "model_init" not in hparams:
            raise ValueError(f"{resume}: not an openmm-cgml training checkpoint")
        # keep the model and the original metadata; record the (possibly changed) config of this run
        model_init, old = hparams["model_init"], hparams.get("metadata", metadata)
        old.setdefault("training", {})
        old["training"]["config"] = metadata["training"]["config"]
        old["training"].setdefault("resumed_at", []).append(metadata["training"]["started_at"])
        metadata = old
    module = module_class(model_init, metadata, asdict(opts))
    monitor = "val_loss" if val_loader is not None else "train_loss"
    best = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor=monitor, mode="min",
                           save_top_k=1, enable_version_counter=False)
    # Lightning's save_last only writes when the best improved; resuming needs the latest state every epoch
    last = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False)
    trainer = pl.Trainer(
        default_root_dir=out_dir, max_epochs=opts.max_epochs, max_steps=opts.max_steps,
        accelerator=config.trainer.accelerator, devices=config.trainer.devices, num_nodes=config.trainer.num_nodes,
        strategy=config.trainer.strategy, precision=config.trainer.precision,
        gradient_clip_val=opts.gradient_clip or None, log_every_n_steps=config.trainer.log_every_n_steps,
        enable_progress_bar=config.trainer.enable_progress_bar,
        limit_train_batches=opts.limit_train_batches, limit_val_batches=opts.limit_val_batches,
        check_val_every_n_epoch=opts.val_every_n_epochs,
        logger=CSVLogger(out_dir, name="logs"), callbacks=[best, last, LearningRateMonitor("step")],
        enable_model_summary=False)
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume, weights_only=True)
    if trainer.is_global_zero:
        plot_losses(out_dir)
    return Path(best.best_model_path) if best.best_model_path else out_dir / "checkpoints" / "last.ckpt"


def _read_metrics(out_dir: Path) -> list[dict]:
    rows = []
    for path in sorted((out_dir / "logs").glob("version_*/metrics.csv"),
                       key=lambda p: int(p.parent.name.split("_")[-1])):
        with open(path, newline="") as handle:
            rows.extend(csv.DictReader(handle))
    return rows


def plot_losses(out_dir) -> Path | None:
    """``loss.png``: training and validation losses against the optimiser step (all runs of ``out_dir``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    rows = _read_metrics(out_dir)
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (title, names) in zip(axes, [("total", ["train_loss", "val_loss"]),
                                         ("terms", ["train_nll", "val_nll", "train_dsm", "val_dsm"])]):
        for name in names:
            points = [(int(r["step"]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, "-" if name.startswith("train") else "o-", label=name, lw=1, ms=3)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("loss (NLL per bead, scaled units)" if title == "total" else "loss term")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    path = out_dir / "loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------ CLI
def configure_parser(parser) -> None:
    parser.add_argument("config", help="training YAML (see configs/default.yaml)")
    parser.add_argument("--out-dir", help="override out_dir")
    parser.add_argument("--data", help="override data")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="resume from OUT_DIR/checkpoints/last.ckpt (default) or the given checkpoint")
    resume.add_argument("--no-resume", action="store_true", help="start afresh (refused if OUT_DIR has checkpoints)")
    parser.add_argument("--max-epochs", type=int, help="override train.max_epochs")
    parser.add_argument("--devices", help="override trainer.devices (e.g. 1, 4, auto)")


def run(args) -> int:
    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of options at the top level")
    if args.out_dir:
        values["out_dir"] = os.path.abspath(args.out_dir)
    if args.data:
        values["data"] = os.path.abspath(args.data)
    if args.resume:
        values["resume"] = args.resume
    if args.no_resume:
        values["resume"] = "never"
    if args.max_epochs is not None:
        values.setdefault("train", {})["max_epochs"] = args.max_epochs
    if args.devices is not None:
        values.setdefault("trainer", {})["devices"] = int(args.devices) if args.devices.isdigit() else args.devices
    config = TrainConfig.from_dict(values, base_dir=path.parent)
    if args.resume == "auto" and not (Path(config.out_dir) / "checkpoints" / "last.ckpt").exists():
        raise FileNotFoundError(f"--resume: no checkpoint {Path(config.out_dir) / 'checkpoints' / 'last.ckpt'}")
    best = train(config)
    print(f"best checkpoint: {best}\nexport it with: cgml export {config.out_dir} --out model.pt")
    return 0
