"""Bad input to ``cgml map-image``: one ``cgml map-image: error:`` line naming the problem, exit 2, nothing lost."""
import os
import shutil

import h5py
import numpy as np
import pytest


def map_image(structure, out, *extra):
    return ["map-image", str(structure), "--out", str(out), "--atoms-per-bead", "2", *map(str, extra)]


@pytest.fixture(scope="module")
def drawn(pipeline, tmp_path_factory):
    """A finished map-image run to protect: ``map.png`` and ``map.json`` of the pipeline's start PDB."""
    from openmm_cgml.cli import main

    folder = tmp_path_factory.mktemp("map_image")
    assert main(map_image(pipeline["pdb"], folder / "map.png", "--save-mapping", folder / "map.json")) == 0
    return folder


def structure(pipeline, tmp_path, damaged, kind):
    path = tmp_path / f"{kind}.pdb"
    if kind in ("nan", "inf"):
        lines = pipeline["pdb"].read_text().splitlines(True)
        atom = next(i for i, line in enumerate(lines) if line.startswith(("ATOM", "HETATM")))
        lines[atom] = lines[atom][:38] + f"{' ' + kind:>8}" + lines[atom][46:]
        path.write_text("".join(lines))
    elif kind == "folder":
        path.mkdir()
    elif kind in ("fine-nan", "fine-truncated", "fine-empty"):
        path = tmp_path / f"{kind}.h5"
        if kind == "fine-empty":
            path.write_bytes(b"")
        elif kind == "fine-truncated":
            data = pipeline["fine"][0].read_bytes()
            path.write_bytes(data[: len(data) // 2])
        else:
            shutil.copy(pipeline["fine"][0], path)
            with h5py.File(path, "r+") as handle:
                coordinates = handle["coordinates"][...]
                coordinates[0, 3, 2] = np.nan
                handle["coordinates"][...] = coordinates
    elif kind == "unknown-system":
        path = tmp_path / "no-such-system"
    else:
        damaged(pipeline["pdb"], path, kind, {
            "truncated": lambda data: data.splitlines(True)[0] + data.splitlines(True)[1][:40],  # inside atom 1
            "garbage": lambda data: "ATOM      1  P   POL A   1    garbage\n",
            "binary": lambda data: os.urandom(512)})
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "garbage", "binary", "nan", "inf", "folder",
                                  "fine-nan", "fine-truncated", "fine-empty", "unknown-system"])
def test_bad_structure(pipeline, tmp_path, fails, drawn, damaged, kind):
    path = structure(pipeline, tmp_path, damaged, kind)
    fails(map_image(path, drawn / "map.png", "--overwrite", "--save-mapping", drawn / "map.json"), names=[path.name],
          keep=[drawn])


@pytest.mark.parametrize("option, value", [
    ("--atoms-per-bead", 0), ("--atoms-per-bead", -1), ("--atoms-per-bead", "nan"), ("--atoms-per-bead", "inf"),
    ("--n-beads", 0), ("--n-beads", -2),
])
def test_bad_resolution(pipeline, tmp_path, fails, set_option, option, value):
    argv = map_image(pipeline["pdb"], tmp_path / "map.png")
    if option == "--n-beads":
        set_option(argv, "--atoms-per-bead")
    fails(set_option(argv, option, value), names=[option, str(value)])
    assert not list(tmp_path.iterdir())


def test_more_beads_than_atoms(pipeline, tmp_path, fails, set_option):
    argv = set_option(map_image(pipeline["pdb"], tmp_path / "map.png"), "--atoms-per-bead")
    fails(argv + ["--n-beads", "50"], names=["n_beads", "50"])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "other-size"])
def test_bad_mapping_file(pipeline, tmp_path, fails, kind):
    mapping = tmp_path / f"{kind}.json"
    if kind == "empty":
        mapping.write_text("")
    elif kind == "garbage":
        mapping.write_text("[[[")
    elif kind == "other-size":
        mapping.write_text('{"beads": [{"name": "A", "atoms": [0, 1, 2]}, {"name": "B", "atoms": [3, 4]}]}')
    fails(map_image(pipeline["pdb"], tmp_path / "map.png", "--mapping", mapping), names=[mapping.name])
    assert not (tmp_path / "map.png").exists()


@pytest.mark.parametrize("which", ["out", "save-mapping"])
def test_existing_output_without_overwrite(pipeline, fails, drawn, which):
    argv = map_image(pipeline["pdb"], drawn / "map.png" if which == "out" else drawn / "new.png",
                     "--save-mapping", drawn / "map.json")
    fails(argv, names=[f"--{which}", "exists", "--overwrite"], keep=[drawn])
    assert not (drawn / "new.png").exists()


def test_out_and_save_mapping_are_one_file(pipeline, tmp_path, fails):
    fails(map_image(pipeline["pdb"], tmp_path / "map.png", "--save-mapping", tmp_path / "map.png"),
          names=["--out", "--save-mapping", "same file"])
    assert not list(tmp_path.iterdir())


def test_out_is_a_folder(pipeline, tmp_path, fails):
    (tmp_path / "map.png").mkdir()
    fails(map_image(pipeline["pdb"], tmp_path / "map.png", "--overwrite"), names=["--out", "map.png", "directory"])


def test_out_folder_is_a_file(pipeline, tmp_path, fails):
    (tmp_path / "images").write_text("a file\n")
    fails(map_image(pipeline["pdb"], tmp_path / "images" / "map.png"), names=["--out", "images", "not a directory"],
          keep=[tmp_path / "images"])


@pytest.mark.parametrize("name", ["map.jpg", "map", "map.pdf"])
def test_out_is_not_a_png(pipeline, tmp_path, fails, name):
    fails(map_image(pipeline["pdb"], tmp_path / name), names=["--out", name, ".png"])
    assert not list(tmp_path.iterdir())


def test_unwritable_out_folder(pipeline, fails, locked_folder):
    fails(map_image(pipeline["pdb"], locked_folder / "map.png"), names=[str(locked_folder)])
