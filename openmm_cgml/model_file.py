"""Model files: export a trained propagator, load one back as a :class:`CGModel`.

Two forms (:mod:`openmm_cgml.model_formats` writes and reads them):

- ``.safetensors`` (the default): weights and JSON metadata only. Loading
  rebuilds the architecture from this package's code, so no code from the
  file ever runs.
- ``.pt``: a TorchScript archive, for openmm-torch and other TorchScript
  users. TorchScript can run code when loaded, so :func:`load` refuses one
  unless ``trusted=True`` (``--trust-model``) or this package ships it.

Both carry the same metadata: the mapping, ``k``, the model time step and the
fine MD time step it stands for, units, training metadata, software versions,
and ``model_init`` (the architecture). Exported parameters are frozen (no
autograd bookkeeping per step).

The metadata key ``mapping_rule`` (``{"method": ..., "params": {...}}``)
names the rule the model's mappings are made with, so a transferable model
(no single mapping) can map a new molecule; files written before it existed
carry the rule in their training data's attributes, which
:func:`read_mapping_rule` still reads.

``cgml export CHECKPOINT --out model.safetensors`` (:mod:`openmm_cgml.cli.export`)
converts a Lightning checkpoint (read with ``torch.load(..., weights_only=True)``)
or another model file; ``openmm_cgml.load(path)`` returns a :class:`CGModel`.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import openmm.unit as u
import torch

from openmm_cgml import model_formats
from openmm_cgml.io import atomic_path, software_versions
from openmm_cgml.model_formats import (
    FORMAT,
    FORMAT_VERSION,
    PROGRAM_SUFFIX,
    TORCHSCRIPT_SUFFIX,
    WEIGHTS_SUFFIX,
    check_output,
    read_mapping_rule,
)

__all__ = ["FORMAT", "export_model", "export", "check_output", "load", "CGModel", "rebuild",
           "propagator_from_checkpoint", "read_mapping_rule"]
UNITS = {"length": "nm", "time": "ps", "mass": "amu", "energy": "kJ/mol", "temperature": "K",
         "pos_history": "nm, shape (k, n_beads, 3), last frame = current",
         "acceleration": "nm per model step^2", "velocity": "nm per model step"}


def export_model(model, path, metadata: dict | None = None) -> Path:
    """Write ``model`` to one model file, atomically; the suffix of ``path`` picks the form.

    Parameters
    ----------
    model : CGPropagator
        The propagator (:class:`~openmm_cgml.model.propagator.CGPropagator`);
        a frozen float32 CPU copy is written, ``model`` itself is untouched.
    path : str or Path
        ``.safetensors`` (weights and metadata only; the safe default) or ``.pt``
        (TorchScript, for openmm-torch). Its directory must exist. Written to a
        temporary name and renamed, so a failure never leaves a truncated file
        behind or damages an existing one.
    metadata : dict, optional
        JSON-serialisable; typically ``mapping`` (a Mapping or its JSON),
        ``training`` and ``config``. Merged with what the model knows about
        itself (k, time steps, temperature, bead count, units, versions,
        ``model_init``) and the ``mapping_rule`` (:func:`read_mapping_rule`).

    Returns
    -------
    Path
        ``path``.
    """
    path = check_output(path)
    if path.suffix == PROGRAM_SUFFIX:
        raise ValueError(f"{path}: a {PROGRAM_SUFFIX} step program is made for one bead system "
                         "(openmm_cgml.model_program.export_program, cgml export --pdb)")
    module = copy.deepcopy(model).cpu().float().eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    meta = _export_metadata(module, metadata)
    text = json.dumps(meta, sort_keys=True)
    module.metadata = text
    with atomic_path(path) as temporary:
        if path.suffix == WEIGHTS_SUFFIX:
            model_formats.write_weights(module.state_dict(), meta, temporary)
        else:
            model_formats.write_torchscript(torch.jit.script(module), meta, temporary)
    return path


def _export_metadata(module, metadata: dict | None) -> dict:
    """``metadata`` merged with what ``module`` knows about itself: the JSON every model file carries."""
    meta = {key: value for key, value in (metadata or {}).items() if key != "digest"}
    if hasattr(meta.get("mapping"), "to_json"):
        meta["mapping"] = meta["mapping"].to_json()
    if isinstance(meta.get("mapping"), dict):
        meta["mapping"] = json.dumps(meta["mapping"])
    rule = read_mapping_rule(meta)
    if rule is not None:
        meta["mapping_rule"] = {"method": rule[0], "params": rule[1]}
    meta.update({
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "k": module.k, "model_dt_ps": module.model_dt_ps,
        "md_steps_per_model_step": module.md_steps_per_model_step, "md_timestep_ps": module.md_timestep_ps,
        "temperature_K": module.temperature_K, "n_beads": module.n_beads, "n_atoms": module.n_atoms,
        "n_features": module.n_features, "refine_sigmas": list(module.refine_sigmas),
        "hard_core": {"enabled": bool(module.hard_core), "sweeps": module.hard_core_sweeps,
                      "min_bonded_nm": module.min_bonded_nm, "min_nonbonded_nm": module.min_nonbonded_nm},
        "exclusion_retries": int(getattr(module, "exclusion_retries", 0)),
        "accel_std_nm": module.accel_std_nm, "velocity_std_nm": module.velocity_std_nm,
        "units": UNITS, "model_init": json.loads(module.init_json),
        "n_parameters": sum(p.numel() for p in module.parameters()),
        "versions": software_versions(), "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    try:
        json.dumps(meta)
    except TypeError as error:
        raise ValueError(f"metadata must be JSON-serialisable: {error}") from None
    return meta


def _find_checkpoint(checkpoint) -> Path:
    """A ``.ckpt`` file, or a training output directory (its best, else last, checkpoint)."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            candidate = checkpoint / "checkpoints" / name
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"no checkpoints/best.ckpt or checkpoints/last.ckpt in training directory {checkpoint}")
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    return checkpoint


