"""``cgml simulate`` outputs: --overwrite starts clean, a resume refuses changed options, a SIGKILL loses nothing.

A real exported (untrained, tiny) CGPropagator on a 12-atom chain, run through
``openmm_cgml.cli.main`` in-process, and through a ``cgml simulate``
subprocess for the kill-and-resume test.
"""
import os
import random
import struct
import subprocess
import sys

import numpy as np
import openmm.app as app
import openmm.unit as u
import pytest

from openmm_cgml.cli import main
from openmm_cgml.mapping import Mapping

DT_PS = 2.0


def write_pdb(path, topology, positions):
    with open(path, "w") as handle:
        app.PDBFile.writeFile(topology, positions * u.nanometer, handle)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, chain, tiny_propagator):
    """``(model path, start PDB)``: a real exported model for the chain and its start structure."""
    from openmm_cgml.model_file import export_model

    folder = tmp_path_factory.mktemp("simulate")
    topology, positions = chain()
    masses = np.array([a.element.mass.value_in_unit(u.dalton) for a in topology.atoms()])
    mapping = Mapping.metis(topology, masses, atoms_per_bead=3)
    module = tiny_propagator(mapping, k=4, hidden=16, model_dt_ps=DT_PS)
    model = export_model(module, folder / "model.safetensors", {"mapping": mapping})
    return model, write_pdb(folder / "start.pdb", topology, positions)


def args(setup, out, *extra, steps=12, interval=3):
    model, pdb = setup
    return ["simulate", str(model), "--pdb", str(pdb), "--steps", str(steps), "--out", str(out),
            "--report-interval", str(interval), "--seed", "3", "--platform", "CPU", *map(str, extra)]


def dcd_header(path):
    """``(n_frames, first_step, interval)`` from an OpenMM DCD header."""
    return struct.unpack("<3i", path.read_bytes()[8:20])


def frames(path, top):
    import mdtraj

    return mdtraj.load(str(path), top=str(top))


def test_overwrite_with_other_replicas_rewrites_every_side_file(setup, tmp_path, capsys):
    out, chk, log = tmp_path / "t.dcd", tmp_path / "run.chk", tmp_path / "log.csv"
    assert main(args(setup, out, "--replicas", 2, "--checkpoint", chk, "--log", log)) == 0
    beads = tmp_path / "t_beads.pdb"
    assert frames(out, beads).n_atoms == 8
    assert main(args(setup, out, "--replicas", 3, "--checkpoint", chk, "--log", log, "--overwrite",
                     steps=6)) == 0
    traj = frames(out, beads)
    assert traj.n_atoms == 12 and traj.n_frames == 2  # the stale 2-replica topology is gone
    assert dcd_header(out) == (2, 3, 3)
    assert [line.split(",")[0] for line in log.read_text().splitlines()[1:]] == ["3", "6"]
    assert '"replicas": 3' in (tmp_path / "run.chk.json").read_text()
    # and the new checkpoint resumes the new run
    assert main(args(setup, out, "--replicas", 3, "--checkpoint", chk, "--log", log, steps=9)) == 0
    assert dcd_header(out) == (3, 3, 3)


