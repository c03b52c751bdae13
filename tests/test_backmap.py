"""Backmapping on alanine dipeptide: fragments from short reference MD, restrained minimisation, round trips."""
import numpy as np
import openmm
import openmm.unit as u
import pytest

from openmm_cgml import systems
from openmm_cgml.backmap import Backmapper
from openmm_cgml.evaluation.structures import clashes, handedness, heavy_atom_rmsd, stereocentres
from openmm_cgml.mapping import Mapping


@pytest.fixture(scope="module")
def ala2():
    """(reference system, library frames (60, 22, 3), held-out frames (6, 22, 3)) nm: two short GBn2 runs."""
    reference = systems.load("alanine-dipeptide")
    runs = []
    for seed in (1, 2):
        integrator = reference.integrator(seed)
        context = openmm.Context(reference.system, integrator, openmm.Platform.getPlatformByName("CPU"),
                                 {"Threads": "1"})
        context.setPositions(reference.positions)
        context.setVelocitiesToTemperature(reference.temperature, seed)
        integrator.step(500)
        frames = []
        for _ in range(60 if seed == 1 else 6):
            integrator.step(100)
            frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer))
        runs.append(np.asarray(frames))
    return reference, runs[0], runs[1]


@pytest.mark.parametrize("method", ["backbone", "residue", "metis"])
def test_round_trip_of_held_out_frames(ala2, method):
    reference, library, held_out = ala2
    mapping = Mapping.build(method, reference.topology, reference.masses, atom_types=reference.atom_types)
    backmapper = Backmapper(mapping, reference.system, library)
    beads = mapping.bead_positions(held_out)
    result = backmapper.backmap(beads * u.nanometer)
    atoms = result.positions.value_in_unit(u.nanometer)
    assert atoms.shape == held_out.shape
    assert heavy_atom_rmsd(atoms, held_out, reference.topology).max() < 0.05
    assert result.bead_deviation.value_in_unit(u.nanometer).max() < 0.01
    centres = stereocentres(reference.topology)
    assert np.array_equal(handedness(atoms, centres), handedness(held_out, centres))
    assert clashes(atoms, reference.topology).sum() == 0
    # as low as the MD frames minimised under the same restraints (within a few kJ/mol on average)
    md = [backmapper.minimize(frame, bead)[1].value_in_unit(u.kilojoule_per_mole)
          for frame, bead in zip(held_out, beads)]
    energies = result.potential_energy.value_in_unit(u.kilojoule_per_mole)
    assert abs(np.mean(energies) - np.mean(md)) < 5.0


def test_fragments_alone_put_every_bead_on_its_target(ala2):
    reference, library, held_out = ala2
    mapping = Mapping.build("residue", reference.topology, reference.masses, atom_types=reference.atom_types)
    placed = Backmapper(mapping, None, library).place(mapping.bead_positions(held_out))
    np.testing.assert_allclose(mapping.bead_positions(placed.value_in_unit(u.nanometer)),
                               mapping.bead_positions(held_out), atol=1e-9)


def test_a_mirror_image_of_the_beads_keeps_the_molecules_handedness(ala2):
    """Fragments are only rotated, never reflected: mirrored beads still give the L alanine of the references."""
    reference, library, held_out = ala2
    mapping = Mapping.build("backbone", reference.topology, reference.masses, atom_types=reference.atom_types)
    centres = stereocentres(reference.topology)
    assert [list(reference.topology.atoms())[i].name for i in centres[:, 0]] == ["CA"]
    mirrored = mapping.bead_positions(held_out) * np.array([-1.0, 1.0, 1.0])
    atoms = Backmapper(mapping, None, library).place(mirrored).value_in_unit(u.nanometer)
    assert np.all(handedness(atoms, centres) == handedness(library, centres)[0])
    # a mirrored MD frame itself has the other hand
    assert np.all(handedness(held_out * np.array([-1.0, 1.0, 1.0]), centres) != handedness(held_out, centres))


def test_inputs_are_checked(ala2):
    reference, library, held_out = ala2
    mapping = Mapping.build("residue", reference.topology, reference.masses, atom_types=reference.atom_types)
    with pytest.raises(ValueError, match="reference_positions must have shape"):
        Backmapper(mapping, None, library[:, :5])
    backmapper = Backmapper(mapping, reference.system, library)
    with pytest.raises(ValueError, match="bead_positions must have shape"):
        backmapper.backmap(np.zeros((2, 4, 3)))
    beads = mapping.bead_positions(held_out)
    beads[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        backmapper.backmap(beads)
    with pytest.raises(ValueError, match="particles"):
        Backmapper(mapping, openmm.System(), library)
