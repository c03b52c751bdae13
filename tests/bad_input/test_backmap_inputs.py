"""``cgml backmap``: a run on the tiny pipeline's rollout, and bad input as one ``cgml backmap: error:`` line."""
import json

import mdtraj
import numpy as np
import pytest

from openmm_cgml.cli import main


@pytest.fixture
def argv(pipeline, tmp_path):
    rollout = pipeline["rollout"]
    return ["backmap", pipeline["model"], "--beads", rollout, "--top", rollout.with_name("roll_beads.pdb"),
            "--reference", pipeline["fine"][0], "--library-frames", "8", "--out", tmp_path / "atoms.dcd"]


@pytest.mark.parametrize("minimize", [False, True])
def test_backmap_writes_atoms_on_the_beads(argv, pipeline, tmp_path, capsys, minimize):
    assert main([str(word) for word in argv + ([] if minimize else ["--no-minimize"])]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    atoms = mdtraj.load(tmp_path / "atoms.dcd", top=tmp_path / "atoms.pdb")
    beads = mdtraj.load(pipeline["rollout"], top=pipeline["rollout"].with_name("roll_beads.pdb"))
    assert atoms.n_frames == beads.n_frames == summary["frames"] and atoms.n_atoms == summary["atoms"] == 8
    assert summary["minimized"] == minimize
    # one atom per bead here: fragments put each atom on its bead; the minimisation (against the strained
    # rollout of a one-epoch model) moves them a little, within the restraint
    tolerance = 0.05 if minimize else 1e-5
    assert summary["max_bead_deviation_nm"] < tolerance
    assert np.abs(atoms.xyz - beads.xyz).max() < tolerance
    assert (summary["mean_potential_energy_kj_mol"] is not None) == minimize


def test_existing_output_is_kept_without_overwrite(argv, fails, tmp_path):
    (tmp_path / "atoms.dcd").write_bytes(b"keep me")
    fails(argv, names=("atoms.dcd", "--overwrite"), keep=[tmp_path / "atoms.dcd"])


@pytest.mark.parametrize("option, value, names", [
    ("--beads", "missing.dcd", ("--beads", "missing.dcd")),
    ("--top", "missing.pdb", ("--top", "missing.pdb")),
    ("--reference", "missing.h5", ("missing.h5",)),
    ("--out", "atoms.txt", ("--out", ".dcd")),
    ("--library-frames", "0", ("library_frames",)),
])
def test_bad_option_is_one_line(argv, fails, set_option, tmp_path, option, value, names):
    if value.startswith("missing") or value.startswith("atoms"):
        value = tmp_path / value
    set_option(argv, option, value)
    fails(argv, names=names)


def test_beads_of_another_molecule_are_refused(argv, fails, pipeline, tmp_path):
    beads = mdtraj.load(pipeline["rollout"], top=pipeline["rollout"].with_name("roll_beads.pdb"))
    beads.atom_slice(range(5)).save_pdb(str(tmp_path / "five.pdb"))
    argv[argv.index("--beads") + 1] = tmp_path / "five.pdb"
    argv[argv.index("--top") + 1] = tmp_path / "five.pdb"
    fails(argv, names=("5 beads", "8 beads"))


def test_nan_beads_are_refused(argv, fails, pipeline, tmp_path):
    beads = mdtraj.load(pipeline["rollout"], top=pipeline["rollout"].with_name("roll_beads.pdb"))
    beads.xyz[1, 2, 0] = np.nan
    beads.save_dcd(str(tmp_path / "nan.dcd"))
    argv[argv.index("--beads") + 1] = tmp_path / "nan.dcd"
    fails(argv, names=("NaN",))


def test_damaged_bead_file_is_one_line(argv, fails, damaged, pipeline, tmp_path):
    broken = damaged(pipeline["rollout"], tmp_path / "broken.dcd", "truncated")
    argv[argv.index("--beads") + 1] = broken
    fails(argv, names=("broken.dcd",))
