"""Tests of openmm_cgml.mapping, bond_graph and mapping_image on tiny real molecules (conftest.py fixtures)."""
from __future__ import annotations

import json

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
from scipy.sparse.csgraph import connected_components

from openmm_cgml import cli
from openmm_cgml.bond_graph import adjacency, repair_connectivity
from openmm_cgml.mapping import Mapping, mapping_options, mapping_rules, register_mapping_rule
from openmm_cgml.mapping_image import draw_mapping


def masses_of(system):
    return np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())])


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def bead_is_connected(mapping, bead):
    atoms = np.flatnonzero(mapping.bead_of_atom == bead)
    if len(atoms) == 1:
        return True
    graph = adjacency(mapping.n_atoms, mapping.fine_bonds)[atoms][:, atoms]
    return connected_components(graph, directed=False)[0] == 1


# ----------------------------------------------------------------------------- METIS

def test_metis_beads_are_connected_balanced_and_ions_alone(solvated_peptide):
    topology, _, system = solvated_peptide
    mapping = Mapping.metis(topology, system, atoms_per_bead=4, seed=0)
    assert all(bead_is_connected(mapping, b) for b in range(mapping.n_beads))
    # every molecule is partitioned on its own: no bead spans two molecules
    for b in range(mapping.n_beads):
        assert len(np.unique(mapping.molecule_of_atom[mapping.bead_of_atom == b])) == 1
    ions = [atom.index for atom in topology.atoms() if atom.residue.name in ("NA", "CL")]
    assert ions, "the test system should contain ions"
    sizes = np.bincount(mapping.bead_of_atom)
    assert np.all(sizes[mapping.bead_of_atom[ions]] == 1)
    # the peptide (the first molecule) is cut into beads of about 4 atoms
    peptide_atoms = np.flatnonzero(mapping.molecule_of_atom == 0)
    peptide_sizes = np.bincount(mapping.bead_of_atom[peptide_atoms])[np.unique(mapping.bead_of_atom[peptide_atoms])]
    assert len(peptide_sizes) == round(len(peptide_atoms) / 4)
    assert peptide_sizes.max() <= 2 * 4 and peptide_sizes.min() >= 2
    assert abs(peptide_sizes.mean() - 4) < 0.5


def test_metis_is_deterministic_and_n_beads_is_exact(peptide):
    topology, _, system = peptide("AAAAA")
    first = Mapping.metis(topology, system, atoms_per_bead=5, seed=7)
    again = Mapping.metis(topology, system, atoms_per_bead=5, seed=7)
    assert np.array_equal(first.bead_of_atom, again.bead_of_atom)
    exact = Mapping.metis(topology, system, n_beads=9, seed=1)
    assert exact.n_beads == 9
    assert all(bead_is_connected(exact, b) for b in range(exact.n_beads))
    with pytest.raises(ValueError, match="n_beads must lie between"):
        Mapping.metis(topology, system, n_beads=10_000)
    with pytest.raises(ValueError, match="exactly one of"):
        Mapping.metis(topology, system)


def test_disconnected_parts_are_repaired():
    # a path 0-1-2-3-4-5 where part 0 = {0, 1, 4}: atom 4 is cut off from the rest of its part
    bonds = np.array([[i, i + 1] for i in range(5)])
    graph = adjacency(6, bonds)
    repaired = repair_connectivity(graph, np.array([0, 0, 1, 1, 0, 2]))
    for label in np.unique(repaired):
        atoms = np.flatnonzero(repaired == label)
        assert connected_components(graph[atoms][:, atoms], directed=False)[0] == 1
    assert repaired[0] == repaired[1] and repaired[4] != repaired[0]


# ----------------------------------------------------------------------------- residues

def test_residue_mapping_one_bead_per_residue(peptide):
    topology, positions, system = peptide("AGA")
    mapping = Mapping.by_residue(topology, system)
    assert mapping.n_beads == topology.getNumResidues() == 3
    assert mapping.bead_names == [r.name for r in topology.residues()]
    assert len(mapping.coarse_bonds) == 2
    on_ca = Mapping.by_residue(topology, system, center="ca")
    ca = [a.index for a in topology.atoms() if a.name == "CA"]
    np.testing.assert_allclose(on_ca.bead_positions(positions), positions[ca], atol=1e-12)
    np.testing.assert_allclose(on_ca.bead_masses, mapping.bead_masses)


# ----------------------------------------------------------------------------- bead quantities