def propagator_from_checkpoint(checkpoint):
    """The trained propagator of a Lightning checkpoint, with its hyper-parameters and file.

    Read with ``weights_only=True``: a checkpoint can hold tensors and plain
    containers only, never arbitrary pickled objects.

    Parameters
    ----------
    checkpoint : str or Path
        A ``.ckpt`` file, or a training output directory (its best, else last, checkpoint).

    Returns
    -------
    model : CGPropagator
        With the trained weights.
    hparams : dict
        The checkpoint's hyper-parameters, plus ``_progress`` (epochs,
        global step and the best monitored value).
    path : Path
        The checkpoint file read.
    """
    from openmm_cgml.model.propagator import CGPropagator

    path = _find_checkpoint(checkpoint)
    try:
        with warnings.catch_warnings():  # Lightning writes pickle protocol 4; weights_only reads it fine
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupted, truncated, or not a (safe) checkpoint
        raise ValueError(f"{path}: not a readable training checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    hparams = state.get("hyper_parameters", {}) if isinstance(state, dict) else {}
    if "model_init" not in hparams or "state_dict" not in state:
        raise ValueError(f"{path}: not an openmm-cgml training checkpoint (no model_init/state_dict)")
    model = CGPropagator.from_init_json(hparams["model_init"])
    hparams = dict(hparams)
    hparams["_progress"] = {"epochs": int(state.get("epoch", -1)) + 1, "global_step": int(state.get("global_step", 0))}
    for key, value in state.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_score") is not None:
            hparams["_progress"]["best_" + str(value.get("monitor", "loss"))] = float(value["best_model_score"])
    prefix = "model."
    weights = {key[len(prefix):]: value for key, value in state["state_dict"].items() if key.startswith(prefix)}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not match the model description: {str(error).splitlines()[0]}") from None
    return model, hparams, path


def _propagator(metadata: dict, tensors: dict, where, exact: bool):
    """A CGPropagator of this package's code, built from ``model_init`` and filled with ``tensors``.

    ``exact``: ``tensors`` must be the persistent tensors and nothing else (a
    weights file); otherwise extra entries are ignored (a ScriptModule's
    state_dict also lists its non-persistent buffers).
    """
    from openmm_cgml.model.propagator import CGPropagator

    init = metadata.get("model_init")
    if not init:
        raise ValueError(f"{where}: no model_init in the metadata; the architecture cannot be rebuilt")
    try:
        propagator = CGPropagator.from_init_json(json.dumps(init))
    except (TypeError, KeyError, ValueError, AttributeError) as error:
        raise ValueError(f"{where}: model_init does not describe a propagator this openmm-cgml builds: "
                         f"{error}") from None
    wanted = propagator.state_dict()
    missing, unexpected = sorted(set(wanted) - set(tensors)), sorted(set(tensors) - set(wanted))
    if missing or (exact and unexpected):
        raise ValueError(f"{where}: weights do not match the model description (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    for key, tensor in wanted.items():
        if tuple(tensors[key].shape) != tuple(tensor.shape):
            raise ValueError(f"{where}: weights do not match the model description: {key!r} has shape "
                             f"{tuple(tensors[key].shape)}, the architecture needs {tuple(tensor.shape)}")
    propagator.load_state_dict({key: tensors[key].detach().cpu() for key in wanted})
    return propagator.eval()


def _set_inference(propagator, refine_sigmas, hard_core: bool, exclusion_retries: int = 0) -> None:
    """The inference settings a file records: refinement levels, the truncation's redraws, and the hard core
    where it has distances."""
    propagator.refine_sigmas = [float(s) for s in refine_sigmas]
    propagator.hard_core = bool(hard_core) and max(propagator.min_bonded_nm, propagator.min_nonbonded_nm) > 0
    propagator.exclusion_retries = int(exclusion_retries or 0)


def rebuild(model: "CGModel"):
    """A :class:`~openmm_cgml.model.propagator.CGPropagator` of this package's code with the weights of a loaded file.

    The architecture comes from the file's ``model_init`` description, the
    weights from its tensors; none of the file's scripted code is kept. In eval
    mode with frozen parameters, as :func:`load` gives them. Export the result
    again (:func:`export_model`, with ``model.metadata``) to carry a model file
    over to a newer version of the step (e.g. the refinement).
    """
    propagator = _propagator(model.metadata, model.module.state_dict(), model.path, exact=False)
    _set_inference(propagator, model.refine_sigmas, model.hard_core, model.exclusion_retries)
    for parameter in propagator.parameters():
        parameter.requires_grad_(False)
    return propagator.eval()


def _is_model_file(source) -> bool:
    from openmm_cgml import pretrained

    source = Path(source)
    return source.suffix in (WEIGHTS_SUFFIX, TORCHSCRIPT_SUFFIX) or (
        source.suffix == "" and not source.exists() and str(source) in pretrained.available())


def export(source, out, overwrite: bool = False, trusted: bool = False) -> Path:
    """Export a Lightning checkpoint, a training directory or another model file to ``out``.

    Parameters
    ----------
    source : str or Path
        A ``.ckpt`` file, a training output directory (its best, else last,
        checkpoint), or a model file / pretrained name: converting a
        ``.safetensors`` file to ``.pt`` gives openmm-torch its TorchScript.
    out : str or Path
        ``.safetensors`` or ``.pt`` (:func:`export_model`).
    overwrite : bool
        Replace an existing ``out``.
    trusted : bool
        Allow a TorchScript ``source`` (see :func:`load`).
    """
    out = check_output(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    if Path(source).exists() and out.exists() and Path(source).resolve() == out.resolve():
        raise ValueError(f"{out}: the output is the file being exported")
    if _is_model_file(source):
        model = load(source, trusted=trusted)
        return export_model(rebuild(model), out, model.metadata)
    model, hparams, path = propagator_from_checkpoint(source)
    progress = hparams.pop("_progress", {})
    metadata = dict(hparams.get("metadata", {}))
    metadata.setdefault("training", {})
    metadata["training"].update(checkpoint=str(path), **progress)
    return export_model(model, out, metadata)


def _picoseconds(value: float) -> u.Quantity:
    return value * u.picosecond


def _kelvin(value: float) -> u.Quantity:
    return value * u.kelvin


def _module_attribute(name: str, convert, doc: str) -> property:
    """A read-only CGModel property: the ScriptModule's attribute ``name`` passed through ``convert``."""
    return property(lambda self: convert(getattr(self.module, name)), doc=doc)


class CGModel:
    """A loaded model file: the ScriptModule plus its parsed metadata.

    ``embed``/``step``/``predict`` call the ScriptModule and turn its input
    checks into ``ValueError`` (a molecule that does not fit the model is
    refused with a message saying why).
    """

    def __init__(self, module: torch.jit.ScriptModule, metadata: dict, path: str | None = None):
        self.module = module
        self.metadata = metadata
        self.path = path
        self._mapping = None
        self._compiled_step = None

    # ---- what the file describes (read from the ScriptModule's attributes)
    k = _module_attribute("k", int, "History length (frames) one step takes.")
    n_beads = _module_attribute("n_beads", int, "Beads per molecule (0 = transferable to any molecule of seen "
                                "atom types).")
    n_features = _module_attribute("n_features", int, "Width of the bead features ``embed`` returns.")
    md_steps_per_model_step = _module_attribute("md_steps_per_model_step", int, "Fine MD steps one model step "
                                                "stands for.")
    model_timestep = _module_attribute("model_dt_ps", _picoseconds, "Time one model step stands for "
                                       "(Quantity compatible with picoseconds).")
    md_timestep = _module_attribute("md_timestep_ps", _picoseconds, "Time step of the fine MD "
                                    "(Quantity compatible with picoseconds).")
    temperature = _module_attribute("temperature_K", _kelvin, "Temperature the model was trained at "
                                    "(Quantity compatible with kelvin).")

    @property
    def mapping_rule(self) -> tuple[str, dict] | None:
        """``(method, params)`` of the rule the model's mappings are made with (:func:`read_mapping_rule`).

        For a transferable model this is how a new molecule is mapped; whether
        the rule can be re-made for it is the caller's decision.
        """
        return read_mapping_rule(self.metadata)

    @property
    def mapping(self):
        """The :class:`~openmm_cgml.mapping.Mapping` the model was trained with (None if the file has none)."""
        if self._mapping is None and self.metadata.get("mapping"):
            from openmm_cgml.mapping import Mapping

            self._mapping = Mapping.from_json(self.metadata["mapping"])
        return self._mapping

    @property
    def refine_sigmas(self) -> list[float]:
        """Noise levels (accel-std units) of the Score refinement: one network call each per step."""
        return list(self.module.refine_sigmas)

    @refine_sigmas.setter
    def refine_sigmas(self, sigmas) -> None:
        values = [float(s) for s in sigmas]
        if not all(s > 0 for s in values):
            raise ValueError(f"refine_sigmas must all be > 0, got {values}")
        self.module.refine_sigmas = values

    def save(self, path, overwrite: bool = False) -> Path:
        """Write this model, with its current inference settings (``refine_sigmas``, ``hard_core``), to ``path``.

        The suffix picks the form, as in :func:`export_model`.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        return export_model(rebuild(self), path, self.metadata)

    @property
    def hard_core(self) -> bool:
        """Whether ``step`` pushes bead pairs closer than the learned minimum distances apart (False for
        files exported before the hard core existed)."""
        return bool(getattr(self.module, "hard_core", False))

    @hard_core.setter
    def hard_core(self, enabled: bool) -> None:
        if not hasattr(self.module, "hard_core"):
            raise ValueError("this model file predates the hard-core projection (re-export it from its checkpoint)")
        if enabled and not max(self.module.min_bonded_nm, self.module.min_nonbonded_nm) > 0:
            raise ValueError("this model has no learned minimum distances (trained before the hard core)")
        self.module.hard_core = bool(enabled)

    @property
    def exclusion_retries(self) -> int:
        """Redraws of a molecule's step while a pair is closer than its minimum distance (0: no truncation)."""
        return int(getattr(self.module, "exclusion_retries", 0))

    @exclusion_retries.setter
    def exclusion_retries(self, retries: int) -> None:
        if not hasattr(self.module, "exclusion_retries"):
            raise ValueError("this model file predates the truncated step (re-export it with rebuild)")
        if int(retries) != retries or retries < 0:
            raise ValueError(f"exclusion_retries must be an integer >= 0, got {retries!r}")
        if retries and not max(self.module.min_bonded_nm, self.module.min_nonbonded_nm) > 0:
            raise ValueError("this model has no learned minimum distances to truncate at")
        self.module.exclusion_retries = int(retries)

    @property
    def exclusion_events(self) -> tuple:
        """``(molecule-steps redrawn, molecule-steps still too close after the last redraw)`` since loading."""
        events = getattr(self.module, "exclusion_events", None)
        return (0, 0) if events is None else (int(events[0]), int(events[1]))

    @property
    def min_distances(self) -> dict:
        """Hard-core distances ``{"bonded": nm, "nonbonded": nm}`` (0 = none)."""
        return {"bonded": float(getattr(self.module, "min_bonded_nm", 0.0)),
                "nonbonded": float(getattr(self.module, "min_nonbonded_nm", 0.0))}

    @property
    def hard_core_events(self) -> int:
        """Close pairs the hard core has pushed apart since loading."""
        events = getattr(self.module, "hard_core_events", None)
        return int(events) if events is not None else 0

    def to(self, device) -> "CGModel":
        self.module.to(device)
        if self._compiled_step is not None:   # compiled for another device: its settings follow the new one
            self._compile_step()
        return self

    @property
    def compiled(self) -> bool:
        """Whether ``step`` runs through ``torch.compile`` (:meth:`compile`)."""
        return self._compiled_step is not None

    def compile(self) -> "CGModel":
        """Run ``step`` compiled by ``torch.compile``; returns this model.

        The step becomes this package's code with the file's weights (:func:`rebuild`; no code from the file)
        on fixed shapes (on a GPU fixed work too), compiled as :mod:`openmm_cgml.model.compiled` says: the same
        numbers to rounding, 2-3x faster on the CPU (docs/integrator.md, "Speed"). The first step at each bead
        count compiles (seconds to a minute; cached on disk by PyTorch) and needs a C++ compiler. Settings
        changed later (``refine_sigmas``, ``hard_core``, ``exclusion_retries``) recompile at the next step.
        """
        if self.compiled:
            return self
        propagator = rebuild(self).to(self.module.type_masses.device)
        propagator.metadata = json.dumps(self.metadata, sort_keys=True)
        self.module = propagator
        self._compile_step()
        return self

    def _compile_step(self) -> None:
        from openmm_cgml.model.compiled import compile_step

        self._compiled_step = compile_step(self.module)

    # ---- calls
    def _call(self, name: str, *args):
        try:
            # inference mode skips autograd's bookkeeping on every op (a sixth of a small model's step); the
            # results are copied out of it, so that they are ordinary tensors autograd code may later meet
            with torch.inference_mode():
                out = getattr(self.module, name)(*args)
            return _ordinary(out)
        except torch.jit.Error as error:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            message = next((line.split("ValueError:", 1)[1].strip() for line in lines if "ValueError:" in line),
                           lines[-1] if lines else str(error))
            raise ValueError(f"{name}: {message}") from None

    def embed(self, atom_types, fine_edge_index, bead_of_atom, n_beads: int) -> torch.Tensor:
        """Bead features (n_beads, n_features) for one molecule (or several copies)."""
        device = self.module.type_masses.device
        return self._call("embed", torch.as_tensor(atom_types, dtype=torch.long, device=device),
                          torch.as_tensor(fine_edge_index, dtype=torch.long, device=device).reshape(2, -1),
                          torch.as_tensor(bead_of_atom, dtype=torch.long, device=device), int(n_beads))

    def embed_mapping(self, mapping=None) -> torch.Tensor:
        """Bead features for the molecule of ``mapping`` (default: the model's own)."""
        mapping = mapping or self.mapping
        if mapping is None:
            raise ValueError("this model file carries no mapping; pass one")
        bonds = np.asarray(mapping.fine_bonds, dtype=np.int64).reshape(-1, 2)
        edges = np.concatenate([bonds, bonds[:, ::-1]]).T
        return self.embed(mapping.atom_types, edges, mapping.bead_of_atom, mapping.n_beads)

    def step(self, pos_history, bead_features, coarse_edge_index, batch, box, noise, refine: bool = True):
        """Next bead positions (N, 3) nm; see the TorchScript contract in docs/design.md."""
        if self._compiled_step is not None and not self.module.validate_inputs:
            if box.numel() and not bool((box != 0).any()):   # open boundaries: an empty box, no host read
                box = box.new_zeros(0, 3, 3)
            try:
                with torch.inference_mode():
                    return _ordinary(self._compiled_step(pos_history, bead_features, coarse_edge_index, batch,
                                                         box, noise, bool(refine)))
            except torch._dynamo.exc.BackendCompilerFailed as error:   # e.g. no C++ compiler on this machine
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise OSError(f"the model step could not be compiled ({first}); step without compile() "
                              "(cgml simulate without --compile)") from None
        return self._call("step", pos_history, bead_features, coarse_edge_index, batch, box, noise, bool(refine))

    @contextlib.contextmanager
    def validated(self, pos_history, bead_features, coarse_edge_index, batch):
        """Check the inputs of ``step`` once; inside the block ``step`` skips its own checks (host syncs).

        For a caller that steps one topology many times and watches the frames itself (``rollout``).
        Models exported before the switch check at every step, as before.
        """
        if not hasattr(self.module, "validate_inputs"):
            yield
            return
        self._call("validate", pos_history, bead_features, coarse_edge_index, batch)
        self.module.validate_inputs = False
        try:
            yield
        finally:
            self.module.validate_inputs = True

    def noise_draws(self, refine: bool = True) -> int:
        """How many (N, 3) standard normal draws one ``step`` takes (``noise`` is (draws, N, 3))."""
        if not hasattr(self.module, "noise_draws"):
            raise ValueError("this model file predates the stochastic refinement (re-export it)")
        return int(self.module.noise_draws(bool(refine)))

    def predict(self, pos_history, bead_features, coarse_edge_index, batch, box):
        """Acceleration mean (N, 3) and std (N, 1) in nm per model step^2."""
        return self._call("predict", pos_history, bead_features, coarse_edge_index, batch, box)

    def __repr__(self) -> str:
        return (f"CGModel({self.path!r}, k={self.k}, n_beads={self.n_beads or 'any'}, "
                f"model_timestep={self.model_timestep}, md_steps_per_model_step={self.md_steps_per_model_step})")


def _ordinary(out):
    """``out`` (a tensor, a tuple of them or None) made in inference mode, as ordinary tensors."""
    if isinstance(out, tuple):
        return tuple(_ordinary(item) for item in out)
    with torch.no_grad():
        return out.clone() if isinstance(out, torch.Tensor) else out


def load(path, device: str | torch.device = "cpu", trusted: bool = False) -> CGModel:
    """Load a model file, or a shipped pretrained model by name (``openmm_cgml.pretrained``).

    Parameters
    ----------
    path : str or Path
        A ``.safetensors`` or ``.pt`` model file (the form is read from the
        file's first bytes), or a pretrained name.
    device : str or torch.device
        Where the networks run.
    trusted : bool
        Load a TorchScript file even though it is not one this package ships.
        TorchScript is code and runs when loaded: set this only for files from
        a source you trust. Weights files need no trust.

    Returns
    -------
    CGModel
        A missing, corrupted, edited or foreign file raises an error naming it.
    """
    from openmm_cgml import pretrained

    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"a model file (path) or pretrained name must be a str, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file() and path.suffix == "" and str(path) in pretrained.available():
        path = pretrained.path(str(path))
    if path.is_dir():
        raise ValueError(f"model file {path} is a folder, not a model file")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a torch device: {str(error).splitlines()[0]}") from None
    if not path.is_file():
        shipped = ", ".join(pretrained.available()) or "none"
        raise FileNotFoundError(f"model file {path} does not exist (pretrained models by name: {shipped})")
    kind = model_formats.kind_of(path)
    if kind == "program":
        raise ValueError(f"{path}: a {PROGRAM_SUFFIX} step program of one bead system, not a model file; "
                         f"openmm_cgml.load_program({str(path)!r}, trusted=True) runs it")
    if kind == "torchscript":
        module, metadata = model_formats.read_torchscript(path, device, trusted)
    else:
        tensors, metadata = model_formats.read_weights(path)
        propagator = _propagator(metadata, tensors, path, exact=True)
        _set_inference(propagator, metadata["refine_sigmas"], (metadata.get("hard_core") or {}).get("enabled"),
                       metadata.get("exclusion_retries", 0))
        for parameter in propagator.parameters():
            parameter.requires_grad_(False)
        propagator.metadata = json.dumps(metadata, sort_keys=True)
        module = torch.jit.script(propagator.to(device))
    model_formats.check_mapping(metadata, path)
    return CGModel(module, metadata, str(path))
