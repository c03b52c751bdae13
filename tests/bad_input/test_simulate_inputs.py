"""Bad input to ``cgml simulate``: one ``cgml simulate: error:`` line naming the problem, exit 2, nothing lost."""
import json
import os

import numpy as np
import openmm.app as app
import openmm.unit as u
import pytest

from openmm_cgml.mapping import Mapping


def write_pdb(path, topology, positions):
    with open(path, "w") as handle:
        app.PDBFile.writeFile(topology, positions * u.nanometer, handle)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, chain, tiny_propagator):
    """A real exported tiny model, its TorchScript twin, a start PDB and a finished run to protect."""
    from openmm_cgml.cli import main
    from openmm_cgml.model_file import export_model

    folder = tmp_path_factory.mktemp("bad_simulate")
    topology, positions = chain()
    masses = np.array([a.element.mass.value_in_unit(u.dalton) for a in topology.atoms()])
    mapping = Mapping.metis(topology, masses, atoms_per_bead=3)
    module = tiny_propagator(mapping)
    model = export_model(module, folder / "model.safetensors", {"mapping": mapping})
    script = export_model(module, folder / "model.pt", {"mapping": mapping})
    pdb = write_pdb(folder / "start.pdb", topology, positions)
    run = folder / "run"
    run.mkdir()
    argv = ["simulate", str(model), "--pdb", str(pdb), "--steps", "4", "--report-interval", "2", "--platform", "CPU",
            "--out", str(run / "t.dcd"), "--checkpoint", str(run / "run.chk"), "--log", str(run / "log.csv")]
    assert main(argv) == 0
    return {"model": model, "script": script, "pdb": pdb, "run": run, "folder": folder, "topology": topology,
            "positions": positions}


def simulate(files, out, *extra, model=None, pdb=None, steps=4):
    return ["simulate", str(model or files["model"]), "--pdb", str(pdb or files["pdb"]), "--steps", str(steps),
            "--out", str(out), "--report-interval", "2", "--platform", "CPU", *map(str, extra)]


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "corrupted", "foreign", "tail-flipped"])
def test_bad_model_file(files, tmp_path, fails, damaged, kind):
    """A model file: missing, empty, truncated, corrupted (bytes flipped), foreign or its tail flipped."""
    model = damaged(files["model"], tmp_path / f"{kind}.safetensors", kind, {
        "foreign": lambda data: "hello, not a model\n",
        "tail-flipped": lambda data: data[:-16] + bytes(b ^ 0xFF for b in data[-16:])})
    fails(simulate(files, tmp_path / "t.dcd", model=model), names=[model.name], keep=[files["run"]])
    assert not (tmp_path / "t.dcd").exists()


def test_torchscript_model_needs_trust(files, tmp_path, fails):
    fails(simulate(files, tmp_path / "t.dcd", model=files["script"]), names=["model.pt", "trust"])
    assert not (tmp_path / "t.dcd").exists()


def pdb_case(files, tmp_path, damaged, chain, kind):
    path = tmp_path / f"{kind}.pdb"
    if kind in ("nan", "inf"):
        topology, positions = files["topology"], files["positions"].copy()
        write_pdb(path, topology, positions)
        lines = path.read_text().splitlines(True)
        atom = next(i for i, line in enumerate(lines) if line.startswith(("ATOM", "HETATM")))
        value = " nan" if kind == "nan" else " inf"
        lines[atom] = lines[atom][:30] + f"{value:>8}" + lines[atom][38:]
        path.write_text("".join(lines))
    elif kind == "other-size":
        write_pdb(path, *chain(9))
    elif kind == "other-element":
        write_pdb(path, chain(element=app.element.nitrogen)[0], files["positions"])
    else:
        damaged(files["pdb"], path, kind, {
            "truncated": lambda data: b"".join(data.splitlines(True)[:5]),
            "garbage": lambda data: "ATOM      1  C   CHN A   1    garbage\n",
            "binary": lambda data: os.urandom(512)})
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "garbage", "binary", "nan", "inf", "other-size",
                                  "other-element"])
def test_bad_structure(files, tmp_path, fails, damaged, chain, kind):
    pdb = pdb_case(files, tmp_path, damaged, chain, kind)
    fails(simulate(files, tmp_path / "t.dcd", pdb=pdb), names=[pdb.name] + (
        ["mapping"] if kind.startswith("other") else []), keep=[files["run"]])
    assert not (tmp_path / "t.dcd").exists()


@pytest.mark.parametrize("option, value", [
    ("--steps", 0), ("--steps", -5), ("--report-interval", 0), ("--report-interval", -1), ("--replicas", 0),
    ("--replicas", -2), ("--seed", -1), ("--collision-distance", -0.1), ("--collision-distance", "nan"),
    ("--temperature", 0), ("--temperature", -300), ("--temperature", "inf"), ("--temperature", 400),
])
def test_bad_number(files, tmp_path, fails, set_option, option, value):
    argv = set_option(simulate(files, tmp_path / "t.dcd"), option, value)
    fails(argv, names=[option if option != "--temperature" or value != 400 else "temperature"])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["t.txt", "t", "t.h5"])
