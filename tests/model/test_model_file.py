"""Export to a model file (weights or TorchScript) and load it back, with and without this package."""
import json
import subprocess
import sys

import numpy as np
import openmm.unit as u
import pytest
import safetensors.torch
import torch

from openmm_cgml import model_formats
from openmm_cgml.mapping import Mapping
from openmm_cgml.model_file import CGModel, export_model, load


@pytest.fixture
def chain_mapping(chain_molecule):
    """The ``Mapping`` of the default chain (two atoms per bead)."""
    atom_types, fine_edges, bead_of_atom, _ = chain_molecule()
    bonds = fine_edges[:, : fine_edges.shape[1] // 2].T.numpy()
    masses = np.where(atom_types.numpy() == 1, 1.008, 12.011)
    return Mapping(bead_of_atom.numpy(), masses, atom_types.numpy(), bonds, method="custom")


@pytest.fixture
def export_chain_model(make_model, chain_mapping):
    """``export_chain_model(path, **config) -> (model, path)``: a new chain model (k = 3), exported to ``path``."""
    def export(path, **config):
        model = make_model(k=3, **config)
        return model, export_model(model, path, {"mapping": chain_mapping, "training": {"note": "test"}})
    return export


@pytest.fixture
def exported(tmp_path, export_chain_model):
    """A chain model exported as a weights (safetensors) file."""
    return export_chain_model(tmp_path / "model.safetensors")


@pytest.fixture
def exported_torchscript(tmp_path, export_chain_model):
    """The same model exported as a TorchScript file."""
    return export_chain_model(tmp_path / "model.pt")


@pytest.mark.parametrize("suffix, noise_model", [(".safetensors", "independent"), (".pt", "independent"),
                                                 (".safetensors", "bonded"), (".pt", "bonded"),
                                                 (".safetensors", "internal")])
def test_load_reproduces_predictions_exactly(tmp_path, suffix, noise_model, chain_history, chain_molecule,
                                             export_chain_model, n_beads):
    model, path = export_chain_model(tmp_path / f"model{suffix}", noise=noise_model)
    loaded = load(path, trusted=suffix == ".pt")
    assert isinstance(loaded, CGModel)
    history = chain_history(3)
    features = loaded.embed_mapping()
    _, _, _, coarse = chain_molecule()
    batch, box = torch.zeros(n_beads, dtype=torch.long), torch.zeros(3, 3)
    with torch.no_grad():
        eager_features = model.embed(*chain_molecule()[:3], n_beads)
        torch.testing.assert_close(features, eager_features, atol=0, rtol=0)
        for refine in (False, True):
            noise = torch.randn(loaded.noise_draws(refine), n_beads, 3)
            torch.testing.assert_close(loaded.step(history, features, coarse, batch, box, noise, refine),
                                       model.step(history, features, coarse, batch, box, noise, refine),
                                       atol=0, rtol=0)
        mean, std = loaded.predict(history, features, coarse, batch, box)
        torch.testing.assert_close(mean, model.predict(history, features, coarse, batch, box)[0], atol=0, rtol=0)


def test_metadata_attributes_and_units(exported, chain_mapping, n_beads):
    model, path = exported
    loaded = load(path)
    assert loaded.k == 3 and loaded.n_beads == n_beads and loaded.md_steps_per_model_step == 500
    assert loaded.model_timestep == 1.0 * u.picosecond
    assert abs(loaded.md_timestep.value_in_unit(u.femtosecond) - 2.0) < 1e-9
    assert loaded.mapping == chain_mapping
    meta = loaded.metadata
    assert meta["training"]["note"] == "test" and meta["units"]["length"] == "nm"
    assert {"torch", "openmm", "openmm_cgml"} <= set(meta["versions"])
    assert not any(p.requires_grad for p in loaded.module.parameters())


def test_torchscript_file_carries_the_same_metadata(exported, exported_torchscript):
    path = exported_torchscript[1]
    meta = load(path, trusted=True).metadata
    # the two exports may fall in different seconds: exported_at can differ
    own = ("digest", "versions", "exported_at")
    assert {key: value for key, value in meta.items() if key not in own} == {
        key: value for key, value in load(exported[1]).metadata.items() if key not in own}
    # the same JSON as attribute and extra file
    extra = {"metadata.json": ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["metadata.json"]) == json.loads(module.metadata) == meta
    assert not any(p.requires_grad for p in module.parameters())


def test_plain_torch_jit_load_without_package(exported_torchscript, tmp_path, chain_history, chain_molecule, n_beads):
    """A user without openmm-cgml installed can run the TorchScript file with torch alone."""
    model, path = exported_torchscript
    history = chain_history(3)
    atom_types, fine_edges, bead_of_atom, coarse = chain_molecule()
    noise = torch.randn(model.noise_draws(True), n_beads, 3)
    torch.save({"h": history, "t": atom_types, "f": fine_edges, "b": bead_of_atom, "c": coarse, "n": noise},
               tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model.step(history, model.embed(atom_types, fine_edges, bead_of_atom, n_beads), coarse,
                              torch.zeros(n_beads, dtype=torch.long), torch.zeros(3, 3), noise, True)
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


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_corrupted_truncated_or_foreign_files_are_named(tmp_path, suffix, export_chain_model):
    _, path = export_chain_model(tmp_path / f"model{suffix}")
    data = path.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load(truncated, trusted=True)
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"\x00not a model" * 100)
    with pytest.raises(ValueError, match="garbage"):
        load(garbage, trusted=True)
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.*empty or truncated"):
        load(empty)
    foreign = tmp_path / "foreign.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(foreign))
    with pytest.raises(ValueError, match="foreign.pt.*metadata"):
        load(foreign, trusted=True)
    foreign_weights = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(foreign_weights))
    with pytest.raises(ValueError, match="foreign.safetensors.*without openmm-cgml metadata"):
        load(foreign_weights)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load(tmp_path / "missing.pt")


