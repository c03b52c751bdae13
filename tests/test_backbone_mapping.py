"""Tests of the "backbone" mapping rule (openmm_cgml.backbone) on alanine dipeptide and chignolin.

The fine trajectories are short real OpenMM runs (a few hundred MD steps, made once per module);
phi and psi from the bead positions are compared with mdtraj's phi and psi of the atoms.
"""
from __future__ import annotations

import json

import h5py
import mdtraj
import numpy as np
import openmm.app as app
import openmm.unit as unit
import pytest

from openmm_cgml import cli, systems
from openmm_cgml.mapping import Mapping, mapping_rules
from openmm_cgml.trajectory import FineTrajectory

TOLERANCE_RAD = 1e-5
BEAD_COUNTS = {   # (system, extra) -> beads: 3 per residue (+ the ACE C and NME N caps), + CB (not GLY), + O
    ("alanine-dipeptide", ()): 5, ("alanine-dipeptide", ("CB",)): 6, ("alanine-dipeptide", ("O",)): 6,
    ("alanine-dipeptide", ("CB", "O")): 7,
    ("chignolin", ()): 30, ("chignolin", ("CB",)): 37, ("chignolin", ("O",)): 40, ("chignolin", ("CB", "O")): 47,
}


@pytest.fixture(scope="module")
def fine(tmp_path_factory):
    """``{system name: [trajectory paths]}``: 8 frames 50 MD steps apart; three alanine-dipeptide replicas."""
    from openmm_cgml.generate import generate

    folder = tmp_path_factory.mktemp("fine")
    return {name: generate(name, folder / name, frames=8, stride=50, replicas=replicas, equilibration_steps=0,
                           progress=False, platform="CPU")
            for name, replicas in (("alanine-dipeptide", 3), ("chignolin", 1))}


def frames_of(path, rng, n_perturbed: int = 4) -> tuple[app.Topology, np.ndarray, np.ndarray]:
    """``(topology, masses, positions)``: the MD frames and randomly perturbed copies of them (float32 nm)."""
    with FineTrajectory(path) as trajectory:
        topology, masses, positions = trajectory.topology, np.asarray(trajectory.masses), trajectory.positions[:]
    noisy = positions[:n_perturbed] + rng.normal(scale=0.03, size=positions[:n_perturbed].shape)
    return topology, masses, np.concatenate([positions, noisy.astype(np.float32)])


def dihedrals(points: np.ndarray) -> np.ndarray:
    """Dihedral angles (rad) of ``points`` (..., 4, 3), the IUPAC convention mdtraj uses."""
    b1, b2, b3 = (points[..., i + 1, :] - points[..., i, :] for i in range(3))
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * np.einsum("...i,...i", b1, n2)
    return np.arctan2(y, np.einsum("...i,...i", n1, n2))


def angle_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(np.angle(np.exp(1j * (a - b))))


# ----------------------------------------------------------------------------- phi and psi are exact

@pytest.mark.parametrize("name", ["alanine-dipeptide", "chignolin"])
@pytest.mark.parametrize("extra", [[], ["CB", "O"]])
def test_phi_and_psi_from_beads_equal_those_of_the_atoms(fine, name, extra):
    topology, masses, positions = frames_of(fine[name][0], np.random.default_rng(0))
    mapping = Mapping.build("backbone", topology, masses, extra=extra)
    beads = mapping.bead_positions(positions.astype(np.float64))
    traj = mdtraj.Trajectory(positions, mdtraj.Topology.from_openmm(topology))
    n_residues = topology.getNumResidues()
    for compute in (mdtraj.compute_phi, mdtraj.compute_psi):
        quadruples, reference = compute(traj)
        # alanine dipeptide: one phi and one psi (thanks to the ACE C and NME N beads); chignolin: 9 each
        assert len(quadruples) == (1 if name == "alanine-dipeptide" else n_residues - 1)
        bead_quadruples = mapping.bead_of_atom[quadruples]
        assert np.array_equal(mapping.center_atoms[bead_quadruples], quadruples)   # each atom places its bead
        from_beads = dihedrals(beads[:, bead_quadruples])
        assert np.ptp(reference) > 0.05   # the frames differ
        assert angle_error(from_beads, reference).max() < TOLERANCE_RAD


# ----------------------------------------------------------------------------- beads and their atoms

