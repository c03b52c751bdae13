"""Bad input to the public Python API: a ValueError or FileNotFoundError naming the parameter or file.

Entry points: ``openmm_cgml.load``, ``coarse_grained_system``, ``CGMLIntegrator``, ``FineTrajectory``,
``Mapping.build/metis/by_residue/from_file`` (and ``bond_graph.metis_beads`` under them),
``structure.load_structure``, ``model_file.export/export_model`` and ``evaluation.report.evaluate``.
Each case is a real object or file (the 12-carbon chain of ``test_model_inputs``, a tiny exported
model, a tiny fine trajectory); files passed in are unchanged after a refused call (SHA-256).
"""
import argparse
import hashlib
import json
import re

import h5py
import numpy as np
import openmm.app as app
import openmm.unit as u
import pytest

from openmm_cgml import load
from openmm_cgml.bond_graph import check_atoms_per_bead, check_n_beads, metis_beads
from openmm_cgml.cli.options import mapping_options_from_args
from openmm_cgml.evaluation.report import check_settings, evaluate
from openmm_cgml.mapping import Mapping
from openmm_cgml.model_file import check_output, export, export_model
from openmm_cgml.openmm.bead_system import coarse_grained_system
from openmm_cgml.openmm.integrator import CGMLIntegrator
from openmm_cgml.structure import load_structure
from openmm_cgml.trajectory import FineTrajectory

N_ATOMS = 12
MASSES = np.full(N_ATOMS, 12.011)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(call, match, *files, error=(ValueError, FileNotFoundError)):
    """Assert ``call()`` raises ``error`` matching ``match`` and leaves ``files`` byte for byte as they were."""
    before = [sha256(file) for file in files]
    with pytest.raises(error, match=match):
        call()
    assert [sha256(file) for file in files] == before, "a refused call changed its input files"


@pytest.fixture(scope="module")
def molecule(chain):
    """``(topology, positions nm)`` of the 12-carbon chain."""
    return chain()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, molecule, tiny_propagator):
    """``{"module": CGPropagator, "mapping": Mapping, "path": .safetensors, "fine": .h5, "pdb": .pdb}``."""
    folder = tmp_path_factory.mktemp("python_api")
    topology, positions = molecule
    mapping = Mapping.metis(topology, MASSES, atoms_per_bead=3)
    module = tiny_propagator(mapping)
    pdb = folder / "chain.pdb"
    with open(pdb, "w") as handle:
        app.PDBFile.writeFile(topology, positions * u.nanometer, handle)
    return {"module": module, "mapping": mapping, "path": export_model(module, folder / "model.safetensors",
                                                                        {"mapping": mapping}),
            "fine": write_fine(folder / "fine.h5", topology, positions, frames=3), "pdb": pdb}


def write_fine(path, topology, positions, frames):
    """A real fine trajectory of ``frames`` copies of ``positions`` (0 frames: created, nothing appended)."""
    with FineTrajectory.create(path, topology=topology, masses=MASSES, atom_types=np.full(N_ATOMS, 6),
                               charges=np.zeros(N_ATOMS), attrs={"cgml_system": "chain", "cgml_timestep_ps": 0.002,
                                                                 "cgml_stride": 10, "cgml_temperature_K": 300.0},
                               periodic=False) as fine:
        if frames:
            fine.append(np.repeat(positions[None], frames, 0), np.zeros((frames, N_ATOMS, 3)),
                        0.02 * np.arange(1, frames + 1), np.zeros(frames))
            fine.mark_complete()
    return path


@pytest.fixture
def model(tiny):
    return load(tiny["path"])


# ----------------------------------------------------------------------------- METIS resolution

