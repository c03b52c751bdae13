"""Reporters for bead simulations, in OpenMM's reporter protocol (``describeNextReport`` / ``report``).

``ProgressReporter`` shows a progress bar with simulated ns/day;
``trajectory_reporter`` picks OpenMM's trajectory reporter by file extension;
``dcd_last_step`` reads the step of a DCD's last frame (for resuming).

For crash-safe runs: ``RunReporter`` writes the trajectory frame, the log
line and then the checkpoint of each report, in that order, the checkpoint
atomically (temporary name, then rename), and skips frames and log lines a
killed run had already written; ``repair_dcd``, ``xtc_last_step`` and
``repair_log`` read (and make whole) what a killed run left; ``write_atomic``
writes a small side file so that a reader never sees half of it.
"""
from __future__ import annotations

import os
import struct
import sys
import time
from pathlib import Path

import openmm.app as app

__all__ = ["ProgressReporter", "RunReporter", "trajectory_reporter", "dcd_last_step", "repair_dcd", "xtc_last_step",
           "repair_log", "save_checkpoint", "write_atomic", "TRAJECTORY_FORMATS"]

TRAJECTORY_FORMATS = {".dcd": app.DCDReporter, ".xtc": app.XTCReporter, ".pdb": app.PDBReporter}


class ProgressReporter:
    """A tqdm progress bar over model steps, showing simulated ns/day.

    Parameters
    ----------
    interval : int
        Model steps between updates.
    total : int
        The step count the run ends at.
    start : int
        The step count it starts from (a resumed run starts above 0).
    dt_ps : float
        The model time step in ps.
    """

    def __init__(self, interval: int, total: int, start: int, dt_ps: float):
        from tqdm import tqdm

        self._interval = interval
        self._bar = tqdm(total=total, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True,
                         disable=None)  # None: no bar when stderr is not a terminal
        self._dt_ps = dt_ps
        self._last = (start, time.perf_counter())

    def describeNextReport(self, simulation):
        steps = self._interval - simulation.currentStep % self._interval
        return {"steps": steps, "include": []}

    def report(self, simulation, state):
        step, now = simulation.currentStep, time.perf_counter()
        done, elapsed = step - self._last[0], now - self._last[1]
        if done > 0 and elapsed > 0:
            self._bar.set_postfix(ns_per_day=f"{done * self._dt_ps * 1e-3 / elapsed * 86400:.4g}", refresh=False)
        self._bar.update(done)
        self._last = (step, now)

    def close(self):
        self._bar.close()


def trajectory_reporter(path: Path, interval: int, append: bool):
    """The OpenMM reporter for ``path``'s extension.

    Parameters
    ----------
    path : Path
        ``.dcd``, ``.xtc`` or ``.pdb``.
    interval : int
        Model steps between frames.
    append : bool
        Append to an existing file (not possible for PDB).

    Returns
    -------
    openmm.app.DCDReporter, XTCReporter or PDBReporter
    """
    suffix = path.suffix.lower()
    if suffix not in TRAJECTORY_FORMATS:
        raise ValueError(f"{path}: unknown trajectory format {suffix!r}; use .dcd, .xtc or .pdb")
    if suffix == ".pdb":
        if append:
            raise ValueError(f"{path}: a PDB trajectory cannot be appended to; use .dcd or .xtc to resume")
        return app.PDBReporter(str(path), interval)
    return TRAJECTORY_FORMATS[suffix](str(path), interval, append=append)


def dcd_last_step(path: Path):
    """Step number of the last frame in a DCD written by OpenMM (None if unreadable or empty)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(24)
        n_frames, first, interval = struct.unpack("<3i", header[8:20])
    except (OSError, struct.error):
        return None
    return first + (n_frames - 1) * interval if n_frames > 0 else None


def write_atomic(path: Path, data) -> None:
    """Write ``data`` (str or bytes) to ``path`` through a temporary file and a rename.

    A reader (or a run killed mid-write) sees the old file or the new one, never a part.

    Parameters
    ----------
    path : Path
    data : str or bytes
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _dcd_layout(path: Path):
    """``(n_frames_in_header, first_step, interval, header_bytes, frame_bytes)`` of an OpenMM DCD."""
    with open(path, "rb") as handle:
        head = handle.read(300)
    if len(head) < 104 or head[4:8] != b"CORD" or struct.unpack("<i", head[:4])[0] != 84:
        raise ValueError(f"{path}: not a DCD file (bad header)")
    n_frames, first, interval = struct.unpack("<3i", head[8:20])
    has_box = struct.unpack("<i", head[48:52])[0]
    comments = struct.unpack("<i", head[92:96])[0]
    header = 104 + comments + 8
    if comments < 0 or len(head) < header:
        raise ValueError(f"{path}: not a DCD file (bad header)")
    n_atoms = struct.unpack("<i", head[104 + comments:108 + comments])[0]
    frame = (56 if has_box else 0) + 3 * (8 + 4 * n_atoms)
    return n_frames, first, interval, header, frame, n_atoms


