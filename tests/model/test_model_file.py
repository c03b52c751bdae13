"""Export to one TorchScript file and load it back (with and without this package)."""
import json
import subprocess
import sys

import numpy as np
import openmm.unit as u
import pytest
import torch
from test_propagator import N_BEADS, chain_history, chain_molecule, compressed_history, hard_core_model, make_model

from openmm_cgml.mapping import Mapping
from openmm_cgml.model_file import CGModel, export_model, load


def chain_mapping():
    atom_types, fine_edges, bead_of_atom, _ = chain_molecule()
    bonds = fine_edges[:, : fine_edges.shape[1] // 2].T.numpy()
    masses = np.where(atom_types.numpy() == 1, 1.008, 12.011)
    return Mapping(bead_of_atom.numpy(), masses, atom_types.numpy(), bonds, method="custom")


@pytest.fixture
def exported(tmp_path):
    model = make_model(k=3)
    path = export_model(model, tmp_path / "model.pt", {"mapping": chain_mapping(), "training": {"note": "test"}})
    return model, path


def test_load_reproduces_predictions_exactly(exported):
    model, path = exported
    loaded = load(path)
    assert isinstance(loaded, CGModel)
    history = chain_history(3)
    features = loaded.embed_mapping()
    _, _, _, coarse = chain_molecule()
    batch, box = torch.zeros(N_BEADS, dtype=torch.long), torch.zeros(3, 3)
    with torch.no_grad():
        eager_features = model.embed(*chain_molecule()[:3], N_BEADS)
        torch.testing.assert_close(features, eager_features, atol=0, rtol=0)
        for refine in (False, True):
            noise = torch.randn(loaded.noise_draws(refine), N_BEADS, 3)
            torch.testing.assert_close(loaded.step(history, features, coarse, batch, box, noise, refine),
                                       model.step(history, features, coarse, batch, box, noise, refine),
                                       atol=0, rtol=0)
        mean, std = loaded.predict(history, features, coarse, batch, box)
        torch.testing.assert_close(mean, model.predict(history, features, coarse, batch, box)[0], atol=0, rtol=0)


def test_metadata_attributes_and_units(exported):
    model, path = exported
    loaded = load(path)
    assert loaded.k == 3 and loaded.n_beads == N_BEADS and loaded.md_steps_per_model_step == 500
    assert loaded.model_timestep == 1.0 * u.picosecond
    assert abs(loaded.md_timestep.value_in_unit(u.femtosecond) - 2.0) < 1e-9
    assert loaded.mapping == chain_mapping()
    meta = loaded.metadata
    assert meta["training"]["note"] == "test" and meta["units"]["length"] == "nm"
    assert {"torch", "openmm", "openmm_cgml"} <= set(meta["versions"])
    # the same JSON as attribute and extra file
    extra = {"metadata.json": ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["metadata.json"]) == json.loads(module.metadata) == meta
    assert not any(p.requires_grad for p in module.parameters())


def test_plain_torch_jit_load_without_package(exported, tmp_path):
    """A user without openmm-cgml installed can run the file with torch alone."""
    model, path = exported
    history = chain_history(3)
    atom_types, fine_edges, bead_of_atom, coarse = chain_molecule()
    noise = torch.randn(model.noise_draws(True), N_BEADS, 3)
    torch.save({"h": history, "t": atom_types, "f": fine_edges, "b": bead_of_atom, "c": coarse, "n": noise},
               tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model.step(history, model.embed(atom_types, fine_edges, bead_of_atom, N_BEADS), coarse,
                              torch.zeros(N_BEADS, dtype=torch.long), torch.zeros(3, 3), noise, True)
    script = f"""
import sys
sys.modules['openmm_cgml'] = None  # any import of the package would fail
import torch
m = torch.jit.load({str(path)!r})
d = torch.load({str(tmp_path / 'inputs.pt')!r}, weights_only=True)
f = m.embed(d['t'], d['f'], d['b'], m.n_beads)
x = m.step(d['h'], f, d['c'], torch.zeros(m.n_beads, dtype=torch.long), torch.zeros(3, 3), d['n'], True)
torch.save(x, {str(tmp_path / 'out.pt')!r})
print(m.k, m.model_dt_ps)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "1.0"]
    torch.testing.assert_close(torch.load(tmp_path / "out.pt", weights_only=True), expected, atol=0, rtol=0)


def test_corrupted_truncated_or_foreign_files_are_named(exported, tmp_path):
    _, path = exported
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.pt"):
        load(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a model" * 100)
    with pytest.raises(ValueError, match="garbage.pt"):
        load(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(foreign))
    with pytest.raises(ValueError, match="foreign.pt.*metadata"):
        load(foreign)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load(tmp_path / "missing.pt")


def test_wrong_molecule_refused_by_loaded_model(exported):
    _, path = exported
    loaded = load(path)
    atom_types, fine_edges, bead_of_atom, coarse = chain_molecule(n_beads=5)
    with pytest.raises(ValueError, match="embed: this model is for a molecule of 8 beads"):
        loaded.embed(atom_types, fine_edges, bead_of_atom, 5)
    features = loaded.embed_mapping()
    with pytest.raises(ValueError, match="step: .*k = 3"):
        loaded.step(chain_history(4), features, coarse, torch.zeros(N_BEADS, dtype=torch.long),
                    torch.zeros(3, 3), torch.zeros(N_BEADS, 3))


def test_failed_export_keeps_existing_file(exported):
    model, path = exported
    before = path.read_bytes()
    with pytest.raises(ValueError, match="JSON-serialisable"):
        export_model(model, path, {"bad": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temporary left behind


def test_refinement_levels_can_be_changed_after_loading(exported):
    _, path = exported
    loaded = load(path)
    assert loaded.refine_sigmas == [0.5, 0.2]
    history, features = chain_history(3), loaded.embed_mapping()
    _, _, _, coarse = chain_molecule()
    args = (history, features, coarse, torch.zeros(N_BEADS, dtype=torch.long), torch.zeros(3, 3))
    noise = torch.randn(3, N_BEADS, 3)
    assert loaded.noise_draws(True) == 3 and loaded.noise_draws(False) == 1
    before = loaded.step(*args, noise)
    loaded.refine_sigmas = [0.1]
    assert loaded.refine_sigmas == [0.1] and loaded.noise_draws(True) == 2
    assert not torch.allclose(loaded.step(*args, noise[:2]), before)
    with pytest.raises(ValueError, match="> 0"):
        loaded.refine_sigmas = [0.0]


def test_hard_core_survives_export_and_can_be_switched(tmp_path, exported):
    _, plain_path = exported
    plain = load(plain_path)  # no learned minima (as models trained before the hard core): off, cannot be on
    assert not plain.hard_core and plain.min_distances == {"bonded": 0.0, "nonbonded": 0.0}
    with pytest.raises(ValueError, match="no learned minimum distances"):
        plain.hard_core = True
    path = export_model(hard_core_model(k=3), tmp_path / "hard.pt", {"mapping": chain_mapping()})
    model = load(path)
    assert model.hard_core and model.min_distances == {"bonded": pytest.approx(0.30), "nonbonded": pytest.approx(0.45)}
    assert model.metadata["hard_core"] == {"enabled": True, "sweeps": 8, "min_bonded_nm": pytest.approx(0.30),
                                           "min_nonbonded_nm": pytest.approx(0.45)}
    _, _, _, coarse = chain_molecule()
    args = (compressed_history(3, torch.float32), model.embed_mapping(), coarse, torch.zeros(N_BEADS, dtype=torch.long),
            torch.zeros(3, 3), torch.zeros(model.noise_draws(True), N_BEADS, 3))
    pushed = model.step(*args)
    assert model.hard_core_events > 0
    model.hard_core = False
    assert not model.hard_core and not torch.allclose(model.step(*args), pushed)


def test_files_from_before_the_hard_core_still_load():
    """A module without the hard-core attributes (an older export) reports it off and refuses to switch it on."""
    old = CGModel(torch.jit.script(torch.nn.Linear(2, 2)), {"format": "openmm-cgml-model"})
    assert not old.hard_core and old.hard_core_events == 0 and old.min_distances["bonded"] == 0.0
    with pytest.raises(ValueError, match="predates the hard-core"):
        old.hard_core = True
    with pytest.raises(ValueError, match="predates the stochastic refinement"):
        old.noise_draws(True)


def test_rebuild_gives_the_same_step_from_the_weights(exported):
    """``rebuild`` keeps the weights and settings of a file but runs this package's code: same results."""
    from openmm_cgml.model_file import rebuild

    _, path = exported
    loaded = load(path)
    rebuilt = rebuild(loaded)
    assert rebuilt.refine_sigmas == loaded.refine_sigmas and rebuilt.hard_core == loaded.hard_core
    history, features = chain_history(3), loaded.embed_mapping()
    _, _, _, coarse = chain_molecule()
    args = (history, features, coarse, torch.zeros(N_BEADS, dtype=torch.long), torch.zeros(3, 3),
            torch.randn(loaded.noise_draws(True), N_BEADS, 3))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.step(*args, True), loaded.step(*args, True), atol=1e-6, rtol=1e-5)


def test_saved_model_keeps_changed_inference_settings(exported, tmp_path):
    _, path = exported
    loaded = load(path)
    history, features = chain_history(3), loaded.embed_mapping()
    _, _, _, coarse = chain_molecule()
    args = (history, features, coarse, torch.zeros(N_BEADS, dtype=torch.long), torch.zeros(3, 3),
            torch.randn(2, N_BEADS, 3))
    loaded.refine_sigmas = [0.15]
    expected = loaded.step(*args)
    saved = loaded.save(tmp_path / "tuned.pt")
    with pytest.raises(FileExistsError):
        loaded.save(saved)
    again = load(saved)
    assert again.refine_sigmas == [0.15] and again.metadata["refine_sigmas"] == [0.15]
    assert torch.equal(again.step(*args), expected)
    assert torch.jit.load(str(saved)).refine_sigmas == [0.15]
