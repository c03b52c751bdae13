"""Reference MD generation: the documented HDF5 layout, resume after a kill, reproducibility, errors."""
import os
import random
import subprocess
import sys
from pathlib import Path

import h5py
import mdtraj
import numpy as np
import openmm.app as app
import pytest

from openmm_cgml import systems
from openmm_cgml.cli import main
from openmm_cgml.generate import best_platform, generate, trajectory_seed
from openmm_cgml.trajectory import FineTrajectory

FAST = dict(stride=10, equilibration_steps=20, progress=False, platform="CPU")


class Interrupted(Exception):
    pass


def interrupt_after(n_frames):
    def callback(path, written):
        if written >= n_frames:
            raise Interrupted(path)
    return callback


def test_generate_writes_the_documented_file(tmp_path):
    [path] = generate("alanine-dipeptide", tmp_path, frames=6, **FAST)
    assert path == tmp_path / "alanine-dipeptide-r000.h5"
    with h5py.File(path, "r") as f:
        assert f.attrs["conventions"] == "Pande" and f.attrs["conventionVersion"] == "1.1"
        expected = {"coordinates": ((6, 22, 3), np.float32, "nanometers"),
                    "velocities": ((6, 22, 3), np.float32, "nanometers/picosecond"),
                    "time": ((6,), np.float64, "picoseconds"),
                    "potentialEnergy": ((6,), np.float32, "kilojoules/mole")}
        for name, (shape, dtype, units) in expected.items():
            assert f[name].shape == shape and f[name].dtype == dtype and f[name].attrs["units"] == units
        assert "forces" not in f and "cell_lengths" not in f
        assert f["cgml/masses"].dtype == np.float64 and f["cgml/atom_types"].dtype == np.int64
        assert f["cgml/bonds"].shape == (21, 2) and f["cgml/checkpoint"].size > 0
        for key in ["cgml_system", "cgml_params", "cgml_timestep_ps", "cgml_stride", "cgml_temperature_K",
                    "cgml_friction_per_ps", "cgml_seed", "cgml_replica", "cgml_platform", "cgml_versions",
                    "cgml_complete"]:
            assert key in f.attrs, key
    ref = systems.load("alanine-dipeptide")
    with FineTrajectory(path) as traj:
        assert traj.n_frames == 6 and traj.n_atoms == 22 and traj.complete
        assert traj.timestep_ps == 0.002 and traj.stride == 10 and traj.frame_interval_ps == pytest.approx(0.02)
        assert traj.temperature_K == 300.0 and traj.attrs["cgml_platform"] == "CPU"
        assert set(traj.attrs["cgml_versions"]) == {"openmm", "torch", "numpy", "openmm_cgml"}
        assert np.allclose(np.diff(traj.time_ps), 0.02)
        assert np.allclose(traj.masses, ref.masses) and np.all(traj.masses > 0)
        assert np.array_equal(traj.atom_types, ref.atom_types) and np.allclose(traj.charges, ref.charges)
        assert traj.box_vectors(0) is None
        assert [a.name for a in traj.topology.atoms()] == [a.name for a in ref.topology.atoms()]
        # bonded hydrogens stay at their constrained lengths: real dynamics, not noise
        x = traj.positions[-1]
        assert np.all(np.linalg.norm(x[traj.bonds[:, 0]] - x[traj.bonds[:, 1]], axis=1) < 0.2)
        # velocities are thermal: kinetic temperature of a 22-atom molecule within a broad range
        v, m = traj.velocities[:].astype(np.float64), traj.masses
        kinetic = 0.5 * np.sum(m[None, :, None] * v**2, axis=(1, 2)).mean()
        temperature = 2 * kinetic / ((3 * 22 - 12) * 0.0083144626)
        assert 150 < temperature < 500
    loaded = mdtraj.load(str(path))
    assert loaded.n_frames == 6 and loaded.n_atoms == 22
    assert np.allclose(loaded.xyz, FineTrajectory(path).positions[:])
    first = app.PDBFile(str(path.with_suffix(".pdb")))
    assert first.topology.getNumAtoms() == 22


