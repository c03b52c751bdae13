"""CGMLIntegrator with transferable models: unseen polymer sequences and lengths, mapping rules re-made."""
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest
import torch
from integrator_support import EveryStepReporter, positions_of

from openmm_cgml.mapping import Mapping
from openmm_cgml.openmm.bead_system import coarse_grained_system
from openmm_cgml.openmm.integrator import CGMLIntegrator
from openmm_cgml.openmm.rollout import model_graph, rollout


def polymer(**params):
    from openmm_cgml import systems

    return systems.load("polymer-chain", **params)


@pytest.fixture(scope="module")
def polymer_model(tmp_path_factory):
    """A real exported CGPropagator for one polymer-chain sequence, exported as transferable (n_beads = 0)."""
    from openmm_cgml import load
    from openmm_cgml.model.propagator import CGPropagator, PropagatorConfig
    from openmm_cgml.model_file import export_model

    reference = polymer(sequence="BAAABB")
    mapping = Mapping.metis(reference.topology, reference.system, atoms_per_bead=2, seed=3,
                            atom_types=reference.atom_types)
    config = PropagatorConfig(k=3, embed_hidden=8, embed_layers=1, hidden=16, n_layers=1, score_hidden=8,
                              score_layers=1)
    torch.manual_seed(0)
    module = CGPropagator.from_mapping(mapping, config, transferable=True, model_dt_ps=1.0,
                                       md_steps_per_model_step=100, md_timestep_ps=0.01, temperature_K=300.0,
                                       accel_std_nm=1e-3, velocity_std_nm=1e-2)
    path = export_model(module, tmp_path_factory.mktemp("polymer") / "model.safetensors", {"mapping": mapping})
    return load(path)


@pytest.mark.parametrize("params", [dict(sequence="ABBAAB"), dict(sequence="ABBAABBAA")],
                         ids=["other-sequence", "other-length"])
