"""Shared checks of the bad-input suite: every CLI failure is one line, exit 2, names the problem, loses nothing.

Each case runs ``openmm_cgml.cli.main`` in this process (as ``cgml`` does)
and asserts, with :func:`fails`:

- the exit status (2 for usage and input errors);
- exactly one line ``cgml <command>: error: ...`` on stderr, naming the file,
  field or value (``names``), and no traceback;
- the files in ``keep`` unchanged, byte for byte (SHA-256 before and after).
"""
from __future__ import annotations

import hashlib
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