@pytest.mark.parametrize("kwargs, match", [
    ({"atoms_per_bead": float("inf")}, "atoms_per_bead must be a finite number >= 1, got inf"),
    ({"atoms_per_bead": float("nan")}, "atoms_per_bead .* got nan"),
    ({"atoms_per_bead": 0}, "atoms_per_bead .* got 0"),
    ({"atoms_per_bead": -2.0}, "atoms_per_bead .* got -2.0"),
    ({"atoms_per_bead": "3"}, "atoms_per_bead .* got '3'"),
    ({"atoms_per_bead": 3 * u.nanometer}, "atoms_per_bead .* got 3 nm"),
    ({"atoms_per_bead": True}, "atoms_per_bead .* got True"),
    ({"n_beads": 0}, r"n_beads must lie between the number of molecules \(1\) and the number of atoms \(12\), got 0"),
    ({"n_beads": -1}, "n_beads must lie between .* got -1"),
    ({"n_beads": 13}, "n_beads must lie between .* got 13"),
    ({"n_beads": 2.5}, "n_beads must be a whole number, got 2.5"),
    ({"n_beads": float("inf")}, "n_beads must be a whole number, got inf"),
    ({"n_beads": float("nan")}, "n_beads must be a whole number, got nan"),
    ({"n_beads": "4"}, "n_beads must be a whole number, got '4'"),
    ({"n_beads": 4, "seed": "x"}, "seed must be a whole number, got 'x'"),
    ({"n_beads": 4, "seed": 0.5}, "seed must be a whole number, got 0.5"),
    ({"n_beads": 4, "atoms_per_bead": 3}, "exactly one of atoms_per_bead or n_beads"),
])
def test_metis_resolution(molecule, kwargs, match):
    topology, _ = molecule
    with pytest.raises(ValueError, match=match):
        Mapping.metis(topology, MASSES, **kwargs)


@pytest.mark.parametrize("kwargs, match", [({"atoms_per_bead": float("inf")}, "atoms_per_bead"),
                                           ({"n_beads": 40}, "n_beads"), ({"n_beads": 4.0, "seed": None}, "seed")])
def test_metis_beads_and_build_refuse_the_same(molecule, kwargs, match):
    topology, _ = molecule
    bonds = np.array([[i, i + 1] for i in range(N_ATOMS - 1)])
    with pytest.raises(ValueError, match=match):
        metis_beads(N_ATOMS, bonds, **kwargs)
    with pytest.raises(ValueError, match=match):
        Mapping.build("metis", topology, MASSES, **kwargs)


def test_whole_floats_and_mass_units_are_accepted(molecule):
    topology, _ = molecule
    reference = Mapping.metis(topology, MASSES, n_beads=4)
    assert Mapping.metis(topology, MASSES, n_beads=4.0) == reference
    in_kg = Mapping.metis(topology, MASSES / 1000 * u.kilogram / u.mole, n_beads=4)
    np.testing.assert_allclose(in_kg.bead_masses, reference.bead_masses)


# ----------------------------------------------------------------------------- masses, types, topologies

@pytest.mark.parametrize("masses, match", [
    (MASSES[:5], r"masses has shape \(5,\) but the topology has 12 atoms"),
    (MASSES.reshape(3, 4), r"masses has shape \(3, 4\)"),
    (np.where(np.arange(N_ATOMS) == 3, np.nan, 12.0), r"masses contains NaN .*\[\[3\]\]"),
    (-MASSES, "masses must be >= 0 amu; atom 0 has -12.011"),
    (MASSES * u.kelvin, "masses must be in units compatible with dalton, got unit kelvin"),
    (None, "masses is required"),
    ("heavy", "masses must be numbers"),
    (np.zeros(N_ATOMS), "has zero mass"),
])
@pytest.mark.parametrize("rule", ["metis", "residue"])
def test_bad_masses(molecule, masses, match, rule):
    topology, _ = molecule
    with pytest.raises(ValueError, match=match):
        Mapping.build(rule, topology, masses)


@pytest.mark.parametrize("atom_types, match", [
    ([6, 6], "atom_types has 2 entries but the topology has 12 atoms"),
    (["C"] * N_ATOMS, "atom_types must be whole numbers"),
    ([6.5] * N_ATOMS, "atom_types must be whole numbers"),
])
def test_bad_atom_types(molecule, atom_types, match):
    topology, _ = molecule
    with pytest.raises(ValueError, match=match):
        Mapping.metis(topology, MASSES, atoms_per_bead=3, atom_types=atom_types)