def test_polymer_sequences_replicas_and_periodic_melt(tmp_path):
    paths = generate("polymer-chain", tmp_path, frames=3, replicas=2, sequences=2,
                     params={"length": 6}, **FAST)
    assert [p.name for p in paths] == ["polymer-chain-s000-r000.h5", "polymer-chain-s000-r001.h5",
                                       "polymer-chain-s001-r000.h5", "polymer-chain-s001-r001.h5"]
    trajs = [FineTrajectory(p) for p in paths]
    assert trajs[0].attrs["cgml_params"]["sequences"] == trajs[1].attrs["cgml_params"]["sequences"]
    assert trajs[0].attrs["cgml_params"]["sequence_seed"] != trajs[2].attrs["cgml_params"]["sequence_seed"]
    assert not np.array_equal(trajs[0].positions[-1], trajs[1].positions[-1])  # replicas differ
    assert np.allclose(trajs[0].masses, 72.0)
    for t in trajs:
        t.close()
    assert mdtraj.load(str(paths[0])).n_atoms == 12

    [melt] = generate("polymer-melt", tmp_path, frames=3, save_forces=True,
                      params={"n_chains": 4, "length": 10, "density_per_nm3": 5.0}, **FAST)
    with FineTrajectory(melt) as traj:
        box = traj.box_vectors(2)
        assert np.allclose(np.diag(box) ** 3, 80 / 5.0, rtol=1e-5) and traj.forces.shape == (3, 80, 3)
        assert traj.topology.getNumChains() == 4
        x = traj.positions[2]  # unwrapped: bonds never span the box
        assert np.all(np.linalg.norm(x[traj.bonds[:, 0]] - x[traj.bonds[:, 1]], axis=1) < 0.7)
    assert mdtraj.load(str(melt)).unitcell_lengths.shape == (3, 3)


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    kwargs = dict(frames=12, chunk_frames=4, **FAST)
    with pytest.raises(Interrupted):
        generate("polymer-chain", tmp_path / "a", on_chunk=interrupt_after(8), **kwargs)
    path = tmp_path / "a" / "polymer-chain-r000.h5"
    with FineTrajectory(path) as partial:
        assert partial.n_frames == 8 and not partial.complete
    generate("polymer-chain", tmp_path / "a", **kwargs)  # the same command resumes
    generate("polymer-chain", tmp_path / "b", **kwargs)
    with FineTrajectory(path) as resumed, FineTrajectory(tmp_path / "b" / path.name) as straight:
        assert resumed.n_frames == straight.n_frames == 12 and resumed.complete
        assert np.array_equal(resumed.positions[:], straight.positions[:])
        assert np.array_equal(resumed.velocities[:], straight.velocities[:])
        assert np.array_equal(resumed.time_ps, straight.time_ps)


def test_kill_in_the_middle_of_a_chunk_loses_and_duplicates_nothing(tmp_path):
    kwargs = dict(frames=10, chunk_frames=3, **FAST)
    with pytest.raises(Interrupted):
        generate("alanine-dipeptide", tmp_path / "a", on_chunk=interrupt_after(6), **kwargs)
    path = tmp_path / "a" / "alanine-dipeptide-r000.h5"
    with FineTrajectory(path, mode="a") as partial:  # a kill after writing 2 frames of the next chunk
        junk = np.full((2, 22, 3), 99.0)
        partial.append(junk, junk, [9.0, 9.0], [0.0, 0.0])
    with FineTrajectory(path) as partial:
        assert partial.n_frames == 6 and partial.positions.shape[0] == 8  # readers see committed frames only
    generate("alanine-dipeptide", tmp_path / "a", **kwargs)
    generate("alanine-dipeptide", tmp_path / "b", **kwargs)
    with FineTrajectory(path) as resumed, FineTrajectory(tmp_path / "b" / path.name) as straight:
        assert resumed.positions.shape[0] == 10
        assert np.array_equal(resumed.positions[:], straight.positions[:])


