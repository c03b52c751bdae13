"""Bad input to ``cgml coarse-grain``: one ``cgml coarse-grain: error:`` line naming the problem, nothing lost."""
import json
import shutil

import h5py
import numpy as np
import pytest


def coarse_grain(pipeline, out, *extra, data=None):
    return ["coarse-grain", *map(str, data or pipeline["fine"]), "--out", str(out), "--atoms-per-bead", "1", "--k", "2",
            "--lag", "1", *map(str, extra)]


def damaged_h5(pipeline, tmp_path, damaged, kind):
    """A fine trajectory file: missing, empty, truncated, header corrupted, text, or another HDF5 file."""
    path = tmp_path / f"{kind}.h5"
    if kind == "coarse":  # a coarse dataset is HDF5 too, but no fine trajectory
        shutil.copy(pipeline["coarse"], path)
    elif kind == "plain-hdf5":
        with h5py.File(path, "w") as handle:
            handle["x"] = np.zeros(3)
    else:
        damaged(pipeline["fine"][0], path, kind, {"header": lambda data: b"\x00" * 64 + data[64:],
                                                  "text": lambda data: "frames: 16\n"})
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "header", "text", "coarse", "plain-hdf5"])
def test_bad_fine_trajectory(pipeline, tmp_path, fails, damaged, kind):
    bad = damaged_h5(pipeline, tmp_path, damaged, kind)
    existing = tmp_path / "out.h5"
    shutil.copy(pipeline["coarse"], existing)
    fails(coarse_grain(pipeline, existing, "--overwrite", data=[pipeline["fine"][0], bad]), names=[bad.name],
          keep=[existing])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"out.h5", bad.name} - {"missing.h5"})


def edited_copy(pipeline, tmp_path, edit):
    path = tmp_path / "edited.h5"
    shutil.copy(pipeline["fine"][1], path)
    with h5py.File(path, "r+") as handle:
        edit(handle)
    return path


def _set(name, index, value):
    def edit(handle):
        data = handle[name][...]
        data[index] = value
        handle[name][...] = data
    return edit


@pytest.mark.parametrize("edit, names", [
    (_set("coordinates", (3, 1, 0), np.nan), ["positions", "frame 3", "NaN"]),
    (_set("coordinates", (0, 0, 2), np.inf), ["positions", "frame 0", "infinite"]),
    (_set("velocities", (15, 2, 1), -np.inf), ["velocities", "frame 15"]),
    (lambda handle: handle.attrs.__delitem__("cgml_stride"), ["cgml_stride"]),
    (lambda handle: handle.attrs.__setitem__("cgml_stride", 25), ["stride"]),
    (lambda handle: handle.attrs.__setitem__("cgml_temperature_K", 350.0), ["temperature_K"]),
], ids=["nan", "inf", "velocity-inf", "no-stride", "other-stride", "other-temperature"])
def test_bad_fine_content(pipeline, tmp_path, fails, edit, names):
    bad = edited_copy(pipeline, tmp_path, edit)
    fails(coarse_grain(pipeline, tmp_path / "out.h5", data=[pipeline["fine"][0], bad]), names=["edited.h5", *names])
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("option, value, name", [
    ("--k", 0, "k"), ("--k", -3, "k"), ("--k", 40, "k=40"), ("--lag", 0, "lag"), ("--lag", -1, "lag"),
    ("--chunk-frames", 0, "chunk_frames"), ("--chunk-frames", -8, "chunk_frames"),
    ("--atoms-per-bead", 0, "--atoms-per-bead"), ("--atoms-per-bead", -2, "--atoms-per-bead"),
    ("--atoms-per-bead", "nan", "--atoms-per-bead"), ("--atoms-per-bead", "inf", "--atoms-per-bead"),
    ("--n-beads", 0, "--n-beads"), ("--n-beads", -4, "--n-beads"), ("--n-beads", 100, "n_beads"),
])
def test_bad_number(pipeline, tmp_path, fails, set_option, option, value, name):
    argv = coarse_grain(pipeline, tmp_path / "out.h5")
    if option == "--n-beads":
        set_option(argv, "--atoms-per-bead")
    fails(set_option(argv, option, value), names=[name, str(value)])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("steps", ["0", "30", "-50", "75"])
def test_model_steps_not_a_multiple_of_the_stride(pipeline, tmp_path, fails, set_option, steps):
    argv = set_option(coarse_grain(pipeline, tmp_path / "out.h5"), "--lag")
    fails(argv + ["--model-steps", steps], names=["model_steps", steps, "stride"])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("split", ["0.5,0.5,0.5", "a,b,c", "-0.2,0.6,0.6", "nan,0.5,0.5", "1", "0.8,0.1,0.05,0.05"])
def test_bad_split(pipeline, tmp_path, fails, split):
    fails(coarse_grain(pipeline, tmp_path / "out.h5", f"--split={split}"), names=["split", split])
    assert not list(tmp_path.iterdir())


