"""Bad input to ``cgml generate``: system YAML files, options, existing and damaged outputs, MD that blows up.

Every case goes through :func:`fails` (conftest): exit 2, one line ``cgml generate: error: ...``
naming the problem, no traceback, existing files unchanged byte for byte.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import pytest
import yaml

from openmm_cgml import systems
from openmm_cgml.cli import main
from openmm_cgml.trajectory import FineTrajectory

FAST = ["--frames", "4", "--stride", "10", "--equilibration-steps", "10", "--no-progress", "--platform", "CPU"]


def system_yaml(folder: Path, **changes) -> Path:
    """A copy of the shipped polymer-chain YAML (4 monomers) with ``changes`` applied; ``...`` deletes a key."""
    values = yaml.safe_load((systems.SYSTEMS_DIR / "polymer-chain.yaml").read_text())
    values["length"] = 4
    for key, value in changes.items():
        if value is ...:
            values.pop(key)
        else:
            values[key] = value
    path = folder / "chain.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A folder holding one completed polymer-chain trajectory (4 monomers, 4 frames)."""
    out = tmp_path_factory.mktemp("generated")
    assert main(["generate", "polymer-chain", "--out", str(out), "-p", "length=4", *FAST]) == 0
    return out


WRONG_TYPES = [
    ("length", [1, 2], "length"), ("length", "ten", "length"), ("length", 2.5, "length"),
    ("sequence_seed", "x", "sequence_seed"), ("conformation_seed", [0], "conformation_seed"),
    ("fraction_solvophobic", "half", "fraction_solvophobic"), ("angle_k_kT", [1.0], "angle_k_kT"),
    ("cutoff_sigma", {"a": 1}, "cutoff_sigma"), ("epsilon_kT", 3, "epsilon_kT"),
    ("epsilon_kT", {"S1-S1": "strong"}, "epsilon_kT"), ("attractive_pairs", "S1-S1", "attractive_pairs"),
    ("generate", 5, "generate"), ("generate", {"frames": "many"}, "generate"),
    ("generate", {"steps": 10}, "generate"), ("sequence", 1010, "sequence"),
    ("temperature_K", "hot", "temperature_K"), ("timestep_ps", [0.01], "timestep_ps"),
    ("description", ["a", "b"], "description"),
]


@pytest.mark.parametrize("key, value, named", WRONG_TYPES, ids=[f"{k}={v!r}" for k, v, _ in WRONG_TYPES])
def test_wrong_type_in_system_yaml(fails, tmp_path, key, value, named):
    path = system_yaml(tmp_path, **{key: value})
    fails(["generate", path, "--out", tmp_path / "out", *FAST], names=[named, path.name])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


BAD_VALUES = [
    ("length", -3, "length"), ("length", 1, "length"), ("fraction_solvophobic", 1.5, "fraction_solvophobic"),
    ("sigma_nm", float("nan"), "sigma_nm"), ("sigma_nm", float("inf"), "sigma_nm"), ("sigma_nm", -0.45, "sigma_nm"),
    ("bond_length_nm", 0.0, "bond_length_nm"), ("temperature_K", -300.0, "temperature_K"),
    ("timestep_ps", 0.0, "timestep_ps"), ("friction_per_ps", float("nan"), "friction_per_ps"),
    ("sequence", "ABXA", "sequence"), ("epsilon_kT", {"S1-X9": 1.0}, "S1-X9"),
]


@pytest.mark.parametrize("key, value, named", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_bad_value_in_system_yaml(fails, tmp_path, key, value, named):
    path = system_yaml(tmp_path, **{key: value})
    fails(["generate", path, "--out", tmp_path / "out", *FAST], names=[named])


@pytest.mark.parametrize("name", ["../../escape", "/tmp/escape", "sub/dir", ".hidden", "..", ""])
def test_system_name_cannot_leave_the_output_folder(fails, tmp_path, name):
    out = tmp_path / "deep" / "out"
    path = system_yaml(tmp_path, name=name)
    fails(["generate", path, "--out", out, *FAST], names=["name"])
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".h5", ".pdb")]


def test_system_name_override_cannot_leave_the_output_folder(fails, tmp_path):
    fails(["generate", "polymer-chain", "--out", tmp_path / "out", "-p", "name=../../escape", *FAST], names=["name"])
    assert not list(tmp_path.rglob("*.h5"))


@pytest.mark.parametrize("text, named", [
    ("", "mapping"), ("[1, 2, 3]\n", "mapping"), ("builder: polymer-chain\nlength: [\n", "not valid YAML"),
    ("builder: no-such-builder\ntemperature_K: 300\nfriction_per_ps: 1\ntimestep_ps: 0.01\n", "no-such-builder"),
    ("builder: polymer-chain\nlength: 4\n", "temperature_K"),
    ("builder: pdb\npdb: missing.pdb\ntemperature_K: 300\nfriction_per_ps: 1\ntimestep_ps: 0.002\n", "missing.pdb"),
], ids=["empty", "a-list", "invalid-yaml", "unknown-builder", "no-temperature", "missing-pdb"])
def test_malformed_system_yaml(fails, tmp_path, text, named):
    path = tmp_path / "system.yaml"
    path.write_text(text)
    fails(["generate", path, "--out", tmp_path / "out", *FAST], names=[named])