def test_wrong_molecule_refused_by_loaded_model(exported, chain_history, chain_molecule, n_beads):
    _, path = exported
    loaded = load(path)
    atom_types, fine_edges, bead_of_atom, coarse = chain_molecule(n_beads=5)
    with pytest.raises(ValueError, match="embed: this model is for a molecule of 8 beads"):
        loaded.embed(atom_types, fine_edges, bead_of_atom, 5)
    features = loaded.embed_mapping()
    with pytest.raises(ValueError, match="step: .*k = 3"):
        loaded.step(chain_history(4), features, coarse, torch.zeros(n_beads, dtype=torch.long),
                    torch.zeros(3, 3), torch.zeros(n_beads, 3))


def test_failed_export_keeps_existing_file(exported):
    model, path = exported
    before = path.read_bytes()
    with pytest.raises(ValueError, match="JSON-serialisable"):
        export_model(model, path, {"bad": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]  # no temporary left behind


def test_refinement_levels_can_be_changed_after_loading(exported, chain_history, chain_molecule, n_beads):
    _, path = exported
    loaded = load(path)
    assert loaded.refine_sigmas == [0.5, 0.2]
    history, features = chain_history(3), loaded.embed_mapping()
    _, _, _, coarse = chain_molecule()
    args = (history, features, coarse, torch.zeros(n_beads, dtype=torch.long), torch.zeros(3, 3))
    noise = torch.randn(3, n_beads, 3)
    assert loaded.noise_draws(True) == 3 and loaded.noise_draws(False) == 1
    before = loaded.step(*args, noise)
    loaded.refine_sigmas = [0.1]
    assert loaded.refine_sigmas == [0.1] and loaded.noise_draws(True) == 2
    assert not torch.allclose(loaded.step(*args, noise[:2]), before)
    with pytest.raises(ValueError, match="> 0"):
        loaded.refine_sigmas = [0.0]


def test_hard_core_survives_export_and_can_be_switched(tmp_path, exported, chain_mapping, chain_molecule,
                                                       compressed_history, hard_core_model, n_beads):
    _, plain_path = exported
    plain = load(plain_path)  # no learned minima (as models trained before the hard core): off, cannot be on
    assert not plain.hard_core and plain.min_distances == {"bonded": 0.0, "nonbonded": 0.0}
    with pytest.raises(ValueError, match="no learned minimum distances"):
        plain.hard_core = True
    path = export_model(hard_core_model(k=3), tmp_path / "hard.safetensors", {"mapping": chain_mapping})
    model = load(path)
    assert model.hard_core and model.min_distances == {"bonded": pytest.approx(0.30), "nonbonded": pytest.approx(0.45)}
    assert model.metadata["hard_core"] == {"enabled": True, "sweeps": 8, "min_bonded_nm": pytest.approx(0.30),
                                           "min_nonbonded_nm": pytest.approx(0.45)}
    _, _, _, coarse = chain_molecule()
    args = (compressed_history(3, torch.float32), model.embed_mapping(), coarse, torch.zeros(n_beads, dtype=torch.long),
            torch.zeros(3, 3), torch.zeros(model.noise_draws(True), n_beads, 3))
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


def test_rebuild_gives_the_same_step_from_the_weights(exported, chain_history, chain_molecule, n_beads):
    """``rebuild`` keeps the weights and settings of a file but runs this package's code: same results."""
    from openmm_cgml.model_file import rebuild

    _, path = exported
    loaded = load(path)
    rebuilt = rebuild(loaded)
    assert rebuilt.refine_sigmas == loaded.refine_sigmas and rebuilt.hard_core == loaded.hard_core
    history, features = chain_history(3), loaded.embed_mapping()
    _, _, _, coarse = chain_molecule()
    args = (history, features, coarse, torch.zeros(n_beads, dtype=torch.long), torch.zeros(3, 3),
            torch.randn(loaded.noise_draws(True), n_beads, 3))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.step(*args, True), loaded.step(*args, True), atol=1e-6, rtol=1e-5)