def repair_dcd(path: Path):
    """Make a DCD a killed run left whole again; return ``(n_frames, first_step, interval, n_atoms)``.

    OpenMM updates the frame count in the header before it writes a frame, so a
    run killed mid-frame leaves a count one too high and a partial frame at the
    end. Only those bytes of a partial frame are cut and the count set to the
    whole frames; every complete frame is kept.

    Parameters
    ----------
    path : Path

    Returns
    -------
    tuple of int
    """
    path = Path(path)
    n_header, first, interval, header, frame, n_atoms = _dcd_layout(path)
    size = path.stat().st_size
    whole = max(size - header, 0) // frame
    if whole != n_header or size != header + whole * frame:
        with open(path, "r+b") as handle:
            handle.truncate(header + whole * frame)
            handle.seek(8)
            handle.write(struct.pack("<i", whole))
            handle.seek(20)
            handle.write(struct.pack("<i", first + max(whole - 1, 0) * interval))
            handle.flush()
            os.fsync(handle.fileno())
    return whole, first, interval, n_atoms


def xtc_last_step(path: Path):
    """``(n_frames, steps)`` of an XTC file: the step number of every frame, as written."""
    from mdtraj.formats import XTCTrajectoryFile

    try:
        with XTCTrajectoryFile(str(path), "r") as handle:
            _, _, steps, _ = handle.read()
    except Exception as error:  # mdtraj raises assorted errors on damaged files
        raise ValueError(f"{path}: cannot read the XTC file ({error})") from None
    return len(steps), [int(step) for step in steps]


def repair_log(path: Path):
    """Cut a partial last line from a StateDataReporter CSV a killed run left; return its last step (or None)."""
    path = Path(path)
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as handle:
            handle.truncate(keep)
        data = data[:keep]
    for line in reversed(data.decode(errors="replace").splitlines()):
        if line and not line.startswith("#"):
            try:
                return int(line.split(",")[0])
            except ValueError:
                raise ValueError(f"{path}: not a cgml simulate log (last line {line[:60]!r})") from None
    return None


class RunReporter:
    """One report of a run: trajectory frame, log line, then checkpoint, in that order.

    The order is what makes a kill at any moment resumable: the checkpoint is
    never ahead of the trajectory, so no frame can be missing after a resume;
    frames (and log lines) a killed run wrote after its last checkpoint are not
    written again (the resumed run is bit-exact, so they are the same frames).

    Parameters
    ----------
    interval : int
        Model steps between reports.
    trajectory : reporter
        From :func:`trajectory_reporter`.
    log : reporter or None
        An ``openmm.app.StateDataReporter``.
    checkpoint : Path or None
        Written with ``Simulation.saveCheckpoint`` through a temporary file and a rename.
    written : int
        The last step the trajectory already holds (-1: none); reports up to it skip the trajectory.
    logged : int
        The same for the log.
    """

    def __init__(self, interval: int, trajectory, log=None, checkpoint=None, written: int = -1, logged: int = -1):
        self._interval = interval
        self._trajectory, self._log = trajectory, log
        self._checkpoint = None if checkpoint is None else Path(checkpoint)
        self._written, self._logged = written, logged

    def describeNextReport(self, simulation):
        include = set(self._trajectory.describeNextReport(simulation)["include"])
        if self._log is not None:
            include |= set(self._log.describeNextReport(simulation)["include"])
        return {"steps": self._interval - simulation.currentStep % self._interval, "periodic": None,
                "include": sorted(include)}

    def report(self, simulation, state):
        step = simulation.currentStep
        if step > self._written:
            self._trajectory.report(simulation, state)
        if self._log is not None and step > self._logged:
            self._log.report(simulation, state)
        if self._checkpoint is not None:
            save_checkpoint(simulation, self._checkpoint)


def save_checkpoint(simulation, path: Path) -> None:
    """``simulation.saveCheckpoint`` to ``path`` atomically: a kill leaves the old checkpoint or the new one."""
    import io

    buffer = io.BytesIO()
    simulation.saveCheckpoint(buffer)
    write_atomic(path, buffer.getvalue())
