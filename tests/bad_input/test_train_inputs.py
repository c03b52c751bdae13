"""Bad input to ``cgml train``: one ``cgml train: error:`` line naming the problem, exit 2, nothing lost.

Every section of ``configs/default.yaml`` gets a wrong type, a list where a mapping belongs and an
unknown key; numbers get NaN, inf, zero and negative values; a resume with a changed config is
refused before anything in ``out_dir`` is touched.
"""
import shutil

import h5py
import numpy as np
import pytest
import yaml


def tiny(pipeline, tmp_path, run=None, **sections):
    """The pipeline's tiny train YAML: data absolute, ``out_dir`` ``run`` (default in ``tmp_path``), ``sections`` set.

    ``sections`` maps a top-level key to its new value, or ``"train.lr"``-style names (given as
    ``train__lr``) to a value inside a section; ``DELETE`` removes the key.
    """
    values = yaml.safe_load(pipeline["config"].read_text())
    values.update(data=str(pipeline["coarse"]), out_dir=str(run or tmp_path / "run"))
    for key, value in sections.items():
        section, _, name = key.partition("__")
        if name:
            values[section] = {**values.get(section, {}), name: value}
        else:
            values[section] = value
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def edited_yaml(pipeline, tmp_path, text):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind, text", [
    ("empty", ""), ("comment only", "# nothing here\n"), ("truncated", "data: coarse.h5\ntrain: {batch_size: 8, lr: "),
    ("tabs", "data: coarse.h5\n\ttrain: 1\n"), ("list", "- data\n- coarse.h5\n"), ("scalar", "coarse.h5\n"),
    ("binary", None),
])
def test_unreadable_config(pipeline, tmp_path, fails, kind, text):
    path = tmp_path / "train.yaml"
    if text is None:
        path.write_bytes(bytes(range(256)) * 4)
    else:
        path.write_text(text)
    fails(["train", path], names=["train.yaml"] if kind not in ("empty", "comment only") else ["data"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.yaml"]


def test_config_is_a_folder(pipeline, tmp_path, fails):
    fails(["train", tmp_path], names=[str(tmp_path), "is a folder"])


@pytest.mark.parametrize("key, value, names", [
    # a list or a string where a mapping belongs, in every section
    ("model", [8, 8], ["model", "mapping"]), ("train", ["lr", 0.1], ["train", "mapping"]),
    ("trainer", "cpu", ["trainer", "mapping"]), ("model", 8, ["model", "mapping"]),
    # the top-level paths
    ("data", ["a.h5", "b.h5"], ["data", "path"]), ("out_dir", 3, ["out_dir", "path"]),
    ("resume", True, ["resume", "path"]), ("out_dir", "", ["out_dir", "empty"]),
    # wrong types inside each section
    ("train__batch_size", "big", ["train.batch_size", "big"]), ("train__lr", "fast", ["train.lr", "fast"]),
    ("train__max_epochs", 2.5, ["train.max_epochs", "2.5"]), ("train__history_noise", "0.1", ["train.history_noise"]),
    ("train__score_sigmas", {"high": 1.0}, ["train.score_sigmas"]), ("train__seed", [0], ["train.seed"]),
    ("train__lr_schedule", 3, ["train.lr_schedule", "3"]), ("model__hidden", "wide", ["model.hidden", "wide"]),
    ("model__cutoff_nm", [1.0], ["model.cutoff_nm"]), ("model__hard_core", "yes", ["model.hard_core", "yes"]),
    ("model__refine_sigmas", 0.3, ["model.refine_sigmas", "0.3"]), ("model__score_net", 1, ["model.score_net"]),
    ("trainer__log_every_n_steps", "ten", ["trainer.log_every_n_steps", "ten"]),
    ("trainer__enable_progress_bar", "no", ["trainer.enable_progress_bar", "no"]),
    ("trainer__devices", [], ["trainer.devices"]), ("trainer__precision", [32], ["trainer.precision"]),
    ("trainer__num_nodes", "two", ["trainer.num_nodes", "two"]),
    # unknown keys, in every section
    ("epochs", 3, ["epochs"]), ("train__learning_rate", 0.1, ["learning_rate", "train"]),
    ("model__layers", 2, ["layers", "model"]), ("trainer__gpus", 1, ["gpus", "trainer"]),
])
def test_wrong_type_or_unknown_key(pipeline, tmp_path, fails, key, value, names):
    fails(["train", tiny(pipeline, tmp_path, **{key: value})], names=["train.yaml", *names])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value", [
    ("train__lr", float("nan")), ("train__lr", float("inf")), ("train__lr", 0.0), ("train__lr", -1e-3),
    ("train__weight_decay", -0.1), ("train__gradient_clip", float("-inf")), ("train__score_weight", float("nan")),
    ("train__batch_size", 0), ("train__max_epochs", 0), ("train__max_epochs", -5), ("train__max_steps", 0),
    ("train__warmup_steps", -1), ("train__n_score_sigmas", 0), ("train__limit_train_batches", 0),
    ("train__limit_train_batches", 1.5), ("train__history_noise", [0.1, float("nan")]),
    ("train__score_sigmas", [-1.0, 0.01]), ("model__hidden", 0), ("model__cutoff_nm", -1.0),
    ("model__cutoff_nm", float("nan")), ("model__min_std", 0.0), ("model__k", 1), ("model__refine_sigmas", [0.3, -0.1]),
    ("trainer__num_nodes", 0), ("trainer__log_every_n_steps", 0), ("trainer__devices", 0),
])
def test_bad_value(pipeline, tmp_path, fails, key, value):
    section, _, name = key.partition("__")
    fails(["train", tiny(pipeline, tmp_path, **{key: value})], names=["train.yaml", f"{section}.{name}"])
    assert not (tmp_path / "run").exists()