@pytest.mark.parametrize("topology", [None, "chain.pdb", 12])
@pytest.mark.parametrize("make", [lambda t: Mapping.metis(t, MASSES, atoms_per_bead=3),
                                  lambda t: Mapping.by_residue(t, MASSES)])
def test_topology_that_is_no_topology(topology, make):
    with pytest.raises(ValueError, match=f"topology must be an openmm.app.Topology, got {type(topology).__name__}"):
        make(topology)


@pytest.mark.parametrize("params, match", [
    ({"atoms_per_bed": 3}, "mapping rule 'metis': got an unexpected keyword argument 'atoms_per_bed'"),
    ({"atom_types_from": "given"}, "pass atom_types"),
])
def test_build_with_parameters_the_rule_does_not_take(molecule, params, match):
    topology, _ = molecule
    with pytest.raises(ValueError, match=match):
        Mapping.build("metis", topology, MASSES, **params)


def test_build_names_an_unknown_rule_or_file(molecule, tmp_path):
    topology, _ = molecule
    with pytest.raises(ValueError, match="mapping rule 'file': missing a required argument: 'path'"):
        Mapping.build("file", topology, MASSES)
    with pytest.raises(FileNotFoundError, match=r"mapping file metys does not exist.*rules: .*metis"):
        Mapping.build("metys", topology, MASSES)


# ----------------------------------------------------------------------------- mapping files that do not fit

GOOD = {"beads": [{"name": "A", "atoms": [0, 1, 2, 3]}, {"name": "B", "atoms": [4, 5, 6, 7]},
                  {"name": "C", "atoms": [8, 9, 10, 11]}]}


def saved(mapping: Mapping, **changes) -> str:
    """``mapping.to_json()`` with some fields replaced."""
    return json.dumps({**json.loads(mapping.to_json()), **changes})


@pytest.mark.parametrize("name, content, match", [
    ("short.json", {**GOOD, "n_atoms": 10}, "is for 10 atoms but the topology has 12"),
    ("words.json", {**GOOD, "n_atoms": "ten"}, "n_atoms must be a whole number, got 'ten'"),
    ("null.json", {**GOOD, "n_atoms": None}, "n_atoms must be a whole number, got None"),
    ("beyond.json", {"beads": [{"atoms": list(range(13))}]}, "bead 0 refers to atom 12 but the topology has atoms 0.."),
    ("negative.json", {"beads": [{"atoms": [-1, *range(12)]}]}, "bead 0 refers to atom -1"),
    ("missing.json", {"beads": [{"atoms": list(range(11))}]}, r"leaves 1 atoms without a bead \(first: atom 11\)"),
    ("twice.json", {"beads": [{"atoms": list(range(12))}, {"atoms": [3]}]}, "atom 3 is in more than one bead"),
    ("center.json", {"beads": [{"atoms": list(range(12)), "center_atom": 20}]}, "center_atom 20 is not one of"),
    ("fraction.json", {"beads": [{"atoms": [0.5, *range(1, 12)]}]}, "'atoms' must be a non-empty list of integers"),
    ("nobeads.json", {"n_atoms": 12}, "must contain a non-empty list 'beads'"),
    ("list.json", [0, 1, 2], "must contain a non-empty list 'beads'"),
    ("malformed.json", '{"beads": [{"atoms": [0, 1', "is not valid JSON"),
    ("empty.json", "", "is not valid JSON"),
    ("empty.yaml", "", "must contain a non-empty list 'beads'"),
    ("tab.yaml", "beads:\n\t- atoms: [0]", "is not valid YAML"),
    ("binary.json", b"\xff\xfe\x00\x01", "is not valid JSON"),
])
def test_user_mapping_file_that_does_not_fit(molecule, tmp_path, name, content, match):
    topology, _ = molecule
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    refused(lambda: Mapping.from_file(path, topology, MASSES), f"mapping file .*{name}.*{match}", path)


