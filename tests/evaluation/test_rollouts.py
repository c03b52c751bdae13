"""The benchmark's batched rollouts: corrections switched per call, counted, and set back; CPU pinning."""
import os

import numpy as np
import pytest

import openmm_cgml
from openmm_cgml import systems
from openmm_cgml.evaluation.rollouts import choose_refinement, pinned_cpus, roll_out
from openmm_cgml.openmm.bead_system import molecule_mapping


@pytest.fixture(scope="module")
def chain_start():
    """The shipped 1 ps polymer model, the mapping of a 6-monomer chain and a history squeezed to 20 %."""
    model = openmm_cgml.load("polymer-chain-1ps")
    reference = systems.load("polymer-chain", length=6)
    mapping = molecule_mapping(model, reference.topology, reference.atom_types, None)
    beads = mapping.bead_positions(reference.positions._value)
    squeezed = (beads - beads.mean(0)) * 0.2   # bonds of ~0.1 nm: far under the model's bonded minimum
    return model, mapping, np.repeat(squeezed[None], model.k, axis=0)


def test_truncation_is_counted_per_molecule_step_and_switched_back(chain_start):
    model, mapping, history = chain_start
    assert model.exclusion_retries == 8 and model.hard_core   # as shipped
    on = roll_out(model, [mapping, mapping], [history, history], 3, seed=2, hard_core=False)
    assert on["molecule_steps"] == 6 and on["exclusion_events"][0] >= 2   # both molecules redrew their first step
    off = roll_out(model, [mapping, mapping], [history, history], 3, seed=2, hard_core=False, exclusion_retries=0)
    assert off["exclusion_events"] == (0, 0)
    assert model.exclusion_retries == 8 and model.hard_core              # the call's settings were set back
    first = lambda run: np.stack([frames[1] for frames in run["frames"]])  # noqa: E731
    assert not np.allclose(first(on), first(off))                        # the redrawn step differs


def test_a_choice_of_no_refinement_leaves_the_model_without_levels(chain_start):
    model, mapping, history = chain_start
    shipped = model.refine_sigmas
    try:
        seen = []

        def score(refine):   # the objective favours no refinement; each call sees the candidate's levels
            seen.append((refine, model.refine_sigmas))
            return len(model.refine_sigmas) if refine else 0.0
        chosen = choose_refinement(model, [[0.3, 0.1], [], [0.15]], score, "levels", log=lambda _: None)
        assert chosen["value"] == [] and seen[0] == (True, [0.3, 0.1]) and seen[2] == (True, [0.15])
        # stepping with refinement asked for (as timings do) now takes no Score call
        assert model.refine_sigmas == [] and model.noise_draws(True) == model.noise_draws(False)
    finally:
        model.refine_sigmas = shipped


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux-only")
def test_pinned_cpus_pins_the_block_and_restores_the_affinity():
    allowed = os.sched_getaffinity(0)
    with pinned_cpus(1):
        inside = os.sched_getaffinity(0)
    assert len(inside) == 1 and inside <= allowed
    assert os.sched_getaffinity(0) == allowed
    with pinned_cpus(len(allowed) + 5):   # more than there are: all of them
        assert os.sched_getaffinity(0) == allowed


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux-only")
def test_reference_runs_are_pinned_one_cpu_each():
    """Reference MD on the CPU platform runs on one CPU (here, in this process, and restored after), and each
    worker of a pool takes a CPU of its own from the queue it is started with."""
    import queue

    from openmm_cgml.evaluation import references

    allowed = os.sched_getaffinity(0)
    seen = []
    references._run_all(lambda tag: seen.append((tag, os.sched_getaffinity(0))), [("a",), ("b",)], 1, "CPU")
    assert [tag for tag, _ in seen] == ["a", "b"] and all(len(cpus) == 1 for _, cpus in seen)
    assert os.sched_getaffinity(0) == allowed
    references._run_all(lambda tag: seen.append((tag, os.sched_getaffinity(0))), [("gpu",)], 1, "CUDA")
    assert seen[-1] == ("gpu", allowed)                          # a GPU run is left alone
    slots = queue.Queue()
    slots.put(min(allowed))
    try:
        references._pin_worker(slots)
        assert os.sched_getaffinity(0) == {min(allowed)}
    finally:
        os.sched_setaffinity(0, allowed)
