"""The model step through ``torch.compile``: :func:`compile_step`, which ``CGModel.compile()`` runs.

A scripted step of a small molecule is per-op overhead: hundreds of tensor ops of a few microseconds each on
a few beads. Compiled, the step becomes a few graphs of fused kernels. What makes it compile well:

- fixed shapes (``CGPropagator.fixed_shapes``): every bead pair of each molecule instead of radius graphs,
  so no op has an output whose size depends on the positions; on a GPU fixed work too
  (``CGPropagator.fixed_work``: no host read at all, so the step is one graph, replayed as a CUDA graph);
- on the CPU, the kernels called from C++ rather than Python (``cpp_wrapper``), and each linear layer's bias
  added in the kernel that follows its matrix product (:class:`UnfusedBias`) instead of copied into the
  product's output first;
- the weights of built-in layers (``nn.Linear`` and the like) not re-checked before every step: nothing
  here changes them (the propagator's own settings stay checked, and a change recompiles);
- PyTorch's recompile limit raised: every model, bead count and refinement setting of a process is a graph
  of the same code, and past the default limit of 8 the step would silently run uncompiled.

Measured in bench/results/propagator-compiled.json (docs/propagator.md, "Fixed shapes, fixed work and the
compiled step").
"""
import logging

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

__all__ = ["compile_step", "UnfusedBias"]


class UnfusedBias(CustomGraphPass):
    """Inductor pass: ``addmm(bias, x, w)`` as ``mm(x, w) + bias``, so that the bias joins the pointwise kernel
    that follows (an activation, a product) instead of being expanded and copied into the product's output:
    a seventh of a small molecule's compiled step on the CPU. PyTorch does the same on GPUs by itself."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        aten = torch.ops.aten
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target is not aten.addmm.default or node.kwargs:
                continue
            bias, mat1, mat2 = node.args
            with graph.inserting_before(node):
                product = graph.call_function(aten.mm.default, (mat1, mat2))
                total = graph.call_function(aten.add.Tensor, (product, bias))
            product.meta, total.meta = dict(node.meta), dict(node.meta)
            node.replace_all_uses_with(total)
            graph.erase_node(node)

    def uuid(self) -> str:
        # the key of PyTorch's on-disk cache of compiled graphs: change it when the pass changes
        return "openmm_cgml.UnfusedBias.1"


class _CompileNotes(logging.Filter):
    """Drops torch's compile-time warnings that say nothing wrong about a compiled step: the graph breaks it
    makes on purpose where the truncation and the hard core decide on the host (the cheap common case on the
    CPU: nothing to correct), and a CPU build's note that it found no CUDA while building the kernels' C++."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("openmm_cgml" in text and "raph break" in text) and "No CUDA runtime is found" not in text


_COMPILE_NOTES = _CompileNotes()


def _quiet_compile_notes() -> None:
    """Attach :class:`_CompileNotes` to the handlers torch's loggers write through, once (nothing per step)."""
    for name in ("torch", "torch._dynamo"):
        for handler in logging.getLogger(name).handlers:
            if _COMPILE_NOTES not in handler.filters:
                handler.addFilter(_COMPILE_NOTES)


def compile_step(propagator):
    """``torch.compile`` of ``propagator.step`` for the device the propagator is on (module docstring).

    Sets the propagator's ``fixed_shapes`` (and on a GPU ``fixed_work``). Compilation happens at the first call
    with each new input size, and needs a C++ compiler on the CPU.

    Parameters
    ----------
    propagator : CGPropagator
        An eager propagator (not a TorchScript module), in eval mode, with frozen parameters.

    Returns
    -------
    callable
        Takes and returns what ``propagator.step`` does.
    """
    _quiet_compile_notes()
    cuda = propagator.type_masses.device.type == "cuda"
    propagator.fixed_shapes, propagator.fixed_work = True, cuda
    options = {"triton.cudagraphs": True} if cuda else {"cpp_wrapper": True,
                                                        "post_grad_custom_post_pass": UnfusedBias()}
    skip = getattr(torch.compiler, "skip_guard_on_inbuilt_nn_modules_unsafe", None)
    if skip is not None:
        options["guard_filter_fn"] = skip
    config = torch._dynamo.config
    config.recompile_limit = max(int(config.recompile_limit), 256)
    return torch.compile(propagator.step, dynamic=False, options=options)
