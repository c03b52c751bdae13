"""Reporters for bead simulations, in OpenMM's reporter protocol (``describeNextReport`` / ``report``).

``ProgressReporter`` shows a progress bar with simulated ns/day;
``trajectory_reporter`` picks OpenMM's trajectory reporter by file extension;
``dcd_last_step`` reads the step of a DCD's last frame (for resuming).
"""
from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

import openmm.app as app

__all__ = ["ProgressReporter", "trajectory_reporter", "dcd_last_step", "TRAJECTORY_FORMATS"]

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
