"""Bad input to the Python API (``load``, ``coarse_grained_system``, ``CGMLIntegrator``): a clear error naming it."""
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest

from openmm_cgml import load
from openmm_cgml.mapping import Mapping
from openmm_cgml.openmm.bead_system import coarse_grained_system
from openmm_cgml.openmm.integrator import CGMLIntegrator


@pytest.fixture(scope="module")
def exported(tmp_path_factory, chain, tiny_propagator):
    """``(safetensors path, TorchScript path)`` of a real tiny model for the 12-atom chain."""
    from openmm_cgml.model_file import export_model

    folder = tmp_path_factory.mktemp("bad_model")
    topology, _ = chain()
    masses = np.array([a.element.mass.value_in_unit(u.dalton) for a in topology.atoms()])
    mapping = Mapping.metis(topology, masses, atoms_per_bead=3)
    module = tiny_propagator(mapping)
    return (export_model(module, folder / "model.safetensors", {"mapping": mapping}),
            export_model(module, folder / "model.pt", {"mapping": mapping}))


@pytest.fixture(scope="module")
def model(exported):
    return load(exported[0])


@pytest.mark.parametrize("suffix, kind", [(suffix, kind) for suffix in (".safetensors", ".pt")
                                          for kind in ("missing", "empty", "truncated", "corrupted", "foreign")])
def test_load_refuses_damaged_files(exported, tmp_path, kind, suffix):
    data = exported[suffix == ".pt"].read_bytes()
    path = tmp_path / f"{kind}{suffix}"
    content = {"empty": b"", "truncated": data[: len(data) // 2], "corrupted": data[:8] + b"\xff" * 64 + data[72:],
               "foreign": b"not a model at all\n"}.get(kind)
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((ValueError, FileNotFoundError), match=path.name):
        load(path, trusted=True)


def test_load_refuses_torchscript_without_trust(exported):
    with pytest.raises(ValueError, match="trust"):
        load(exported[1])


@pytest.mark.parametrize("bad, match", [
    (lambda p: p.__setitem__((3, 1), np.nan), r"NaN or infinite.*\[3, 1\]"),
    (lambda p: p.__setitem__((0, 0), np.inf), r"NaN or infinite.*\[0, 0\]"),
    (lambda p: p.__setitem__((11, 2), -np.inf), r"NaN or infinite.*\[11, 2\]"),
])
def test_non_finite_positions(model, bad, match, chain):
    topology, positions = chain()
    bad(positions)
    with pytest.raises(ValueError, match=match):
        coarse_grained_system(model, topology, positions * u.nanometer)


def test_non_finite_pdb(model, tmp_path, chain):
    topology, positions = chain()
    path = tmp_path / "nan.pdb"
    with open(path, "w") as handle:
        app.PDBFile.writeFile(topology, positions * u.nanometer, handle)
    lines = path.read_text().splitlines(True)
    atom = next(i for i, line in enumerate(lines) if line.startswith(("ATOM", "HETATM")))
    lines[atom] = lines[atom][:30] + f"{'nan':>8}" + lines[atom][38:]
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match="nan.pdb"):
        coarse_grained_system(model, path)


@pytest.mark.parametrize("positions", [lambda p: p * u.kelvin, lambda p: p * u.picosecond,
                                       lambda p: p[:5] * u.nanometer, lambda p: p[:, :2]])
def test_positions_of_the_wrong_unit_or_shape(model, positions, chain):
    topology, xyz = chain()
    with pytest.raises(ValueError, match="positions|shape"):
        coarse_grained_system(model, topology, positions(xyz))


@pytest.mark.parametrize("replicas", [0, -1, 1.5, "2x"])
def test_bad_replicas(model, replicas, chain):
    topology, positions = chain()
    with pytest.raises(ValueError, match="replicas"):
        coarse_grained_system(model, topology, positions, replicas=replicas)


@pytest.mark.parametrize("n_atoms, element, match", [
    (9, app.element.carbon, "9 atoms"),
    (12, app.element.nitrogen, "atomic number 7"),
    (12, app.element.oxygen, "atomic number 8"),
])
def test_model_and_molecule_that_do_not_fit(model, n_atoms, element, match, chain):
    topology, positions = chain(n_atoms, element)
    with pytest.raises(ValueError, match=match):
        coarse_grained_system(model, topology, positions)


def test_structure_file_missing_or_empty(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pdb"):
        coarse_grained_system(model, tmp_path / "absent.pdb")
    (tmp_path / "empty.pdb").write_text("")
    with pytest.raises(ValueError, match="empty.pdb"):
        coarse_grained_system(model, tmp_path / "empty.pdb")


def test_other_elements_named_with_the_structure_file(model, tmp_path, chain):
    topology, positions = chain(element=app.element.sulfur)
    path = tmp_path / "sulfur.pdb"
    with open(path, "w") as handle:
        app.PDBFile.writeFile(topology, positions * u.nanometer, handle)
    with pytest.raises(ValueError, match=r"sulfur.pdb.*atomic number 16"):
        coarse_grained_system(model, path)


@pytest.mark.parametrize("temperature, match", [
    (1 * u.nanometer, "temperature"), (350 * u.kelvin, "training temperature 300"), (-300 * u.kelvin, "temperature"),
])
def test_integrator_temperature(model, temperature, match):
    with pytest.raises(ValueError, match=match):
        CGMLIntegrator(model, temperature=temperature)


def test_integrator_refuses_a_system_of_another_size(model):
    system = openmm.System()
    for _ in range(5):
        system.addParticle(12.0)
    integrator = CGMLIntegrator(model)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="5 particles"):
        integrator.step(1)