def test_bead_centres_follow_rigid_motion_and_masses_add_up(peptide):
    topology, positions, system = peptide("AAAA")
    masses = masses_of(system)
    mapping = Mapping.metis(topology, masses * unit.dalton, atoms_per_bead=4)
    assert mapping.bead_masses.sum() == pytest.approx(masses.sum(), rel=1e-12)
    assert np.all(mapping.bead_masses > 0)
    rng = np.random.default_rng(3)
    rotations = np.stack([random_rotation(rng) for _ in range(4)])
    shifts = rng.normal(scale=3.0, size=(4, 1, 3))
    moved = positions @ rotations + shifts                               # (4, n_atoms, 3)
    expected = mapping.bead_positions(positions) @ rotations + shifts
    np.testing.assert_allclose(mapping.bead_positions(moved * unit.nanometer), expected, atol=1e-10)
    # each bead is its atoms' centre of mass, also in angstrom input
    bead = mapping.bead_positions(positions * 10 * unit.angstrom)
    for b in range(mapping.n_beads):
        atoms = mapping.bead_of_atom == b
        np.testing.assert_allclose(bead[b], masses[atoms] @ positions[atoms] / masses[atoms].sum(), atol=1e-12)
    velocities = rng.normal(size=positions.shape)
    momentum = masses @ velocities
    np.testing.assert_allclose(mapping.bead_masses @ mapping.bead_velocities(velocities), momentum, atol=1e-9)