def test_missing_system_yaml(fails, tmp_path):
    fails(["generate", tmp_path / "nope.yaml", "--out", tmp_path / "out", *FAST], names=["nope.yaml"])


def test_unknown_system_and_unknown_override(fails, tmp_path):
    fails(["generate", "no-such-system", "--out", tmp_path, *FAST], names=["no-such-system"])
    fails(["generate", "polymer-chain", "--out", tmp_path, "-p", "colour=red", *FAST], names=["colour"])


@pytest.mark.parametrize("option, value", [
    ("--frames", "0"), ("--frames", "-5"), ("--stride", "0"), ("--replicas", "0"), ("--chunk-frames", "0"),
    ("--cpu-threads", "0"), ("--sequences", "0"), ("--equilibration-steps", "-1"), ("--replicas", "-2"),
    ("--platform", "Nope"),
])
def test_bad_option(fails, tmp_path, option, value):
    argv = ["generate", "polymer-chain", "--out", tmp_path / "out", "-p", "length=4", *FAST, option, value]
    fails(argv, names=[option.lstrip("-").replace("-", "_"), value])


def test_resume_with_other_settings_keeps_the_file(fails, finished):
    fails(["generate", "polymer-chain", "--out", finished, "-p", "length=4", *FAST, "--seed", "7"],
          names=["cgml_seed"], keep=[finished])
    fails(["generate", "polymer-chain", "--out", finished, "-p", "length=4", *FAST[:2], "--stride", "20",
           *FAST[4:]], names=["cgml_stride"], keep=[finished])


def test_a_file_not_ours_is_kept(fails, tmp_path):
    precious = tmp_path / "polymer-chain-r000.h5"
    precious.write_text("precious data")
    fails(["generate", "polymer-chain", "--out", tmp_path, "-p", "length=4", *FAST], names=[precious.name],
          keep=[precious])


def test_a_truncated_trajectory_is_named_and_kept(fails, tmp_path, finished):
    damaged = tmp_path / "polymer-chain-r000.h5"
    data = (finished / damaged.name).read_bytes()
    damaged.write_bytes(data[: len(data) // 3])
    fails(["generate", "polymer-chain", "--out", tmp_path, "-p", "length=4", *FAST], names=[damaged.name],
          keep=[damaged])


def test_output_folder_is_a_file(fails, tmp_path):
    file = tmp_path / "out"
    file.write_text("a file")
    fails(["generate", "polymer-chain", "--out", file, "-p", "length=4", *FAST], names=["out"], keep=[file])


def test_unwritable_output_folder(fails, tmp_path):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    target = folder / "out"
    if os.access(folder, os.W_OK):  # root ignores permissions: a read-only file system instead
        target = Path("/proc/cgml-unwritable-test")
    fails(["generate", "polymer-chain", "--out", target, "-p", "length=4", *FAST], names=[str(target)])


def test_md_that_blows_up_in_equilibration(fails, tmp_path):
    path = system_yaml(tmp_path, name="unstable", timestep_ps=0.5)
    fails(["generate", path, "--out", tmp_path / "out", *FAST, "--equilibration-steps", "1000"],
          names=["unstable", "equilibration"])


def test_md_that_blows_up_names_the_frame_and_keeps_what_was_committed(fails, tmp_path):
    """A 0.3 ps step blows the chain up within 100 MD steps: the error names the frame, the frames kept stay."""
    path = system_yaml(tmp_path, name="unstable", timestep_ps=0.3, length=20)
    message = fails(["generate", path, "--out", tmp_path / "out", "--frames", "100", "--stride", "10",
                     "--equilibration-steps", "1", "--chunk-frames", "2", "--no-progress", "--platform", "CPU"],
                    names=["unstable-r000.h5", "blew up before frame"])
    kept = int(message.split("the ")[-1].split(" frames committed")[0])
    assert kept >= 1
    with FineTrajectory(tmp_path / "out" / "unstable-r000.h5") as trajectory:
        assert trajectory.n_frames == kept and not trajectory.complete
    with h5py.File(tmp_path / "out" / "unstable-r000.h5") as handle:  # still a valid HDF5 file
        assert handle["coordinates"].shape[0] >= kept


BAD_SHARDS = [("--shard=2/2", "2/2"), ("--shard=-1/2", "-1/2"), ("--shard=0/0", "0/0"), ("--shard=1of2", "1of2"),
              ("--shard=1/2/3", "1/2/3"), ("--shard=", "--shard"), ("--shard=a/b", "a/b")]


@pytest.mark.parametrize("option, named", BAD_SHARDS, ids=[option for option, _ in BAD_SHARDS])
def test_bad_shard(fails, tmp_path, option, named):
    fails(["generate", "polymer-chain", "--out", tmp_path / "out", "-p", "length=4", *FAST, option],
          names=["--shard", named])
    assert not (tmp_path / "out").exists()
