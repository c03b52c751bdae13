"""Fixed-shape and fixed-work steps: the same positions as the plain step, and no host read in fixed work."""
import json

import pytest
import torch

from openmm_cgml.model.hard_core import bonded_pairs, pair_minimum, project_hard_core
from openmm_cgml.model.propagator import CGPropagator
from openmm_cgml.nn.paxnet import bond_keys

# ops that make the host wait for the device (a value read back, or an output whose size depends on values)
HOST_READS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero", "aten::unique",
              "aten::_unique2", "aten::unique_consecutive", "aten::bincount", "aten::masked_select",
              "aten::repeat_interleave", "aten::equal"}


def _crowded(model, chain_molecule, history, n_beads, copies=3):
    """``history(k)`` (the compressed chain: the hard core and the truncation both have work) ``copies`` times,
    each its own molecule, jittered. Open boundaries, as an empty box."""
    atom_types, fine_edges, bead_of_atom, coarse = chain_molecule()
    features = model.embed(atom_types, fine_edges, bead_of_atom, n_beads).double()
    generator = torch.Generator().manual_seed(3)
    history = history(model.k, dtype=torch.float64).repeat(1, copies, 1)
    history = history + 0.02 * torch.randn(history.shape, generator=generator, dtype=torch.float64)
    edges = torch.cat([coarse + r * n_beads for r in range(copies)], dim=1)
    batch = torch.arange(copies).repeat_interleave(n_beads)
    return history, features.repeat(copies, 1), edges, batch, torch.zeros(0, 3, 3, dtype=torch.float64)


def _model(hard_core_model, noise):
    model = hard_core_model(noise=noise).double()
    model.exclusion_retries = 3
    return model


def _step(model, inputs, noise, refine, fixed_shapes, fixed_work):
    history, features, edges, batch, box = inputs
    model.fixed_shapes, model.fixed_work = fixed_shapes, fixed_work
    model.hard_core_events.zero_()
    model.exclusion_events.zero_()
    model.validate(history, features, edges, batch)
    model.validate_inputs = False
    try:
        with torch.no_grad():
            out = model.step(history, features, edges, batch, box, noise, refine)
    finally:
        model.validate_inputs = True
    return out, int(model.hard_core_events), model.exclusion_events.tolist()


@pytest.mark.parametrize("crowded", [True, "one", False])
@pytest.mark.parametrize("noise_model", ["independent", "internal"])
@pytest.mark.parametrize("refine", [False, True])
def test_fixed_shapes_and_fixed_work_step_as_the_plain_step(crowded, noise_model, refine, hard_core_model,
                                                            chain_molecule, chain_history, compressed_history,
                                                            n_beads):
    """Every pair of each molecule instead of radius graphs, and every redraw and sweep done, give the plain step's
    positions (to rounding: a matrix product of more rows may round its last bit differently) and count the same
    corrections (noise that makes both corrections work; ``"one"``: the first of three molecules crowded, the other
    two at rest, so that only some molecules redraw)."""
    model = _model(hard_core_model, noise_model)
    inputs = _crowded(model, chain_molecule, compressed_history if crowded else chain_history, n_beads)
    if crowded == "one":   # two molecules far apart at rest, with the crowded one's jitter
        history = inputs[0].clone()
        away = 5.0 * torch.arange(1, 3, dtype=torch.float64).repeat_interleave(n_beads)[:, None] \
            * torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        history[:, n_beads:] = chain_history(model.k, dtype=torch.float64).repeat(1, 2, 1) \
            + inputs[0][:, n_beads:] - compressed_history(model.k).repeat(1, 2, 1) + away
        inputs = (history,) + inputs[1:]
    if not crowded:   # minima no step comes near: the check that returns at once, in one host read
        model.min_bonded_nm = model.min_nonbonded_nm = 0.02
        model.min_distance_nm.fill_(0.02)
    results = []
    for seed in range(4):
        noise = torch.randn(model.noise_draws(refine), inputs[0].size(1), 3, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(seed))
        plain = _step(model, inputs, noise, refine, False, False)
        for fixed_shapes, fixed_work in ((True, False), (True, True), (False, True)):
            other = _step(model, inputs, noise, refine, fixed_shapes, fixed_work)
            # double precision; rounding differences grow where the compressed chain's bond frames are nearly
            # degenerate (internal coordinates), still far below anything physical
            torch.testing.assert_close(other[0], plain[0], rtol=0, atol=1e-6)
            assert other[1:] == plain[1:]
        results.append(plain[1:])
    # crowded, the hard core pushed pairs apart and the truncation redrew molecules; else neither had work
    assert any(events > 0 for events, _ in results) == bool(crowded)
    assert any(redrawn[0] > 0 for _, redrawn in results) == bool(crowded)