def test_molecules_are_made_whole_across_the_box(solvated_peptide):
    topology, positions, system = solvated_peptide
    box = np.array(topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    mapping = Mapping.by_residue(topology, system)
    lengths = np.diag(box)
    shifted = positions + np.array([0.5 * lengths[0], 0.0, 0.3])   # push the peptide across the box edge
    wrapped = shifted - np.floor(shifted / lengths) * lengths       # every atom wrapped on its own
    broken = mapping.bead_positions(wrapped)
    whole = mapping.bead_positions(wrapped, box * unit.nanometer)
    reference = mapping.bead_positions(shifted)
    offset = whole - reference
    np.testing.assert_allclose(offset - np.round(offset / lengths) * lengths, 0.0, atol=1e-9)
    # wrapping atoms one by one breaks molecules; whole ones keep bonds short
    atoms_whole = mapping.make_whole(wrapped, box)
    bond_lengths = np.linalg.norm(atoms_whole[mapping.fine_bonds[:, 0]] - atoms_whole[mapping.fine_bonds[:, 1]], axis=1)
    assert bond_lengths.max() < 0.2
    assert not np.allclose(broken, whole)
    # per-frame boxes broadcast over frames
    frames = np.stack([wrapped] * 130)                  # more frames than one block of the unwrap
    np.testing.assert_allclose(mapping.bead_positions(frames, np.stack([box] * 130)), np.stack([whole] * 130))
    np.testing.assert_allclose(mapping.bead_positions(frames, box), np.stack([whole] * 130))


def test_bead_topology_and_system(solvated_peptide):
    topology, _, system = solvated_peptide
    box = topology.getPeriodicBoxVectors()
    mapping = Mapping.metis(topology, system, atoms_per_bead=3)
    beads = mapping.bead_topology(box)
    assert beads.getNumAtoms() == mapping.n_beads
    assert beads.getNumResidues() == mapping.n_beads
    solvent = sum(1 for r in topology.residues() if r.name in ("HOH", "NA", "CL"))
    assert beads.getNumChains() == mapping.n_molecules == solvent + 1   # waters, ions and one peptide
    assert sorted((b[0].index, b[1].index) for b in beads.bonds()) == sorted(map(tuple, mapping.coarse_bonds.tolist()))
    assert beads.getPeriodicBoxVectors() is not None
    bead_system = mapping.bead_system(box)
    masses = [bead_system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(bead_system.getNumParticles())]
    np.testing.assert_allclose(masses, mapping.bead_masses)
    assert min(masses) > 0 and bead_system.usesPeriodicBoundaryConditions()  # the periodic marker force
    assert not mapping.bead_system().usesPeriodicBoundaryConditions()
    a, b, c = bead_system.getDefaultPeriodicBoxVectors()
    assert a[0].value_in_unit(unit.nanometer) == pytest.approx(box[0][0].value_in_unit(unit.nanometer))
    # a context runs on it: bead particles are integrated (non-zero masses)
    context = openmm.Context(bead_system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(np.zeros((mapping.n_beads, 3)))
    context.setVelocities(np.ones((mapping.n_beads, 3)))
    context.getIntegrator().step(1)
    moved = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    np.testing.assert_allclose(moved, 0.001)


# ----------------------------------------------------------------------------- the rule registry

def test_mapping_rules_are_found_by_name_and_can_be_registered(peptide, monkeypatch):
    import openmm_cgml.mapping as mapping_module

    topology, _, system = peptide("AAA")
    assert {"metis", "residue", "file"} <= set(mapping_rules())
    assert mapping_options("metis", 5, None, "com", 3) == ("metis", {"atoms_per_bead": 5, "n_beads": None, "seed": 3})
    assert mapping_options("residue", center="ca") == ("residue", {"center": "ca"})
    assert mapping_options("beads.yaml") == ("beads.yaml", {})
    assert mapping_options("backbone", extra=("CB",)) == ("backbone", {"extra": ["CB"]})
    method, params = mapping_options("backbone", extra=["CB"])
    backbone = Mapping.build(method, topology, system, **params)
    assert backbone.n_beads == 3 * 3 + 3          # N, CA, C and CB of each of three alanines
    method, params = mapping_options("residue")
    assert Mapping.build(method, topology, system, **params) == Mapping.by_residue(topology, system)
    assert Mapping.build("metis", topology, system).params["atoms_per_bead"] == 4   # the default resolution

    monkeypatch.setattr(mapping_module, "_RULES", dict(mapping_module._RULES))   # registrations stay in this test

    def one_bead(topology, masses, atom_types=None, name="ALL"):
        bonds = [(bond[0].index, bond[1].index) for bond in topology.bonds()]
        return Mapping(np.zeros(topology.getNumAtoms(), dtype=int), masses_of(masses), fine_bonds=bonds,
                       bead_names=[name], method="one-bead", params={"name": name})

    register_mapping_rule("one-bead", one_bead)
    assert "one-bead" in mapping_rules()
    whole = Mapping.build("one-bead", topology, system, name="PEP")
    assert whole.n_beads == 1 and whole.bead_names == ["PEP"]
    assert Mapping.build(whole.method, topology, system, **whole.params) == whole
    with pytest.raises(FileNotFoundError, match="mapping file no-such-rule does not exist"):
        Mapping.build("no-such-rule", topology, system)


# ----------------------------------------------------------------------------- files and JSON

def test_json_round_trip_is_exact(peptide):
    topology, positions, system = peptide("AAA")
    mapping = Mapping.metis(topology, system, atoms_per_bead=4, seed=2)
    text = mapping.to_json()
    again = Mapping.from_json(text)
    assert again == mapping
    assert np.array_equal(again.atom_masses, mapping.atom_masses)
    assert np.array_equal(again.bead_positions(positions), mapping.bead_positions(positions))
    assert json.loads(text)["format"] == "openmm-cgml-mapping"
    with pytest.raises(ValueError, match="not valid JSON"):
        Mapping.from_json(text[:-10])
    remade = Mapping.build(mapping.method, topology, system, **mapping.params)
    assert remade == mapping


def test_user_mapping_file_json_and_yaml(peptide, tmp_path):
    topology, positions, system = peptide("AAA")
    residue = Mapping.by_residue(topology, system)
    beads = [{"name": name, "atoms": np.flatnonzero(residue.bead_of_atom == b).tolist()}
             for b, name in enumerate(residue.bead_names)]
    (tmp_path / "map.json").write_text(json.dumps({"beads": beads, "n_atoms": topology.getNumAtoms()}))
    import yaml

    (tmp_path / "map.yaml").write_text(yaml.safe_dump({"beads": beads}))
    for name in ("map.json", "map.yaml"):
        mapping = Mapping.from_file(tmp_path / name, topology, system)
        assert np.array_equal(mapping.bead_of_atom, residue.bead_of_atom)
        np.testing.assert_allclose(mapping.bead_positions(positions), residue.bead_positions(positions))
    # the full JSON of a mapping is a valid mapping file too
    (tmp_path / "full.json").write_text(residue.to_json())
    assert Mapping.from_file(tmp_path / "full.json", topology, system) == residue


def test_mappings_that_do_not_fit_are_refused(peptide, tmp_path):
    topology, _, system = peptide("AAA")
    n_atoms = topology.getNumAtoms()
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"beads": [{"name": "X", "atoms": list(range(n_atoms - 1))}]}))
    with pytest.raises(ValueError, match=rf"leaves 1 atoms without a bead \(first: atom {n_atoms - 1}\)"):
        Mapping.from_file(path, topology, system)
    path.write_text(json.dumps({"beads": [{"atoms": list(range(n_atoms))}, {"atoms": [0]}]}))
    with pytest.raises(ValueError, match="atom 0 is in more than one bead"):
        Mapping.from_file(path, topology, system)
    path.write_text(json.dumps({"beads": [{"atoms": list(range(n_atoms + 1))}]}))
    with pytest.raises(ValueError, match=f"refers to atom {n_atoms}"):
        Mapping.from_file(path, topology, system)
    path.write_text(json.dumps({"beads": [{"atoms": list(range(n_atoms))}], "n_atoms": 5}))
    with pytest.raises(ValueError, match=f"is for 5 atoms but the topology has {n_atoms}"):
        Mapping.from_file(path, topology, system)
    path.write_text("{beads: [")
    with pytest.raises(ValueError, match="not valid JSON"):
        Mapping.from_file(path, topology, system)
    # a mapping made for one molecule does not fit another
    mapping = Mapping.by_residue(topology, system)
    other, _, _ = peptide("AAAA")
    with pytest.raises(ValueError, match=f"is for {n_atoms} atoms but the topology has {other.getNumAtoms()}"):
        mapping.check_fits(other)
    same_size = app.Topology()
    chain = same_size.addChain()
    residue = same_size.addResidue("UNK", chain)
    for atom in topology.atoms():
        same_size.addAtom(atom.name, atom.element, residue)
    with pytest.raises(ValueError, match="bond graphs differ"):
        mapping.check_fits(same_size)
    (tmp_path / "full.json").write_text(mapping.to_json())
    with pytest.raises(ValueError, match="is for .* atoms but the topology has"):
        Mapping.from_file(tmp_path / "full.json", other, peptide("AAAA")[2])


