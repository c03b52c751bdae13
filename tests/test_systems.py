"""Reference systems: every shipped system builds, has a finite energy, and bad input fails clearly."""
import shutil

import numpy as np
import openmm as mm
import openmm.unit as unit
import pytest

from openmm_cgml import systems
from openmm_cgml.cli import main


def energy_kj(ref, positions=None):
    context = mm.Context(ref.system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(ref.positions if positions is None else positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


@pytest.mark.parametrize("name", ["alanine-dipeptide", "chignolin", "polymer-chain", "polymer-melt"])
def test_every_shipped_system_loads_with_finite_energy(name):
    assert name in systems.available()
    ref = systems.load(name)
    n = ref.topology.getNumAtoms()
    assert ref.system.getNumParticles() == n
    assert ref.positions.value_in_unit(unit.nanometer).shape == (n, 3)
    assert ref.atom_types.shape == (n,) and ref.atom_types.dtype == np.int64 and ref.atom_types.min() >= 0
    assert ref.charges.shape == (n,)
    assert np.all(ref.masses > 0)
    assert np.isfinite(energy_kj(ref))
    assert ref.timestep.value_in_unit(unit.picosecond) > 0 and ref.temperature.value_in_unit(unit.kelvin) == 300


def test_alanine_dipeptide_is_the_capped_amber_system():
    ref = systems.load("alanine-dipeptide")
    assert ref.n_atoms == 22
    assert [r.name for r in ref.topology.residues()] == ["ACE", "ALA", "NME"]
    assert sorted(set(ref.atom_types.tolist())) == [1, 6, 7, 8]  # H, C, N, O atomic numbers
    assert abs(ref.charges.sum()) < 1e-6  # neutral
    forces = {f.__class__.__name__ for f in ref.system.getForces()}
    assert "GBSAGBnForce" in forces or "CustomGBForce" in forces  # GBn2 implicit solvent
    assert ref.system.getNumConstraints() == 12  # HBonds


def test_chignolin_is_built_from_its_sequence_with_hydrogens():
    ref = systems.load("chignolin")
    residues = [r.name for r in ref.topology.residues()]
    assert residues == ["GLY", "TYR", "ASP", "PRO", "GLU", "THR", "GLY", "THR", "TRP", "GLY"]
    assert sum(1 for a in ref.topology.atoms() if a.element.symbol == "H") > 60
    assert round(ref.charges.sum()) == -2  # Asp, Glu and the C-terminus negative, N-terminus positive


def test_polymer_chain_sequences_come_from_the_seed():
    a = systems.load("polymer-chain", length=12, sequence_seed=3)
    b = systems.load("polymer-chain", length=12, sequence_seed=3)
    c = systems.load("polymer-chain", length=12, sequence_seed=4)
    assert a.n_atoms == 24 and a.params["sequences"] == b.params["sequences"]
    assert a.params["sequences"] != c.params["sequences"]
    assert set(a.atom_types.tolist()) <= {0, 1, 2, 3}
    # monomer A = (B1, S1) = types (0, 2); monomer B = (B2, S2) = (1, 3)
    expected = [t for m in a.params["sequences"][0] for t in ((0, 2) if m == "A" else (1, 3))]
    assert a.atom_types.tolist() == expected
    assert a.topology.getNumChains() == 1 and a.topology.getNumBonds() == 12 + 11
    assert np.allclose(a.masses, 72.0) and np.all(a.charges == 0)


def test_polymer_pair_potential_is_lj_for_attractive_and_wca_for_repulsive_pairs():
    ref = systems.load("polymer-chain", sequence="AB")  # beads B1 S1 B2 S2
    kT = (unit.MOLAR_GAS_CONSTANT_R * 300 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    pair = next(f for f in ref.system.getForces() if isinstance(f, mm.CustomNonbondedForce))
    system = mm.System()
    for _ in range(4):
        system.addParticle(72.0)
    system.addForce(mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(pair)))
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    sigma = ref.params["sigma_nm"]
    r_min = 2 ** (1 / 6) * sigma

    def pair_energy(i, j, r):
        x = np.array([[0, 0, 0], [10, 0, 0], [20, 0, 0], [30, 0, 0]], dtype=float)
        x[j] = x[i] + [0, r, 0]
        context.setPositions(x)
        return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kT

    lj_at_cutoff = 4 * ((1 / 2.5) ** 12 - (1 / 2.5) ** 6)
    # B1-B1 is not present here; B1 (0) - S2 (3): WCA, zero beyond its minimum, positive inside
    assert pair_energy(0, 3, 1.2 * r_min) == pytest.approx(0.0, abs=1e-9)
    assert pair_energy(0, 3, 0.9 * sigma) > 1.0
    # S1 (1) - B2 (2): WCA as well
    assert pair_energy(1, 2, 1.5 * sigma) == pytest.approx(0.0, abs=1e-9)
    # B1 (0) - S1 (1) are bonded: excluded from the pair force
    assert pair_energy(0, 1, r_min) == pytest.approx(0.0, abs=1e-9)
    # S1-S1 attraction: use a fresh chain AA, beads B1 S1 B1 S1; S1 (1) and S1 (3)
    ref2 = systems.load("polymer-chain", sequence="AA")
    pair2 = next(f for f in ref2.system.getForces() if isinstance(f, mm.CustomNonbondedForce))
    system.removeForce(0)
    system.addForce(mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(pair2)))
    context.reinitialize()
    eps = ref2.params["epsilon_kT"]["S1-S1"]
    assert pair_energy(1, 3, r_min) == pytest.approx(-eps * (1 + lj_at_cutoff), rel=1e-6)


def test_polymer_melt_is_periodic_with_whole_chains():
    ref = systems.load("polymer-melt", n_chains=6, length=10, density_per_nm3=6.0)
    assert ref.is_periodic and ref.n_atoms == 120
    assert ref.topology.getNumChains() == 6
    box = np.array(ref.topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    assert np.allclose(np.diag(box) ** 3, 120 / 6.0)
    x = ref.positions.value_in_unit(unit.nanometer)
    bonds = np.array([[b.atom1.index, b.atom2.index] for b in ref.topology.bonds()])
    lengths = np.linalg.norm(x[bonds[:, 0]] - x[bonds[:, 1]], axis=1)
    assert np.allclose(lengths, ref.params["bond_length_nm"])  # unwrapped: molecules whole
    for chain in ref.topology.chains():  # every chain's atoms bonded only within the chain
        atoms = {a.index for a in chain.atoms()}
        assert all((b.atom1.index in atoms) == (b.atom2.index in atoms) for b in ref.topology.bonds())
    nonbonded = next(f for f in ref.system.getForces() if isinstance(f, mm.CustomNonbondedForce))
    assert nonbonded.getNonbondedMethod() == mm.CustomNonbondedForce.CutoffPeriodic


def write_user_system(tmp_path, **extra):
    shutil.copy(systems.SYSTEMS_DIR / "alanine-dipeptide.pdb", tmp_path / "mol.pdb")
    lines = ["builder: pdb", "pdb: mol.pdb", "temperature_K: 310", "friction_per_ps: 2.0", "timestep_ps: 0.002"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    (tmp_path / "mine.yaml").write_text("\n".join(lines) + "\n")
    return tmp_path / "mine.yaml"


def test_user_yaml_with_pdb_and_force_field(tmp_path):
    path = write_user_system(tmp_path, forcefield="[amber14-all.xml, implicit/obc2.xml]")
    ref = systems.load(path)
    assert ref.name == "mine" and ref.n_atoms == 22
    assert ref.temperature == 310 * unit.kelvin and ref.friction == 2.0 / unit.picosecond
    assert np.isfinite(energy_kj(ref))


def test_user_yaml_with_serialized_system(tmp_path):
    ala = systems.load("alanine-dipeptide")
    (tmp_path / "system.xml").write_text(mm.XmlSerializer.serialize(ala.system))
    ref = systems.load(write_user_system(tmp_path, system_xml="system.xml"))
    assert ref.n_atoms == 22
    assert energy_kj(ref) == pytest.approx(energy_kj(ala), rel=1e-6)


def test_overrides_accept_quantities_and_reject_wrong_units():
    ref = systems.load("polymer-chain", timestep_ps=5 * unit.femtosecond, length=4)
    assert ref.timestep.value_in_unit(unit.picosecond) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="timestep_ps"):
        systems.load("polymer-chain", timestep_ps=1 * unit.nanometer)
    with pytest.raises(ValueError, match="unknown parameter.*lenght"):
        systems.load("polymer-chain", lenght=10)
    with pytest.raises(ValueError, match="sequence"):
        systems.load("polymer-chain", sequence="AXB")


def test_unknown_system_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown system 'no-such-thing'.*alanine-dipeptide"):
        systems.load("no-such-thing")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        systems.load("/nonexistent/missing.yaml")


def test_malformed_pdb_is_a_clear_error(tmp_path):
    path = write_user_system(tmp_path, forcefield="[amber14-all.xml]")
    (tmp_path / "mol.pdb").write_text("ATOM      1  CA  ALA A   1      xx.xxx  yy.yyy  zz.zzz\nEND\n")
    with pytest.raises(ValueError, match="mol.pdb"):
        systems.load(path)


def test_nan_coordinates_in_pdb_are_rejected(tmp_path):
    path = write_user_system(tmp_path, forcefield="[amber14-all.xml]")
    text = (tmp_path / "mol.pdb").read_text().splitlines()
    i = next(k for k, line in enumerate(text) if line.startswith(("ATOM", "HETATM")))
    text[i] = text[i][:30] + "     nan" + text[i][38:]
    (tmp_path / "mol.pdb").write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match="mol.pdb"):
        systems.load(path)


def test_missing_force_field_is_a_clear_error(tmp_path):
    path = write_user_system(tmp_path, forcefield="[no-such-forcefield.xml]")
    with pytest.raises(FileNotFoundError, match="no-such-forcefield.xml"):
        systems.load(path)


def test_force_field_that_does_not_fit_is_a_clear_error(tmp_path):
    path = write_user_system(tmp_path, forcefield="[tip3p.xml]")
    with pytest.raises(ValueError, match="does not fit"):
        systems.load(path)


def test_cli_lists_and_describes_systems(capsys):
    assert main(["systems"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ["alanine-dipeptide", "chignolin", "polymer-chain", "polymer-melt"])
    assert main(["systems", "polymer-chain", "-p", "length=5", "-p", "sequence_seed=2"]) == 0
    assert "particles     10" in capsys.readouterr().out
    assert main(["systems", "no-such-thing"]) == 2
    assert "unknown system" in capsys.readouterr().err