def test_fixed_work_step_reads_nothing_back(hard_core_model, chain_molecule, compressed_history, n_beads):
    """After validation, a fixed-work step with refinement, truncation and hard core has no op that waits for
    values on the host (a CUDA stream would stall on it, a CUDA graph could not hold it); the plain step has."""
    model = _model(hard_core_model, "internal")
    history, features, edges, batch, box = _crowded(model, chain_molecule, compressed_history, n_beads)
    noise = torch.randn(model.noise_draws(True), history.size(1), 3, dtype=torch.float64)
    reads = {}
    for fixed_work in (False, True):
        model.fixed_work = fixed_work
        model.validate(history, features, edges, batch)
        model.validate_inputs = False
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            model.step(history, features, edges, batch, box, noise, True)
        model.validate_inputs = True
        reads[fixed_work] = {event.key for event in profile.key_averages()} & HOST_READS
    assert reads[True] == set()
    assert reads[False]


def test_hard_core_without_early_exit_is_the_same_projection(compressed_history, n_beads):
    """Masked sweeps to the end move the beads exactly as the sweeps that stop when nothing is too close."""
    x = compressed_history(1)[0]
    i, j = torch.meshgrid(torch.arange(n_beads), torch.arange(n_beads), indexing="ij")
    off = i != j
    edge = torch.stack([j[off], i[off]])
    shift = torch.zeros(edge.size(1), 3, dtype=x.dtype)
    bonds = torch.stack([torch.arange(n_beads - 1), torch.arange(1, n_beads)])
    keys = bond_keys(torch.cat([bonds, bonds.flip(0)], 1), n_beads)
    masses = torch.linspace(1.0, 3.0, n_beads, dtype=x.dtype)
    minimum = torch.tensor([0.30, 0.45], dtype=x.dtype)
    out, events = [], []
    for early_exit in (True, False):
        counter = torch.zeros((), dtype=torch.long)
        per_pair = pair_minimum(bonded_pairs(edge, n_beads, keys), minimum, x.dtype)
        out.append(project_hard_core(x, masses, edge, shift, per_pair, 0.45, 8, counter, early_exit))
        events.append(int(counter))
    assert torch.equal(out[0], out[1]) and events[0] == events[1] > 0
    assert not torch.equal(out[0], x)


def test_fixed_work_scripts(hard_core_model):
    """The switches are plain attributes of the exported module."""
    model = _model(hard_core_model, "internal")
    init = json.loads(model.init_json)
    scripted = torch.jit.script(CGPropagator.from_init_json(json.dumps(init)).eval())
    assert scripted.fixed_work is False and scripted.fixed_shapes is False
    scripted.fixed_work = True
    assert scripted.fixed_work is True


def test_fixed_work_step_exports_as_one_program(hard_core_model, chain_molecule, compressed_history, n_beads):
    """No data-dependent control flow is left: ``torch.export`` takes the whole step (refinement, truncation, hard
    core) as one graph, for this topology, and the program steps as the module does."""
    model = _model(hard_core_model, "internal")
    history, features, edges, batch, box = _crowded(model, chain_molecule, compressed_history, n_beads)
    model.fixed_work = True
    model.validate(history, features, edges, batch)
    model.validate_inputs = False
    noise = torch.randn(model.noise_draws(True), history.size(1), 3, dtype=torch.float64)
    with torch.no_grad():
        program = torch.export.export(model, (history, features, edges, batch, box, noise, True), strict=False)
        torch.testing.assert_close(program.module()(history, features, edges, batch, box, noise, True),
                                   model.step(history, features, edges, batch, box, noise, True), rtol=0, atol=1e-9)
