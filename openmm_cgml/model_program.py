"""A model step exported with ``torch.export`` for one bead system: the ``.pt2`` step program.

A model file (``.safetensors``, ``.pt``) serves any molecule its mapping
rule fits: the step takes the molecule (bead features, bonds, molecule
index) as inputs and derives its topology tables from them. A step program
is that step specialised to one system, as openmm-ml specialises a potential
to one topology: the bead features, the bonds, the molecules and their
topology tables are constants of the program, which takes the last ``k``
bead positions and the noise and returns the next positions::

    program = torch.export.load("step.pt2").module()
    x_next = program(pos_history, noise)     # (k, N, 3) nm, (D, N, 3) -> (N, 3) nm

It is the fixed-work step (``CGPropagator.fixed_work``): every redraw of the
truncation and every hard-core sweep done with masks, no value read back
to the host, so the whole step is one graph that needs neither this package
nor Python control flow to run (``torch.export``'s own runtimes, AOTInductor,
a CUDA graph). That needs the molecules' bead pairs in place of radius
graphs: open boundaries and molecules of at most 64 beads; other systems
raise ``ValueError``.

Loading a ``.pt2`` file unpickles parts of it (``torch.export.load``), which
can run code: :func:`load_program` refuses a file unless the caller trusts
it, as for TorchScript files (:mod:`openmm_cgml.model_formats`).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from openmm_cgml.io import atomic_path, first_line
from openmm_cgml.model_formats import PROGRAM_SUFFIX, check_metadata, kind_of

__all__ = ["StepProgram", "export_program", "load_program"]

_METADATA = "metadata.json"


class StepProgram(nn.Module):
    """The fixed-work step of one bead system, as ``torch.export`` takes it.

    Parameters
    ----------
    propagator : CGPropagator
        An eager propagator (this package's code with a file's weights), in eval mode.
    bead_features : Tensor
        (N, n_features) of the system's beads (``CGModel.embed_mapping``, repeated per replica).
    coarse_edge_index, batch : Tensor
        (2, E) bonds in both directions and (N,) molecule of each bead (sorted).
    refine : bool
        Whether the step refines its draw with the Score network.
    """

    def __init__(self, propagator, bead_features: Tensor, coarse_edge_index: Tensor, batch: Tensor, refine: bool):
        super().__init__()
        self.propagator = propagator
        self.refine = bool(refine)
        self.register_buffer("bead_features", bead_features.detach().clone())
        self.register_buffer("coarse_edge_index", coarse_edge_index.detach().clone())
        self.register_buffer("batch", batch.detach().clone())
        self.register_buffer("box", torch.zeros(0, 3, 3, dtype=bead_features.dtype))
        propagator.fixed_work = True
        history = torch.zeros(propagator.k, batch.size(0), 3, dtype=bead_features.dtype)
        propagator.validate(history, self.bead_features, self.coarse_edge_index, self.batch)
        if "pairs" not in propagator.topology.tables:
            raise ValueError("a step program needs molecules of at most 64 beads (their bead pairs replace the "
                             "radius graphs); this system's are larger")
        propagator.validate_inputs = False

    def extra_repr(self) -> str:
        return f"n_beads={self.batch.size(0)}, refine={self.refine}"

    def forward(self, pos_history: Tensor, noise: Tensor) -> Tensor:
        """Next positions (N, 3) nm from the last k positions (k, N, 3) nm and standard normal ``noise``
        (noise_draws, N, 3)."""
        return self.propagator.step(pos_history, self.bead_features, self.coarse_edge_index, self.batch, self.box,
                                    noise, self.refine)


def export_program(model, mapping, replicas: int, path, refine: bool = True) -> Path:
    """Write the step of ``model`` for ``replicas`` copies of the molecule of ``mapping`` as a ``.pt2`` file.

    Parameters
    ----------
    model : CGModel
        A loaded model file (its weights, and this package's code for the network).
    mapping : Mapping
        The molecule (``coarse_grained_system(...).mapping``).
    replicas : int
        Independent copies in one step, >= 1.
    path : str or Path
        Ends in ``.pt2``; written atomically.
    refine : bool
        Refine each draw with the Score network (the model's own levels).

    Returns
    -------
    Path
        ``path``.
    """
    from openmm_cgml.model_file import rebuild
    from openmm_cgml.openmm.rollout import model_graph

    path = Path(path)
    if path.suffix != PROGRAM_SUFFIX:
        raise ValueError(f"{path}: a step program is a {PROGRAM_SUFFIX} file")
    if int(replicas) != replicas or replicas < 1:
        raise ValueError(f"replicas must be a whole number >= 1, got {replicas}")
    propagator = rebuild(model).cpu()
    edges, batch = model_graph(mapping, int(replicas), "cpu")
    features = model.embed_mapping(mapping).cpu().repeat(int(replicas), 1)
    program = StepProgram(propagator, features, edges, batch, refine)
    draws = propagator.noise_draws(bool(refine))
    example = (torch.zeros(propagator.k, batch.size(0), 3), torch.zeros(draws, batch.size(0), 3))
    with torch.no_grad():
        exported = torch.export.export(program, example, strict=False)
    metadata = dict(model.metadata, program={
        "n_beads": int(batch.size(0)), "replicas": int(replicas), "refine": bool(refine), "noise_draws": draws,
        "mapping": mapping.to_json(), "inputs": "pos_history (k, n_beads, 3) nm, noise (noise_draws, n_beads, 3)",
        "output": "positions (n_beads, 3) nm", "torch": torch.__version__})
    buffer = io.BytesIO()   # the archive names its folder after the file: the same name whatever the path
    torch.export.save(exported, buffer, extra_files={_METADATA: json.dumps(metadata, sort_keys=True)})
    with atomic_path(path) as temporary:
        temporary.write_bytes(buffer.getvalue())
    return path


def load_program(path, trusted: bool = False):
    """The step program (a callable ``(pos_history, noise) -> positions``) and the metadata of a ``.pt2`` file.

    Parameters
    ----------
    path : str or Path
    trusted : bool
        Loading unpickles parts of the file, which can run code: refused unless True.

    Returns
    -------
    (torch.nn.Module, dict)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"step program {path} does not exist")
    if kind_of(path) != "program":
        raise ValueError(f"{path}: not a {PROGRAM_SUFFIX} step program (a model file? openmm_cgml.load reads it)")
    if not trusted:
        raise ValueError(f"{path}: loading a {PROGRAM_SUFFIX} file can run code from it; if you trust its "
                         f"source, pass trusted=True")
    extra = {_METADATA: ""}
    try:
        exported = torch.export.load(str(path), extra_files=extra)
        metadata = json.loads(extra[_METADATA])
    except Exception as error:   # a damaged archive raises many types
        raise ValueError(f"{path}: not a readable step program (corrupted or truncated?): "
                         f"{first_line(error)}") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("program"), dict):
        raise ValueError(f"{path}: a {PROGRAM_SUFFIX} file without openmm-cgml step-program metadata")
    check_metadata(metadata, path)
    return exported.module(), metadata