def test_history_longer_than_the_data(pipeline, tmp_path, fails):
    fails(["train", tiny(pipeline, tmp_path, model__k=5)], names=["train.yaml", "k", "coarse.h5"])
    assert not list((tmp_path / "run").glob("**/*.ckpt"))


@pytest.mark.parametrize("value", ["0", "-2"])
def test_max_epochs_option(pipeline, tmp_path, fails, value):
    fails(["train", tiny(pipeline, tmp_path), "--max-epochs", value], names=["train.max_epochs", value])
    assert not (tmp_path / "run").exists()


def damaged_dataset(pipeline, tmp_path, damaged, kind):
    path = tmp_path / f"{kind}.h5"
    if kind == "fine":  # a fine trajectory where the coarse dataset belongs
        shutil.copy(pipeline["fine"][0], path)
    elif kind in ("no-train", "nan"):
        shutil.copy(pipeline["coarse"], path)
        with h5py.File(path, "r+") as handle:
            for group in handle["traj"].values():
                if kind == "no-train":
                    group.attrs["split"] = "val"
                else:
                    positions = group["positions"][...]
                    positions[2, 1, 0] = np.nan
                    group["positions"][...] = positions
            if kind == "no-train":
                handle.attrs["n_windows_train"] = 0
    elif kind == "folder":
        path.mkdir()
    else:
        damaged(pipeline["coarse"], path, kind, {"truncated": lambda data: data[: len(data) // 3],
                                                 "header": lambda data: b"\xff" * 48 + data[48:]})
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "header", "fine", "no-train", "nan", "folder"])
def test_bad_dataset(pipeline, tmp_path, fails, damaged, kind):
    data = damaged_dataset(pipeline, tmp_path, damaged, kind)
    fails(["train", tiny(pipeline, tmp_path, data=str(data))], names=[data.name])
    assert not list((tmp_path / "run").glob("**/*.ckpt"))


def test_data_option_is_missing(pipeline, tmp_path, fails):
    fails(["train", tiny(pipeline, tmp_path), "--data", tmp_path / "nowhere.h5"], names=["nowhere.h5"])
    assert not (tmp_path / "run").exists()


def test_out_dir_is_a_file(pipeline, tmp_path, fails):
    (tmp_path / "run").write_text("not a folder\n")
    fails(["train", tiny(pipeline, tmp_path)], names=["run", "not a folder"], keep=[tmp_path / "run"])


def test_unwritable_out_dir(pipeline, tmp_path, fails, locked_folder):
    fails(["train", tiny(pipeline, tmp_path, run=locked_folder / "run")], names=[str(locked_folder)])


@pytest.fixture
def finished(pipeline, tmp_path):
    """A copy of the pipeline's finished one-epoch run (checkpoints, logs, config.yaml) in ``tmp_path``."""
    run = tmp_path / "run"
    shutil.copytree(pipeline["run"], run)
    return run


@pytest.mark.parametrize("key, value", [
    ("model__hidden", 16), ("model__cutoff_nm", 0.8), ("model__hard_core", False), ("train__lr", 0.01),
    ("train__batch_size", 4), ("train__score_weight", 0.5), ("train__seed", 3), ("train__history_noise", [0.2, 0.02]),
    ("trainer__precision", "64-true"), ("train__lr_schedule", "constant"),
])
def test_resume_with_changed_config(pipeline, tmp_path, fails, finished, key, value):
    section, _, name = key.partition("__")
    config = tiny(pipeline, tmp_path, run=finished, train__max_epochs=2, **{key: value})
    fails(["train", config], names=["train.yaml", f"{section}.{name}", "last.ckpt"], keep=[finished])


def test_resume_with_other_data(pipeline, tmp_path, fails, finished):
    other = tmp_path / "other.h5"
    shutil.copy(pipeline["coarse"], other)
    config = tiny(pipeline, tmp_path, run=finished, data=str(other), train__max_epochs=2)
    fails(["train", config], names=["train.yaml", "data", "last.ckpt"], keep=[finished])


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "foreign"])
def test_resume_from_a_bad_checkpoint(pipeline, tmp_path, fails, finished, kind):
    checkpoint = tmp_path / f"{kind}.ckpt"
    data = (finished / "checkpoints" / "last.ckpt").read_bytes()
    content = {"empty": b"", "truncated": data[: len(data) // 2], "foreign": b"not a checkpoint\n"}.get(kind)
    if content is not None:
        checkpoint.write_bytes(content)
    config = tiny(pipeline, tmp_path, run=finished, train__max_epochs=2, resume=str(checkpoint))
    fails(["train", config], names=[checkpoint.name], keep=[finished])


def test_resume_option_without_a_checkpoint(pipeline, tmp_path, fails):
    fails(["train", tiny(pipeline, tmp_path), "--resume"], names=["--resume", "last.ckpt"])
    assert not (tmp_path / "run").exists()


def test_fresh_start_over_a_finished_run(pipeline, tmp_path, fails, finished):
    fails(["train", tiny(pipeline, tmp_path, run=finished), "--no-resume"], names=[str(finished), "checkpoints"],
          keep=[finished])