def test_saved_model_keeps_changed_inference_settings(exported, tmp_path, chain_history, chain_molecule, n_beads):
    _, path = exported
    loaded = load(path)
    history, features = chain_history(3), loaded.embed_mapping()
    _, _, _, coarse = chain_molecule()
    args = (history, features, coarse, torch.zeros(n_beads, dtype=torch.long), torch.zeros(3, 3),
            torch.randn(2, n_beads, 3))
    loaded.refine_sigmas = [0.15]
    expected = loaded.step(*args)
    saved = loaded.save(tmp_path / "tuned.safetensors")
    with pytest.raises(FileExistsError):
        loaded.save(saved)
    again = load(saved)
    assert again.refine_sigmas == [0.15] and again.metadata["refine_sigmas"] == [0.15]
    assert torch.equal(again.step(*args), expected)
    assert model_formats.read_weights(saved)[1]["refine_sigmas"] == [0.15]
    script = loaded.save(tmp_path / "tuned.pt")  # the TorchScript form keeps them too
    assert torch.jit.load(str(script)).refine_sigmas == [0.15]


class _CodeOnLoad(torch.nn.Module):
    """A TorchScript module whose ``__setstate__`` writes a file: what a crafted model file can do."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.x = torch.zeros(1)

    @torch.jit.export
    def __getstate__(self):
        return (self.marker, self.x, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]):
        self.marker = state[0]
        self.x = state[1]
        self.training = state[2]
        torch.save(self.x, self.marker)

    def forward(self, x):
        return x


def test_untrusted_torchscript_is_refused_before_it_runs(tmp_path, monkeypatch):
    marker = tmp_path / "written-by-the-model-file"
    crafted = tmp_path / "crafted.pt"
    torch.jit.save(torch.jit.script(_CodeOnLoad(str(marker))), str(crafted))
    assert not marker.exists()
    with pytest.raises(ValueError, match="crafted.pt: a TorchScript model file can run code"):
        load(crafted)
    assert not marker.exists()
    # the threat is real: trusting the file runs its code (and then fails on the missing metadata)
    with pytest.raises(ValueError, match="crafted.pt"):
        load(crafted, trusted=True)
    assert marker.exists()
    # a TorchScript file whose SHA-256 this package vouches for (a shipped model) needs no trust flag
    marker.unlink()
    monkeypatch.setattr(model_formats, "trusted_sha256s", lambda: {model_formats.file_sha256(crafted)})
    with pytest.raises(ValueError, match="metadata"):
        load(crafted)
    assert marker.exists()


def _rewrite_weights(path, out, edit_metadata=None, edit_tensors=None):
    """Copy a weights file with its metadata or tensors edited, keeping the old digest."""
    with safetensors.safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    metadata = json.loads(header["openmm_cgml"])
    if edit_metadata:
        edit_metadata(metadata)
    if edit_tensors:
        edit_tensors(tensors)
    safetensors.torch.save_file(tensors, str(out), metadata={"openmm_cgml": json.dumps(metadata)})
    return out


def test_edited_weights_file_is_refused(exported, tmp_path):
    _, path = exported

    def swap_mapping(metadata):
        mapping = json.loads(metadata["mapping"]) if isinstance(metadata["mapping"], str) else metadata["mapping"]
        mapping["bead_of_atom"] = list(reversed(mapping["bead_of_atom"]))
        metadata["mapping"] = mapping

    edited = _rewrite_weights(path, tmp_path / "edited.safetensors", edit_metadata=swap_mapping)
    with pytest.raises(ValueError, match="edited.safetensors: the metadata or weights were changed"):
        load(edited)

    def scale_first(tensors):
        name = sorted(tensors)[0]
        tensors[name] = tensors[name] * 1.01

    reweighted = _rewrite_weights(path, tmp_path / "reweighted.safetensors", edit_tensors=scale_first)
    with pytest.raises(ValueError, match="reweighted.safetensors: the metadata or weights were changed"):
        load(reweighted)


def test_weights_that_do_not_fit_the_architecture_are_refused(exported, tmp_path):
    _, path = exported
    tensors, metadata = model_formats.read_weights(path)
    name = sorted(tensors)[0]
    model_formats.write_weights(dict(tensors, **{name: torch.zeros(tensors[name].numel() + 1)}), metadata,
                                tmp_path / "misfit.safetensors")
    with pytest.raises(ValueError, match=f"misfit.safetensors.*{name}"):
        load(tmp_path / "misfit.safetensors")
    model_formats.write_weights(dict(tensors, **{name: torch.full_like(tensors[name], float("nan"))}), metadata,
                                tmp_path / "nan.safetensors")
    with pytest.raises(ValueError, match=f"nan.safetensors: tensor '{name}' holds NaN"):
        load(tmp_path / "nan.safetensors")


@pytest.mark.parametrize("key, value, message", [
    ("format", "something-else", "not an openmm-cgml model"),
    ("k", 0, "'k' must be an integer >= 1"),
    ("k", "3", "'k' must be an integer >= 1"),
    ("model_dt_ps", -1.0, "'model_dt_ps' must be a number > 0"),
    ("temperature_K", float("nan"), "'temperature_K' must be a number > 0"),
    ("refine_sigmas", [0.1, 0.0], "'refine_sigmas' must be a list of numbers > 0"),
    ("model_init", [], "'model_init' must be an object"),
    ("format_version", 99, "newer openmm-cgml"),
    ("n_beads", 9, "'n_beads' = 9 contradicts the architecture"),
    ("mapping", 7, "'mapping' must be a mapping JSON"),
])
def test_metadata_schema_names_the_field(exported, key, value, message):
    _, path = exported
    _, metadata = model_formats.read_weights(path)
    metadata[key] = value
    with pytest.raises(ValueError, match=message):
        model_formats.check_metadata(metadata, path)
    metadata.pop(key)
    if key != "mapping":
        with pytest.raises(ValueError, match="not an openmm-cgml model" if key == "format" else f"has no '{key}'"):
            model_formats.check_metadata(metadata, path)


def test_cli_converts_between_the_two_forms(exported, tmp_path, capsys, chain_history, chain_molecule, n_beads):
    from openmm_cgml.cli import main

    model, path = exported
    script = tmp_path / "converted.pt"
    assert main(["export", str(path), "--out", str(script)]) == 0
    assert "trusted=True" in capsys.readouterr().out
    back = tmp_path / "back.safetensors"
    assert main(["export", str(script), "--out", str(back)]) == 2  # an untrusted TorchScript source
    assert "--trust-model" in capsys.readouterr().err and not back.exists()
    assert main(["export", str(script), "--out", str(back), "--trust-model"]) == 0
    assert main(["export", str(path), "--out", str(back)]) == 2  # exists, no --overwrite
    history, features = chain_history(3), load(back).embed_mapping()
    _, _, _, coarse = chain_molecule()
    args = (history, features, coarse, torch.zeros(n_beads, dtype=torch.long), torch.zeros(3, 3),
            torch.randn(3, n_beads, 3))
    torch.testing.assert_close(load(back).step(*args), load(path).step(*args), atol=0, rtol=0)


def test_validated_checks_once_then_steps_without_the_per_step_checks(exported, chain_history, chain_molecule,
                                                                      n_beads):
    _, path = exported
    loaded = load(path)
    history, features, coarse = chain_history(3), loaded.embed_mapping(), chain_molecule()[3]
    batch, box = torch.zeros(n_beads, dtype=torch.long), torch.zeros(3, 3)
    bad = history.clone()
    bad[0, 0, 0] = float("nan")   # oldest frame only: the graphs are built on the newest
    noise = torch.randn(loaded.noise_draws(False), n_beads, 3)
    with pytest.raises(ValueError, match="NaN"):
        loaded.step(bad, features, coarse, batch, box, noise, False)
    with pytest.raises(ValueError, match="NaN"), loaded.validated(bad, features, coarse, batch):
        pass
    with loaded.validated(history, features, coarse, batch):
        unchecked = loaded.step(bad, features, coarse, batch, box, noise, False)
    assert not bool(torch.isfinite(unchecked).all())   # passed through: the caller watches the frames
    assert loaded.module.validate_inputs


@pytest.mark.slow   # a second cold compilation (30 s); the default suite compiles in the test below and the CLI's
def test_compiled_model_rolls_out_as_the_file_does(tmp_path, export_chain_model, chain_history):
    """``CGModel.compile()``: a rollout of two molecules through ``torch.compile`` (fixed shapes) follows the
    file's own step, to rounding, and counts its truncation's redraws the same way."""
    from openmm_cgml.openmm.rollout import model_graph, rollout

    _, path = export_chain_model(tmp_path / "model.safetensors", noise="internal")
    plain, compiled = load(path), load(path).compile()
    assert compiled.compiled and not plain.compiled and compiled.compile() is compiled
    history = torch.cat([chain_history(3), chain_history(3, seed=1) + 2.0], dim=1)
    edges, batch = model_graph(plain.mapping, 2)
    features = plain.embed_mapping().repeat(2, 1)
    out = [rollout(model, history, features, edges, batch, torch.zeros(3, 3), 4, seed=7, n_replicas=2,
                   collision_distance=0.0)
           for model in (plain, compiled)]
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=1e-4)   # float32, 4 steps of an untrained model
    assert compiled.exclusion_events == plain.exclusion_events


def test_compiled_corrections_follow_the_file(tmp_path, chain_mapping, chain_molecule, compressed_history,
                                              hard_core_model, n_beads):
    """On a crowded start the compiled step takes its rarely taken branches (the truncation's redraws, the hard
    core's sweeps) and gives the file's own positions and event counts, to rounding."""
    model = hard_core_model(k=3, noise="internal")
    model.exclusion_retries = 3
    path = export_model(model, tmp_path / "hard.safetensors", {"mapping": chain_mapping})
    plain, compiled = load(path), load(path).compile()
    _, _, _, coarse = chain_molecule()
    history = compressed_history(3, torch.float32).repeat(1, 2, 1)
    features = plain.embed_mapping().repeat(2, 1)
    edges, batch = torch.cat([coarse, coarse + n_beads], dim=1), torch.arange(2).repeat_interleave(n_beads)
    noise = torch.randn(plain.noise_draws(True), 2 * n_beads, 3, generator=torch.Generator().manual_seed(2))
    out = []
    for model in (plain, compiled):
        with model.validated(history, features, edges, batch):
            out.append(model.step(history, features, edges, batch, torch.zeros(3, 3), noise, True))
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=1e-4)
    assert compiled.exclusion_events == plain.exclusion_events and plain.exclusion_events[0] > 0
    assert compiled.hard_core_events == plain.hard_core_events


@pytest.mark.cuda
def test_compiled_model_on_cuda_is_one_graph_and_follows_the_cpu(tmp_path, export_chain_model, chain_history):
    """On a GPU, ``compile()`` takes the fixed-work step (no host read: CUDA graphs); it follows the CPU's
    uncompiled rollout to rounding."""
    from openmm_cgml.openmm.rollout import model_graph, rollout

    _, path = export_chain_model(tmp_path / "model.safetensors", noise="internal")
    cpu, gpu = load(path), load(path, device="cuda").compile()
    assert gpu.module.fixed_work and gpu.module.fixed_shapes
    history = torch.cat([chain_history(3), chain_history(3, seed=1) + 2.0], dim=1)
    edges, batch = model_graph(cpu.mapping, 2)
    features = cpu.embed_mapping().repeat(2, 1)
    expected = rollout(cpu, history, features, edges, batch, torch.zeros(3, 3), 4, seed=7, n_replicas=2,
                       collision_distance=0.0)
    out = rollout(gpu, history.cuda(), features.cuda(), edges.cuda(), batch.cuda(), torch.zeros(3, 3).cuda(), 4,
                  seed=7, n_replicas=2, collision_distance=0.0)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=1e-3)
