"""Files written safely, YAML options read, numbers made JSON-safe and software versions recorded: one place each."""
from __future__ import annotations

import os
import platform
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["atomic_path", "write_atomic", "jsonable", "software_versions", "read_yaml", "first_line"]


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary path beside ``path`` that is renamed over ``path`` when the block succeeds.

    For writers that need a file name (h5py, ``torch.jit.save``, ``PDBFile.writeFile`` on an
    open handle): an interrupted or failed write never leaves a truncated file at ``path``;
    readers see the old file or the new one. On an error the temporary file is removed.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; its folder must exist.

    Yields
    ------
    pathlib.Path
        The temporary file (already created, empty) to write to.
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    temporary = Path(name)
    try:
        # mkstemp makes the file private (0600); the result should get the permissions open() gives
        os.chmod(temporary, 0o666 & ~_umask())
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; readers see the old file or the new one, never a truncated one.
    data : str or bytes
        The whole content (text or binary).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    with atomic_path(path) as temporary:
        with open(temporary, "wb" if isinstance(data, bytes) else "w") as stream:
            stream.write(data)
    return path


def _umask() -> int:
    try:   # Linux shows it without changing it (setting it races with other threads creating files)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)   # elsewhere the only way to read it is to set it
    os.umask(mask)
    return mask


def jsonable(value):
    """``value`` with numpy scalars and arrays turned into Python ones, and NaN/inf into None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def software_versions(python: bool = True) -> dict:
    """Versions of the software that matter for reproducing a result.

    Parameters
    ----------
    python : bool
        Include the Python version (fine trajectory files record the other four only).

    Returns
    -------
    dict
        ``{"openmm_cgml", "torch", "openmm", "numpy"[, "python"]}`` -> version string.
    """
    import openmm
    import torch

    from openmm_cgml import __version__

    versions = {"openmm_cgml": __version__, "torch": torch.__version__, "openmm": openmm.__version__,
                "numpy": np.__version__}
    if python:
        versions["python"] = platform.python_version()
    return versions


def read_yaml(path, what: str = "YAML file") -> dict:
    """The options in a YAML file whose top level is a mapping (``{}`` for an empty file).

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    what : str
        What the file is, for the error messages (e.g. "config file").

    Returns
    -------
    dict

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    IsADirectoryError
        If ``path`` is a folder.
    ValueError
        If it is not valid YAML (or not text) or its top level is not a mapping.
    """
    import yaml

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text (UTF-8) file, so not a {what}: {error.reason} at byte "
                         f"{error.start}") from None
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of options at the top level of the {what}")
    return values or {}


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name if it has none (for one-line messages)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
