"""The two on-disk forms of a model file, what loading either may trust, and where one may be written.

**Weights file (``.safetensors``, the default).** The propagator's tensors in
the safetensors format, and one JSON text (the metadata: the mapping, ``k``,
time steps, units, training provenance, software versions, and
``model_init``, the architecture) in its header. Reading it parses a JSON
header and copies raw tensor bytes; nothing in it is code. The loader
rebuilds the architecture from this package's own code (``model_init``),
checks that the tensors fit it exactly, and scripts the result locally.
``digest`` (SHA-256 over the metadata and the tensors) detects a file that
was edited or damaged after export.

**TorchScript file (``.pt``).** For openmm-torch and other TorchScript
users: ``torch.jit.load`` reads it without this package. TorchScript is
code: a crafted file runs what it likes when loaded (``__setstate__``
is executed by ``torch.jit.load``), so this module refuses to load one unless
the caller trusts it (``trusted=True``, ``--trust-model``) or its SHA-256 is
one this package ships (``pretrained/index.json``). The check happens before
the file is handed to TorchScript.

**Step program (``.pt2``, :mod:`openmm_cgml.model_program`).** The step of one bead system exported with
``torch.export``; not a model file (it serves one system), and loaded only by
:func:`openmm_cgml.model_program.load_program`, with the same trust as TorchScript.

Both forms carry the same metadata, validated here (:func:`check_metadata`)
against the schema the exporter writes. docs/design.md, "Model files: the
threat model", says what is and is not protected.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from openmm_cgml.io import first_line
from openmm_cgml.units import is_integer, is_number

__all__ = ["FORMAT", "FORMAT_VERSION", "WEIGHTS_SUFFIX", "TORCHSCRIPT_SUFFIX", "PROGRAM_SUFFIX",
           "check_output", "kind_of", "file_sha256",
           "write_weights", "read_weights", "write_torchscript", "read_torchscript", "check_metadata",
           "digest", "trusted_sha256s", "read_mapping_rule", "check_mapping"]

FORMAT = "openmm-cgml-model"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
TORCHSCRIPT_SUFFIX = ".pt"
PROGRAM_SUFFIX = ".pt2"
_HEADER_KEY = "openmm_cgml"  # the safetensors header entry that holds the metadata JSON
_ZIP_MAGIC = b"PK\x03\x04"   # a TorchScript archive is a zip file


def kind_of(path: Path) -> str:
    """``"torchscript"``, ``"program"`` (a ``.pt2`` step program) or ``"weights"``: read from the file's bytes,
    not its name."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(_ZIP_MAGIC):
        # both are zip files; only a torch.export archive has an archive_format entry
        try:
            with zipfile.ZipFile(path) as archive:
                if any(name.endswith("/archive_format") for name in archive.namelist()):
                    return "program"
        except zipfile.BadZipFile:
            pass   # damaged: TorchScript's own reader names the problem
        return "torchscript"
    if len(head) < 8:
        raise ValueError(f"{path}: not a readable openmm-cgml model file (empty or truncated: {len(head)} bytes)")
    return "weights"


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def digest(metadata: dict, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the metadata (without its ``digest`` key) and every tensor (name, dtype, shape, bytes)."""
    sha = hashlib.sha256(json.dumps({key: value for key, value in metadata.items() if key != "digest"},
                                    sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        sha.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        sha.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return sha.hexdigest()


def write_weights(tensors: dict[str, torch.Tensor], metadata: dict, path: Path) -> None:
    """Write ``tensors`` and ``metadata`` (plus its ``digest``) as one safetensors file at ``path``."""
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    metadata = dict(metadata, digest=digest(metadata, tensors))
    save_file(tensors, str(path), metadata={_HEADER_KEY: json.dumps(metadata, sort_keys=True)})


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and checked metadata of a weights file; ValueError naming the file if it is not one.

    Only the safetensors header (JSON) and raw tensor bytes are read: no
    pickle, no code.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for every kind of damage
        raise ValueError(f"{path}: not a readable openmm-cgml model file (corrupted or truncated?): "
                         f"{first_line(error)}") from None
    if _HEADER_KEY not in header:
        raise ValueError(f"{path}: a safetensors file without openmm-cgml metadata")
    metadata = _parse_metadata(header[_HEADER_KEY], path)
    if metadata.get("digest") != digest(metadata, tensors):
        raise ValueError(f"{path}: the metadata or weights were changed after export (digest mismatch); "
                         "export the model again from its checkpoint")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path}: tensor {name!r} holds NaN or infinite values")
    return tensors, metadata


def write_torchscript(module: torch.jit.ScriptModule, metadata: dict, path: Path) -> None:
    """``torch.jit.save`` with the metadata as the extra file ``metadata.json``."""
    torch.jit.save(module, str(path), _extra_files={"metadata.json": json.dumps(metadata, sort_keys=True)})


def trusted_sha256s() -> set[str]:
    """SHA-256 of the TorchScript files this package vouches for (``torchscript_sha256`` in the pretrained index,
    of a shipped model or of the one it replaced, under ``previous``)."""
    from openmm_cgml import pretrained

    entries = [entry for entry in pretrained.index().values() if isinstance(entry, dict)]
    entries += [entry["previous"] for entry in entries if isinstance(entry.get("previous"), dict)]
    return {entry["torchscript_sha256"] for entry in entries if isinstance(entry.get("torchscript_sha256"), str)}


def read_torchscript(path: Path, device, trusted: bool) -> tuple[torch.jit.ScriptModule, dict]:
    """The ScriptModule and checked metadata of a TorchScript model file.

    Refused, before TorchScript sees the file, unless ``trusted`` or the
    file's SHA-256 is in :func:`trusted_sha256s`.
    """
    if not trusted and file_sha256(path) not in trusted_sha256s():
        raise ValueError(f"{path}: a TorchScript model file can run code when it is loaded; if you trust its "
                         f"source, pass trusted=True (cgml simulate --trust-model) or convert it once with "
                         f"'cgml export {path} --out model{WEIGHTS_SUFFIX} --trust-model' ({WEIGHTS_SUFFIX} files "
                         f"need no trust)")
    extra = {"metadata.json": ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        text = extra["metadata.json"] or getattr(module, "metadata", "")
        if isinstance(text, bytes):
            text = text.decode()
    except Exception as error:  # TorchScript and a damaged archive raise many types; UnicodeDecodeError too
        raise ValueError(f"{path}: not a readable openmm-cgml model file (corrupted or truncated?): "
                         f"{first_line(error)}") from None
    return module, _parse_metadata(text, path)


def _parse_metadata(text: str, path: Path) -> dict:
    try:
        metadata = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise ValueError(f"{path}: model file without valid openmm-cgml metadata (not JSON)") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: model file metadata is not a JSON object")
    check_metadata(metadata, path)
    return metadata


def _number(value, positive: bool) -> bool:
    return is_number(value) and math.isfinite(value) and (value > 0 if positive else value >= 0)


def _integer(value, minimum: int) -> bool:
    return is_integer(value) and value >= minimum


# key -> (check, what it must be); the fields every export writes and every reader relies on
_SCHEMA = {
    "format_version": (lambda v: _integer(v, 1), "an integer >= 1"),
    "k": (lambda v: _integer(v, 1), "an integer >= 1"),
    "n_beads": (lambda v: _integer(v, 0), "an integer >= 0"),
    "n_atoms": (lambda v: _integer(v, 0), "an integer >= 0"),
    "md_steps_per_model_step": (lambda v: _integer(v, 1), "an integer >= 1"),
    "model_dt_ps": (lambda v: _number(v, True), "a number > 0 (ps)"),
    "md_timestep_ps": (lambda v: _number(v, True), "a number > 0 (ps)"),
    "temperature_K": (lambda v: _number(v, True), "a number > 0 (K)"),
    "refine_sigmas": (lambda v: isinstance(v, list) and all(_number(s, True) for s in v), "a list of numbers > 0"),
    "model_init": (lambda v: isinstance(v, dict) and isinstance(v.get("config"), dict)
                   and isinstance(v.get("type_masses"), list), "an object with 'config' and 'type_masses'"),
}
# top-level copies of the architecture's own values: an edit of one without the other is refused
_MIRRORED = ("k", "n_beads", "n_atoms", "model_dt_ps", "md_steps_per_model_step", "md_timestep_ps", "temperature_K")


def check_metadata(metadata: dict, path) -> None:
    """ValueError naming the field if ``metadata`` is not what an openmm-cgml export writes."""
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not an openmm-cgml model (format {metadata.get('format')!r})")
    for key, (check, expected) in _SCHEMA.items():
        if key not in metadata:
            raise ValueError(f"{path}: model metadata has no {key!r}")
        if not check(metadata[key]):
            raise ValueError(f"{path}: model metadata {key!r} must be {expected}, got {metadata[key]!r}")
    if not _integer(metadata.get("exclusion_retries", 0), 0):   # optional: files before the truncation lack it
        raise ValueError(f"{path}: model metadata 'exclusion_retries' must be an integer >= 0, "
                         f"got {metadata['exclusion_retries']!r}")
    if metadata["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{path}: written by a newer openmm-cgml (format version {metadata['format_version']})")
    init = metadata["model_init"]
    for key in _MIRRORED:
        own = init["config"].get(key) if key == "k" else init.get(key)
        if own is not None and own != metadata[key]:
            raise ValueError(f"{path}: model metadata {key!r} = {metadata[key]!r} contradicts the architecture "
                             f"({own!r})")
    mapping = metadata.get("mapping")
    if mapping is not None and not isinstance(mapping, (str, dict)):
        raise ValueError(f"{path}: model metadata 'mapping' must be a mapping JSON, got {type(mapping).__name__}")


def check_output(path, name: str = "model file") -> Path:
    """``path`` as a Path, if a model file can be written there; else an error naming it, before any work.

    Parameters
    ----------
    path : str or os.PathLike
        Where the model file is to be written.
    name : str
        What the messages call it, e.g. ``"--out"`` for the command line.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        ``path`` is a folder, its parent is a file, or its name ends in none of ``.safetensors``, ``.pt`` and
        ``.pt2`` (a step program).
    FileNotFoundError
        Its folder does not exist.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path (str or os.PathLike), got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name} {path} is a folder; give the model file's name")
    if path.suffix not in (WEIGHTS_SUFFIX, TORCHSCRIPT_SUFFIX, PROGRAM_SUFFIX):
        raise ValueError(f"{name} {path}: the name must end in {WEIGHTS_SUFFIX} (weights only, the default), "
                         f"{TORCHSCRIPT_SUFFIX} (TorchScript, for openmm-torch) or {PROGRAM_SUFFIX} (torch.export "
                         f"step program of one bead system)")
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"{name} {path}: {path.parent} is a file, not a folder")
    if not path.parent.exists():
        raise FileNotFoundError(f"{name} {path}: output directory {path.parent} does not exist")
    return path


