"""``cgml train``: how a training run executes, with PyTorch Lightning.

Loss per batch (see :meth:`CGPropagator.losses`): Gaussian NLL of the scaled
acceleration ``a = x[t+1] - 2 x[t] + x[t-1]`` (Gaussian noise on the input
history, sigma log-spaced ``history_noise``) plus ``score_weight`` times
denoising score matching on candidate next positions (sigma log-spaced
``score_sigmas``, weighted by sigma^2).

The output directory holds ``config.yaml`` (resolved), ``checkpoints/``
(``best.ckpt`` by validation loss, ``last.ckpt``), ``logs/version_N/metrics.csv``
(one version per run; resuming never overwrites earlier logs) and
``loss.png``. A run resumes automatically from ``checkpoints/last.ckpt``
(``resume: auto``); a resume whose config changes the model, the data or the
optimisation is refused (see :func:`changed_settings`). ``trainer.devices``/``num_nodes``/``strategy`` go to
Lightning as they are (e.g. ``devices: 4, strategy: ddp`` for multi-GPU DDP).

Under DDP every process runs :func:`train` from the start (Lightning's launcher
re-runs the command; SLURM or torchrun start one per device): each checks the
config and opens the data, then only global rank 0 writes ``config.yaml``,
checkpoints, logs and ``loss.png``. Each rank trains on its own share of the
training windows (Lightning's ``DistributedSampler``), draws its own noise, and
the logged losses are averaged over the ranks.

What a run is (the YAML sections) is :mod:`openmm_cgml.train_config`; what the
data holds is :class:`~openmm_cgml.data.CoarseDataset`, opened once and passed
along. Lightning is imported only when training starts.
"""
from __future__ import annotations

import csv
import fnmatch
import math
import os
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import yaml

from openmm_cgml.data import CoarseDataset, make_loader
from openmm_cgml.io import write_atomic
from openmm_cgml.train_config import OptimConfig, TrainConfig
from openmm_cgml.units import COLLISION_DISTANCE_NM

# PropagatorModule is made on first access (module __getattr__ below), so Lightning loads only to train
__all__ = ["TrainConfig", "train", "PropagatorModule", "plot_losses", "dataset_summary",  # noqa: F822
           "build_propagator", "hard_core_distance", "changed_settings", "RESUME_MAY_CHANGE"]

HARD_CORE_MARGIN = 0.95   # the hard core sits this fraction below the closest approach seen in the data


# ------------------------------------------------------------ the model from the data
def dataset_summary(dataset) -> dict:
    """What the model is built from and its metadata records about the data.

    Parameters
    ----------
    dataset : CoarseDataset, str or os.PathLike
        The coarse dataset (a path is opened with ``split=None``).

    Returns
    -------
    dict
        :meth:`CoarseDataset.summary` (``path``, ``attrs``, ``mass_scale_amu``,
        ``n_molecules``) plus ``type_masses`` (amu per atom type, the embedding's mass
        table: built here because it is a model input), ``single_mapping`` (the
        :class:`~openmm_cgml.mapping.Mapping` when the data holds one molecule, else None), ``mappings`` (all of
        them) and ``stereocentres`` (how many the data's molecules have, from atom types and fine bonds).
    """
    from openmm_cgml.bond_graph import stereocentres
    from openmm_cgml.model.embedding import type_mass_table

    if not isinstance(dataset, CoarseDataset):
        dataset = CoarseDataset(dataset, split=None)
    facts = dataset.summary()
    mappings = dataset.mappings()
    types = np.concatenate([m.atom_types for m in mappings])
    masses = np.concatenate([m.atom_masses for m in mappings])
    table = type_mass_table(torch.as_tensor(types), torch.as_tensor(masses))
    return {"path": facts["path"], "attrs": facts["attrs"], "type_masses": table.tolist(),
            "mass_scale_amu": facts["mass_scale_amu"], "n_molecules": facts["n_molecules"],
            "single_mapping": mappings[0] if len(mappings) == 1 else None, "mappings": mappings,
            "stereocentres": sum(len(stereocentres(m.atom_types.tolist(), m.fine_bonds)) for m in mappings)}