def test_completed_file_is_not_rerun_and_can_be_extended(tmp_path):
    [path] = generate("polymer-chain", tmp_path, frames=4, **FAST)
    calls = []
    generate("polymer-chain", tmp_path, frames=4, on_chunk=lambda p, n: calls.append(n), **FAST)
    assert calls == []
    generate("polymer-chain", tmp_path, frames=6, **FAST)
    with FineTrajectory(path) as traj:
        assert traj.n_frames == 6 and traj.complete and np.allclose(np.diff(traj.time_ps), 0.1)


def test_same_seed_reproduces_and_other_seed_differs(tmp_path):
    a, = generate("polymer-chain", tmp_path / "a", frames=4, seed=7, **FAST)
    b, = generate("polymer-chain", tmp_path / "b", frames=4, seed=7, **FAST)
    c, = generate("polymer-chain", tmp_path / "c", frames=4, seed=8, **FAST)
    with FineTrajectory(a) as ta, FineTrajectory(b) as tb, FineTrajectory(c) as tc:
        assert np.array_equal(ta.positions[:], tb.positions[:])
        assert not np.array_equal(ta.positions[-1], tc.positions[-1])
    assert trajectory_seed(7, 0) != trajectory_seed(7, 1) and trajectory_seed(0, 0) > 0


def test_resuming_with_other_settings_is_refused_and_keeps_the_file(tmp_path):
    [path] = generate("polymer-chain", tmp_path, frames=3, **FAST)
    size = path.stat().st_size
    with pytest.raises(ValueError, match="different settings.*cgml_stride"):
        generate("polymer-chain", tmp_path, frames=3, **{**FAST, "stride": 20})
    with pytest.raises(ValueError, match="Reference"):
        generate("polymer-chain", tmp_path, frames=5, **{**FAST, "platform": "Reference"})
    assert path.stat().st_size == size


def test_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown system"):
        generate("no-such-system", tmp_path, **FAST)
    with pytest.raises(ValueError, match="unknown OpenMM platform 'Nope'"):
        generate("polymer-chain", tmp_path, frames=2, **{**FAST, "platform": "Nope"})
    with pytest.raises(ValueError, match="sequences"):
        generate("alanine-dipeptide", tmp_path, frames=2, sequences=2, **FAST)
    unwritable = tmp_path / "readonly"
    unwritable.mkdir()
    unwritable.chmod(0o500)
    target = unwritable / "out"
    if os.access(unwritable, os.W_OK):  # root ignores permissions; use a read-only file system instead
        target = Path("/sys/cgml-unwritable-test")
    with pytest.raises(PermissionError, match="cgml-unwritable-test|readonly"):
        generate("polymer-chain", target, frames=2, **FAST)
    not_ours = tmp_path / "x" / "polymer-chain-r000.h5"
    not_ours.parent.mkdir()
    not_ours.write_text("precious data")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        generate("polymer-chain", not_ours.parent, frames=2, **FAST)
    assert not_ours.read_text() == "precious data"


def test_cli_generate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["generate", "polymer-chain", "--out", str(out), "--frames", "3", "--stride", "10",
                 "--equilibration-steps", "10", "-p", "length=4", "--no-progress", "--platform", "CPU"]) == 0
    assert "3 frames x 8 atoms" in capsys.readouterr().out
    assert main(["generate", "no-such-system", "--out", str(out)]) == 2
    assert "unknown system" in capsys.readouterr().err


def test_best_platform_is_a_working_platform():
    assert best_platform() in {"CUDA", "OpenCL", "CPU", "Reference"}


def _generate_argv(out):
    return [sys.executable, "-m", "openmm_cgml.cli", "generate", "polymer-chain", "--out", str(out),
            "--frames", "300", "--stride", "50", "--chunk-frames", "7", "--equilibration-steps", "10",
            "-p", "length=10", "--no-progress", "--platform", "CPU"]


