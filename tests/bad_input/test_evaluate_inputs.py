"""Bad input to ``cgml evaluate``: one ``cgml evaluate: error:`` line naming the problem, exit 2, nothing lost.

A torn or truncated rollout DCD (a killed run, a partial copy) is an error, not numbers from part of it.
"""
import shutil

import h5py
import numpy as np
import pytest


def evaluate(pipeline, out, *extra, reference=None, rollout=None):
    return ["evaluate", "--reference", str(reference or pipeline["fine"][0]), "--rollout",
            str(rollout or pipeline["rollout"]), "--model", str(pipeline["model"]), "--out", str(out), "--no-plots",
            *map(str, extra)]


def rollout_copy(pipeline, tmp_path, name="roll"):
    """A copy of the rollout DCD and its ``_beads.pdb`` in ``tmp_path``: ``(dcd, bytes of the original)``."""
    dcd = tmp_path / f"{name}.dcd"
    shutil.copy(pipeline["rollout"], dcd)
    shutil.copy(pipeline["rollout"].with_name("roll_beads.pdb"), tmp_path / f"{name}_beads.pdb")
    return dcd, pipeline["rollout"].read_bytes()


HEADER = 276   # bytes before the first frame of the 8-bead rollout DCD (no unit cell); 120 bytes a frame


@pytest.mark.parametrize("kind, names", [
    ("missing", ["does not exist"]), ("empty", ["DCD"]), ("torn", ["torn", "2 whole frame(s) and part"]),
    ("truncated", ["truncated", "header says 3 frames"]), ("cut-header", ["header"]), ("no-frames", ["0 whole"]),
    ("trailing-bytes", ["part of another"]), ("not-dcd", ["not a DCD"]), ("flipped-frame", []),
])
def test_bad_rollout_dcd(pipeline, tmp_path, fails, kind, names):
    dcd, data = rollout_copy(pipeline, tmp_path)
    content = {"empty": b"", "torn": data[:HEADER + 2 * 120 + 50], "truncated": data[:HEADER + 2 * 120],
               "cut-header": data[:150], "no-frames": data[:HEADER + 20], "trailing-bytes": data + b"\0" * 7,
               "not-dcd": b"REMARK not a trajectory\n" * 20,
               "flipped-frame": data[:HEADER] + data[HEADER:HEADER + 4][::-1] + data[HEADER + 4:]}.get(kind)
    if kind == "missing":
        dcd.unlink()
    else:
        dcd.write_bytes(content)
    report = tmp_path / "report"
    shutil.copytree(pipeline["report"], report)
    fails(evaluate(pipeline, report, "--overwrite", rollout=dcd), names=["roll.dcd", "rollout", *names], keep=[report])


def test_rollout_with_nan_coordinates(pipeline, tmp_path, fails):
    import mdtraj

    dcd, _ = rollout_copy(pipeline, tmp_path)
    trajectory = mdtraj.load(str(dcd), top=str(tmp_path / "roll_beads.pdb"))
    trajectory.xyz[1, 2, 0] = np.nan
    trajectory.save_dcd(str(dcd))
    fails(evaluate(pipeline, tmp_path / "report", "--rollout-interval", "1", rollout=dcd),
          names=["roll.dcd", "frame 1", "NaN"])
    assert not (tmp_path / "report").exists()


def test_rollout_with_one_frame(pipeline, tmp_path, fails):
    import mdtraj

    dcd, _ = rollout_copy(pipeline, tmp_path)
    mdtraj.load(str(dcd), top=str(tmp_path / "roll_beads.pdb"))[:1].save_dcd(str(dcd))
    fails(evaluate(pipeline, tmp_path / "report", "--rollout-interval", "1", rollout=dcd),
          names=["roll.dcd", "1 frame(s)"])


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "other-molecule", "fewer-beads"])
def test_bad_rollout_topology(pipeline, tmp_path, fails, kind):
    dcd, _ = rollout_copy(pipeline, tmp_path)
    topology = tmp_path / "roll_beads.pdb"
    lines = topology.read_text().splitlines(True)
    if kind == "missing":
        topology.unlink()
    elif kind == "empty":
        topology.write_text("")
    elif kind == "garbage":
        topology.write_text("ATOM      1  B0  garbage\n")
    elif kind == "other-molecule":  # the same beads, bonded as a ring: not the model's molecule
        conect = [line for line in lines if line.startswith("CONECT")]
        topology.write_text("".join(line for line in lines if not line.startswith(("CONECT", "END")))
                            + "".join(conect) + "CONECT    1    8\nEND\n")
    elif kind == "fewer-beads":
        atoms = [line for line in lines if line.startswith(("ATOM", "HETATM"))]
        topology.write_text("".join(atoms[:5]) + "END\n")
    fails(evaluate(pipeline, tmp_path / "report", rollout=dcd),
          names={"missing": ["roll.dcd", "--topology"], "other-molecule": ["roll.dcd", "bonds"],
                 "fewer-beads": ["roll.dcd", "roll_beads.pdb", "5 beads"]}.get(kind, ["roll_beads.pdb"]))
    assert not (tmp_path / "report").exists()