def hard_core_distance(observed_nm: float) -> float:
    """Hard-core distance (nm) for an observed closest approach (nm): 5 % below it, but never below the
    collision threshold (``COLLISION_DISTANCE_NM``) unless the data itself comes closer than that."""
    if not observed_nm > 0:
        return 0.0
    if observed_nm < COLLISION_DISTANCE_NM:  # the reference itself has such contacts: keep the margin below them
        return HARD_CORE_MARGIN * observed_nm
    return max(HARD_CORE_MARGIN * observed_nm, COLLISION_DISTANCE_NM)


def _check_trees(summary: dict) -> None:
    """``ValueError`` naming the dataset unless every molecule's coarse bonds suit ``noise: internal``."""
    from openmm_cgml.model.internal_coordinates import check_trees

    for mapping in summary.get("mappings", ()):
        bonds = torch.as_tensor(mapping.coarse_bonds, dtype=torch.long).reshape(-1, 2).T
        try:
            check_trees(torch.cat([bonds, bonds.flip(0)], 1), int(mapping.n_beads))
        except ValueError as error:
            raise ValueError(f"{summary.get('path', 'the dataset')}: {error}") from None


def build_propagator(config: TrainConfig, summary: dict):
    """An untrained :class:`~openmm_cgml.model.propagator.CGPropagator` for a config and a dataset summary.

    Parameters
    ----------
    config : TrainConfig
        Its ``model`` section (``k`` defaults to the dataset's and may not exceed it).
    summary : dict
        From :func:`dataset_summary`, with ``min_distances`` from
        :meth:`CoarseDataset.min_distances` if measured (the hard core; 0 = none).

    Returns
    -------
    CGPropagator
    """
    from openmm_cgml.model.config import PropagatorConfig
    from openmm_cgml.model.propagator import CGPropagator

    attrs = summary["attrs"]
    missing = [key for key in ("k", "accel_std_nm", "velocity_std_nm", "model_dt_ps") if key not in attrs]
    if missing:
        raise ValueError(f"{summary.get('path', 'the dataset')}: no dataset attribute {missing[0]!r}")
    model_options = dict(config.model)
    if model_options.get("chirality", "auto") == "auto":   # the training default: on for chiral molecules
        model_options["chirality"] = summary.get("stereocentres", 0) > 0
    data_k = int(attrs["k"])
    model_options.setdefault("k", data_k)
    if int(model_options["k"]) > data_k:
        raise ValueError(f"model.k = {model_options['k']} exceeds the dataset's history length k = {data_k}")
    if model_options.get("noise") == "internal":   # the training loss would read a wrong tree without a word
        _check_trees(summary)
    mapping = summary["single_mapping"]
    minima = summary.get("min_distances", {})
    return CGPropagator(
        PropagatorConfig.from_dict(model_options), torch.tensor(summary["type_masses"]),
        accel_std_nm=float(attrs["accel_std_nm"]), velocity_std_nm=float(attrs["velocity_std_nm"]),
        mass_scale_amu=summary["mass_scale_amu"], model_dt_ps=float(attrs["model_dt_ps"]),
        md_steps_per_model_step=int(attrs.get("md_steps_per_model_step", 1)),
        md_timestep_ps=float(attrs.get("md_timestep_ps", attrs["model_dt_ps"])),
        temperature_K=float(attrs.get("temperature_K", 300.0)),
        n_beads=mapping.n_beads if mapping is not None else 0,
        n_atoms=mapping.n_atoms if mapping is not None else 0,
        min_bonded_nm=hard_core_distance(minima.get("bonded_nm", 0.0)),
        min_nonbonded_nm=hard_core_distance(minima.get("nonbonded_nm", 0.0)))


