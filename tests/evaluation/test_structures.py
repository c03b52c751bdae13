"""Structure quality measures on alanine dipeptide and on synthetic coordinates with known answers."""
import numpy as np
import openmm.unit as u

from openmm_cgml import systems
from openmm_cgml.evaluation.structures import clashes, handedness, heavy_atom_rmsd, stereocentres
from openmm_cgml.geometry import kabsch


def test_alanine_dipeptide_has_one_stereocentre_whose_mirror_flips():
    reference = systems.load("alanine-dipeptide")
    centres = stereocentres(reference.topology)
    atoms = list(reference.topology.atoms())
    assert [atoms[i].name for i in centres[:, 0]] == ["CA"]            # methyl carbons are not stereocentres
    assert sorted(atoms[i].name for i in centres[0, 1:]) == ["C", "CB", "HA", "N"]
    x = reference.positions.value_in_unit(u.nanometer)
    assert handedness(x, centres).shape == (1, 1)
    assert handedness(-x, centres)[0, 0] == -handedness(x, centres)[0, 0]


def test_stereocentres_of_a_bond_graph_by_atomic_numbers():
    """The same centre from atomic numbers and bonds (what training sees) as from the topology's elements."""
    from openmm_cgml.bond_graph import stereocentres as graph_stereocentres
    from openmm_cgml.structure import topology_bonds

    reference = systems.load("alanine-dipeptide")
    numbers = [a.element.atomic_number for a in reference.topology.atoms()]
    by_graph = graph_stereocentres(numbers, topology_bonds(reference.topology))
    assert by_graph[:, 0].tolist() == stereocentres(reference.topology)[:, 0].tolist()
    # a carbon with four identical substituents (CH4-like) or three (a methyl group) is not one
    assert len(graph_stereocentres([6, 1, 1, 1, 1], [[0, 1], [0, 2], [0, 3], [0, 4]])) == 0
    assert len(graph_stereocentres([6, 1, 1, 1, 6], [[0, 1], [0, 2], [0, 3], [0, 4]])) == 0


def test_clashes_count_only_overlapping_pairs_beyond_three_bonds():
    reference = systems.load("alanine-dipeptide")
    x = reference.positions.value_in_unit(u.nanometer)
    assert clashes(x, reference.topology)[0] == 0
    atoms = list(reference.topology.atoms())
    names = [a.name for a in atoms]
    # the two methyl carbons of the caps, far apart in the bond graph, put 0.2 nm apart
    first, last = names.index("CH3"), len(names) - 1 - names[::-1].index("CH3")
    moved = x.copy()
    moved[last] = moved[first] + np.array([0.2, 0.0, 0.0])
    assert clashes(np.stack([x, moved]), reference.topology).tolist()[0] == 0
    assert clashes(np.stack([x, moved]), reference.topology)[1] >= 1


def test_kabsch_and_rmsd_recover_a_known_rotation_and_never_reflect():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(7, 3))
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    found, residual = kabsch(points, points @ rotation.T)
    np.testing.assert_allclose(found, rotation, atol=1e-12)
    assert residual < 1e-20
    mirrored, residual = kabsch(points, points * np.array([-1.0, 1.0, 1.0]))
    assert np.linalg.det(mirrored) > 0 and residual > 0.1
    reference = systems.load("alanine-dipeptide")
    x = reference.positions.value_in_unit(u.nanometer)
    turned = (x - x.mean(0)) @ rotation.T + 3.0
    assert heavy_atom_rmsd(turned, x, reference.topology)[0] < 1e-6
    shifted = x.copy()
    heavy = [i for i, a in enumerate(reference.topology.atoms()) if a.element.symbol != "H"]
    shifted[heavy[0]] += np.array([0.3, 0.0, 0.0])
    assert 0.01 < heavy_atom_rmsd(shifted, x, reference.topology)[0] < 0.3 / np.sqrt(len(heavy)) + 1e-9