@pytest.mark.parametrize(("name", "extra"), list(BEAD_COUNTS))
def test_every_atom_is_in_one_bead_and_the_bead_count(name, extra):
    reference = systems.load(name)
    mapping = Mapping.build("backbone", reference.topology, reference.system, extra=list(extra))
    atoms = list(reference.topology.atoms())
    assert mapping.bead_of_atom.shape == (len(atoms),)
    assert mapping.n_beads == BEAD_COUNTS[name, extra]
    assert np.all(np.bincount(mapping.bead_of_atom, minlength=mapping.n_beads) > 0)
    assert np.all(mapping.center_atoms >= 0)
    for bead, centre in enumerate(mapping.center_atoms):   # named after the atom and its residue
        atom = atoms[centre]
        assert atom.name in ("N", "CA", "C", *extra)
        assert mapping.bead_names[bead] == f"{atom.name}{atom.residue.index + 1}"
    assert np.all(np.diff(mapping.center_atoms) > 0)   # topology order
    for i, j in mapping.fine_bonds.tolist():   # a hydrogen is in its heavy atom's bead
        if atoms[i].element.symbol == "H" or atoms[j].element.symbol == "H":
            assert mapping.bead_of_atom[i] == mapping.bead_of_atom[j]


def bead_atoms(mapping, topology, bead_name):
    bead = mapping.bead_names.index(bead_name)
    return sorted((atom.residue.name, atom.name) for atom in topology.atoms()
                  if mapping.bead_of_atom[atom.index] == bead)


def test_caps_side_chains_and_ties_go_to_the_nearest_bead():
    dipeptide = systems.load("alanine-dipeptide")
    mapping = Mapping.build("backbone", dipeptide.topology, dipeptide.system)
    assert mapping.bead_names == ["C1", "N2", "CA2", "C2", "N3"]
    top = dipeptide.topology
    assert bead_atoms(mapping, top, "C1") == sorted(("ACE", a) for a in ("CH3", "H1", "H2", "H3", "C", "O"))
    assert bead_atoms(mapping, top, "CA2") == sorted(("ALA", a) for a in ("CA", "HA", "CB", "HB1", "HB2", "HB3"))
    assert bead_atoms(mapping, top, "C2") == [("ALA", "C"), ("ALA", "O")]
    assert bead_atoms(mapping, top, "N3") == sorted(("NME", a) for a in ("N", "H", "C", "H1", "H2", "H3"))
    chignolin = systems.load("chignolin")   # GYDPETGTWG
    mapping = Mapping.build("backbone", chignolin.topology, chignolin.system)
    proline = bead_atoms(mapping, chignolin.topology, "N4")
    assert ("PRO", "CD") in proline and ("PRO", "CG") not in proline   # CG: two bonds from N and CA, a tie: CA
    assert ("PRO", "CG") in bead_atoms(mapping, chignolin.topology, "CA4")
    assert ("GLY", "OXT") in bead_atoms(mapping, chignolin.topology, "C10")
    assert bead_atoms(mapping, chignolin.topology, "N1") == sorted(("GLY", a) for a in ("N", "H", "H2", "H3"))
    with_cb = Mapping.build("backbone", chignolin.topology, chignolin.system, extra=["CB"])
    assert ("PRO", "CG") in bead_atoms(with_cb, chignolin.topology, "CB4")


def test_water_and_ions_are_one_bead_per_molecule(solvated_peptide):
    topology, positions, system = solvated_peptide
    mapping = Mapping.build("backbone", topology, system)
    peptide = [r for r in topology.residues() if r.name == "ALA"]
    others = [r for r in topology.residues() if r.name != "ALA"]   # waters and single-atom ions
    assert len(others) > 10
    assert mapping.n_beads == 3 * len(peptide) + len(others)
    for residue in others:
        atoms = [atom.index for atom in residue.atoms()]
        bead = mapping.bead_of_atom[atoms[0]]
        assert np.all(mapping.bead_of_atom[atoms] == bead) and np.sum(mapping.bead_of_atom == bead) == len(atoms)
        assert mapping.center_atoms[bead] == -1
        assert mapping.bead_names[bead] == f"{residue.name}{residue.index + 1}"
    assert np.isfinite(mapping.bead_positions(positions, topology.getPeriodicBoxVectors())).all()


# ----------------------------------------------------------------------------- JSON, rebuild and refusals

