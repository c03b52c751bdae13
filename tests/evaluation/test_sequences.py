"""Benchmark sequences: disjoint splits, stratified test sets, and the isolated-chains builder."""
import numpy as np
import openmm as mm
import pytest

from openmm_cgml import systems
from openmm_cgml.evaluation import sequences
from openmm_cgml.evaluation.benchmark import design_splits, load_definition


def test_features_of_known_sequences():
    assert sequences.features("ABAB") == pytest.approx([0.5, 0.0, np.log(4)])
    assert sequences.features("AAAB") == pytest.approx([0.75, 2 / 3, np.log(4)])
    assert sequences.canonical("AABB") == sequences.canonical("BBAA")


def test_small_splits_are_disjoint_up_to_reversal_and_stratified():
    definition = load_definition("polymer", "small")
    designed = design_splits(definition)
    everything = [sequences.canonical(s) for split in designed.values() for s in split]
    assert len(everything) == len(set(everything))
    assert {len(s) for s in designed["test"]} == {8} and {len(s) for s in designed["test_long"]} == {12}
    assert len(designed["test"]) >= 16 and len(designed["test_long"]) >= 8
    test = np.stack([sequences.features(s) for s in designed["test"]])
    # both features vary and are not one another: composition alone cannot order the test chains
    assert np.ptp(test[:, 0]) >= 0.45 and np.ptp(test[:, 1]) >= 0.4
    assert abs(np.corrcoef(test[:, 0], test[:, 1])[0, 1]) < 0.5
    assert design_splits(definition) == designed  # deterministic


def test_isolated_chains_do_not_interact():
    chains = systems.load("polymer-chains", sequences=["AABBAB", "ABBBAA"])
    assert chains.topology.getNumChains() == 2
    singles = [systems.load("polymer-chain", sequence=s) for s in ("AABBAB", "ABBBAA")]

    def energy(system, positions):
        context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
        context.setPositions(positions)
        return context.getState(getEnergy=True).getPotentialEnergy()._value

    positions = np.asarray(chains.positions._value)
    # put the two chains on top of each other: isolated chains still feel nothing of each other
    positions[12:] += positions[0] - positions[12]
    together = energy(chains.system, positions)
    apart = energy(singles[0].system, positions[:12]) + energy(singles[1].system, positions[12:])
    assert together == pytest.approx(apart, rel=1e-9)


def test_isolated_chains_need_sequences():
    with pytest.raises(ValueError, match="sequences"):
        systems.load("polymer-chains", sequences=[])
    with pytest.raises(ValueError, match="A and B"):
        systems.load("polymer-chains", sequences=["ABX"])


def test_designed_splits_do_not_depend_on_the_hash_seed():
    """The benchmark's sequences are part of its definition: two interpreters must design the same ones."""
    import subprocess
    import sys

    code = ("from openmm_cgml.evaluation.benchmark import design_splits, load_definition;"
            "print(design_splits(load_definition('polymer', 'small')))")
    outputs = {subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "PYTHONHASHSEED": seed},
                              capture_output=True, text=True, check=True).stdout for seed in ("1", "2")}
    assert len(outputs) == 1