def check_mapping(metadata: dict, path: Path) -> None:
    """ValueError if the file's mapping does not describe the molecule its architecture is for."""
    if not metadata.get("mapping"):
        return
    from openmm_cgml.mapping import Mapping

    try:
        mapping = Mapping.from_json(metadata["mapping"])
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path}: the metadata mapping is not readable: {error}") from None
    for what, own in (("n_beads", mapping.n_beads), ("n_atoms", mapping.n_atoms)):
        if metadata[what] and own % metadata[what]:
            raise ValueError(f"{path}: the metadata mapping has {own} {what[2:]}, the model is for "
                             f"{metadata[what]} per molecule")
    types = np.asarray(mapping.atom_types)
    table = np.asarray(metadata["model_init"]["type_masses"], dtype=float)
    if types.size and (types.min() < 0 or types.max() >= len(table) or (table[types] <= 0).any()):
        raise ValueError(f"{path}: the metadata mapping has atom types the model never saw in training")


def read_mapping_rule(metadata: dict) -> tuple[str, dict] | None:
    """``(method, params)`` of the mapping rule a model file's metadata records, or None.

    The one place the rule is read: the ``mapping_rule`` key, else the
    model's own mapping, else (files from before the key) the training data's
    ``mapping_method``/``mapping_params`` attributes.

    Parameters
    ----------
    metadata : dict
        Parsed metadata of a model file (or the metadata about to be exported).

    Returns
    -------
    tuple of (str, dict) or None
        None when no rule is recorded or its parameters are unreadable.
    """
    rule = metadata.get("mapping_rule")
    if isinstance(rule, dict):
        method, params = rule.get("method"), rule.get("params") or {}
    elif metadata.get("mapping"):
        mapping = metadata["mapping"]
        mapping = json.loads(mapping) if isinstance(mapping, str) else mapping
        method, params = mapping.get("method"), mapping.get("params") or {}
    else:
        attrs = ((metadata.get("training") or {}).get("data") or {}).get("attrs") or {}
        method, params = attrs.get("mapping_method"), attrs.get("mapping_params") or {}
    try:
        params = json.loads(params) if isinstance(params, str) else dict(params)
    except (json.JSONDecodeError, TypeError, ValueError):
        return None
    return (str(method), params) if method else None
