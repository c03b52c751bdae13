"""The metrics of ``cgml evaluate``: one rollout against its reference, and a set of systems.

:func:`compare` computes, for one system, the size and its relaxation, the
distributions of local and pair structure (with their Jensen-Shannon
divergences), contact maps, TICA surfaces, collisions and the speed-up;
:func:`across_systems` the paper-style r^2 of mean Rg and relaxation time
over a set of systems, and :func:`summary` the headline numbers. The
observables themselves are in :mod:`openmm_cgml.evaluation.analysis`.
"""
from __future__ import annotations

import warnings

import numpy as np

from openmm_cgml.evaluation import analysis
from openmm_cgml.evaluation.trajectories import BeadTrajectory
from openmm_cgml.units import COLLISION_DISTANCE_NM, NM, PS, strip

__all__ = ["compare", "across_systems", "summary"]

MIN_TICA_FRAMES = 200      # below this a 2-D free-energy surface is noise
MAX_CONTACT_BEADS = 1000   # contact maps are (N, N); skip beyond this
MAX_PAIRS = 5000           # bead pairs in the pair-distance distribution
MAX_DISTANCES = 20_000_000  # frames x pairs held at once for a distribution (float32: 80 MB)


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


def n_bins(*samples, low: int = 10, high: int = 100) -> int:
    """Bins for comparing samples: about sqrt(n) of the smaller one, within [low, high].

    The plug-in JS divergence is biased upward by sparsely filled bins, so
    the bin count follows the data rather than being fixed.

    Parameters
    ----------
    *samples : array_like
        The samples to be compared (their first axis counts).
    low, high : int
        The fewest and the most bins.

    Returns
    -------
    int
    """
    n = min(len(s) for s in samples)
    return int(np.clip(round(np.sqrt(n)), low, high))


def _frame_stride(n_frames: int, per_frame: int) -> int:
    """Every how many frames to take so that frames x per_frame stays under MAX_DISTANCES."""
    return max(1, int(np.ceil(n_frames * per_frame / MAX_DISTANCES)))


def _distribution(ref_values, roll_values, bins: int | None = None, value_range=None) -> dict:
    ref_values = np.asarray(ref_values, dtype=np.float64).ravel()
    roll_values = np.asarray(roll_values, dtype=np.float64).ravel()
    bins = n_bins(ref_values, roll_values) if bins is None else bins
    edges = analysis.comparison_edges(ref_values, roll_values, n_bins=bins, value_range=value_range)
    return {"edges": edges, "reference": analysis.histogram(ref_values, edges),
            "rollout": analysis.histogram(roll_values, edges),
            "js": analysis.js_divergence_samples(ref_values, roll_values, n_bins=bins, value_range=value_range)}


# --------------------------------------------------------------------------- the steps of compare

def _replicas(reference: BeadTrajectory, rollout: BeadTrajectory) -> int:
    """How many copies of the reference's beads the rollout holds (ValueError if not a whole number)."""
    n_ref, n_roll = reference.n_beads, rollout.n_beads
    if n_roll % n_ref or (n_roll != n_ref and (rollout.box is not None or reference.box is not None)):
        raise ValueError(f"rollout {rollout.path} has {n_roll} beads but reference {reference.path} has {n_ref}: "
                         "they are not the same coarse-grained system (wrong mapping or topology?)")
    return n_roll // n_ref


def _size_step(reference: BeadTrajectory, rollout: BeadTrajectory, metrics: dict, curves: dict, js: dict) -> None:
    """Rg, its distribution, and the relaxation time of Rg^2."""
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


def _bonded_structure(ref_xyz: np.ndarray, roll_xyz: np.ndarray, bonds: np.ndarray) -> dict:
    """Distributions of bond lengths, angles and dihedrals on the reference's coarse bonds."""
    structure = {}
    if not len(bonds):
        return structure
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
    return structure