@pytest.mark.parametrize("changes, match", [
    ({"bead_of_atom": [9] + [0] * 3 + [1] * 4 + [2] * 4}, "beads must be numbered 0..n_beads-1 without gaps"),
    ({"bead_of_atom": "abc"}, "bead_of_atom must be whole numbers"),
    ({"atom_masses": ["x"] * N_ATOMS}, "atom_masses must be numbers"),
    ({"atom_masses": [float("nan")] * N_ATOMS}, "atom_masses contains NaN"),
    ({"atom_masses": [-1.0] * N_ATOMS}, "atom_masses must be >= 0 amu"),
    ({"fine_bonds": [[0, 1, 2]]}, r"fine_bonds must be rows of 2 numbers, got shape \(1, 3\)"),
    ({"fine_bonds": [[0, 40]]}, r"fine_bonds refer to atoms outside 0..11"),
    ({"center_atoms": [-100, -1, -1, -1]}, "every center atom must be an atom of its own bead"),
    ({"params": [1]}, "mapping JSON has a field of the wrong type"),
    ({"version": "x"}, "mapping JSON version must be a whole number, got 'x'"),
    ({"version": 99}, "version 99 is newer"),
])
def test_saved_mapping_file_that_is_damaged(molecule, tmp_path, changes, match):
    topology, _ = molecule
    path = tmp_path / "saved.json"
    path.write_text(saved(Mapping.metis(topology, MASSES, n_beads=4), **changes))
    refused(lambda: Mapping.from_file(path, topology, MASSES), f"mapping file .*saved.json: .*{match}", path)


def test_saved_mapping_of_another_molecule(molecule, tmp_path, chain):
    topology, _ = molecule
    other, _ = chain(10)
    path = tmp_path / "ten.json"
    path.write_text(Mapping.metis(other, MASSES[:10], n_beads=4).to_json())
    refused(lambda: Mapping.from_file(path, topology, MASSES), "ten.json is for 10 atoms but the topology has 12",
            path)


def test_mapping_file_missing_or_a_folder(molecule, tmp_path):
    topology, _ = molecule
    with pytest.raises(FileNotFoundError, match="mapping file .*absent.json does not exist"):
        Mapping.from_file(tmp_path / "absent.json", topology, MASSES)
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ValueError, match="mapping file .*folder.json is a folder"):
        Mapping.build("file", topology, MASSES, path=tmp_path / "folder.json")


# ----------------------------------------------------------------------------- model files

def test_load_refuses_what_is_no_model_file(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="model file .*absent.safetensors does not exist"):
        load(tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="model file .* is a folder"):
        load(tmp_path)
    with pytest.raises(ValueError, match="must be a str, got NoneType"):
        load(None)
    refused(lambda: load(tiny["path"], device="gpu0"), "device 'gpu0' is not a torch device", tiny["path"])