def mapping_file(pipeline, tmp_path, kind):
    path = tmp_path / f"{kind}.json"
    whole = {"beads": [{"name": "A", "atoms": [0, 1, 2, 3]}, {"name": "B", "atoms": [4, 5, 6, 7]}]}
    content = {
        "empty": "",
        "garbage": "{beads: [",
        "list": json.dumps([[0, 1, 2, 3], [4, 5, 6, 7]]),
        "beads-string": json.dumps({"beads": "all"}),
        "atoms-string": json.dumps({"beads": [{"name": "A", "atoms": "0-3"}, {"name": "B", "atoms": [4, 5, 6, 7]}]}),
        "too-few-atoms": json.dumps({"beads": [{"name": "A", "atoms": [0, 1, 2]}, {"name": "B", "atoms": [4, 5, 6]}]}),
        "too-many-atoms": json.dumps({"beads": [{"name": "A", "atoms": list(range(6))},
                                                {"name": "B", "atoms": list(range(6, 12))}]}),
        "twice": json.dumps({"beads": [{"name": "A", "atoms": [0, 1, 2, 3, 4]}, {"name": "B", "atoms": [4, 5, 6, 7]}]}),
        "negative": json.dumps({"beads": [{"name": "A", "atoms": [-1, 0, 1, 2, 3]},
                                          {"name": "B", "atoms": [4, 5, 6, 7]}]}),
        "n-atoms": json.dumps({**whole, "n_atoms": 22}),
    }.get(kind)
    if content is not None:
        path.write_text(content)
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "list", "beads-string", "atoms-string",
                                  "too-few-atoms", "too-many-atoms", "twice", "negative", "n-atoms"])
def test_bad_mapping_file(pipeline, tmp_path, fails, kind):
    path = mapping_file(pipeline, tmp_path, kind)
    argv = coarse_grain(pipeline, tmp_path / "out.h5", "--mapping", path)
    del argv[argv.index("--atoms-per-bead"):argv.index("--atoms-per-bead") + 2]
    fails(argv, names=[path.name])
    assert not (tmp_path / "out.h5").exists()


def test_mapping_of_another_molecule(pipeline, tmp_path, fails):
    """A mapping file written for another molecule (a 5-monomer chain) does not fit the 4-monomer one."""
    from openmm_cgml.generate import generate
    from openmm_cgml.mapping import Mapping
    from openmm_cgml.trajectory import FineTrajectory

    other = generate("polymer-chain", tmp_path / "other", frames=2, stride=10, params={"length": 5},
                     platform="Reference", progress=False, equilibration_steps=0)[0]
    with FineTrajectory(other) as trajectory:
        mapping = Mapping.build("metis", trajectory.topology, trajectory.masses, atom_types=trajectory.atom_types,
                                atoms_per_bead=2)
    path = tmp_path / "other.json"
    path.write_text(mapping.to_json())
    argv = coarse_grain(pipeline, tmp_path / "out.h5", "--mapping", path)
    del argv[argv.index("--atoms-per-bead"):argv.index("--atoms-per-bead") + 2]
    fails(argv, names=["other.json", "atoms"])
    assert not (tmp_path / "out.h5").exists()


def test_existing_output_without_overwrite(pipeline, tmp_path, fails):
    existing = tmp_path / "coarse.h5"
    shutil.copy(pipeline["coarse"], existing)
    fails(coarse_grain(pipeline, existing), names=["coarse.h5", "exists", "--overwrite"], keep=[existing])


def test_output_is_an_input(pipeline, tmp_path, fails):
    fine = tmp_path / "fine.h5"
    shutil.copy(pipeline["fine"][0], fine)
    fails(coarse_grain(pipeline, fine, "--overwrite", data=[fine, pipeline["fine"][1]]), names=["fine.h5", "input"],
          keep=[fine])


def test_output_is_a_folder(pipeline, tmp_path, fails):
    (tmp_path / "out.h5").mkdir()
    fails(coarse_grain(pipeline, tmp_path / "out.h5", "--overwrite"), names=["out.h5", "is a folder"])


def test_output_folder_is_a_file(pipeline, tmp_path, fails):
    (tmp_path / "folder").write_text("a file\n")
    fails(coarse_grain(pipeline, tmp_path / "folder" / "out.h5"), names=["out.h5", "not a folder"],
          keep=[tmp_path / "folder"])


def test_unwritable_output_folder(pipeline, fails, locked_folder):
    fails(coarse_grain(pipeline, locked_folder / "out.h5"), names=[str(locked_folder)])


@pytest.mark.parametrize("where", ["val", "test"])
def test_file_in_two_splits(pipeline, tmp_path, fails, where):
    fine = pipeline["fine"]
    fails(["coarse-grain", str(fine[0]), str(fine[1]), f"--{where}", str(fine[1]), "--out", str(tmp_path / "out.h5"),
           "--k", "2", "--lag", "1"], names=[fine[1].name, where])
    assert not list(tmp_path.iterdir())