def _noise_levels(bounds, n: int) -> torch.Tensor:
    from openmm_cgml.model.sampler import log_spaced_sigmas

    return log_spaced_sigmas(float(bounds[0]), float(bounds[1]), max(int(n), 1))


def _lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Learning-rate multiplier: linear warmup, then constant or cosine down to 2 % at ``total`` steps."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------ lightning module
def _lightning():
    import lightning.pytorch as pl

    return pl


def _make_module_class():
    pl = _lightning()

    class PropagatorModule(pl.LightningModule):
        """Lightning wrapper of :class:`CGPropagator`; the hyper-parameters rebuild it for export.

        ``model`` is the propagator ``model_init`` describes, when the caller has it already
        (a fresh run); otherwise (resuming, loading) it is rebuilt from ``model_init``.
        """

        def __init__(self, model_init: str, metadata: dict, optim: dict, model=None):
            super().__init__()
            from openmm_cgml.model.propagator import CGPropagator

            self.save_hyperparameters(ignore=["model"])
            self.model = model if model is not None else CGPropagator.from_init_json(model_init)
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

        def on_fit_start(self):
            # DDP: every rank was seeded alike, so without this the i-th window of every rank's batch would
            # get the same noise levels and draws; a single process keeps its stream (and its results) as is
            if self.trainer.world_size > 1:
                torch.manual_seed(int(self.optim.seed) * 65537 + self.global_rank)

        def _logged(self, batch, split: str) -> dict:
            terms = self._losses(batch, train=split == "train")
            # sync_dist: under DDP the logged value is the mean over the ranks' batches (a no-op on one process)
            for name in ("loss", "nll", "dsm", "accel_mse"):
                self.log(f"{split}_{name}", terms[name], prog_bar=name == "loss", batch_size=int(batch.num_graphs),
                         sync_dist=True)
            return terms

        def training_step(self, batch, batch_idx):
            return self._logged(batch, "train")["loss"]

        def validation_step(self, batch, batch_idx):
            self._logged(batch, "val")

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=self.optim.lr, weight_decay=self.optim.weight_decay)
            warmup = max(int(self.optim.warmup_steps), 0)
            if self.optim.lr_schedule == "plateau":
                scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
                return {"optimizer": optimizer,
                        "lr_scheduler": {"scheduler": scheduler, "monitor": self._monitor(), "interval": "epoch"}}
            total, schedule = max(int(self.trainer.estimated_stepping_batches), 1), self.optim.lr_schedule
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                          lambda step: _lr_factor(step, warmup, total, schedule))
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
def _loaders(config: TrainConfig, dataset: CoarseDataset, k: int):
    """Train and (if the split is not empty) validation loaders with history length ``k``."""
    opts = config.train
    kwargs = dict(batch_size=opts.batch_size, num_workers=opts.num_workers, k=k)
    if len(dataset.view("train", k)) == 0:
        raise ValueError(f"{config.data}: no training windows (split 'train' is empty)")
    train_loader = make_loader(dataset, "train", shuffle=True, **kwargs)
    has_val = len(dataset.view("val", k)) > 0
    val_loader = make_loader(dataset, "val", shuffle=False, **kwargs) if has_val else None
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


# Settings a resume may change: they say how long to train, or how the work is spread and shown, not what
# is learned from which data. Any other difference between the checkpoint's config and this run's is refused.
RESUME_MAY_CHANGE = frozenset({"resume", "out_dir", "train.max_epochs", "train.max_steps", "train.num_workers",
                               "train.threads", "trainer.enable_progress_bar", "trainer.log_every_n_steps"})


def _flat(config: dict, data_k: int) -> dict:
    """``section.key -> value`` of a config dict, the model section completed with its defaults and data path resolved.

    Completing the model section makes ``model: {}`` and ``model: {k: <the data's k>}`` the same model.
    """
    from openmm_cgml.model.config import PropagatorConfig

    flat = {}
    for key, value in config.items():
        if key == "model":
            value = PropagatorConfig.from_dict({"k": data_k, **(value or {})}).to_dict()
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        elif key == "data":
            flat[key] = str(Path(value).resolve()) if value else value
        else:
            flat[key] = value
    return flat