def test_unknown_output_format(files, tmp_path, fails, name):
    fails(simulate(files, tmp_path / name), names=[name, "format"])
    assert not list(tmp_path.iterdir())


def test_pdb_output_cannot_be_checkpointed(files, tmp_path, fails):
    fails(simulate(files, tmp_path / "t.pdb", "--checkpoint", tmp_path / "c.chk"), names=["t.pdb", ".dcd"])


@pytest.mark.parametrize("which", ["out", "log", "beads"])
def test_existing_output_without_overwrite(files, fails, which):
    run = files["run"]
    argv = simulate(files, run / "t.dcd")
    if which == "log":
        argv = simulate(files, run / "new.dcd", "--log", run / "log.csv")
    elif which == "beads":  # a stale bead topology of another run would misread the new trajectory
        argv = simulate(files, run / "x.dcd")
        (run / "x_beads.pdb").write_text((run / "t_beads.pdb").read_text())
    try:
        fails(argv, names=["exists", "--overwrite"], keep=[run])
    finally:
        (run / "x_beads.pdb").unlink(missing_ok=True)


@pytest.mark.parametrize("where", ["out", "checkpoint", "log"])
def test_missing_output_folder(files, tmp_path, fails, where):
    missing = tmp_path / "no" / "such"
    argv = simulate(files, missing / "t.dcd" if where == "out" else tmp_path / "t.dcd")
    if where == "checkpoint":
        argv += ["--checkpoint", str(missing / "c.chk")]
    elif where == "log":
        argv += ["--log", str(missing / "log.csv")]
    fails(argv, names=[f"--{where}", str(missing)])
    assert not (tmp_path / "t.dcd").exists()


def test_unwritable_output_folder(files, fails, locked_folder):
    fails(simulate(files, locked_folder / "t.dcd"), names=[str(locked_folder), "not writable"])


def test_output_is_a_folder(files, tmp_path, fails):
    (tmp_path / "t.dcd").mkdir()
    fails(simulate(files, tmp_path / "t.dcd"), names=["t.dcd", "directory"])


def test_missing_mapping_file(files, tmp_path, fails):
    fails(simulate(files, tmp_path / "t.dcd", "--mapping", tmp_path / "no.json"), names=["no.json"])


def test_unknown_platform(files, tmp_path, fails):
    fails(simulate(files, tmp_path / "t.dcd", "--platform", "Quantum"), names=["--platform"])
    assert not (tmp_path / "t.dcd").exists()


@pytest.mark.parametrize("change, option", [
    (["--report-interval", "1"], "--report-interval"), (["--replicas", "2"], "--replicas"),
    (["--seed", "7"], "--seed"), (["--no-refine"], "--no-refine"), (["--model"], "model"),
])
def test_resume_with_changed_option(files, tmp_path, fails, change, option):
    run = files["run"]
    argv = ["simulate", str(files["model"]), "--pdb", str(files["pdb"]), "--steps", "8", "--report-interval", "2",
            "--platform", "CPU", "--out", str(run / "t.dcd"), "--checkpoint", str(run / "run.chk"),
            "--log", str(run / "log.csv")]
    if change == ["--model"]:
        other = tmp_path / "copy.safetensors"
        from openmm_cgml import load
        from openmm_cgml.model_file import export_model, rebuild

        model = load(files["model"])
        export_model(rebuild(model), other, dict(model.metadata, training={"note": "another"}))
        argv[1] = str(other)
    elif change[0] in argv:
        argv[argv.index(change[0]) + 1] = change[1]
    else:
        argv += change
    fails(argv, names=[option, "differs", "run.chk.json"], keep=[run])


def test_resume_with_a_damaged_record(files, tmp_path, fails):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    (run / "run.chk.json").write_text("{not json")
    argv = ["simulate", str(files["model"]), "--pdb", str(files["pdb"]), "--steps", "8", "--report-interval", "2",
            "--platform", "CPU", "--out", str(run / "t.dcd"), "--checkpoint", str(run / "run.chk")]
    fails(argv, names=["run.chk.json"], keep=[run])
    (run / "run.chk.json").unlink()
    fails(argv, names=["run.chk", "no run record"], keep=[run])


def test_resume_with_a_damaged_checkpoint(files, tmp_path, fails):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    (run / "run.chk").write_bytes(b"\0" * 100)
    record = json.loads((run / "run.chk.json").read_text())
    record.update(out=os.path.abspath(run / "t.dcd"), log=None)
    (run / "run.chk.json").write_text(json.dumps(record))
    argv = ["simulate", str(files["model"]), "--pdb", str(files["pdb"]), "--steps", "8", "--report-interval", "2",
            "--platform", "CPU", "--out", str(run / "t.dcd"), "--checkpoint", str(run / "run.chk")]
    fails(argv, names=["--checkpoint", "run.chk"], keep=[run])