def test_transferable_model_runs_an_unseen_polymer_sequence(polymer_model, params):
    other = polymer(**params)
    cg = coarse_grained_system(polymer_model, other.topology, other.positions, replicas=2,
                               atom_types=other.atom_types)
    # the model's metis rule, re-made for the new molecule with its stored seed: deterministic
    expected = Mapping.metis(other.topology, other.system, atoms_per_bead=2, seed=3, atom_types=other.atom_types)
    assert cg.mapping == expected and cg.mapping != polymer_model.mapping
    np.testing.assert_array_equal(cg.mapping.atom_types, other.atom_types)
    assert cg.system.getNumParticles() == 2 * expected.n_beads
    torch.testing.assert_close(cg.bead_features, polymer_model.embed_mapping(expected))

    integrator = CGMLIntegrator(polymer_model, seed=4, collision_distance=0.0)  # no mapping: the System's
    simulation = app.Simulation(cg.topology, cg.system, integrator, openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(cg.positions)
    simulation.reporters.append(EveryStepReporter())
    simulation.step(6)
    assert simulation.currentStep == 6 and np.all(np.isfinite(positions_of(simulation)))
    # the integrator runs exactly the rollout of the re-made mapping's graph and features
    edges, batch = model_graph(expected, 2)
    history = torch.as_tensor(cg.positions.value_in_unit(u.nanometer), dtype=torch.float32).repeat(3, 1, 1)
    out = rollout(polymer_model, history, cg.bead_features.repeat(2, 1), edges, batch, torch.zeros(3, 3), 6,
                  seed=4, collision_distance=0.0, n_replicas=2)
    np.testing.assert_array_equal(out[-1].double().numpy(), positions_of(simulation))


def test_transfer_needs_known_atom_types_and_an_explicit_mapping_wins(polymer_model, tmp_path):
    other = polymer(sequence="ABBAAB")
    # a polymer PDB has carbon elements, not bead types: refused, naming the problem
    with pytest.raises(ValueError, match="atom types"):
        coarse_grained_system(polymer_model, other.topology, other.positions)
    with pytest.raises(ValueError, match="never saw"):
        coarse_grained_system(polymer_model, other.topology, other.positions, atom_types=other.atom_types + 4)
    coarser = Mapping.metis(other.topology, other.system, atoms_per_bead=4, atom_types=other.atom_types)
    cg = coarse_grained_system(polymer_model, other.topology, other.positions, mapping=coarser)
    assert cg.mapping is coarser
    path = tmp_path / "mapping.json"
    path.write_text(coarser.to_json())
    assert coarse_grained_system(polymer_model, other.topology, other.positions, mapping=path,
                                 atom_types=other.atom_types).mapping == coarser
    # a saved mapping carries its atom types: none needed from the structure
    assert coarse_grained_system(polymer_model, other.topology, other.positions, mapping=path).mapping == coarser
    # a copied System forgets its mapping: the integrator refuses rather than use the model's own one
    copied = openmm.XmlSerializer.clone(cg.system)
    simulation = app.Simulation(cg.topology, copied, CGMLIntegrator(polymer_model),
                                openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(cg.positions)
    with pytest.raises(ValueError, match="mapping=cg.mapping"):
        simulation.step(1)
    simulation = app.Simulation(cg.topology, copied, CGMLIntegrator(polymer_model, mapping=coarser),
                                openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(cg.positions)
    simulation.step(2)
    assert simulation.currentStep == 2


def test_model_trained_on_many_molecules_remakes_its_data_mapping_rule(polymer_model, tmp_path):
    """A multi-molecule model file has no single mapping, only its training data's mapping rule."""
    import json

    from openmm_cgml import load
    from openmm_cgml.model_file import export_model, rebuild

    metadata = dict(polymer_model.metadata, mapping=None)
    metadata["training"] = {"data": {"attrs": {"mapping_method": "metis", "mapping_params": json.dumps(
        {"atoms_per_bead": 2, "n_beads": None, "seed": 3})}}}
    metadata.pop("mapping_rule", None)
    model = load(export_model(rebuild(polymer_model), tmp_path / "many.safetensors", metadata))
    assert model.mapping is None and model.n_beads == 0
    other = polymer(sequence="AABBA")
    cg = coarse_grained_system(model, other.topology, other.positions, atom_types=other.atom_types)
    assert cg.mapping == Mapping.metis(other.topology, other.system, atoms_per_bead=2, seed=3,
                                       atom_types=other.atom_types)
    simulation = app.Simulation(cg.topology, cg.system, CGMLIntegrator(model, collision_distance=0.0),
                                openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(cg.positions)
    simulation.step(3)
    assert np.all(np.isfinite(positions_of(simulation)))


def test_cli_simulate_transfers_to_a_new_sequence(polymer_model, tmp_path, capsys):
    import mdtraj
    import yaml

    from openmm_cgml.cli import main
    from openmm_cgml.systems import _find_systems_dir

    spec = yaml.safe_load((_find_systems_dir() / "polymer-chain.yaml").read_text())
    spec.update(sequence="ABBAABBAA", length=9)
    system_yaml = tmp_path / "new-sequence.yaml"
    system_yaml.write_text(yaml.safe_dump(spec))
    common = [polymer_model.path, "--pdb", str(system_yaml), "--steps", "6", "--report-interval", "2",
              "--platform", "CPU", "--collision-distance", "0"]
    out = tmp_path / "new.dcd"
    assert main(["simulate", *common, "--out", str(out)]) == 0
    other = polymer(sequence="ABBAABBAA")
    remade = Mapping.metis(other.topology, other.system, atoms_per_bead=2, seed=3, atom_types=other.atom_types)
    traj = mdtraj.load_dcd(str(out), top=str(tmp_path / "new_beads.pdb"))
    assert traj.n_frames == 3 and traj.n_atoms == remade.n_beads
    # --mapping FILE: an explicit mapping for the molecule
    coarser = Mapping.metis(other.topology, other.system, atoms_per_bead=3, atom_types=other.atom_types)
    mapping_file = tmp_path / "coarser.json"
    mapping_file.write_text(coarser.to_json())
    out = tmp_path / "coarser.dcd"
    assert main(["simulate", *common, "--out", str(out), "--mapping", str(mapping_file)]) == 0
    assert mdtraj.load_dcd(str(out), top=str(tmp_path / "coarser_beads.pdb")).n_atoms == coarser.n_beads
    capsys.readouterr()
    assert main(["simulate", *common, "--out", str(tmp_path / "x.dcd"), "--mapping", str(tmp_path / "no.json")]) == 2
    assert "no.json" in capsys.readouterr().err