def test_sigkill_at_random_moments_then_rerun_loses_and_repeats_nothing(tmp_path, kill_after):
    """Killed while writing HDF5 (SIGKILL: no clean-up runs), the file reopens and the rerun completes it."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(_generate_argv(tmp_path / "straight"), env=env, check=True, capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    path = killed / "polymer-chain-r000.h5"
    rng = random.Random(12)
    codes = []
    for _ in range(4):  # seeded moments: right after the file appears, mid-run, later
        codes.append(kill_after(_generate_argv(killed), path, rng.uniform(0.0, 0.6), env, until="exists"))
        if codes[-1] == 0:
            break
        with h5py.File(path, "r") as handle:  # opens after every kill (the v110 "open for write" flag is gone)
            assert handle["coordinates"].shape[0] >= 0
    assert any(code != 0 for code in codes), "no run was killed: the kill moments came too late"
    subprocess.run(_generate_argv(killed), env=env, check=True, capture_output=True, timeout=300)
    with FineTrajectory(path) as resumed, FineTrajectory(tmp_path / "straight" / path.name) as straight:
        assert resumed.complete and resumed.n_frames == resumed.positions.shape[0] == 300
        time_ps = resumed.time_ps
        assert np.allclose(np.diff(time_ps), 0.5)  # monotonic, right spacing: nothing missing or repeated
        assert np.array_equal(resumed.positions[:], straight.positions[:])
        assert np.array_equal(resumed.velocities[:], straight.velocities[:])
    assert mdtraj.load(str(path)).n_frames == 300


def test_shards_together_equal_the_unsharded_run(tmp_path, capsys):
    """Shards 0/2 (API) and 1/2 (CLI) into one folder: the unsharded run's files, frame for frame."""
    kwargs = dict(frames=3, replicas=2, sequences=2, params={"length": 4}, **FAST)
    whole = generate("polymer-chain", tmp_path / "whole", **kwargs)
    first = generate("polymer-chain", tmp_path / "sharded", shard=(0, 2), **kwargs)
    assert [p.name for p in first] == [whole[0].name, whole[2].name]  # trajectory j goes to shard j % 2
    assert main(["generate", "polymer-chain", "--out", str(tmp_path / "sharded"), "--frames", "3", "--replicas", "2",
                 "--sequences", "2", "-p", "length=4", "--stride", "10", "--equilibration-steps", "20",
                 "--no-progress", "--platform", "CPU", "--shard", "1/2"]) == 0
    assert capsys.readouterr().out.count("3 frames x 8 atoms") == 2
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == sorted(
        p.name for p in (tmp_path / "whole").iterdir())
    for path in whole:
        with FineTrajectory(path) as straight, FineTrajectory(tmp_path / "sharded" / path.name) as shard:
            assert shard.complete and straight.attrs == shard.attrs
            for name in ("positions", "velocities"):
                assert np.array_equal(getattr(shard, name)[:], getattr(straight, name)[:]), name
            assert np.array_equal(shard.time_ps, straight.time_ps)
        assert path.with_suffix(".pdb").read_bytes() == (tmp_path / "sharded" / path.name).with_suffix(
            ".pdb").read_bytes()
    # more shards than trajectories: the spare shards run nothing, and say so
    assert generate("polymer-chain", tmp_path / "spare", shard=(4, 5), **kwargs) == []
    assert main(["generate", "polymer-chain", "--out", str(tmp_path / "spare"), "-p", "length=4", "--frames", "2",
                 "--no-progress", "--platform", "CPU", "--shard", "1/2"]) == 0
    assert "no trajectory falls to this shard" in capsys.readouterr().out


@pytest.mark.parametrize("shard, message", [
    ((2, 2), r"index must be in 0\.\.1 for 2 shards, got 2/2"), ((-1, 2), "got -1/2"),
    ((0, 0), "count must be at least 1, got 0/0"), ((1,), r"pair \(index, count\), got \(1,\)"),
    ("0/2", "pair"), ((0.5, 2), "integers, got"), ((True, 2), "integers")])
def test_bad_shard_is_refused_before_anything_is_written(tmp_path, shard, message):
    with pytest.raises(ValueError, match=message):
        generate("polymer-chain", tmp_path / "out", frames=2, shard=shard, **FAST)
    assert not (tmp_path / "out").exists()