def _pair_step(reference: BeadTrajectory, rollout: BeadTrajectory, roll_xyz: np.ndarray, metrics: dict,
               curves: dict, structure: dict) -> None:
    """Pair structure: g(r) with a box on both sides, the pair-distance distribution otherwise."""
    ref_xyz, ref_box, roll_box = reference.positions, reference.box, rollout.box
    if reference.n_beads < 2:
        return
    if ref_box is not None and roll_box is not None:
        half = 0.5 * min(np.linalg.norm(ref_box, axis=2).min(), np.linalg.norm(roll_box, axis=2).min())
        r, g_ref = analysis.rdf(ref_xyz, ref_box, r_range=(0.0, half), n_bins=100)
        _, g_roll = analysis.rdf(roll_xyz, roll_box, r_range=(0.0, half), n_bins=100)
        curves["rdf"] = {"r": r, "reference": g_ref, "rollout": g_roll, "label": "g(r)"}
        metrics["rdf_mean_abs_difference"] = float(np.mean(np.abs(g_ref - g_roll)))
        return
    pairs = analysis.all_pairs(reference.n_beads)
    if len(pairs) > MAX_PAIRS:  # an evenly strided subset keeps memory bounded for big molecules
        pairs = pairs[np.linspace(0, len(pairs) - 1, MAX_PAIRS).round().astype(int)]
    structure["pair_distance_nm"] = _distribution(
        analysis.pair_distances(ref_xyz[::_frame_stride(len(ref_xyz), len(pairs))], pairs),
        analysis.pair_distances(roll_xyz[::_frame_stride(len(roll_xyz), len(pairs))], pairs))


def _contact_step(reference: BeadTrajectory, rollout: BeadTrajectory, roll_xyz: np.ndarray, contact_cutoff,
                  metrics: dict, curves: dict) -> None:
    """Contact frequency maps and their mean absolute difference (molecules of up to MAX_CONTACT_BEADS)."""
    cutoff = strip(contact_cutoff, NM, "contact_cutoff")
    n_ref = reference.n_beads
    if not 2 <= n_ref <= MAX_CONTACT_BEADS:
        return
    ref_map = analysis.contact_map(reference.positions, cutoff, box=reference.box)
    roll_map = analysis.contact_map(roll_xyz, cutoff, box=rollout.box)
    off = ~np.eye(n_ref, dtype=bool)
    metrics["contact_map"] = {"cutoff_nm": cutoff, "mean_abs_difference": float(np.abs(ref_map - roll_map)[off].mean())}
    curves["contacts"] = (ref_map, roll_map)


