"""Bad input to ``cgml export``: one ``cgml export: error:`` line naming the problem, exit 2, nothing lost."""
import json
import shutil

import pytest
import torch


def export(source, out, *extra):
    return ["export", str(source), "--out", str(out), *map(str, extra)]


def damaged_checkpoint(pipeline, tmp_path, damaged, kind):
    """A checkpoint file: missing, empty, truncated, corrupted, foreign, or a torch file that is no training run."""
    best = pipeline["run"] / "checkpoints" / "best.ckpt"
    path = tmp_path / f"{kind}.ckpt"
    if kind == "plain-torch":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "no-model-init":
        state = torch.load(best, weights_only=True)
        state["hyper_parameters"].pop("model_init")
        torch.save(state, path)
    elif kind == "wrong-weights":
        state = torch.load(best, weights_only=True)
        name = next(key for key in state["state_dict"] if key.startswith("model."))
        state["state_dict"][name] = torch.zeros(7, 5)
        torch.save(state, path)
    else:
        damaged(best, path, kind, {"corrupted": lambda data: data[:16] + b"\xff" * 256 + data[272:],
                                   "foreign": lambda data: "epoch: 3\n"})
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "corrupted", "foreign", "plain-torch",
                                  "no-model-init", "wrong-weights"])
def test_bad_checkpoint(pipeline, tmp_path, fails, damaged, kind):
    source = damaged_checkpoint(pipeline, tmp_path, damaged, kind)
    fails(export(source, tmp_path / "model.safetensors"), names=[source.name])
    assert not (tmp_path / "model.safetensors").exists()


def test_run_folder_without_checkpoints(pipeline, tmp_path, fails):
    run = tmp_path / "run"
    shutil.copytree(pipeline["run"], run, ignore=shutil.ignore_patterns("*.ckpt"))
    fails(export(run, tmp_path / "model.safetensors"), names=[str(run), "best.ckpt"], keep=[run])
    assert not (tmp_path / "model.safetensors").exists()


def test_run_folder_with_a_damaged_best_checkpoint(pipeline, tmp_path, fails):
    run = tmp_path / "run"
    shutil.copytree(pipeline["run"], run)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"\0" * 64)
    fails(export(run, tmp_path / "model.safetensors"), names=["best.ckpt"], keep=[run])
    assert not (tmp_path / "model.safetensors").exists()


def damaged_model(pipeline, tmp_path, damaged, kind):
    """A model file to convert: missing, empty, truncated, corrupted, foreign, or edited after export."""
    path = tmp_path / f"{kind}.safetensors"
    if kind in ("edited-mapping", "edited-k", "nan-weights"):
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(pipeline["model"]), framework="pt") as handle:
            header = handle.metadata()
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = json.loads(header["openmm_cgml"])
        if kind == "edited-mapping":
            mapping = json.loads(metadata["mapping"])
            mapping["bead_of_atom"] = mapping["bead_of_atom"][::-1]
            metadata["mapping"] = json.dumps(mapping)
        elif kind == "edited-k":
            metadata["k"] = 9
        else:
            name = next(name for name, tensor in tensors.items() if tensor.is_floating_point())
            tensors[name] = tensors[name].clone().fill_(float("nan"))
        save_file(tensors, str(path), metadata={"openmm_cgml": json.dumps(metadata, sort_keys=True)})
    else:
        damaged(pipeline["model"], path, kind, {"foreign": lambda data: "not a model\n"})
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "corrupted", "foreign", "edited-mapping",
                                  "edited-k", "nan-weights"])
def test_bad_model_file(pipeline, tmp_path, fails, damaged, kind):
    source = damaged_model(pipeline, tmp_path, damaged, kind)
    fails(export(source, tmp_path / "model.pt"), names=[source.name])
    assert not (tmp_path / "model.pt").exists()


def test_unknown_pretrained_name(tmp_path, fails):
    fails(export("no-such-model.safetensors", tmp_path / "model.pt"), names=["no-such-model"])


def test_torchscript_source_needs_trust(pipeline, tmp_path, fails):
    script = tmp_path / "model.pt"
    assert main_ok(export(pipeline["model"], script))
    fails(export(script, tmp_path / "copy.safetensors"), names=["model.pt", "trust"], keep=[script])
    assert not (tmp_path / "copy.safetensors").exists()


def main_ok(argv):
    from openmm_cgml.cli import main

    return main(argv) == 0


@pytest.mark.parametrize("name", ["model.onnx", "model", "model.safetensors.bak", "model.ckpt"])
def test_unknown_output_format(pipeline, tmp_path, fails, name):
    fails(export(pipeline["run"], tmp_path / name), names=[name, ".safetensors", ".pt"])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("source", ["run", "model"])
def test_existing_output_without_overwrite(pipeline, tmp_path, fails, source):
    out = tmp_path / "model.safetensors"
    shutil.copy(pipeline["model"], out)
    fails(export(pipeline[source], out), names=["model.safetensors", "--overwrite"], keep=[out])


def test_output_is_the_source(pipeline, tmp_path, fails):
    model = tmp_path / "model.safetensors"
    shutil.copy(pipeline["model"], model)
    fails(export(model, model, "--overwrite"), names=["model.safetensors", "being exported"], keep=[model])


def test_output_is_a_folder(pipeline, tmp_path, fails):
    (tmp_path / "model.safetensors").mkdir()
    fails(export(pipeline["run"], tmp_path / "model.safetensors", "--overwrite"),
          names=["--out", "model.safetensors", "is a folder"])


@pytest.mark.parametrize("where", ["missing", "file"])
def test_output_folder_missing_or_a_file(pipeline, tmp_path, fails, where):
    folder = tmp_path / "models"
    if where == "file":
        folder.write_text("a file\n")
    fails(export(pipeline["run"], folder / "model.safetensors"),
          names=[str(folder), "does not exist" if where == "missing" else "not a folder"])
    assert not (folder.exists() and folder.is_dir())


def test_unwritable_output_folder(pipeline, fails, locked_folder):
    fails(export(pipeline["run"], locked_folder / "model.safetensors"), names=[str(locked_folder)])


def test_step_program_without_its_system(pipeline, tmp_path, fails):
    """A .pt2 step program is the step of one bead system: without --pdb, one line naming it and no file; --pdb
    with a model file is named too."""
    fails(export(pipeline["model"], tmp_path / "step.pt2"), names=["step.pt2", "--pdb"])
    assert not (tmp_path / "step.pt2").exists()
    fails(export(pipeline["model"], tmp_path / "model.pt", "--pdb", pipeline["pdb"]), names=["--pdb", "model.pt"])
    fails(export(pipeline["model"], tmp_path / "model.pt", "--replicas", 4), names=["--replicas", "model.pt"])
    assert not (tmp_path / "model.pt").exists()
