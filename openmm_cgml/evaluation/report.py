"""``cgml evaluate``: compare coarse-grained rollouts with reference MD.

Each reference is paired with one rollout (one pair = one system); several
pairs make a set of systems, over which the paper's r^2 of the mean radius
of gyration and of the Rg^2 relaxation time are computed. Writes
``metrics.json`` (all numbers), ``report.md`` and ``report.html`` (the same
tables with the PNG plots) into the output directory.

Inputs:

* reference: a fine trajectory HDF5 (from ``cgml generate``), coarse-grained
  here with the model's mapping (``--model``, re-made for each molecule) or
  the ``--mapping`` options; or a bead trajectory (DCD/XTC with
  ``--topology``, or mdtraj HDF5).
* rollout: a bead trajectory (DCD/XTC + bead topology PDB, or mdtraj HDF5),
  e.g. from ``CGMLIntegrator`` with a ``DCDReporter``. A rollout of ``R``
  replicas of the reference molecule(s) (``coarse_grained_system(...,
  replicas=R)``) is recognised by its bead count and analysed replica by replica.

Frame intervals (ps) come from the files (fine HDF5 attributes, XTC/HDF5
times, the DCD header OpenMM writes), or from ``--reference-interval`` /
``--rollout-interval``.
"""
from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import struct
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from openmm_cgml.evaluation import analysis
from openmm_cgml.io import jsonable, write_atomic
from openmm_cgml.units import NM, PS, strip

__all__ = ["BeadTrajectory", "load_reference", "load_rollout", "compare", "evaluate", "configure_parser", "run"]

REPORT_FILES = ("metrics.json", "report.md", "report.html")
MIN_TICA_FRAMES = 200      # below this a 2-D free-energy surface is noise
MAX_CONTACT_BEADS = 1000   # contact maps are (N, N); skip beyond this
MAX_PAIRS = 5000           # bead pairs in the pair-distance distribution
MAX_DISTANCES = 20_000_000  # frames x pairs held at once for a distribution (float32: 80 MB)
AKMA_TIME_PS = 0.04888821  # the DCD header stores the time step in AKMA units


# --------------------------------------------------------------------------- loading

@dataclass
class BeadTrajectory:
    """Bead coordinates of one trajectory and what the analysis needs about them.

    ``positions`` (F, N, 3) nm; ``frame_interval_ps``; ``masses`` (N,) amu
    (None = unknown, equal masses used); ``molecule_of_bead`` (N,);
    ``bonds`` (C, 2) bead pairs; ``box`` (F, 3, 3) nm or None.
    """
    path: str
    positions: np.ndarray
    frame_interval_ps: float
    masses: np.ndarray | None
    molecule_of_bead: np.ndarray
    bonds: np.ndarray
    box: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_beads(self) -> int:
        return int(self.positions.shape[1])

    @property
    def simulated_ps(self) -> float:
        return self.frame_interval_ps * max(self.n_frames - 1, 0)


def _is_fine_hdf5(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return "cgml_system" in handle.attrs and "cgml" in handle
    except OSError:
        return False


def _mapping_for(fine, model=None, method: str = "metis", params: dict | None = None):
    """The mapping for the molecule(s) of a fine trajectory: the model's (re-made if needed) or by method."""
    from openmm_cgml.mapping import Mapping

    topology, masses, types = fine.topology, np.asarray(fine.masses), np.asarray(fine.atom_types)
    if model is not None and model.mapping is not None:
        trained = model.mapping
        try:
            trained.check_fits(topology, where=f"the model's mapping")
            return trained
        except ValueError:
            pass  # another molecule (e.g. an unseen sequence): re-make the mapping the same way
        return Mapping.build(trained.method, topology, masses, atom_types=types, **trained.params)
    return Mapping.build(method, topology, masses, atom_types=types, **(params or {}))


def load_reference(path, *, topology=None, model=None, mapping_method: str = "metis", mapping_params=None,
                   frame_interval=None, chunk_frames: int = 2000) -> tuple[BeadTrajectory, object]:
    """Load a reference as beads; returns ``(BeadTrajectory, Mapping or None)``.

    A fine HDF5 file is coarse-grained (molecules made whole, mass-weighted
    bead centres) chunk by chunk; a bead trajectory is read as is.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file {path} does not exist")
    if not _is_fine_hdf5(path):
        return load_rollout(path, topology=topology, frame_interval=frame_interval, role="reference"), None
    from openmm_cgml.trajectory import FineTrajectory

    with FineTrajectory(path) as fine:
        if fine.n_frames < 2:
            raise ValueError(f"reference {path} has {fine.n_frames} committed frames; need at least 2")
        mapping = _mapping_for(fine, model, mapping_method, mapping_params)
        beads, boxes = [], []
        for start in range(0, fine.n_frames, chunk_frames):
            stop = min(start + chunk_frames, fine.n_frames)
            atoms = np.asarray(fine.positions[start:stop], dtype=np.float64)
            if not np.all(np.isfinite(atoms)):
                bad = int(np.argwhere(~np.isfinite(atoms))[0][0]) + start
                raise ValueError(f"reference {path}: frame {bad} contains NaN or infinite coordinates")
            box = (np.stack([fine.box_vectors(f) for f in range(start, stop)]) if fine.is_periodic else None)
            beads.append(mapping.bead_positions(atoms, box=box))
            if box is not None:
                boxes.append(box)
        interval = fine.frame_interval_ps if frame_interval is None else strip(frame_interval, PS, "frame_interval")
        notes = [] if fine.complete else [f"{path.name} is an unfinished run ({fine.n_frames} committed frames)"]
    trajectory = BeadTrajectory(str(path), np.concatenate(beads), float(interval), mapping.bead_masses.copy(),
                                mapping.molecule_of_bead.copy(), mapping.coarse_bonds.copy(),
                                np.concatenate(boxes) if boxes else None, notes)
    return trajectory, mapping


def _dcd_frame_interval_ps(path: Path) -> float | None:
    """Frame interval from the header OpenMM's DCDFile writes (save interval x step size), or None."""
    with open(path, "rb") as handle:
        header = handle.read(48)  # '<i4c9if': 84, "CORD", n_frames, first step, interval, 6 zeros, step size
    if len(header) < 48 or header[4:8] != b"CORD":
        return None
    interval = struct.unpack("<i", header[16:20])[0]
    step_akma = struct.unpack("<f", header[44:48])[0]
    value = interval * step_akma * AKMA_TIME_PS
    return value if np.isfinite(value) and value > 0 else None


def _components(n_beads: int, bonds: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(bonds)), (bonds[:, 0], bonds[:, 1])), shape=(n_beads, n_beads)) \
        if len(bonds) else coo_matrix((n_beads, n_beads))
    return connected_components(graph, directed=False)[1].astype(np.int64)


