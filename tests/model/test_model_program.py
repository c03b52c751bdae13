"""The ``.pt2`` step program: the step of one bead system through torch.export, loaded only when trusted."""
import openmm.unit as u
import pytest
import torch

import openmm_cgml
from openmm_cgml.model_file import load
from openmm_cgml.model_program import export_program, load_program
from openmm_cgml.openmm.bead_system import coarse_grained_system
from openmm_cgml.openmm.rollout import model_graph


@pytest.fixture(scope="module")
def program_file(tmp_path_factory):
    model = load("polymer-chain-1ps")
    system = coarse_grained_system(model, "polymer-chain", replicas=2)
    path = tmp_path_factory.mktemp("program") / "step.pt2"
    export_program(model, system.mapping, 2, path)
    return model, system, path


def test_program_steps_as_the_model_file(program_file):
    """The program, given only positions and noise, returns the model file's step of the same system (the
    fixed-work step against the scripted one: equal to float32 rounding), and its metadata says what it takes."""
    model, system, path = program_file
    program, metadata = load_program(path, trusted=True)
    n = 2 * system.mapping.n_beads
    assert metadata["program"]["n_beads"] == n and metadata["program"]["replicas"] == 2
    edges, batch = model_graph(system.mapping, 2, "cpu")
    features = model.embed_mapping(system.mapping).repeat(2, 1)
    start = torch.as_tensor(system.positions.value_in_unit(u.nanometer), dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    history = start + 0.03 * torch.randn(model.k, n, 3, generator=generator).cumsum(0)
    noise = torch.randn(metadata["program"]["noise_draws"], n, 3, generator=generator)
    expected = model.step(history, features, edges, batch, torch.zeros(0, 3, 3), noise, True)
    with torch.no_grad():
        got = program(history, noise)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not torch.equal(got, history[-1])


def test_program_files_load_only_where_meant(program_file, tmp_path):
    """A program needs trust (torch.export.load unpickles), is not a model file, and a damaged one is named."""
    _, _, path = program_file
    with pytest.raises(ValueError, match="can run code"):
        load_program(path)
    with pytest.raises(ValueError, match="load_program"):
        load(path)
    with pytest.raises(ValueError, match="not a .pt2 step program"):
        load_program(openmm_cgml.pretrained.path("polymer-chain-1ps"), trusted=True)
    damaged = tmp_path / "damaged.pt2"
    damaged.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="damaged.pt2"):
        load_program(damaged, trusted=True)


def test_program_needs_small_molecules(tmp_path):
    """Molecules of more than 64 beads have no fixed pair list: a one-line error, no file."""
    model = load("polymer-chain-1ps")
    chain = openmm_cgml.systems.load("polymer-chain", length=80)
    system = coarse_grained_system(model, chain.topology, chain.positions, atom_types=chain.atom_types)
    assert system.mapping.n_beads > 64
    with pytest.raises(ValueError, match="at most 64 beads"):
        export_program(model, system.mapping, 1, tmp_path / "big.pt2")
    assert not (tmp_path / "big.pt2").exists()