@pytest.mark.parametrize("out, match", [
    (lambda d: d, "is a folder; give the model file's name"),
    (lambda d: (d / "taken.safetensors").mkdir() or d / "taken.safetensors", "taken.safetensors is a folder"),
    (lambda d: (d / "file").write_text("x") and d / "file" / "m.safetensors", "file is a file, not a folder"),
    (lambda d: d / "absent" / "m.safetensors", "output directory .*absent does not exist"),
    (lambda d: d / "model.onnx", "the name must end in .safetensors"),
])
@pytest.mark.parametrize("how", ["export", "export_model"])
def test_export_checks_out_before_any_work(tiny, tmp_path, out, match, how):
    target = out(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    if how == "export":
        refused(lambda: export(tiny["path"], target, overwrite=True), match, tiny["path"])
    else:
        refused(lambda: export_model(tiny["module"], target, {"mapping": tiny["mapping"]}), match, tiny["path"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "a refused export left a file behind"


# ----------------------------------------------------------------------------- coarse_grained_system

def test_positions_in_angstrom_are_converted(model, molecule):
    topology, positions = molecule
    in_nm = coarse_grained_system(model, topology, positions * u.nanometer)
    in_angstrom = coarse_grained_system(model, topology, positions * 10 * u.angstrom)
    np.testing.assert_allclose(in_angstrom.positions.value_in_unit(u.nanometer),
                               in_nm.positions.value_in_unit(u.nanometer), atol=1e-12)


@pytest.mark.parametrize("positions, match", [
    (lambda p: p * u.kelvin, "positions must be in units compatible with nanometer, got unit kelvin"),
    (lambda p: "here", "positions must be numbers"),
    (lambda p: p.reshape(-1), r"positions must have trailing shape \(3,\), got \(36,\)"),
    (lambda p: p[:11], r"positions .*\(11, 3\)"),
    (lambda p: np.where(p > 1.0, -np.inf, p), r"positions contains NaN or infinite values \(first at \[\[9, 0\]"),
])
def test_positions_refused(model, molecule, positions, match):
    topology, xyz = molecule
    with pytest.raises(ValueError, match=match):
        coarse_grained_system(model, topology, positions(xyz))


@pytest.mark.parametrize("structure, match", [
    (None, "a structure must be a file path, .* got NoneType"),
    (3.5, "got float"),
    ("absent.pdb", "structure file absent.pdb does not exist"),
])
def test_structure_that_is_no_structure(model, structure, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        coarse_grained_system(model, structure)


def test_structure_folder_and_nan_pdb(model, tiny, tmp_path):
    (tmp_path / "folder.pdb").mkdir()
    with pytest.raises(ValueError, match="structure file .*folder.pdb is a folder"):
        coarse_grained_system(model, tmp_path / "folder.pdb")
    lines = tiny["pdb"].read_text().splitlines(True)
    atoms = [i for i, line in enumerate(lines) if line.startswith(("ATOM", "HETATM"))]
    for atom in (atoms[2], atoms[7]):
        lines[atom] = lines[atom][:38] + f"{'nan':>8}" + lines[atom][46:]
    path = tmp_path / "nan.pdb"
    path.write_text("".join(lines))
    refused(lambda: coarse_grained_system(model, path), r"nan.pdb has NaN/inf coordinates for atoms \[2, 7\]", path)


# ----------------------------------------------------------------------------- CGMLIntegrator

@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 300 * u.nanometer}, "temperature must be in units compatible with kelvin"),
    ({"temperature": float("nan") * u.kelvin}, "temperature must be finite, got nan"),
    ({"temperature": "warm"}, "temperature must be a number or a quantity in kelvin, got 'warm'"),
    ({"collision_distance": 1 * u.kelvin}, "collision_distance must be in units compatible with nanometer"),
    ({"collision_distance": float("inf")}, "collision_distance must be finite"),
    ({"collision_distance": float("nan")}, "collision_distance must be finite, got nan"),
    ({"collision_distance": -0.1}, r"collision_distance must be >= 0 nm \(0 disables the check\), got -0.1"),
    ({"collision_distance": -1 * u.angstrom}, "collision_distance must be >= 0 nm .*got -1 A"),
    ({"collision_distance": "near"}, "collision_distance must be a number or a quantity in nanometer, got 'near'"),
    ({"seed": -1}, r"seed must be in \[0, 2\*\*48\)"),
    ({"seed": "x"}, "seed must be a whole number, got 'x'"),
    ({"seed": 1.5}, "seed must be a whole number, got 1.5"),
    ({"seed": True}, "seed must be a whole number, got True"),
    ({"check_every": 0}, "check_every must be a whole number >= 1, got 0"),
    ({"check_every": -3}, "check_every must be a whole number >= 1, got -3"),
    ({"check_every": "x"}, "check_every must be a whole number, got 'x'"),
    ({"check_every": 2.5}, "check_every must be a whole number, got 2.5"),
    ({"mapping": "mapping.json"}, "mapping must be an openmm_cgml.mapping.Mapping, got str"),
])
def test_integrator_arguments(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CGMLIntegrator(model, **kwargs)


def test_integrator_whole_floats_and_other_length_units_are_accepted(model):
    integrator = CGMLIntegrator(model, seed=2.0, check_every=4.0, collision_distance=2 * u.angstrom)
    assert integrator.getSeed() == 2 and integrator._check_every == 4
    assert integrator._collision == pytest.approx(0.2)
    assert CGMLIntegrator(model, collision_distance=0)._collision == 0.0   # 0 disables the check


@pytest.mark.parametrize("replicas, match", [
    (True, "replicas must be a whole number, got True"), (np.False_, "replicas must be a whole number, got "),
    (0, "replicas must be a whole number >= 1, got 0"), (-2, "replicas must be a whole number >= 1, got -2"),
    (1.5, "replicas must be a whole number, got 1.5"), ("2", "replicas must be a whole number, got '2'"),
    (float("nan"), "replicas must be a whole number, got nan"), (None, "replicas must be a whole number, got None"),
])
def test_replicas_refused(model, chain, replicas, match):
    with pytest.raises(ValueError, match=match):
        coarse_grained_system(model, *chain(), replicas=replicas)


def test_integrator_and_system_need_a_model(tmp_path, chain):
    for make in (lambda m: CGMLIntegrator(m), lambda m: coarse_grained_system(m, *chain())):
        with pytest.raises(ValueError, match="model must be a CGModel"):
            make(None)
        with pytest.raises(FileNotFoundError, match="absent.safetensors does not exist"):
            make(str(tmp_path / "absent.safetensors"))


# ----------------------------------------------------------------------------- FineTrajectory and load_structure

@pytest.mark.parametrize("kind, match", [
    ("empty", "empty.h5 is not a readable HDF5 file"),
    ("text", "text.h5 is not a readable HDF5 file"),
    ("truncated", "truncated.h5 is not a readable HDF5 file"),
    ("foreign", "foreign.h5 is not an openmm-cgml fine trajectory"),
])
def test_fine_trajectory_damaged(tiny, tmp_path, kind, match):
    path = tmp_path / f"{kind}.h5"
    if kind == "foreign":
        with h5py.File(path, "w") as handle:
            handle["x"] = np.arange(3)
    else:
        data = tiny["fine"].read_bytes()
        path.write_bytes({"empty": b"", "text": b"frames: 3\n", "truncated": data[:512]}[kind])
    refused(lambda: FineTrajectory(path), match, path)
    refused(lambda: load_structure(path), match, path)


@pytest.mark.parametrize("path, match", [
    (lambda d: None, "a trajectory file path must be a str or os.PathLike, got NoneType"),
    (lambda d: 3.5, "a trajectory file path must be a str or os.PathLike, got float"),
    (lambda d: (d / "folder.h5").mkdir() or d / "folder.h5", "trajectory file .*folder.h5 is a folder"),
    (lambda d: d, "trajectory file .* is a folder, not an HDF5 file"),
])
def test_fine_trajectory_path_that_is_no_file(tmp_path, path, match):
    with pytest.raises(ValueError, match=match):
        FineTrajectory(path(tmp_path))


def test_fine_trajectory_missing_or_wrong_mode(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="trajectory file .*absent.h5 does not exist"):
        FineTrajectory(tmp_path / "absent.h5")
    refused(lambda: FineTrajectory(tiny["fine"], mode="w"), "mode must be 'r' or 'a', got 'w'", tiny["fine"])


def test_trajectory_with_nan_first_frame_or_no_frames(molecule, tmp_path):
    topology, positions = molecule
    path = write_fine(tmp_path / "nan.h5", topology, positions, frames=2)
    with h5py.File(path, "a") as handle:   # a blown-up frame written by another program
        handle["coordinates"][0, 4, 1] = np.nan
        handle["coordinates"][0, 9, 2] = np.inf
    refused(lambda: load_structure(path), r"nan.h5 \(first frame\) has NaN/inf coordinates for atoms \[4, 9\]", path)
    empty = write_fine(tmp_path / "none.h5", topology, positions, frames=0)
    refused(lambda: load_structure(empty), "trajectory file .*none.h5 has no frames", empty)
    (tmp_path / "folder.h5").mkdir()
    with pytest.raises(ValueError, match="structure file .*folder.h5 is a folder"):
        load_structure(tmp_path / "folder.h5")


def test_good_trajectory_is_read(tiny, molecule):
    topology, positions, masses, types, box = load_structure(tiny["fine"])
    np.testing.assert_allclose(positions, molecule[1], atol=1e-6)
    assert topology.getNumAtoms() == N_ATOMS and box is None and list(types) == [6] * N_ATOMS


# ----------------------------------------------------------------------------- evaluate

@pytest.mark.parametrize("name, value, match", [
    ("reference_interval", 0, "reference_interval must be > 0, got 0"),
    ("reference_interval", -1 * u.picosecond, "reference_interval must be > 0, got -1"),
    ("rollout_interval", float("nan"), "rollout_interval must be finite, got nan"),
    ("rollout_interval", 2 * u.nanometer, "rollout_interval must be in units compatible with picosecond"),
    ("tica_lag", float("inf"), "tica_lag must be finite, got inf"),
    ("contact_cutoff", 0 * u.nanometer, "contact_cutoff must be > 0, got 0"),
    ("contact_cutoff", -0.8, "contact_cutoff must be > 0, got -0.8"),
    ("contact_cutoff", 8 * u.kelvin, "contact_cutoff must be in units compatible with nanometer"),
    ("collision_threshold", -0.1, "collision_threshold must be >= 0, got -0.1"),
    ("reference_ns_per_day", -5, "reference_ns_per_day must be > 0, got -5"),
    ("rollout_ns_per_day", float("nan"), "rollout_ns_per_day must be finite"),
])
def test_evaluate_refuses_bad_numbers_before_reading(tiny, tmp_path, name, value, match):
    out = tmp_path / "report"
    refused(lambda: evaluate([tiny["fine"]], [tiny["fine"]], out, **{name: value}), match, tiny["fine"])
    assert not out.exists()


def test_evaluate_settings_in_other_units_are_converted():
    assert check_settings({"rollout_interval": 500 * u.femtosecond, "contact_cutoff": 8 * u.angstrom,
                           "collision_threshold": 0, "tica_lag": None}) == pytest.approx(
        {"rollout_interval": 0.5, "contact_cutoff": 0.8, "collision_threshold": 0.0})


# ----------------------------------------------------------------------------- the CLI's checks are the library's

@pytest.mark.parametrize("check, value, match", [
    (check_atoms_per_bead, float("nan"), "{} must be a finite number >= 1, got nan"),
    (check_atoms_per_bead, float("inf"), "{} must be a finite number >= 1, got inf"),
    (check_atoms_per_bead, 0.0, "{} must be a finite number >= 1, got 0.0"),
    (check_atoms_per_bead, -2.0, "{} must be a finite number >= 1, got -2.0"),
    (check_n_beads, 0, "{} must be >= 1, got 0"),
    (check_n_beads, -4, "{} must be >= 1, got -4"),
])
def test_cli_mapping_options_use_the_library_checks(check, value, match):
    option, parameter = {check_atoms_per_bead: ("--atoms-per-bead", "atoms_per_bead"),
                         check_n_beads: ("--n-beads", "n_beads")}[check]
    with pytest.raises(ValueError, match=re.escape(match.format(parameter))):
        check(value)
    args = argparse.Namespace(mapping="metis", atoms_per_bead=None, n_beads=None, center="com", seed=0,
                              backbone_extra="")
    setattr(args, parameter, value)
    with pytest.raises(ValueError, match=re.escape(match.format(option))):
        mapping_options_from_args(args)


@pytest.mark.parametrize("out, match", [
    (lambda d: d, "{} .* is a folder; give the model file's name"),
    (lambda d: d / "model.onnx", "{} .*model.onnx: the name must end in .safetensors"),
    (lambda d: (d / "file").write_text("x") and d / "file" / "m.pt", "{} .*m.pt: .*file is a file, not a folder"),
    (lambda d: d / "absent" / "m.pt", "{} .*m.pt: output directory .*absent does not exist"),
    (lambda d: None, "{} must be a path"),
])
@pytest.mark.parametrize("name", ["model file", "--out"])
def test_check_output_names_what_it_checks(tmp_path, out, match, name):
    with pytest.raises((ValueError, FileNotFoundError), match=match.format(re.escape(name))):
        check_output(out(tmp_path), **({} if name == "model file" else {"name": name}))