def changed_settings(old: dict, new: dict, data_k: int) -> list[str]:
    """The settings (``section.key``) in which two config dicts differ and that a resume may not change.

    Parameters
    ----------
    old, new : dict
        :meth:`TrainConfig.to_dict` of the checkpoint's run and of this one.
    data_k : int
        The dataset's history length (the default of ``model.k``).

    Returns
    -------
    list of str
        Sorted; empty when the resume may go ahead. Settings in :data:`RESUME_MAY_CHANGE`
        (``train.max_epochs``, ``train.max_steps``, workers, threads, logging, ``resume``,
        ``out_dir``) are never listed.
    """
    old, new = _flat(old, data_k), _flat(new, data_k)
    missing = object()
    return sorted(key for key in set(old) | set(new)
                  if key not in RESUME_MAY_CHANGE and old.get(key, missing) != new.get(key, missing))


def _resumed(resume: str, metadata: dict, config: TrainConfig, data_k: int) -> tuple[str, dict]:
    """The checkpoint's own ``model_init`` and metadata, with this run's config and start time recorded.

    Raises
    ------
    ValueError
        If this run's config differs from the checkpoint's in a setting that changes the model,
        the data or the optimisation (see :func:`changed_settings`): a resume would ignore it.
    """
    from openmm_cgml.model_file import propagator_from_checkpoint

    _, hparams, _ = propagator_from_checkpoint(resume)  # safe load, clear error if corrupted
    if "model_init" not in hparams:
        raise ValueError(f"{resume}: not an openmm-cgml training checkpoint")
    old = hparams.get("metadata", metadata)
    previous = old.get("training", {}).get("config")
    if isinstance(previous, dict):
        changed = changed_settings(previous, metadata["training"]["config"], data_k)
        if changed:
            raise ValueError(f"{config.where()}: resuming from {resume} with a changed configuration: {changed} "
                             f"differ from the checkpoint's run; only {sorted(RESUME_MAY_CHANGE)} may change "
                             "(use another out_dir, or resume: never with a new one)")
    # keep the model and the original metadata; record the config of this run
    old.setdefault("training", {})
    old["training"]["config"] = metadata["training"]["config"]
    old["training"].setdefault("resumed_at", []).append(metadata["training"]["started_at"])
    return hparams["model_init"], old