@pytest.mark.parametrize("change, option", [
    (["--report-interval", 2], "--report-interval"),
    (["--replicas", 2], "--replicas"),
    (["--seed", 4], "--seed"),
    (["--no-refine"], "--no-refine"),
    (["--collision-distance", 0.05], "--collision-distance"),
    (["--out-format"], "--out"),
])
def test_resume_with_changed_options_is_refused(setup, tmp_path, capsys, change, option):
    out, chk = tmp_path / "t.dcd", tmp_path / "run.chk"
    assert main(args(setup, out, "--checkpoint", chk, steps=6)) == 0
    kept = {p: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    argv = args(setup, out, "--checkpoint", chk, steps=12)
    if change == ["--out-format"]:
        argv[argv.index(str(out))] = str(tmp_path / "t.xtc")
    elif change[0] in argv:
        argv[argv.index(change[0]) + 1] = str(change[1])
    else:
        argv += list(map(str, change))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cgml simulate: error: ") and option in err[0], err
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == kept


@pytest.mark.parametrize("suffix", [".dcd", ".xtc"])
def test_resume_skips_frames_written_after_the_checkpoint(setup, tmp_path, suffix):
    """A kill between the frame and the checkpoint: the frame is not written twice."""
    straight, out, chk = tmp_path / f"s{suffix}", tmp_path / f"t{suffix}", tmp_path / "run.chk"
    assert main(args(setup, straight, steps=12)) == 0
    assert main(args(setup, out, "--checkpoint", chk, steps=6)) == 0
    saved = chk.read_bytes()
    assert main(args(setup, out, "--checkpoint", chk, steps=9)) == 0
    chk.write_bytes(saved)  # the checkpoint of step 6, the trajectory up to step 9
    if suffix == ".dcd":
        with open(out, "ab") as handle:  # and a torn frame after it
            handle.write(b"\0" * 17)
    assert main(args(setup, out, "--checkpoint", chk, steps=12)) == 0
    if suffix == ".dcd":
        assert dcd_header(out) == (4, 3, 3)
    resumed, reference = frames(out, tmp_path / "s_beads.pdb"), frames(straight, tmp_path / "s_beads.pdb")
    np.testing.assert_array_equal(resumed.xyz, reference.xyz)
    if suffix == ".xtc":  # XTC frames carry the simulated time: monotonic, one report apart
        np.testing.assert_allclose(resumed.time, 3 * DT_PS * np.arange(1, 5), rtol=1e-6)


def test_single_molecule_model_refuses_other_elements_with_the_same_graph(setup, tmp_path, capsys, chain):
    from openmm_cgml import load
    from openmm_cgml.model_file import export_model, rebuild
    from openmm_cgml.openmm.bead_system import coarse_grained_system

    model = load(setup[0])
    topology, positions = chain()
    # the same mapping with "given" types (as from a fine .h5): no element check in Mapping.check_fits
    own = model.mapping
    given = Mapping(own.bead_of_atom, own.atom_masses, own.atom_types, own.fine_bonds, own.bead_names,
                    method="metis", params={**own.params, "atom_types_from": "given"})
    specific = load(export_model(rebuild(model), tmp_path / "specific.safetensors",
                                 dict(model.metadata, mapping=given.to_json())))
    assert specific.n_beads == 4
    coarse_grained_system(specific, topology, positions)  # its own molecule fits
    nitrogen, _ = chain(element=app.element.nitrogen)
    with pytest.raises(ValueError, match=r"atom 0 \(C0\) has atomic number 7 but type 6"):
        coarse_grained_system(specific, nitrogen, positions)
    pdb = write_pdb(tmp_path / "nitrogen.pdb", nitrogen, positions)
    assert main(["simulate", str(tmp_path / "specific.safetensors"), "--pdb", str(pdb), "--steps", "3",
                 "--out", str(tmp_path / "n.dcd"), "--platform", "CPU"]) == 2
    assert "atomic number 7" in capsys.readouterr().err
    assert not (tmp_path / "n.dcd").exists()


def test_sigkill_at_random_moments_then_resume_loses_and_repeats_nothing(setup, tmp_path, kill_after):
    steps, interval = 1200, 3
    # the uninterrupted run in a process like the killed ones: torch's float sums depend on its thread count
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight = tmp_path / "s.dcd"
    subprocess.run([sys.executable, "-m", "openmm_cgml.cli",
                    *args(setup, straight, "--collision-distance", 0, steps=steps, interval=interval)],
                   env=env, check=True, capture_output=True, timeout=300)
    reference = frames(straight, tmp_path / "s_beads.pdb").xyz
    out, chk = tmp_path / "t.dcd", tmp_path / "run.chk"
    argv = args(setup, out, "--checkpoint", chk, "--collision-distance", 0, steps=steps, interval=interval)
    rng = random.Random(15)
    codes = []
    for _ in range(3):  # seeded random moments: during start-up, mid-run, near a report
        # SIGKILL once ``out`` has grown (start-up done)
        codes.append(kill_after([sys.executable, "-m", "openmm_cgml.cli", *argv], out, rng.uniform(0.0, 1.0), env,
                                until="grown"))
        if codes[-1] == 0:
            break
    result = subprocess.run([sys.executable, "-m", "openmm_cgml.cli", *argv], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    n, first, every = dcd_header(out)
    assert (n, first, every) == (steps // interval, interval, interval)  # monotonic time axis, right spacing
    traj = frames(out, tmp_path / "t_beads.pdb")
    assert traj.n_frames == steps // interval
    np.testing.assert_array_equal(traj.xyz, reference)  # bit-exact: nothing missing, nothing repeated
    assert any(code != 0 for code in codes), "no run was killed: the kill moments came too late"


def test_rerun_of_a_run_killed_before_its_first_checkpoint_completes(setup, tmp_path):
    """Record written, frames written, no checkpoint yet: the same command restarts at step 0 without repeats."""
    straight, out, chk = tmp_path / "s.dcd", tmp_path / "t.dcd", tmp_path / "run.chk"
    assert main(args(setup, straight, steps=12)) == 0
    assert main(args(setup, out, "--checkpoint", chk, steps=6)) == 0
    chk.unlink()
    assert main(args(setup, out, "--checkpoint", chk, steps=12)) == 0
    assert dcd_header(out) == (4, 3, 3)
    np.testing.assert_array_equal(frames(out, tmp_path / "s_beads.pdb").xyz,
                                  frames(straight, tmp_path / "s_beads.pdb").xyz)


def test_resume_refuses_a_trajectory_behind_its_checkpoint(setup, tmp_path, capsys):
    """Frames lost (a trajectory from an earlier copy): a silent gap in the time axis is refused."""
    out, chk = tmp_path / "t.dcd", tmp_path / "run.chk"
    assert main(args(setup, out, "--checkpoint", chk, steps=3)) == 0
    early = out.read_bytes()
    assert main(args(setup, out, "--checkpoint", chk, steps=9)) == 0
    out.write_bytes(early)
    capsys.readouterr()
    assert main(args(setup, out, "--checkpoint", chk, steps=12)) == 2
    err = capsys.readouterr().err
    assert "frames up to step 3" in err and "step 9" in err and "missing" in err
    assert out.read_bytes() == early


@pytest.mark.slow   # a cold compilation (20-30 s); the default suite compiles in tests/model/test_model_file.py
def test_compiled_step_writes_the_same_trajectory(setup, tmp_path):
    """``--compile`` (the step through torch.compile) writes the frames the plain step writes, to rounding."""
    plain, compiled = tmp_path / "plain.dcd", tmp_path / "compiled.dcd"
    assert main(args(setup, plain, "--collision-distance", 0, steps=6)) == 0
    assert main(args(setup, compiled, "--collision-distance", 0, "--compile", steps=6)) == 0
    top = plain.with_name("plain_beads.pdb")
    a, b = frames(plain, top).xyz, frames(compiled, top).xyz
    assert a.shape == b.shape and a.shape[0] == 2
    np.testing.assert_allclose(b, a, atol=2e-4)


def test_compile_without_a_cxx_compiler_is_one_line(setup, tmp_path):
    """No working C++ compiler: ``--compile`` fails at its first step with one line naming the cause, exit 2."""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "openmm_cgml.cli", *args(setup, tmp_path / "out.dcd", "--compile",
                                                                       steps=3)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("cgml simulate")]
    assert len(lines) == 1 and "could not be compiled" in lines[0] and "C++ compiler" in lines[0]
    assert "Traceback" not in done.stderr