def damaged_reference(pipeline, tmp_path, damaged, kind):
    path = tmp_path / f"{kind}.h5"
    if kind in ("nan", "one-frame"):
        shutil.copy(pipeline["fine"][0], path)
        with h5py.File(path, "r+") as handle:
            if kind == "nan":
                coordinates = handle["coordinates"][...]
                coordinates[4, 0, 1] = np.nan
                handle["coordinates"][...] = coordinates
            else:
                handle["cgml"].attrs["n_frames"] = 1
    elif kind == "other-molecule":
        from openmm_cgml.generate import generate

        path = generate("polymer-chain", tmp_path / "other", frames=3, stride=10, params={"length": 5},
                        platform="Reference", progress=False, equilibration_steps=0)[0]
    else:
        damaged(pipeline["fine"][0], path, kind, {
            "header": lambda data: b"\x89HDF\r\n\x1a\n" + b"\xff" * 56 + data[64:],
            "text": lambda data: "not a trajectory\n"})
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "header", "text", "nan", "other-molecule"])
def test_bad_reference(pipeline, tmp_path, fails, damaged, kind):
    reference = damaged_reference(pipeline, tmp_path, damaged, kind)
    report = tmp_path / "report"
    shutil.copytree(pipeline["report"], report)
    fails(evaluate(pipeline, report, "--overwrite", reference=reference), names=[reference.name], keep=[report])


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated"])
def test_bad_model(pipeline, tmp_path, fails, kind):
    model = tmp_path / f"{kind}.safetensors"
    if kind != "missing":
        data = pipeline["model"].read_bytes()
        model.write_bytes(b"" if kind == "empty" else data[: len(data) // 2])
    argv = evaluate(pipeline, tmp_path / "report")
    argv[argv.index("--model") + 1] = str(model)
    fails(argv, names=[model.name])
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("option, value", [
    ("--reference-interval", 0), ("--reference-interval", -1), ("--reference-interval", "nan"),
    ("--rollout-interval", 0), ("--rollout-interval", "inf"), ("--tica-lag", 0), ("--tica-lag", -2),
    ("--contact-cutoff", 0), ("--contact-cutoff", -0.8), ("--contact-cutoff", "nan"),
    ("--collision-threshold", -0.1), ("--collision-threshold", "inf"),
    ("--reference-ns-per-day", 0), ("--rollout-ns-per-day", -5), ("--reference-ns-per-day", "nan"),
])
def test_bad_number(pipeline, tmp_path, fails, option, value):
    fails(evaluate(pipeline, tmp_path / "report", option, value), names=[option, str(value)])
    assert not list(tmp_path.iterdir())


def test_one_rollout_per_reference(pipeline, tmp_path, fails):
    argv = evaluate(pipeline, tmp_path / "report")
    argv.insert(argv.index("--rollout"), str(pipeline["fine"][1]))
    fails(argv, names=["2 reference(s)", "1 rollout(s)"])
    assert not list(tmp_path.iterdir())


def test_topologies_do_not_match_rollouts(pipeline, tmp_path, fails):
    beads = pipeline["rollout"].with_name("roll_beads.pdb")
    fails(evaluate(pipeline, tmp_path / "report", "--topology", beads, beads, beads), names=["--topology", "3"])
    assert not list(tmp_path.iterdir())


def test_existing_report_without_overwrite(pipeline, tmp_path, fails):
    report = tmp_path / "report"
    shutil.copytree(pipeline["report"], report)
    fails(evaluate(pipeline, report), names=["report", "metrics.json", "--overwrite"], keep=[report])


def test_report_folder_is_a_file(pipeline, tmp_path, fails):
    report = tmp_path / "report"
    report.write_text("a file\n")
    fails(evaluate(pipeline, report), names=["report", "not a folder"], keep=[report])


def test_unwritable_report_folder(pipeline, fails, locked_folder):
    fails(evaluate(pipeline, locked_folder / "report"), names=[str(locked_folder)])