def test_round_trips_through_json_and_build(tmp_path):
    chignolin = systems.load("chignolin")
    assert "backbone" in mapping_rules()
    mapping = Mapping.build("backbone", chignolin.topology, chignolin.system, extra=["O", "CB"])
    assert mapping.method == "backbone" and mapping.params == {"extra": ["CB", "O"], "atom_types_from": "element"}
    again = Mapping.from_json(mapping.to_json())
    assert again == mapping and np.array_equal(again.center_atoms, mapping.center_atoms)
    assert Mapping.build(again.method, chignolin.topology, chignolin.system, **again.params) == mapping
    (tmp_path / "m.json").write_text(mapping.to_json())
    assert Mapping.build(str(tmp_path / "m.json"), chignolin.topology, chignolin.system) == mapping


def without_atoms(reference, residue_name: str, atom_names: tuple[str, ...]) -> app.Topology:
    modeller = app.Modeller(reference.topology, reference.positions)
    modeller.delete([a for a in modeller.topology.atoms() if a.residue.name == residue_name and a.name in atom_names])
    return modeller.topology


def element_masses(topology: app.Topology) -> np.ndarray:
    return np.array([atom.element.mass.value_in_unit(unit.dalton) for atom in topology.atoms()])


def test_refusals_name_the_residue_or_the_parameter():
    dipeptide = systems.load("alanine-dipeptide")
    no_ca = without_atoms(dipeptide, "ALA", ("CA",))
    masses = element_masses(no_ca)
    with pytest.raises(ValueError, match=r"amino acid ALA2 .* lacks the atom\(s\) CA"):
        Mapping.build("backbone", no_ca, masses)
    no_cb = without_atoms(dipeptide, "ALA", ("CB", "HB1", "HB2", "HB3"))
    masses = element_masses(no_cb)
    assert Mapping.build("backbone", no_cb, masses).n_beads == 5   # CB is only needed when asked for
    with pytest.raises(ValueError, match=r"ALA2 .* lacks the atom\(s\) CB"):
        Mapping.build("backbone", no_cb, masses, extra=["CB"])
    for bad in (["CG"], "CB", ["CB", "CB"]):
        with pytest.raises(ValueError, match="extra"):
            Mapping.build("backbone", dipeptide.topology, dipeptide.system, extra=bad)
    with pytest.raises(ValueError, match="mapping rule 'backbone'"):
        Mapping.build("backbone", dipeptide.topology, dipeptide.system, atoms_per_bead=4)
    water = app.Topology()
    residue = water.addResidue("HOH", water.addChain())
    oxygen = water.addAtom("O", app.element.oxygen, residue)
    for name in ("H1", "H2"):
        water.addBond(oxygen, water.addAtom(name, app.element.hydrogen, residue))
    with pytest.raises(ValueError, match="no amino-acid residue .*HOH.*metis or residue"):
        Mapping.build("backbone", water, [16.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- the command line

def test_cli_map_image_and_coarse_grain(fine, tmp_path, capsys):
    out, saved = tmp_path / "x.png", tmp_path / "m.json"
    assert cli.main(["map-image", "alanine-dipeptide", "--mapping", "backbone", "--out", str(out),
                     "--save-mapping", str(saved)]) == 0
    assert out.stat().st_size > 0 and "22 atoms -> 5 beads" in capsys.readouterr().out
    assert Mapping.from_json(saved.read_text()).bead_names == ["C1", "N2", "CA2", "C2", "N3"]
    assert cli.main(["map-image", "alanine-dipeptide", "--mapping", "backbone", "--backbone-extra", "CB",
                     "--out", str(out), "--save-mapping", str(saved), "--overwrite"]) == 0
    assert "22 atoms -> 6 beads" in capsys.readouterr().out
    assert Mapping.from_json(saved.read_text()).params["extra"] == ["CB"]
    train, val, test = fine["alanine-dipeptide"]
    dataset = tmp_path / "cg.h5"
    assert cli.main(["coarse-grain", str(train), "--val", str(val), "--test", str(test), "--out", str(dataset),
                     "--mapping", "backbone", "--k", "2", "--lag", "1"]) == 0
    with h5py.File(dataset, "r") as handle, FineTrajectory(train) as trajectory:
        assert handle.attrs["mapping_method"] == "backbone"
        group = next(g for g in handle["traj"].values() if g.attrs["source"] == str(train.resolve()))
        mapping = Mapping.from_json(group.attrs["mapping"])
        assert json.loads(handle.attrs["mapping_params"]) == {"extra": []} and mapping.params["extra"] == []
        atoms = trajectory.positions[:]
        assert np.array_equal(group["positions"][:], atoms[:, mapping.center_atoms])   # beads are the atoms