@contextlib.contextmanager
def _quiet_c_stdout():
    """Keep the chatter that mdtraj's C DCD plugin prints to stdout out of the command's output."""
    try:
        import ctypes

        flush = ctypes.CDLL(None).fflush
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, AttributeError, ValueError):  # no C library handle or no fd 1: leave stdout alone
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            try:
                yield
            finally:
                flush(None)
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def load_rollout(path, *, topology=None, frame_interval=None, role: str = "rollout") -> BeadTrajectory:
    """Load a bead trajectory (DCD/XTC/other mdtraj formats with a topology, or mdtraj HDF5)."""
    import mdtraj

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{role} file {path} does not exist")
    suffix = path.suffix.lower()
    beside = path.with_name(path.stem + "_beads.pdb")  # written by `cgml simulate` next to a DCD/XTC
    if topology is None and suffix not in (".h5", ".hdf5", ".pdb") and beside.is_file():
        topology = beside
    if topology is None and suffix not in (".h5", ".hdf5", ".pdb"):
        raise ValueError(f"{role} {path}: a {suffix or 'topology-less'} file needs --topology (the bead PDB; "
                         f"`cgml simulate` writes it as {beside.name})")
    if topology is not None and not Path(topology).is_file():
        raise FileNotFoundError(f"topology file {topology} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mdtraj warns about element-less bead atoms
            with _quiet_c_stdout():
                traj = mdtraj.load(str(path), top=str(topology) if topology is not None else None)
    except Exception as error:  # mdtraj raises many types for damaged files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot read {role} {path}: {first}") from None
    if traj.n_frames < 2:
        raise ValueError(f"{role} {path} has {traj.n_frames} frame(s); need at least 2")
    if not np.all(np.isfinite(traj.xyz)):
        bad = int(np.argwhere(~np.isfinite(traj.xyz))[0][0])
        raise ValueError(f"{role} {path}: frame {bad} contains NaN or infinite coordinates (an unstable rollout?)")
    if frame_interval is not None:
        interval = strip(frame_interval, PS, "frame_interval")
    elif suffix == ".dcd":
        interval = _dcd_frame_interval_ps(path)
    else:
        steps = np.diff(traj.time)
        interval = float(np.median(steps)) if len(steps) and np.all(steps > 0) else None
    if interval is None or not interval > 0:
        raise ValueError(f"{role} {path}: the file gives no frame interval; pass --{role}-interval PS")
    bonds = np.array(sorted({tuple(sorted((b[0].index, b[1].index))) for b in traj.topology.bonds}),
                     dtype=np.int64).reshape(-1, 2)
    box = traj.unitcell_vectors.astype(np.float64) if traj.unitcell_vectors is not None else None
    return BeadTrajectory(str(path), traj.xyz.astype(np.float64), float(interval), None,
                          _components(traj.n_atoms, bonds), bonds, box)


def _fill_from_mapping(trajectory: BeadTrajectory, mapping, replicas: int) -> None:
    """Give a bead trajectory the masses, bonds and molecules of ``replicas`` copies of ``mapping``."""
    n = mapping.n_beads
    expected = np.concatenate([mapping.coarse_bonds + r * n for r in range(replicas)])
    if len(trajectory.bonds) and {tuple(b) for b in trajectory.bonds.tolist()} != \
            {tuple(sorted(b)) for b in expected.tolist()}:
        raise ValueError(f"{trajectory.path}: the bead bonds of its topology differ from the coarse bonds of the "
                         f"mapping ({mapping.method} {mapping.params}); is it the same coarse-grained molecule?")
    offsets = np.repeat(np.arange(replicas), n)
    trajectory.masses = np.tile(mapping.bead_masses, replicas)
    trajectory.molecule_of_bead = np.tile(mapping.molecule_of_bead, replicas) + offsets * mapping.n_molecules
    trajectory.bonds = expected


# --------------------------------------------------------------------------- one system

def _per_replica(trajectory: BeadTrajectory, replicas: int) -> np.ndarray:
    """(F*R, n, 3): the replicas of a rollout as extra frames, for per-molecule-set distributions."""
    frames, total, _ = trajectory.positions.shape
    n = total // replicas
    return trajectory.positions.reshape(frames, replicas, n, 3).reshape(frames * replicas, n, 3)


def _rg_and_relaxation(trajectory: BeadTrajectory) -> dict:
    """Per-molecule Rg (nm) of molecules with >= 2 beads, and the Rg^2 ACF and relaxation time (ps)."""
    counts = np.bincount(trajectory.molecule_of_bead)
    polymers = np.flatnonzero(counts >= 2)
    if len(polymers) == 0:
        return {"rg": None, "acf": None, "tau": None, "notes": ["no molecule has 2 or more beads: no Rg"]}
    keep = np.isin(trajectory.molecule_of_bead, polymers)
    rg = analysis.radius_of_gyration(trajectory.positions[:, keep],
                                     None if trajectory.masses is None else trajectory.masses[keep],
                                     trajectory.molecule_of_bead[keep])
    result = {"rg": rg, "acf": None, "tau": None, "tau_lower_bound": False, "notes": []}
    try:
        acf = analysis.autocorrelation(rg ** 2).mean(axis=1)  # average over molecules (and replicas)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tau = analysis.relaxation_time(acf, trajectory.frame_interval_ps)
        result.update(acf=acf, tau=tau, tau_lower_bound=any("lower bound" in str(w.message) for w in caught))
    except ValueError as error:
        result["notes"].append(f"no relaxation time: {error}")
    return result


def _n_bins(*samples, low: int = 10, high: int = 100) -> int:
    """Bins for comparing samples: about sqrt(n) of the smaller one, within [low, high].

    The plug-in JS divergence is biased upward by sparsely filled bins, so
    the bin count follows the data rather than being fixed.
    """
    n = min(len(s) for s in samples)
    return int(np.clip(round(np.sqrt(n)), low, high))


def _frame_stride(n_frames: int, per_frame: int) -> int:
    """Every how many frames to take so that frames x per_frame stays under MAX_DISTANCES."""
    return max(1, int(np.ceil(n_frames * per_frame / MAX_DISTANCES)))


def _distribution(ref_values, roll_values, n_bins: int | None = None, value_range=None) -> dict:
    ref_values = np.asarray(ref_values, dtype=np.float64).ravel()
    roll_values = np.asarray(roll_values, dtype=np.float64).ravel()
    n_bins = _n_bins(ref_values, roll_values) if n_bins is None else n_bins
    edges = analysis.comparison_edges(ref_values, roll_values, n_bins=n_bins, value_range=value_range)
    return {"edges": edges, "reference": analysis.histogram(ref_values, edges),
            "rollout": analysis.histogram(roll_values, edges),
            "js": analysis.js_divergence_samples(ref_values, roll_values, n_bins=n_bins, value_range=value_range)}


def compare(reference: BeadTrajectory, rollout: BeadTrajectory, *, tica_lag=None, contact_cutoff=0.8,
            collision_threshold=0.1, reference_ns_per_day=None, rollout_ns_per_day=None) -> dict:
    """All metrics of one system; returns ``{"metrics": JSON-able dict, "curves": arrays for the plots}``."""
    n_ref, n_roll = reference.n_beads, rollout.n_beads
    if n_roll % n_ref or (n_roll != n_ref and (rollout.box is not None or reference.box is not None)):
        raise ValueError(f"rollout {rollout.path} has {n_roll} beads but reference {reference.path} has {n_ref}: "
                         "they are not the same coarse-grained system (wrong mapping or topology?)")
    replicas = n_roll // n_ref
    ref_xyz, roll_xyz = reference.positions, _per_replica(rollout, replicas)
    ref_box, roll_box = reference.box, rollout.box
    metrics: dict = {"replicas": replicas, "notes": list(reference.notes) + list(rollout.notes)}
    curves: dict = {}
    js: dict = {}

    # size and its relaxation
    ref_rg, roll_rg = _rg_and_relaxation(reference), _rg_and_relaxation(rollout)
    metrics["notes"] += ref_rg["notes"] + roll_rg["notes"]
    if ref_rg["rg"] is not None and roll_rg["rg"] is not None:
        metrics["rg_nm"] = {side: {"mean": float(data["rg"].mean()), "std": float(data["rg"].std())}
                            for side, data in (("reference", ref_rg), ("rollout", roll_rg))}
        dist = _distribution(ref_rg["rg"], roll_rg["rg"])
        js["rg"] = dist["js"]
        curves["rg"] = {"reference_trace": ref_rg["rg"].mean(axis=1), "rollout_trace": roll_rg["rg"].mean(axis=1),
                        "distribution": dist}
    metrics["relaxation_time_ps"] = {"reference": ref_rg.get("tau"), "rollout": roll_rg.get("tau"),
                                     "method": "integrated Rg^2 ACF to its first zero crossing",
                                     "reference_lower_bound": bool(ref_rg.get("tau_lower_bound")),
                                     "rollout_lower_bound": bool(roll_rg.get("tau_lower_bound"))}
    if ref_rg.get("acf") is not None and roll_rg.get("acf") is not None:
        curves["acf"] = {"reference": (np.arange(len(ref_rg["acf"])) * reference.frame_interval_ps, ref_rg["acf"]),
                         "rollout": (np.arange(len(roll_rg["acf"])) * rollout.frame_interval_ps, roll_rg["acf"]),
                         "reference_tau": ref_rg["tau"], "rollout_tau": roll_rg["tau"]}

    # local structure on the reference's coarse bonds
    bonds = reference.bonds
    structure = {}
    if len(bonds):
        structure["bond_length_nm"] = _distribution(analysis.bond_lengths(ref_xyz, bonds),
                                                    analysis.bond_lengths(roll_xyz, bonds))
        triplets = analysis.angle_triplets(bonds)
        if len(triplets):
            structure["angle_rad"] = _distribution(analysis.bond_angles(ref_xyz, triplets),
                                                   analysis.bond_angles(roll_xyz, triplets), value_range=(0, np.pi))
        quads = analysis.dihedral_quadruplets(bonds)
        if len(quads):
            structure["dihedral_rad"] = _distribution(analysis.dihedral_angles(ref_xyz, quads),
                                                      analysis.dihedral_angles(roll_xyz, quads),
                                                      value_range=(-np.pi, np.pi))

    # pair structure: g(r) with a box, the pair-distance distribution without
    if n_ref >= 2:
        if ref_box is not None and roll_box is not None:
            half = 0.5 * min(np.linalg.norm(ref_box, axis=2).min(), np.linalg.norm(roll_box, axis=2).min())
            r, g_ref = analysis.rdf(ref_xyz, ref_box, r_range=(0.0, half), n_bins=100)
            _, g_roll = analysis.rdf(roll_xyz, roll_box, r_range=(0.0, half), n_bins=100)
            curves["rdf"] = {"r": r, "reference": g_ref, "rollout": g_roll, "label": "g(r)"}
            metrics["rdf_mean_abs_difference"] = float(np.mean(np.abs(g_ref - g_roll)))
        else:
            pairs = analysis.all_pairs(n_ref)
            if len(pairs) > MAX_PAIRS:  # an evenly strided subset keeps memory bounded for big molecules
                pairs = pairs[np.linspace(0, len(pairs) - 1, MAX_PAIRS).round().astype(int)]
            structure["pair_distance_nm"] = _distribution(
                analysis.pair_distances(ref_xyz[::_frame_stride(len(ref_xyz), len(pairs))], pairs),
                analysis.pair_distances(roll_xyz[::_frame_stride(len(roll_xyz), len(pairs))], pairs))
    for name, dist in structure.items():
        js[name] = dist["js"]
    curves["structure"] = structure

    # contacts
    cutoff = strip(contact_cutoff, NM, "contact_cutoff")
    if 2 <= n_ref <= MAX_CONTACT_BEADS:
        ref_map = analysis.contact_map(ref_xyz, cutoff, box=ref_box)
        roll_map = analysis.contact_map(roll_xyz, cutoff, box=roll_box)
        off = ~np.eye(n_ref, dtype=bool)
        metrics["contact_map"] = {"cutoff_nm": cutoff,
                                  "mean_abs_difference": float(np.abs(ref_map - roll_map)[off].mean())}
        curves["contacts"] = (ref_map, roll_map)

    # slow coordinates: TICA on bead distances, fitted on the reference
    if reference.n_frames >= MIN_TICA_FRAMES and n_ref >= 3:
        lag_ps = rollout.frame_interval_ps if tica_lag is None else strip(tica_lag, PS, "tica_lag")
        lag = int(np.clip(round(lag_ps / reference.frame_interval_ps), 1, reference.n_frames // 10))
        try:
            _, ref_proj, (roll_proj,) = analysis.tica(
                analysis.distance_features(ref_xyz, box=ref_box), lag, dim=2,
                others=[analysis.distance_features(roll_xyz, box=roll_box)])
            if ref_proj.shape[1] == 2 and np.all(np.isfinite(roll_proj)):
                js["tica"] = analysis.js_divergence_samples(ref_proj, roll_proj,
                                                            n_bins=_n_bins(ref_proj, roll_proj, high=50) // 2)
                curves["tica"] = (ref_proj, roll_proj)
                metrics["tica"] = {"lag_frames": lag, "lag_ps": lag * reference.frame_interval_ps,
                                   "features": "bead-bead distances", "dim": 2}
        except (ValueError, np.linalg.LinAlgError) as error:
            metrics["notes"].append(f"TICA skipped: {error}")
    else:
        metrics["notes"].append(f"TICA skipped: needs >= {MIN_TICA_FRAMES} reference frames and >= 3 beads")

    # collisions
    threshold = strip(collision_threshold, NM, "collision_threshold")
    metrics["collisions"] = {"threshold_nm": threshold}
    for side, xyz, box in (("reference", ref_xyz, ref_box), ("rollout", roll_xyz, roll_box)):
        counts = analysis.collisions(xyz, threshold, box=box)
        metrics["collisions"][side] = {"total": int(counts.sum()), "frames_with_collision": int((counts > 0).sum()),
                                       "fraction_of_frames": float((counts > 0).mean())}

    # speed
    speed = {"reference_ns_per_day": reference_ns_per_day, "rollout_ns_per_day": rollout_ns_per_day}
    if reference_ns_per_day and rollout_ns_per_day:
        speed["speedup"] = analysis.speedup(rollout_ns_per_day, reference_ns_per_day)
    metrics["speed"] = speed
    metrics["js_divergence"] = js
    metrics["js_divergence_mean"] = float(np.mean(list(js.values()))) if js else None
    return {"metrics": metrics, "curves": curves}


# --------------------------------------------------------------------------- plots

def _plot_system(index: int, name: str, curves: dict, reference: BeadTrajectory, rollout: BeadTrajectory,
                 out: Path) -> list[tuple[str, str]]:
    """PNG files for one system; returns (title, file name) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    prefix = f"system{index:02d}"
    ref_style = {"color": "black", "label": "reference"}
    roll_style = {"color": "tab:red", "label": "rollout", "alpha": 0.8}

    def save(figure, suffix, title):
        figure.suptitle(f"{name}: {title}")
        figure.tight_layout()
        file = f"{prefix}_{suffix}.png"
        figure.savefig(out / file, dpi=110)
        plt.close(figure)
        written.append((title, file))

    if "rg" in curves:
        figure, (trace, hist) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
        rg = curves["rg"]
        scale, unit = _time_unit(max(reference.simulated_ps, rollout.simulated_ps))
        trace.plot(np.arange(len(rg["reference_trace"])) * reference.frame_interval_ps * scale,
                   rg["reference_trace"], lw=0.6, **ref_style)
        trace.plot(np.arange(len(rg["rollout_trace"])) * rollout.frame_interval_ps * scale,
                   rg["rollout_trace"], lw=0.6, **roll_style)
        trace.set(xlabel=f"time ({unit})", ylabel="Rg (nm)")
        _overlay(hist, rg["distribution"], "Rg (nm)", ref_style, roll_style)
        trace.legend()
        save(figure, "rg", "radius of gyration")
    if "acf" in curves:
        figure, axis = plt.subplots(figsize=(6, 3.6))
        longest = max(curves["acf"]["reference"][0][-1], curves["acf"]["rollout"][0][-1])
        scale, unit = _time_unit(longest)
        for side, style in (("reference", ref_style), ("rollout", roll_style)):
            t, acf = curves["acf"][side]
            tau = curves["acf"][f"{side}_tau"]
            label = style["label"] + ("" if tau is None else f", tau = {tau * scale:.3g} {unit}")
            axis.plot(t * scale, acf, **{**style, "label": label})
            if tau is not None:
                axis.axvline(tau * scale, color=style["color"], ls=":", lw=0.8)
        axis.axhline(0, color="grey", lw=0.5)
        axis.set(xlabel=f"lag ({unit})", ylabel="ACF of Rg$^2$")
        axis.legend()
        save(figure, "acf", "Rg^2 autocorrelation")
    panels = dict(curves.get("structure", {}))
    if "rdf" in curves:
        panels["rdf"] = curves["rdf"]
    if panels:
        figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.3), squeeze=False)
        labels = {"bond_length_nm": "bond length (nm)", "angle_rad": "angle (rad)",
                  "dihedral_rad": "dihedral (rad)", "pair_distance_nm": "bead-bead distance (nm)"}
        for axis, (key, data) in zip(axes[0], panels.items()):
            if key == "rdf":
                axis.plot(data["r"], data["reference"], **ref_style)
                axis.plot(data["r"], data["rollout"], **roll_style)
                axis.set(xlabel="r (nm)", ylabel="g(r)")
            else:
                _overlay(axis, data, labels[key], ref_style, roll_style)
        axes[0][0].legend()
        save(figure, "distributions", "structural distributions")
    if "tica" in curves:
        ref_proj, roll_proj = curves["tica"]
        bins = _n_bins(ref_proj, roll_proj, high=50) // 2  # 2-D: 5..25 bins per axis, >= 4 samples per cell
        edges_x = analysis.comparison_edges(ref_proj[:, 0], roll_proj[:, 0], n_bins=bins)
        edges_y = analysis.comparison_edges(ref_proj[:, 1], roll_proj[:, 1], n_bins=bins)
        figure, axes = plt.subplots(1, 2, figsize=(9, 4.0), sharex=True, sharey=True, layout="constrained")
        for axis, proj, title in ((axes[0], ref_proj, "reference"), (axes[1], roll_proj, "rollout")):
            fes = analysis.free_energy_surface(proj, edges_x, edges_y)
            image = axis.pcolormesh(edges_x, edges_y, np.where(np.isfinite(fes), fes, np.nan).T,
                                    cmap="viridis", vmin=0, vmax=8)
            axis.set(title=title, xlabel="TIC 1")
        axes[0].set_ylabel("TIC 2")
        figure.colorbar(image, ax=axes, label="free energy (kT)")
        figure.suptitle(f"{name}: TICA free-energy surfaces")
        file = f"{prefix}_tica.png"
        figure.savefig(out / file, dpi=110)
        plt.close(figure)
        written.append(("TICA free-energy surfaces", file))
    if "contacts" in curves:
        figure, axes = plt.subplots(1, 2, figsize=(8, 4.0), layout="constrained")
        for axis, matrix, title in zip(axes, curves["contacts"], ("reference", "rollout")):
            image = axis.imshow(matrix, vmin=0, vmax=1, cmap="Greys", origin="lower")
            axis.set(title=title, xlabel="bead", ylabel="bead")
        figure.colorbar(image, ax=axes, label="contact frequency")
        figure.suptitle(f"{name}: contact maps")
        file = f"{prefix}_contacts.png"
        figure.savefig(out / file, dpi=110)
        plt.close(figure)
        written.append(("contact maps", file))
    return written


def _time_unit(longest_ps: float) -> tuple[float, str]:
    """Factor from ps and unit name that keep time axes readable (ps below 1 ns, ns above)."""
    return (1.0, "ps") if longest_ps < 1000 else (1e-3, "ns")


def _overlay(axis, dist, xlabel, ref_style, roll_style):
    centres = 0.5 * (dist["edges"][1:] + dist["edges"][:-1])
    axis.plot(centres, dist["reference"], drawstyle="steps-mid", **ref_style)
    axis.plot(centres, dist["rollout"], drawstyle="steps-mid", **roll_style)
    axis.set(xlabel=xlabel, ylabel="density", title=f"JS = {dist['js']:.3f}")


def _plot_scatter(reference, rollout, r2: dict, label: str, file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.2, 4.0))
    axis.scatter(reference, rollout, color="tab:blue")
    low, high = min(min(reference), min(rollout)), max(max(reference), max(rollout))
    axis.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
    axis.set(xlabel=f"reference {label}", ylabel=f"rollout {label}",
             title=f"Pearson r$^2$ = {r2['pearson_r2']:.2f}, R$^2$ = {r2['coefficient_of_determination']:.2f}")
    figure.tight_layout()
    figure.savefig(file, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------------- report text

def _fmt(value, digits=4):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) tables shared by the Markdown and HTML reports."""
    tables = []
    summary = result["summary"]
    tables.append(("Summary", ["metric", "value"], [[k, _fmt(v)] for k, v in summary.items()
                                                    if not isinstance(v, dict)]))
    rows = []
    for system in result["systems"]:
        m = system["metrics"]
        rg = m.get("rg_nm", {})
        tau = m["relaxation_time_ps"]
        rows.append([system["name"],
                     _fmt(rg.get("reference", {}).get("mean")), _fmt(rg.get("rollout", {}).get("mean")),
                     _fmt(tau["reference"]) + (" (lower bound)" if tau["reference_lower_bound"] else ""),
                     _fmt(tau["rollout"]) + (" (lower bound)" if tau["rollout_lower_bound"] else ""),
                     _fmt(m["js_divergence_mean"]),
                     str(m["collisions"]["rollout"]["total"]),
                     _fmt(m["speed"].get("speedup"))])
    tables.append(("Systems", ["system", "Rg ref (nm)", "Rg rollout (nm)", "tau ref (ps)", "tau rollout (ps)",
                               "mean JS", "rollout collisions", "speed-up"], rows))
    observables = sorted({k for s in result["systems"] for k in s["metrics"]["js_divergence"]})
    if observables:
        tables.append(("Jensen-Shannon divergences (base 2: 0 identical, 1 disjoint)", ["system", *observables],
                       [[s["name"], *(_fmt(s["metrics"]["js_divergence"].get(k), 3) for k in observables)]
                        for s in result["systems"]]))
    for key, label in (("rg", "mean Rg"), ("relaxation_time", "Rg^2 relaxation time")):
        r2 = result["across_systems"].get(key)
        if isinstance(r2, dict):
            tables.append((f"Across systems: {label}", ["Pearson r^2 (as Fu et al.)", "R^2 (1 - SS_res/SS_tot)",
                                                        "slope", "intercept", "n"],
                           [[_fmt(r2["pearson_r2"], 3), _fmt(r2["coefficient_of_determination"], 3),
                             _fmt(r2["slope"], 3), _fmt(r2["intercept"], 3), str(r2["n"])]]))
    return tables


def _markdown(result: dict) -> str:
    lines = ["# openmm-cgml evaluation report", "", f"Created {result['created']} by openmm-cgml "
             f"{result['openmm_cgml_version']}. All numbers are in `metrics.json`.", ""]
    for title, header, rows in _tables(result):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    for title, file in result["plots"].get("across_systems", []):
        lines += [f"### {title}", "", f"![{title}]({file})", ""]
    for system in result["systems"]:
        lines += [f"## {system['name']}", "", f"reference: `{system['reference']['path']}` "
                  f"({system['reference']['n_frames']} frames every {_fmt(system['reference']['frame_interval_ps'])} ps); "
                  f"rollout: `{system['rollout']['path']}` ({system['rollout']['n_frames']} frames every "
                  f"{_fmt(system['rollout']['frame_interval_ps'])} ps, {system['metrics']['replicas']} replica(s))", ""]
        lines += [f"- note: {note}" for note in system["metrics"]["notes"]]
        for title, file in system["plots"]:
            lines += ["", f"![{title}]({file})"]
        lines.append("")
    return "\n".join(lines)


def _html(result: dict) -> str:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>openmm-cgml evaluation</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style></head><body>",
             "<h1>openmm-cgml evaluation report</h1>",
             f"<p>Created {esc(result['created'])} by openmm-cgml {esc(result['openmm_cgml_version'])}. "
             "All numbers are in <a href='metrics.json'>metrics.json</a>.</p>"]
    for title, header, rows in _tables(result):
        parts.append(f"<h2>{esc(title)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    for title, file in result["plots"].get("across_systems", []):
        parts.append(f"<h3>{esc(title)}</h3><img src='{esc(file)}' alt='{esc(title)}'>")
    for system in result["systems"]:
        parts.append(f"<h2>{esc(system['name'])}</h2><ul>")
        parts += [f"<li>{esc(note)}</li>" for note in system["metrics"]["notes"]]
        parts.append("</ul>")
        parts += [f"<img src='{esc(file)}' alt='{esc(title)}'>" for title, file in system["plots"]]
    parts.append("</body></html>")
    return "\n".join(parts)


def evaluate(references, rollouts, out_dir, *, topology=None, model=None, mapping_method: str = "metis",
             mapping_params: dict | None = None, reference_interval=None, rollout_interval=None,
             reference_ns_per_day=None, rollout_ns_per_day=None, tica_lag=None, contact_cutoff=0.8,
             collision_threshold=0.1, names=None, plots: bool = True, overwrite: bool = False) -> dict:
    """Compare each reference with its rollout, write the report into ``out_dir``, return the metrics.

    ``references``/``rollouts``: equal-length lists of paths (pair i = system i).
    ``topology``: one bead PDB for all bead trajectories, or one per rollout.
    ``model``: an exported model file or ``CGModel`` whose mapping coarse-grains
    fine references (else ``mapping_method``/``mapping_params``, see ``Mapping.build``).
    Speeds in ns/day (e.g. from ``analysis.ns_per_day``) give the speed-up.
    Nothing is written before every metric is computed; existing reports are
    only replaced with ``overwrite=True``.
    """
    references, rollouts = [str(p) for p in references], [str(p) for p in rollouts]
    if not references or len(references) != len(rollouts):
        raise ValueError(f"give one rollout per reference: got {len(references)} reference(s) and "
                         f"{len(rollouts)} rollout(s)")
    topologies = [None] * len(rollouts) if topology is None else (
        [topology] * len(rollouts) if isinstance(topology, (str, Path)) else list(topology))
    if len(topologies) == 1:
        topologies *= len(rollouts)
    if len(topologies) != len(rollouts):
        raise ValueError(f"give one --topology for all rollouts or one per rollout, got {len(topologies)}")
    out = Path(out_dir)
    existing = [name for name in REPORT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds a report ({', '.join(existing)}); use --overwrite to replace it")
    if model is not None and not hasattr(model, "mapping"):
        from openmm_cgml.model_file import load

        model = load(model)
    names = names or [Path(r).stem for r in rollouts]

    systems, loaded = [], []
    for index, (ref_path, roll_path, top) in enumerate(zip(references, rollouts, topologies)):
        reference, mapping = load_reference(ref_path, topology=top, model=model, mapping_method=mapping_method,
                                            mapping_params=mapping_params, frame_interval=reference_interval)
        rollout = load_rollout(roll_path, topology=top, frame_interval=rollout_interval)
        # masses, bonds and molecules of bead files come from the mapping when one is known
        if mapping is None and model is not None and model.mapping is not None \
                and reference.n_beads % model.mapping.n_beads == 0:
            mapping = model.mapping
            _fill_from_mapping(reference, mapping, reference.n_beads // mapping.n_beads)
        if mapping is not None and rollout.n_beads % mapping.n_beads == 0:
            _fill_from_mapping(rollout, mapping, rollout.n_beads // mapping.n_beads)
        if reference.masses is None or rollout.masses is None:
            reference.masses = rollout.masses = None
            rollout.notes.append("bead masses unknown (no fine reference or model): Rg uses equal masses")
        result = compare(reference, rollout, tica_lag=tica_lag, contact_cutoff=contact_cutoff,
                         collision_threshold=collision_threshold, reference_ns_per_day=reference_ns_per_day,
                         rollout_ns_per_day=rollout_ns_per_day)
        describe = lambda t: {"path": t.path, "n_frames": t.n_frames, "n_beads": t.n_beads,
                              "frame_interval_ps": t.frame_interval_ps, "simulated_ps": t.simulated_ps,
                              "periodic": t.box is not None}
        systems.append({"name": names[index], "reference": describe(reference), "rollout": describe(rollout),
                        "metrics": result["metrics"]})
        loaded.append((reference, rollout, result["curves"]))

    across = _across_systems(systems)
    from openmm_cgml import __version__

    result = {"openmm_cgml_version": __version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "settings": {"contact_cutoff_nm": strip(contact_cutoff, NM, "contact_cutoff"),
                           "collision_threshold_nm": strip(collision_threshold, NM, "collision_threshold"),
                           "js_base": 2, "relaxation_time_method": "integrated ACF to first zero crossing",
                           "mapping": None if model is not None else {"method": mapping_method,
                                                                      "params": mapping_params or {}},
                           "model": getattr(model, "path", None)},
              "summary": _summary(systems, across), "across_systems": across, "systems": systems,
              "plots": {"across_systems": []}}

    out.mkdir(parents=True, exist_ok=True)
    for index, (system, (reference, rollout, curves)) in enumerate(zip(systems, loaded)):
        system["plots"] = _plot_system(index, system["name"], curves, reference, rollout, out) if plots else []
    if plots:
        for key, label in (("rg", "mean Rg (nm)"), ("relaxation_time", "relaxation time (ps)")):
            if isinstance(across.get(key), dict):
                file = f"r2_{key}.png"
                _plot_scatter(across[key]["reference_values"], across[key]["rollout_values"], across[key], label,
                              out / file)
                result["plots"]["across_systems"].append((f"{label}: rollout vs reference", file))
    result = jsonable(result)
    write_atomic(out / "metrics.json", json.dumps(result, indent=2))
    write_atomic(out / "report.md", _markdown(result))
    write_atomic(out / "report.html", _html(result))
    return result


def _across_systems(systems: list[dict]) -> dict:
    """Paper-style r^2 over systems for mean Rg and for the Rg^2 relaxation time."""
    across = {}
    for key, get in (("rg", lambda m, side: m.get("rg_nm", {}).get(side, {}).get("mean")),
                     ("relaxation_time", lambda m, side: m["relaxation_time_ps"].get(side))):
        ref = [get(s["metrics"], "reference") for s in systems]
        roll = [get(s["metrics"], "rollout") for s in systems]
        usable = [(a, b) for a, b in zip(ref, roll) if a is not None and b is not None]
        if len(usable) < 2:
            across[key] = f"needs >= 2 systems with values, have {len(usable)}"
            continue
        a, b = map(list, zip(*usable))
        try:
            across[key] = {**analysis.r_squared(a, b), "reference_values": a, "rollout_values": b}
        except ValueError as error:
            across[key] = str(error)
    return across


def _summary(systems: list[dict], across: dict) -> dict:
    def r2(key):
        value = across.get(key)
        return value["pearson_r2"] if isinstance(value, dict) else None

    js = [s["metrics"]["js_divergence_mean"] for s in systems if s["metrics"]["js_divergence_mean"] is not None]
    speedups = [s["metrics"]["speed"].get("speedup") for s in systems if s["metrics"]["speed"].get("speedup")]
    return {"n_systems": len(systems), "rg_r2": r2("rg"), "relaxation_r2": r2("relaxation_time"),
            "rg_R2_determination": across["rg"]["coefficient_of_determination"] if isinstance(across.get("rg"), dict) else None,
            "js_divergence": float(np.mean(js)) if js else None,
            "collisions": int(sum(s["metrics"]["collisions"]["rollout"]["total"] for s in systems)),
            "speedup": float(np.mean(speedups)) if speedups else None}


# --------------------------------------------------------------------------- CLI

def configure_parser(parser: argparse.ArgumentParser) -> None:
    from openmm_cgml.mapping import add_mapping_arguments

    parser.add_argument("--reference", nargs="+", required=True, metavar="REF",
                        help="reference trajectories: fine HDF5 from 'cgml generate' or bead trajectories")
    parser.add_argument("--rollout", nargs="+", required=True, metavar="ROLL",
                        help="rollout bead trajectories (DCD/XTC/HDF5), one per reference, same order")
    parser.add_argument("--topology", nargs="+", default=None, metavar="PDB",
                        help="bead topology PDB for DCD/XTC files: one for all or one per rollout")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="directory for metrics.json and the report")
    parser.add_argument("--model", default=None, help="exported model: its mapping coarse-grains fine references")
    add_mapping_arguments(parser)
    parser.add_argument("--reference-interval", type=float, default=None, metavar="PS",
                        help="time between reference frames (ps) when the file does not say")
    parser.add_argument("--rollout-interval", type=float, default=None, metavar="PS",
                        help="time between rollout frames (ps) when the file does not say")
    parser.add_argument("--reference-ns-per-day", type=float, default=None, metavar="NS_PER_DAY",
                        help="reference MD speed, for the speed-up")
    parser.add_argument("--rollout-ns-per-day", type=float, default=None, metavar="NS_PER_DAY",
                        help="rollout speed, for the speed-up")
    parser.add_argument("--tica-lag", type=float, default=None, metavar="PS",
                        help="TICA lag time (ps); default the rollout frame interval")
    parser.add_argument("--contact-cutoff", type=float, default=0.8, metavar="NM", help="contact distance (nm)")
    parser.add_argument("--collision-threshold", type=float, default=0.1, metavar="NM",
                        help="beads closer than this collide (nm, default 0.1 as Fu et al.)")
    parser.add_argument("--no-plots", action="store_true", help="write metrics.json and the tables only")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report in REPORT_DIR")


def run(args) -> int:
    from openmm_cgml.mapping import mapping_options

    method, params = mapping_options(args)
    result = evaluate(args.reference, args.rollout, args.out, topology=args.topology, model=args.model,
                      mapping_method=method, mapping_params=params,
                      reference_interval=args.reference_interval, rollout_interval=args.rollout_interval,
                      reference_ns_per_day=args.reference_ns_per_day, rollout_ns_per_day=args.rollout_ns_per_day,
                      tica_lag=args.tica_lag, contact_cutoff=args.contact_cutoff,
                      collision_threshold=args.collision_threshold, plots=not args.no_plots,
                      overwrite=args.overwrite)
    summary = result["summary"]
    print(f"evaluated {summary['n_systems']} system(s); wrote {Path(args.out) / 'report.md'}")
    print(json.dumps(summary))
    return 0