def train(config: TrainConfig | dict | str | os.PathLike) -> Path:
    """Train from a config; returns the best checkpoint's path.

    Parameters
    ----------
    config : TrainConfig, dict or path
        A config object, its dict form, or a YAML file.

    Returns
    -------
    pathlib.Path
        ``checkpoints/best.ckpt`` (by the monitored loss), or ``last.ckpt`` if none was saved as best.
    """
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
    opts = config.train
    torch.set_num_threads(opts.threads or min(os.cpu_count() or 1, 8))
    torch.set_float32_matmul_precision("high")
    pl.seed_everything(opts.seed, workers=True, verbose=False)
    out_dir = Path(config.out_dir)
    resume = _resume_path(config, out_dir)
    if resume is None and any(not _half_written(p) for p in _checkpoint_files(out_dir)):
        raise FileExistsError(f"{out_dir} already holds checkpoints; use resume: auto, or another out_dir")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{config.where()}: out_dir {out_dir} is a file, not a folder")

    dataset = CoarseDataset(config.data, split=None)   # opened once; loaders and statistics share it
    summary = dataset_summary(dataset)
    summary["min_distances"] = dataset.view("train").min_distances()
    try:
        model = build_propagator(config, summary)
    except ValueError as error:  # e.g. model.k longer than the data's: name the config it came from
        raise ValueError(f"{config.where()}: {error} ({config.data})") from None
    train_loader, val_loader = _loaders(config, dataset, model.k)
    mapping = summary.pop("single_mapping")
    summary.pop("mappings")   # objects, not metadata (the checkpoint loads weights only)
    metadata = {
        "mapping": mapping.to_json() if mapping is not None else None,
        "training": {"data": summary, "config": config.to_dict(), "has_val": val_loader is not None,
                     "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    model_init = model.init_json
    if resume:   # checked before anything is written: a refused resume leaves out_dir as it was
        model_init, metadata = _resumed(resume, metadata, config, int(summary["attrs"]["k"]))
        model = None   # rebuilt from the checkpoint's own description
    module = __getattr__("PropagatorModule")(model_init, metadata, asdict(opts), model=model)
    trainer, best = _trainer(config, out_dir, "val_loss" if val_loader is not None else "train_loss")
    if trainer.is_global_zero:  # DDP: every rank gets here (the Trainer knows its rank); one writes
        out_dir.mkdir(parents=True, exist_ok=True)   # only now: a run refused above leaves no trace
        for stale in filter(_half_written, _checkpoint_files(out_dir)):  # left by a killed run
            stale.unlink()
        # beside the checkpoints, atomically: a kill never leaves a torn config.yaml
        write_atomic(out_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume, weights_only=True)
    if trainer.is_global_zero:
        plot_losses(out_dir)
    return Path(best.best_model_path) if best.best_model_path else out_dir / "checkpoints" / "last.ckpt"


def _checkpoint_files(out_dir: Path) -> list[Path]:
    """What ``out_dir/checkpoints`` holds (nothing if it does not exist)."""
    folder = out_dir / "checkpoints"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _half_written(path: Path) -> bool:
    """A checkpoint's temporary file (``.NAME.ckpt.XXXX``, see :func:`_atomic_checkpoint_io`): a kill left it."""
    return fnmatch.fnmatch(path.name, ".*.ckpt.*")


def _trainer(config: TrainConfig, out_dir: Path, monitor: str):
    """The ``lightning.Trainer`` of a run and its best-checkpoint callback."""
    pl = _lightning()
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    opts = config.train
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
        plugins=[_atomic_checkpoint_io()], enable_model_summary=False)
    return trainer, best


def _atomic_checkpoint_io():
    """Lightning's checkpoint writer, writing to a temporary name that is then renamed over the checkpoint.

    Lightning writes ``last.ckpt`` in place: a kill during that write would leave a torn file that
    no resume can load, and the run's state with it.
    """
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from openmm_cgml.io import atomic_path

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temporary:
                super().save_checkpoint(checkpoint, temporary, storage_options)

    return AtomicCheckpointIO()


def _read_metrics(out_dir: Path) -> list[dict]:
    """The logged rows of all runs of ``out_dir``, in step order.

    A run killed after its last checkpoint logged steps that the resumed run (the next log
    version) trains again: the later version's rows replace the earlier ones from its first step on.
    """
    rows = []
    for path in sorted((out_dir / "logs").glob("version_*/metrics.csv"),
                       key=lambda p: int(p.parent.name.split("_")[-1])):
        with open(path, newline="") as handle:
            version = [row for row in csv.DictReader(handle) if str(row.get("step", "")).isdigit()]
        if version:
            first = min(int(row["step"]) for row in version)
            rows = [row for row in rows if int(row["step"]) < first]
        rows.extend(version)
    return rows


def plot_losses(out_dir) -> Path | None:
    """``loss.png``: training and validation losses against the optimiser step (all runs of ``out_dir``).

    Parameters
    ----------
    out_dir : str or os.PathLike
        A training output directory (its ``logs/version_*/metrics.csv``).

    Returns
    -------
    pathlib.Path or None
        The PNG written, or None when there are no logged metrics yet.
    """
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    rows = _read_metrics(out_dir)
    if not rows:
        return None
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
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
    return path