def _tica_step(reference: BeadTrajectory, rollout: BeadTrajectory, roll_xyz: np.ndarray, tica_lag,
               metrics: dict, curves: dict, js: dict) -> None:
    """Slow coordinates: TICA on bead distances, fitted on the reference, and the JS divergence of the surfaces."""
    if reference.n_frames < MIN_TICA_FRAMES or reference.n_beads < 3:
        metrics["notes"].append(f"TICA skipped: needs >= {MIN_TICA_FRAMES} reference frames and >= 3 beads")
        return
    lag_ps = rollout.frame_interval_ps if tica_lag is None else strip(tica_lag, PS, "tica_lag")
    lag = int(np.clip(round(lag_ps / reference.frame_interval_ps), 1, reference.n_frames // 10))
    try:
        _, ref_proj, (roll_proj,) = analysis.tica(
            analysis.distance_features(reference.positions, box=reference.box), lag, dim=2,
            others=[analysis.distance_features(roll_xyz, box=rollout.box)])
        if ref_proj.shape[1] == 2 and np.all(np.isfinite(roll_proj)):
            js["tica"] = analysis.js_divergence_samples(ref_proj, roll_proj,
                                                        n_bins=n_bins(ref_proj, roll_proj, high=50) // 2)
            curves["tica"] = (ref_proj, roll_proj)
            metrics["tica"] = {"lag_frames": lag, "lag_ps": lag * reference.frame_interval_ps,
                               "features": "bead-bead distances", "dim": 2}
    except (ValueError, np.linalg.LinAlgError) as error:
        metrics["notes"].append(f"TICA skipped: {error}")


def _collision_step(reference: BeadTrajectory, rollout: BeadTrajectory, roll_xyz: np.ndarray,
                    collision_threshold) -> dict:
    """Bead pairs closer than the threshold, on both sides (the reference's count is the control)."""
    threshold = strip(collision_threshold, NM, "collision_threshold")
    collisions = {"threshold_nm": threshold}
    for side, xyz, box in (("reference", reference.positions, reference.box), ("rollout", roll_xyz, rollout.box)):
        counts = analysis.collisions(xyz, threshold, box=box)
        collisions[side] = {"total": int(counts.sum()), "frames_with_collision": int((counts > 0).sum()),
                            "fraction_of_frames": float((counts > 0).mean())}
    return collisions


def compare(reference: BeadTrajectory, rollout: BeadTrajectory, *, tica_lag=None, contact_cutoff=0.8,
            collision_threshold=COLLISION_DISTANCE_NM, reference_ns_per_day=None, rollout_ns_per_day=None) -> dict:
    """All metrics of one system.

    Parameters
    ----------
    reference, rollout : BeadTrajectory
        The same coarse-grained system; the rollout may hold several replicas of the reference's beads.
    tica_lag : Quantity compatible with picoseconds, optional
        TICA lag time; default the rollout frame interval.
    contact_cutoff : Quantity compatible with nanometers
        Contact distance (default: 0.8*unit.nanometer).
    collision_threshold : Quantity compatible with nanometers
        Beads closer than this collide (default: 0.1*unit.nanometer, ``units.COLLISION_DISTANCE_NM``).
    reference_ns_per_day, rollout_ns_per_day : float, optional
        Measured speeds; both give the speed-up.

    Returns
    -------
    dict
        ``{"metrics": JSON-able dict, "curves": arrays for the plots}``.
    """
    replicas = _replicas(reference, rollout)
    roll_xyz = _per_replica(rollout, replicas)
    metrics: dict = {"replicas": replicas, "notes": list(reference.notes) + list(rollout.notes)}
    curves: dict = {}
    js: dict = {}
    _size_step(reference, rollout, metrics, curves, js)
    structure = _bonded_structure(reference.positions, roll_xyz, reference.bonds)
    _pair_step(reference, rollout, roll_xyz, metrics, curves, structure)
    js.update((name, dist["js"]) for name, dist in structure.items())
    curves["structure"] = structure
    _contact_step(reference, rollout, roll_xyz, contact_cutoff, metrics, curves)
    _tica_step(reference, rollout, roll_xyz, tica_lag, metrics, curves, js)
    metrics["collisions"] = _collision_step(reference, rollout, roll_xyz, collision_threshold)
    speed = {"reference_ns_per_day": reference_ns_per_day, "rollout_ns_per_day": rollout_ns_per_day}
    if reference_ns_per_day and rollout_ns_per_day:
        speed["speedup"] = analysis.speedup(rollout_ns_per_day, reference_ns_per_day)
    metrics["speed"] = speed
    metrics["js_divergence"] = js
    metrics["js_divergence_mean"] = float(np.mean(list(js.values()))) if js else None
    return {"metrics": metrics, "curves": curves}


# --------------------------------------------------------------------------- a set of systems

def across_systems(systems: list[dict]) -> dict:
    """Paper-style r^2 over systems for mean Rg and for the Rg^2 relaxation time.

    Parameters
    ----------
    systems : list of dict
        Each with the ``"metrics"`` of :func:`compare`.

    Returns
    -------
    dict
        ``{"rg", "relaxation_time"}`` -> ``analysis.r_squared`` with the values, or a string saying why not.
    """
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


def summary(systems: list[dict], across: dict) -> dict:
    """The headline numbers of a set of systems.

    Parameters
    ----------
    systems : list of dict
        Each with the ``"metrics"`` of :func:`compare`.
    across : dict
        From :func:`across_systems`.

    Returns
    -------
    dict
        ``n_systems``, ``rg_r2``, ``relaxation_r2`` (Pearson), ``rg_R2_determination``, ``js_divergence``
        (mean over systems), ``collisions`` (total over rollouts), ``speedup`` (mean).
    """
    def r2(key):
        value = across.get(key)
        return value["pearson_r2"] if isinstance(value, dict) else None

    js = [s["metrics"]["js_divergence_mean"] for s in systems if s["metrics"]["js_divergence_mean"] is not None]
    speedups = [s["metrics"]["speed"].get("speedup") for s in systems if s["metrics"]["speed"].get("speedup")]
    rg = across.get("rg")
    return {"n_systems": len(systems), "rg_r2": r2("rg"), "relaxation_r2": r2("relaxation_time"),
            "rg_R2_determination": rg["coefficient_of_determination"] if isinstance(rg, dict) else None,
            "js_divergence": float(np.mean(js)) if js else None,
            "collisions": int(sum(s["metrics"]["collisions"]["rollout"]["total"] for s in systems)),
            "speedup": float(np.mean(speedups)) if speedups else None}
