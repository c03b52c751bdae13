"""Shared checks of the bad-input suite: every CLI failure is one line, exit 2, names the problem, loses nothing.

Each case runs ``openmm_cgml.cli.main`` in this process (as ``cgml`` does)
and asserts, with :func:`fails`:

- the exit status (2 for usage and input errors);
- exactly one line ``cgml <command>: error: ...`` on stderr, naming the file,
  field or value (``names``), and no traceback;
- the files in ``keep`` unchanged, byte for byte (SHA-256 before and after).

Fixtures besides ``fails``: ``pipeline`` (the tiny real files of the whole data path), ``damaged``
(damaged copies of a file), ``locked_folder`` (a read-only folder) and ``set_option`` (edit an argv);
``chain`` and ``tiny_propagator`` come from ``tests/conftest.py``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from openmm_cgml.cli import main


def snapshot(paths) -> dict[Path, str]:
    """SHA-256 of each file in ``paths`` and of every file under each directory in it."""
    files = []
    for path in map(Path, paths):
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return {file: hashlib.sha256(file.read_bytes()).hexdigest() for file in files}


@pytest.fixture
def fails(capsys):
    """``fails(argv, names=(...), keep=(...), code=2) -> message``: run ``cgml argv`` and check how it failed."""

    def check(argv, names=(), keep=(), code=2):
        capsys.readouterr()
        before = snapshot(keep)
        assert before or not keep, f"nothing to protect in {keep}"
        status = main([str(word) for word in argv])
        err = capsys.readouterr().err
        command = next(str(word) for word in argv if not str(word).startswith("-"))
        assert "Traceback" not in err, err
        lines = [line for line in err.splitlines() if line.startswith("cgml ")]
        assert len(lines) == 1, f"expected one 'cgml {command}: error:' line, got:\n{err}"
        message = lines[0]
        assert message.startswith(f"cgml {command}: error: "), message
        assert status == code, f"exit {status}, expected {code}: {message}"
        for name in names:
            assert str(name) in message, f"{name!r} not named in: {message}"
        assert snapshot(keep) == before, f"files changed by a failed run: {message}"
        return message

    return check


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """The whole data path once, tiny and real; tests copy what they change and never modify these files.

    ``fine``: three 16-frame polymer-chain trajectories (4 monomers, 8 atoms, 50 MD steps apart) and
    ``pdb`` the first one's start PDB; ``coarse``: their k=2, lag=1 dataset; ``config``: a train YAML
    of a tiny model; ``run``: its finished one-epoch run (checkpoints, logs, config.yaml); ``model``:
    the exported ``.safetensors``; ``rollout``: a 3-frame ``cgml simulate`` DCD (+ ``_beads.pdb``)
    of that model; ``report``: an evaluation report folder.
    """
    import yaml

    from openmm_cgml.coarse_graining import coarse_grain
    from openmm_cgml.generate import generate

    root = tmp_path_factory.mktemp("pipeline")
    fine = generate("polymer-chain", root / "fine", frames=16, stride=50, replicas=3, params={"length": 4},
                    platform="Reference", progress=False, equilibration_steps=0)
    coarse = coarse_grain(fine, root / "coarse.h5", mapping="metis", atoms_per_bead=1, k=2, lag=1,
                          split=(0.67, 0.33, 0.0))
    config = root / "train.yaml"
    config.write_text(yaml.safe_dump({
        "data": "coarse.h5", "out_dir": "run",
        "model": {"embed_hidden": 8, "embed_layers": 1, "hidden": 8, "n_layers": 1, "score_hidden": 8, "n_rbf": 4,
                  "n_sbf": 2},
        "train": {"batch_size": 8, "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "threads": 1,
                  "warmup_steps": 1},
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False, "log_every_n_steps": 1}}, sort_keys=False))
    model, rollout, report = root / "model.safetensors", root / "roll.dcd", root / "report"
    for argv in (["train", config], ["export", root / "run", "--out", model],
                 ["simulate", model, "--pdb", fine[0].with_suffix(".pdb"), "--steps", "6", "--report-interval", "2",
                  "--platform", "CPU", "--out", rollout],
                 ["evaluate", "--reference", fine[0], "--rollout", rollout, "--model", model, "--out", report,
                  "--no-plots"]):
        assert main([str(word) for word in argv]) == 0, argv
    return {"root": root, "fine": fine, "pdb": fine[0].with_suffix(".pdb"), "coarse": coarse, "config": config,
            "run": root / "run", "model": model, "rollout": rollout, "report": report}


def _damaged(source, path, kind, recipes=None):
    """Write ``path`` as a damaged copy of the file ``source``; ``path``.

    ``kind``: ``"missing"`` (nothing written), ``"empty"``, ``"truncated"`` (the first half of the
    bytes), ``"corrupted"`` (64 bytes after the first 8 set to 0xff), or a key of ``recipes``:
    ``{kind: recipe(bytes of source) -> bytes or str}`` (which may also redefine the ones above).
    Any other kind is a mistake in the test.
    """
    recipes = {"empty": lambda data: b"", "truncated": lambda data: data[: len(data) // 2],
               "corrupted": lambda data: data[:8] + b"\xff" * 64 + data[72:], **(recipes or {})}
    if kind != "missing":
        content = recipes[kind](Path(source).read_bytes())
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.fixture(scope="session")
def damaged():
    """``damaged(source, path, kind, recipes=None) -> path``: a missing, empty, truncated, corrupted or ``recipes``
    copy of ``source``."""
    return _damaged


@pytest.fixture
def locked_folder(tmp_path):
    """``tmp_path / "locked"``: a folder nobody may write into (skips as root), made writable again afterwards."""
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    yield locked
    locked.chmod(0o700)
    shutil.rmtree(locked, ignore_errors=True)


def _set_option(argv, option, value=None):
    """Set ``option`` to ``value`` in ``argv`` in place (replaced, or appended); ``value=None``: drop it."""
    if value is None:
        del argv[argv.index(option):argv.index(option) + 2]
    elif option in argv:
        argv[argv.index(option) + 1] = str(value)
    else:
        argv += [option, str(value)]
    return argv


@pytest.fixture(scope="session")
def set_option():
    """``set_option(argv, option, value=None) -> argv``: ``option value`` replaced or appended; ``None`` drops it."""
    return _set_option
