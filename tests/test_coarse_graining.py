"""Tests of explicit per-file splits in :func:`openmm_cgml.coarse_graining.coarse_grain` and ``cgml coarse-grain``."""
from __future__ import annotations

import h5py
import pytest

from openmm_cgml import cli
from openmm_cgml.coarse_graining import coarse_grain

K, LAG = 2, 1


@pytest.fixture(scope="module")
def fine(tmp_path_factory):
    """Four short polymer-chain trajectories (four sequences, 12 frames 50 MD steps apart)."""
    from openmm_cgml.generate import generate

    folder = tmp_path_factory.mktemp("fine")
    return generate("polymer-chain", folder, frames=12, stride=50, sequences=4, replicas=1, equilibration_steps=0,
                    params={"length": 4}, progress=False, platform="Reference")


def _splits_of(path) -> dict:
    """``{source file: split}`` of every trajectory group of a coarse dataset."""
    with h5py.File(path, "r") as handle:
        return {group.attrs["source"]: group.attrs["split"] for group in handle["traj"].values()}


def test_files_land_in_the_split_they_are_given(fine, tmp_path):
    wanted = {fine[0]: "train", fine[1]: "val", fine[2]: "train", fine[3]: "test"}
    out = coarse_grain(fine, tmp_path / "cg.h5", atoms_per_bead=2, k=K, lag=LAG,
                       splits={str(path): name for path, name in wanted.items()})
    assert _splits_of(out) == {str(path.resolve()): name for path, name in wanted.items()}
    with h5py.File(out, "r") as handle:
        attrs = dict(handle.attrs)
    windows = 12 - K * LAG   # per trajectory
    assert (attrs["n_windows_train"], attrs["n_windows_val"], attrs["n_windows_test"]) == (2 * windows, windows,
                                                                                            windows)
    assert attrs["split_by"] == "explicit" and attrs["split_fractions"] == "[0.5, 0.25, 0.25]"
    # the step scales come from the train files alone: the same as a dataset of only those two files
    alone = coarse_grain([fine[0], fine[2]], tmp_path / "train.h5", atoms_per_bead=2, k=K, lag=LAG,
                         splits={fine[0]: "train", fine[2]: "train"})
    with h5py.File(alone, "r") as handle:
        assert handle.attrs["accel_std_nm"] == attrs["accel_std_nm"]
        assert handle.attrs["velocity_std_nm"] == attrs["velocity_std_nm"]


def test_bad_explicit_splits_are_refused(fine, tmp_path):
    out = tmp_path / "x.h5"
    every = {path: "train" for path in fine}
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        coarse_grain(fine, out, k=K, lag=LAG, splits={**every, fine[1]: "validation"})
    with pytest.raises(ValueError, match="no split for 1 input file"):
        coarse_grain(fine, out, k=K, lag=LAG, splits={path: "train" for path in fine[:3]})
    with pytest.raises(ValueError, match="not inputs"):
        coarse_grain(fine[:2], out, k=K, lag=LAG, splits=every)
    with pytest.raises(ValueError, match="no file to 'train'"):
        coarse_grain(fine, out, k=K, lag=LAG, splits={path: "val" for path in fine})
    with pytest.raises(ValueError, match="not both"):
        coarse_grain(fine, out, k=K, lag=LAG, splits=every, split=(0.5, 0.5, 0.0))
    assert not out.exists()


def test_cli_val_and_test_files(fine, tmp_path, capsys):
    out = tmp_path / "cli.h5"
    assert cli.main(["coarse-grain", str(fine[0]), str(fine[1]), "--val", str(fine[2]), "--test", str(fine[3]),
                     "--out", str(out), "--atoms-per-bead", "2", "--k", str(K), "--lag", str(LAG)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(_splits_of(out).values()) == ["test", "train", "train", "val"]
    assert _splits_of(out)[str(fine[2].resolve())] == "val"
    assert cli.main(["coarse-grain", str(fine[0]), "--val", str(fine[0]), "--out", str(tmp_path / "y.h5"),
                     "--k", str(K), "--lag", str(LAG)]) == 2
    assert "both train and val" in capsys.readouterr().err