def test_bad_coordinates_and_units_are_refused(peptide):
    topology, positions, system = peptide("AAA")
    mapping = Mapping.by_residue(topology, system)
    bad = positions.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mapping.bead_positions(bad)
    with pytest.raises(ValueError, match="compatible with nanometer"):
        mapping.bead_positions(positions * unit.picosecond)
    with pytest.raises(ValueError, match=f"shape \\(..., {mapping.n_atoms}, 3\\)"):
        mapping.bead_positions(positions[:-1])
    with pytest.raises(ValueError, match="masses has"):
        Mapping.by_residue(topology, masses_of(system)[:-2])


# ----------------------------------------------------------------------------- picture

def test_map_image_command_writes_a_png(peptide, tmp_path):
    topology, positions, _ = peptide("AAA")
    pdb = tmp_path / "tri.pdb"
    with open(pdb, "w") as handle:
        app.PDBFile.writeFile(topology, positions * unit.nanometer, handle)
    out = tmp_path / "map.png"
    assert cli.main(["map-image", str(pdb), "--atoms-per-bead", "5", "--out", str(out),
                     "--save-mapping", str(tmp_path / "m.json")]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    saved = Mapping.from_json((tmp_path / "m.json").read_text())
    assert saved.method == "metis" and saved.n_atoms == topology.getNumAtoms()
    assert cli.main(["map-image", str(pdb), "--mapping", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    (tmp_path / "broken.pdb").write_text("ATOM  garbage\nEND\n")
    assert cli.main(["map-image", str(tmp_path / "broken.pdb"), "--out", str(tmp_path / "b.png")]) == 2
    assert not (tmp_path / "b.png").exists()


def test_draw_mapping_residue(peptide, tmp_path):
    topology, positions, system = peptide("AAA")
    out = draw_mapping(Mapping.by_residue(topology, system, center="ca"), positions, tmp_path / "res.png")
    assert out.stat().st_size > 10_000


def test_make_whole_in_a_triclinic_box(peptide):
    topology, positions, system = peptide("AAAA")
    mapping = Mapping.metis(topology, system, atoms_per_bead=4)
    box = np.array([[3.0, 0.0, 0.0], [1.0, 2.8, 0.0], [-0.9, 1.1, 2.6]])   # OpenMM reduced form
    rng = np.random.default_rng(0)
    shifts = rng.integers(-2, 3, size=(len(positions), 3)) @ box          # every atom its own lattice image
    whole = mapping.make_whole(positions + shifts, box)
    np.testing.assert_allclose(whole - whole[0], positions - positions[0], atol=1e-10)
    expected = mapping.bead_positions(positions)
    offset = mapping.bead_positions(positions + shifts, box) - expected   # one lattice vector for the molecule
    np.testing.assert_allclose(offset, np.broadcast_to(offset[0], offset.shape), atol=1e-10)
    with pytest.raises(ValueError, match="box must be"):
        mapping.bead_positions(positions, box[:2])
