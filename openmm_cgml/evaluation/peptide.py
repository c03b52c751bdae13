"""The peptide fidelity benchmark (``cgml benchmark peptide``): torsions, states, kinetics and handedness.

    cgml benchmark peptide --scale small --out runs/bench-peptide [--model alanine-dipeptide]

A run (definition: ``openmm_cgml/benchmarks/peptide.yaml``):

1. runs, or finds in the cache, the reference MD: a library run (fragments for
   reading atoms off beads; never scored), validation replicas and the test
   replicas, the even ones A (the reference) and the odd ones B (the ceiling);
2. chooses the model's Score refinement levels (``refine_candidates``) on the
   validation replicas only: the lowest Ramachandran JS of their rollouts (their
   handedness kept is recorded beside it); then rolls out the model from the
   start of every A replica, with as many frames as it has;
3. reads the backbone torsions of every frame: from the atoms for MD, and
   from atoms placed on the rollout's beads by the backmapping fragments
   (exact for the backbone mapping, whose beads sit on N, CA and C);
4. computes each metric for the rollout against A (``model``) and for B
   against A (``ceiling``), with a 95% bootstrap interval over replicas;
5. backmaps held-out B frames with minimisation and times fine MD and the
   rollout interleaved in this process;
6. writes ``fidelity.json``, ``report.md`` and ``ramachandran.png``.

Metrics: per-torsion JS of phi and psi and the 2-D Ramachandran JS on fixed
10 degree bins; the largest population difference of the C7eq/C5, alpha-R
and alpha-L basins (:data:`BASINS`); TICA 2-D JS; the slowest implied
timescale of a Markov state model (deeptime, k-means states on the torsions)
as a ratio to the reference's, and VAMP-2 scores; over one model step, the
RMS torsion change as a ratio to the reference's and the correlation of
successive changes as a difference to it (MD librates, so the reference's is negative); the handedness kept:
the fraction of rollout frames in which every stereocentre among the beads (a bead with three bead
neighbours; the sign of its star volume, :mod:`openmm_cgml.model.chirality`) has the sign it keeps in the
reference (in >= 95% of reference frames). Torsion signs are not counted: a torsion's sign is a
conformation, not a configuration (alpha-L has phi > 0), and the basin populations measure it. A mapping
with no stereocentre among its beads (the backbone mapping without CB) has no handedness to keep: the
metric is then null. The distribution
metrics are also given for a trivial baseline, the library run (one short
independent MD run) against A (``baseline``).
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from openmm_cgml.evaluation.analysis import js_divergence, js_divergence_samples, tica
from openmm_cgml.evaluation.benchmark import frames_per_step
from openmm_cgml.evaluation.statistics import percentile_ci
from openmm_cgml.evaluation.structures import torsions
from openmm_cgml.io import atomic_path, jsonable, software_versions, write_atomic

__all__ = ["run_peptide_benchmark", "BASINS", "basin_labels", "basin_populations"]

# (phi, psi) basins in degrees; alpha_l holds all of phi >= 0 (alpha-L and C7ax)
BASINS = {
    "c7eq_c5": "phi < 0 and (psi >= 50 or psi < -120)",
    "alpha_r": "phi < 0 and -120 <= psi < 50",
    "alpha_l": "phi >= 0",
}
_CHIRAL_AGREEMENT = 0.95


def basin_labels(phi: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Index into :data:`BASINS` (0 C7eq/C5, 1 alpha-R, 2 alpha-L) of each (phi, psi) pair, flattened."""
    phi, psi = np.asarray(phi).ravel(), np.asarray(psi).ravel()
    return np.where(phi >= 0, 2, np.where((psi >= -120) & (psi < 50), 1, 0))


def basin_populations(phi: np.ndarray, psi: np.ndarray) -> dict:
    """Fraction of (phi, psi) pairs in each of :data:`BASINS` (pairs pooled over residues and frames)."""
    labels = basin_labels(phi, psi)
    return {name: float((labels == i).mean()) for i, name in enumerate(BASINS)}


class _Ensemble:
    """Per-replica arrays of one set of trajectories at one frame interval: ``phi``, ``psi`` (degrees), ``beads``
    (nm), and once computed ``tica`` (projections) and ``signs`` (of the beads' star volumes)."""

    def __init__(self, dt_ps: float, **arrays):
        self.dt_ps, self.arrays = dt_ps, arrays

    def __getattr__(self, name):
        try:
            return self.__dict__["arrays"][name]
        except KeyError:
            raise AttributeError(name) from None

    def pick(self, replicas) -> "_Ensemble":
        return _Ensemble(self.dt_ps, **{key: [value[i] for i in replicas] for key, value in self.arrays.items()})

    def pooled(self, name: str) -> np.ndarray:
        """All replicas' values of ``name`` (``phi``, ``psi``) in one flat array."""
        return np.concatenate([v.ravel() for v in self.arrays[name]])

    def features(self) -> list[np.ndarray]:
        """(cos, sin) of every torsion per frame, per replica: the MSM and TICA input."""
        return [np.concatenate([np.cos(np.radians(f)), np.sin(np.radians(f))], axis=1)
                for f in (np.concatenate([a, b], axis=1) for a, b in zip(self.phi, self.psi))]


def _finite_pieces(trajectories: list[np.ndarray]) -> list[np.ndarray]:
    """Each (T, F) trajectory cut at its frames with a non-finite feature into the runs of finite frames.

    A rollout frame whose beads sit on a line has no torsion (NaN); the
    kinetics must not join the frames on either side of it into one transition.
    """
    pieces = []
    for features in trajectories:
        finite = np.isfinite(features).all(axis=1)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], finite.astype(np.int8), [0]])))
        pieces += [features[start:stop] for start, stop in zip(edges[0::2], edges[1::2])]
    return pieces


def _torsion_steps(ensemble: _Ensemble, step_ps: float) -> tuple[np.ndarray, np.ndarray]:
    """Changes of every torsion (degrees, wrapped to [-180, 180)) over one step of ``step_ps``, and the change
    over the next step, pooled over replicas, torsions and frames."""
    lag = max(1, int(round(step_ps / ensemble.dt_ps)))
    now, after = [], []
    for phi, psi in zip(ensemble.phi, ensemble.psi):
        angles = np.concatenate([phi, psi], axis=1)[::lag]
        change = (np.diff(angles, axis=0) + 180.0) % 360.0 - 180.0
        now.append(change[:-1].ravel())
        after.append(change[1:].ravel())
    now, after = np.concatenate(now), np.concatenate(after)
    finite = np.isfinite(now) & np.isfinite(after)
    return now[finite], after[finite]


def _step_rms(ensemble: _Ensemble, step_ps: float) -> float:
    """RMS torsion change (degrees) over one step."""
    now, _ = _torsion_steps(ensemble, step_ps)
    return float(np.sqrt(np.mean(now ** 2)))


def _step_lag1(ensemble: _Ensemble, step_ps: float) -> float:
    """Correlation of a torsion's change over one step with its change over the next (libration: negative)."""
    now, after = _torsion_steps(ensemble, step_ps)
    return float(np.corrcoef(now, after)[0, 1])


def _histogram_js(a: _Ensemble, b: _Ensemble, bins: int) -> dict:
    edges = np.linspace(-180.0, 180.0, bins + 1)

    def hist(e, name):
        return np.histogram(e.pooled(name), edges)[0] + 0.0

    def rama(e):
        return np.histogram2d(e.pooled("phi"), e.pooled("psi"), [edges, edges])[0]

    return {"phi_js": js_divergence(hist(a, "phi"), hist(b, "phi")),
            "psi_js": js_divergence(hist(a, "psi"), hist(b, "psi")), "rama_js": js_divergence(rama(a), rama(b))}


def _population_gap(a: _Ensemble, b: _Ensemble) -> float:
    pa, pb = (basin_populations(e.pooled("phi"), e.pooled("psi")) for e in (a, b))
    return max(abs(pa[key] - pb[key]) for key in BASINS)


class _Kinetics:
    """k-means states on the reference's torsion features; MSM implied timescales and VAMP-2 at one lag."""

    def __init__(self, reference: _Ensemble, clusters: int, lag_ps: float, seed: int = 0):
        from deeptime.clustering import KMeans

        data = np.concatenate(reference.features())
        self.lag_ps = lag_ps
        self.clustering = KMeans(n_clusters=int(clusters), fixed_seed=seed, max_iter=200).fit(data).fetch_model()

    def lag_frames(self, ensemble: _Ensemble) -> int:
        """The lag in frames of ``ensemble`` (``ValueError`` unless a whole number)."""
        lag = self.lag_ps / ensemble.dt_ps
        if abs(lag - round(lag)) > 1e-6 or round(lag) < 1:
            raise ValueError(f"the MSM lag {self.lag_ps} ps is not a whole number of frames {ensemble.dt_ps} ps apart")
        return int(round(lag))

    def slowest_its_ps(self, ensemble: _Ensemble) -> float:
        """The slowest implied timescale (ps) of a maximum-likelihood MSM on the largest connected set."""
        from deeptime.markov import TransitionCountEstimator
        from deeptime.markov.msm import MaximumLikelihoodMSM

        lag = self.lag_frames(ensemble)
        dtrajs = [self.clustering.transform(f).astype(np.int32) for f in _finite_pieces(ensemble.features())
                  if len(f) > lag]
        if not dtrajs:
            return float("nan")
        counts = TransitionCountEstimator(lag, "sliding").fit(dtrajs).fetch_model().submodel_largest()
        if counts.n_states < 2:
            return float("nan")
        msm = MaximumLikelihoodMSM(reversible=True).fit(counts).fetch_model()
        return float(msm.timescales(k=1)[0] * ensemble.dt_ps)

    def vamp2(self, ensemble: _Ensemble) -> float:
        """VAMP-2 score of the torsion features at the lag (deeptime VAMP), a measure of their slow variance."""
        from deeptime.decomposition import VAMP

        lag = self.lag_frames(ensemble)
        trajectories = [f for f in _finite_pieces(ensemble.features()) if len(f) > lag]
        return float(VAMP(lagtime=lag).fit(trajectories).fetch_model().score(r=2))


def _chiral_features(ensemble: _Ensemble, bonds: np.ndarray) -> list[np.ndarray]:
    """Per replica (frames, n_beads) signs of the beads' star volumes (0 for a bead with under three neighbours)."""
    import torch

    from openmm_cgml.model.chirality import bond_tables, pseudo_scalars

    edges = torch.as_tensor(np.asarray(bonds, dtype=np.int64).reshape(-1, 2).T.copy())
    signs, tables = [], None
    for beads in ensemble.beads:
        x = torch.as_tensor(np.asarray(beads, dtype=np.float64))
        if tables is None:   # the bonds' neighbour tables, once for every frame of every replica
            tables = bond_tables(edges, x.shape[1])
        values = torch.stack([pseudo_scalars(frame, edges, tables) for frame in x]).numpy()
        signs.append(np.sign(values[:, :, 0]))   # the star volume; the torsions (1, 2) are conformations
    return signs


def _chiral_reference(reference: _Ensemble) -> tuple[np.ndarray, np.ndarray]:
    """Each bead feature's majority sign in the reference, and which features keep it in >= 95% of frames."""
    signs = np.concatenate(reference.signs)
    majority = np.where((signs > 0).mean(axis=0) >= 0.5, 1.0, -1.0)
    return majority, (signs == majority).mean(axis=0) >= _CHIRAL_AGREEMENT


def _kept_fraction(signs: list[np.ndarray], reference_sign: np.ndarray, chiral: np.ndarray) -> float:
    frames = np.concatenate(signs)
    return float((frames[:, chiral] == reference_sign[chiral]).all(axis=1).mean()) if chiral.any() else float("nan")


def _bootstrap(statistic, a: _Ensemble, b: _Ensemble, n_boot: int, seed: int) -> list[float]:
    """95% interval of ``statistic(a, b)`` resampling the replicas of both with replacement."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(n_boot)):
        pa = rng.integers(0, len(a.phi), len(a.phi))
        pb = rng.integers(0, len(b.phi), len(b.phi))
        values.append(statistic(a.pick(pa), b.pick(pb)))
    return percentile_ci(values)


def _metric(statistic, reference: _Ensemble, replica: _Ensemble, rollout: _Ensemble, n_boot: int) -> dict:
    return {"model": statistic(reference, rollout), "ceiling": statistic(reference, replica),
            "ci95": _bootstrap(statistic, reference, rollout, n_boot, 1),
            "ceiling_ci95": _bootstrap(statistic, reference, replica, n_boot, 2)}


def _read(paths, mapping) -> tuple[list[np.ndarray], float]:
    """Atom positions (frames, n_atoms, 3) nm of each trajectory, and their frame interval (ps)."""
    from openmm_cgml.trajectory import FineTrajectory

    atoms, interval = [], None
    for path in paths:
        with FineTrajectory(path) as trajectory:
            mapping.check_fits(trajectory.topology, where=f"the mapping of {path}")
            atoms.append(np.asarray(trajectory.positions[:], dtype=np.float64))
            interval = float(trajectory.frame_interval_ps)
    return atoms, interval


def _library_backmapper(library: np.ndarray, mapping, system):
    """A :class:`~openmm_cgml.backmap.Backmapper` with fragments from up to 1,000 frames spread over the
    library run's atom positions ``library`` (frames, n_atoms, 3) nm."""
    from openmm_cgml.backmap import Backmapper

    return Backmapper(mapping, system, library[np.linspace(0, len(library) - 1, min(1000, len(library)))
                                               .round().astype(int)])


def _ensemble(atoms: list, beads: list, dt_ps: float, topology) -> _Ensemble:
    angles = [torsions(a, topology) for a in atoms]
    return _Ensemble(dt_ps, phi=[a[0] for a in angles], psi=[a[1] for a in angles], beads=beads)


def _starts(atoms: list, mapping, k: int, lag: int) -> tuple[list[np.ndarray], int]:
    """The first k bead frames, one model step apart, of each trajectory, and the rollout length in model steps.

    A rollout has as many frames as its replica has after the history, whatever the model step: a 10 ps model
    then covers ten times the time of a 1 ps one, but every histogram compares the same number of frames
    (a Ramachandran JS of 36 x 36 bins is biased upward by a few hundred frames, which would otherwise
    penalise long steps).
    """
    histories = [mapping.bead_positions(x[: (k - 1) * lag + 1: lag]) for x in atoms]
    return histories, min(len(x) - 1 - (k - 1) * lag for x in atoms)


def _rollout_scorer(cg_model, mapping, backmapper, atoms: list, interval: float, topology, bins: int):
    """``(score, n_steps)``: ``score(seed, refine)`` rolls the model out from the starts of ``atoms`` (validation
    replicas) and returns the torsion JS of its rollouts against them (``_histogram_js``), the fraction of
    rollout frames that keep the reference's handedness and the rollout ensemble."""
    from openmm_cgml.evaluation.rollouts import roll_out

    model_dt = float(cg_model.model_timestep._value)
    histories, n_steps = _starts(atoms, mapping, cg_model.k, frames_per_step(model_dt, interval))
    reference = _ensemble(atoms, [mapping.bead_positions(x) for x in atoms], interval, topology)
    bonds = np.asarray(mapping.coarse_bonds, dtype=np.int64)
    reference.arrays["signs"] = _chiral_features(reference, bonds)
    reference_sign, chiral = _chiral_reference(reference)

    def score(seed: int, refine: bool) -> tuple[dict, float, _Ensemble]:
        rolled = roll_out(cg_model, [mapping] * len(atoms), histories, n_steps, seed=seed, refine=refine)
        placed = [backmapper.place(frames)._value for frames in rolled["frames"]]
        ensemble = _ensemble(placed, rolled["frames"], model_dt, topology)
        ensemble.arrays["signs"] = _chiral_features(ensemble, bonds)
        return (_histogram_js(reference, ensemble, bins), _kept_fraction(ensemble.signs, reference_sign, chiral),
                ensemble)

    return score, n_steps


def _tune(cg_model, mapping, backmapper, atoms: list, interval: float, topology, definition: dict, log) -> dict:
    """Choose the Score refinement levels on the validation replicas: the lowest Ramachandran JS of their rollouts.

    Sets the model's levels to the choice (``[]`` when it is no refinement). The handedness
    kept by each candidate's rollouts is recorded beside its score, so that choices made outside the benchmark
    (a model's step or size) can weigh it on validation too.
    """
    from openmm_cgml.evaluation.rollouts import choose_refinement

    rollout_scores, n_steps = _rollout_scorer(cg_model, mapping, backmapper, atoms, interval, topology,
                                              int(definition["torsion_bins"]))
    kept = {}

    def score(refine: bool) -> float:
        levels = json.dumps(cg_model.refine_sigmas if refine else [])
        js, kept[levels], _ = rollout_scores(int(definition["validation"]["seed"]), refine)
        return js["rama_js"]

    chosen = choose_refinement(cg_model, definition["refine_candidates"], score, "Ramachandran JS", log)
    return {"refine_sigmas": {**chosen, "chirality_kept_fraction": kept, "replicas": len(atoms),
                              "model_steps": int(n_steps)}}


def run_peptide_benchmark(definition: dict, out: Path, cg_model, model_name: str, cache: Path, workers: int,
                          log=print, platform: str = "CPU") -> dict:
    """Run the peptide benchmark of a loaded ``definition`` (checked, output folder ready); the JSON content.

    Called by :func:`openmm_cgml.evaluation.benchmark.run_benchmark`, which owns the checks common to all
    benchmarks; see the module docstring for what is measured.
    """
    import openmm.unit as unit
    import torch

    from openmm_cgml import systems
    from openmm_cgml.evaluation.references import replica_runs
    from openmm_cgml.evaluation.rollouts import interleaved_speedup, roll_out
    from openmm_cgml.evaluation.structures import backmap_quality
    from openmm_cgml.openmm.bead_system import molecule_mapping

    started = time.perf_counter()
    reference = systems.load(definition["system"], **definition["system_params"])
    mapping = molecule_mapping(cg_model, reference.topology, reference.atom_types)
    log(f"[1/5] reference MD ({definition['name']} v{definition['version']}, scale {definition['scale']})")
    paths = {split: replica_runs(definition["system"], definition["system_params"], split, definition[split],
                                 int(definition["frame_stride"]), int(definition["equilibration_steps"]), cache,
                                 workers, log, platform) for split in ("library", "validation", "test")}
    md_seconds = time.perf_counter() - started
    torch.set_num_threads(1)
    library = np.concatenate(_read(paths["library"], mapping)[0])
    backmapper = _library_backmapper(library, mapping, reference.system)
    model_dt = float(cg_model.model_timestep._value)

    log("[2/5] refinement levels on the validation replicas; rollouts from the start of every A replica")
    validation, interval = _read(paths["validation"], mapping)
    choices = _tune(cg_model, mapping, backmapper, validation, interval, reference.topology, definition, log)
    refine = bool(choices["refine_sigmas"]["value"])
    test, interval = _read(paths["test"], mapping)
    a_atoms, b_atoms = test[0::2], test[1::2]
    histories, n_steps = _starts(a_atoms, mapping, cg_model.k, frames_per_step(model_dt, interval))
    rolled = roll_out(cg_model, [mapping] * len(a_atoms), histories, n_steps, seed=int(definition["test"]["seed"]),
                      refine=refine)
    model_beads = rolled["frames"]
    model_atoms = [backmapper.place(frames).value_in_unit(unit.nanometer) for frames in model_beads]

    log("[3/5] torsions, states, kinetics, handedness")
    a = _ensemble(a_atoms, [mapping.bead_positions(x) for x in a_atoms], interval, reference.topology)
    b = _ensemble(b_atoms, [mapping.bead_positions(x) for x in b_atoms], interval, reference.topology)
    m = _ensemble(model_atoms, model_beads, model_dt, reference.topology)
    document = _metrics(definition, a, b, m, mapping)
    document["baseline"] = _short_md_baseline(definition, a, library, mapping, interval, reference.topology)
    document["choices"] = choices
    document["rollouts"] = _rollout_record(rolled, cg_model, refine, m, int(n_steps))

    log("[4/5] backmapping held-out B frames")
    frames = np.concatenate(b_atoms)
    chosen = np.linspace(0, len(frames) - 1, int(definition["backmap_frames"])).round().astype(int)
    document["backmap"] = backmap_quality(backmapper, frames[chosen], reference.topology)

    log("[5/5] interleaved timing")
    timing = definition["timing"]
    document["speedup"] = interleaved_speedup(reference, cg_model, mapping, histories[0], rounds=timing["rounds"],
                                              md_steps=timing["md_steps"], model_steps=timing["model_steps"])
    document["speedup"]["model_step_ps"] = model_dt
    document.update(_provenance(definition, cg_model, model_name, mapping, a, b, library, md_seconds,
                                time.perf_counter() - started))
    document = jsonable(document)
    write_atomic(out / "fidelity.json", json.dumps(document, indent=1))
    _write_report(document, a, b, m, out)
    log(f"      wrote {out / 'fidelity.json'} and {out / 'report.md'}")
    return document


def _rollout_record(rolled: dict, cg_model, refine: bool, m: _Ensemble, n_steps: int) -> dict:
    """What the scored rollouts were: their count and length, instabilities, and how often corrections fired."""
    per_step = max(rolled["molecule_steps"], 1)
    return {"replicas": len(rolled["frames"]), "model_steps": n_steps,
            "unstable": {str(k): v for k, v in rolled["unstable"].items()},
            # the hard-core projection is off in the scored rollouts (it would hold distances by
            # construction); the truncated step is the model's own: how often it fired
            "hard_core": False,
            "exclusion_retries": int(cg_model.exclusion_retries),
            "redrawn_per_molecule_step": rolled["exclusion_events"][0] / per_step,
            "too_close_after_redraws_per_molecule_step": rolled["exclusion_events"][1] / per_step,
            "refine_sigmas": cg_model.refine_sigmas if refine else [],
            # beads on a line have no torsion: such frames cut the kinetics' trajectories
            "frames_without_torsions": int(sum((~np.isfinite(f).all(axis=1)).sum() for f in m.features())),
            "torsions_from": "atoms placed on the beads by the backmapping fragments (no minimisation)"}


def msm_lag_ps(lag_ps: float, model_step_ps: float) -> float:
    """The MSM lag (ps) the kinetics use: the definition's ``lag_ps`` rounded up to a whole number of model steps,
    so a rollout, one frame per step, has it too (the same lag for the references and the rollout)."""
    steps = max(1, math.ceil(lag_ps / model_step_ps - 1e-6))
    return steps * model_step_ps


def _metrics(definition: dict, a: _Ensemble, b: _Ensemble, m: _Ensemble, mapping) -> dict:
    """Every metric, model (rollout vs A) and ceiling (B vs A), with bootstrap intervals over replicas."""
    bins, n_boot = int(definition["torsion_bins"]), int(definition["bootstrap"])
    kinetics = _Kinetics(a, definition["msm_clusters"], msm_lag_ps(float(definition["msm_lag_ps"]), m.dt_ps))
    others = a.features() + b.features() + m.features()
    _, _, projections = tica(a.features(), kinetics.lag_frames(a), dim=2, others=others)
    n_a, n_b = len(a.phi), len(b.phi)
    a.arrays["tica"], b.arrays["tica"] = projections[:n_a], projections[n_a:n_a + n_b]
    m.arrays["tica"] = projections[n_a + n_b:]
    bonds = np.asarray(mapping.coarse_bonds, dtype=np.int64)
    for ensemble in (a, b, m):
        ensemble.arrays["signs"] = _chiral_features(ensemble, bonds)

    def chirality(ref: _Ensemble, other: _Ensemble) -> float:
        return _kept_fraction(other.signs, *_chiral_reference(ref))

    statistics = {
        "phi_js": lambda x, y: _histogram_js(x, y, bins)["phi_js"],
        "psi_js": lambda x, y: _histogram_js(x, y, bins)["psi_js"],
        "rama_js": lambda x, y: _histogram_js(x, y, bins)["rama_js"],
        "population_max_diff": _population_gap,
        "tica_js": lambda x, y: js_divergence_samples(np.concatenate(x.tica), np.concatenate(y.tica), bins),
        "slowest_its_ratio": lambda x, y: kinetics.slowest_its_ps(y) / kinetics.slowest_its_ps(x),
        "vamp2_ratio": lambda x, y: kinetics.vamp2(y) / kinetics.vamp2(x),
        "chirality_kept_fraction": chirality,
        # torsion dynamics over one model step: how far a torsion moves, and whether it comes back
        "torsion_step_rms_ratio": lambda x, y: _step_rms(y, m.dt_ps) / _step_rms(x, m.dt_ps),
        "torsion_step_lag1_corr_diff": lambda x, y: _step_lag1(y, m.dt_ps) - _step_lag1(x, m.dt_ps),
    }
    metrics = {name: _metric(statistic, a, b, m, n_boot) for name, statistic in statistics.items()}
    populations = {name: basin_populations(e.pooled("phi"), e.pooled("psi"))
                   for name, e in (("reference", a), ("replica", b), ("model", m))}
    return {"metrics": metrics, "populations": populations, "basins_deg": BASINS,
            "slowest_its_ps": {name: kinetics.slowest_its_ps(e) for name, e in (("reference", a), ("replica", b),
                                                                                ("model", m))},
            "torsion_step": {name: {"rms_deg": _step_rms(e, m.dt_ps), "lag1_corr": _step_lag1(e, m.dt_ps)}
                             for name, e in (("reference", a), ("replica", b), ("model", m))} | {"step_ps": m.dt_ps},
            "msm": {"lag_ps": kinetics.lag_ps, "clusters": int(definition["msm_clusters"]),
                    "states": "k-means on (cos, sin) of the torsions of the reference A"},
            "chiral_bead_features": int(_chiral_reference(a)[1].sum())}


def _short_md_baseline(definition: dict, a: _Ensemble, library: np.ndarray, mapping, interval: float,
                       topology) -> dict:
    """The distribution metrics of the library run (a short independent MD run, never scored) against A.

    The trivial baseline a model has to beat: what a short fine MD run gives
    without any model. Kinetics and TICA are left out: one short run has too
    few transitions for them.
    """
    short = _ensemble([library], [mapping.bead_positions(library)], interval, topology)
    bins = int(definition["torsion_bins"])
    bonds = np.asarray(mapping.coarse_bonds, dtype=np.int64)
    short.arrays["signs"] = _chiral_features(short, bonds)
    values = {**_histogram_js(a, short, bins), "population_max_diff": _population_gap(a, short),
              "chirality_kept_fraction": _kept_fraction(short.signs, *_chiral_reference(a))}
    return {"what": f"the library run: one independent MD run of {len(library) * interval / 1000.0:.3g} ns "
                    f"(seed {definition['library']['seed']}) against A", "metrics": values,
            "populations": basin_populations(short.pooled("phi"), short.pooled("psi"))}


def _provenance(definition, cg_model, model_name, mapping, a, b, library, md_seconds, seconds) -> dict:
    import openmm
    import torch

    frames = sum(len(x) for x in a.phi) + sum(len(x) for x in b.phi)
    return {
        "benchmark": definition["name"], "kind": "peptide", "version": definition["version"],
        "scale": definition["scale"], "system": definition["system"],
        "split": {"library": f"{len(library)} frames (seed {definition['library']['seed']}), only for backmapping",
                  "reference_A": f"{len(a.phi)} replicas (even), the reference",
                  "replica_B": f"{len(b.phi)} replicas (odd), the ceiling",
                  "seed": definition["test"]["seed"], "reference_frames": frames,
                  "reference_ns": frames * a.dt_ps / 1000.0,
                  "tuned_on": f"validation: {definition['validation']['replicas']} replicas "
                              f"(seed {definition['validation']['seed']})"},
        "model": {"name": str(model_name), "path": cg_model.path, "model_step_ps": cg_model.model_timestep._value,
                  "k": cg_model.k, "mapping": mapping.method, "n_beads": mapping.n_beads},
        "timing_s": {"reference_md": md_seconds, "total": seconds},
        "hardware": {"machine": platform.machine(), "cpu_count": os.cpu_count(),
                     "python": platform.python_version(), "torch": torch.__version__, "openmm": openmm.__version__,
                     "torch_threads": torch.get_num_threads()},
        "versions": software_versions(),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _write_report(document: dict, a: _Ensemble, b: _Ensemble, m: _Ensemble, out: Path) -> None:
    """``report.md`` (the metrics table) and ``ramachandran.png`` (A, B and the rollout side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True)
    for axis, (title, e) in zip(axes, (("reference A", a), ("MD replica B (ceiling)", b), ("model rollout", m))):
        phi, psi = e.pooled("phi"), e.pooled("psi")
        axis.hist2d(phi, psi, bins=72, range=[[-180, 180], [-180, 180]], cmap="viridis", cmin=1)
        axis.set_title(title)
        axis.set_xlabel("phi (deg)")
    axes[0].set_ylabel("psi (deg)")
    figure.tight_layout()
    with atomic_path(out / "ramachandran.png") as temporary:
        figure.savefig(temporary, format="png", dpi=90)
    plt.close(figure)
    lines = [f"# Peptide fidelity benchmark: {document['system']} ({document['scale']})", "",
             f"Model `{document['model']['name']}` ({document['model']['mapping']} mapping, "
             f"{document['model']['model_step_ps']} ps step); reference A against the rollout (model) and "
             "against replica B (ceiling); 95% bootstrap intervals over replicas. Baseline: "
             f"{document['baseline']['what']}.", "",
             "| metric | model | 95% CI | ceiling | ceiling 95% CI | baseline: short MD |", "|---|---|---|---|---|---|"]
    baseline = document["baseline"]["metrics"]

    def number(value, spec: str = ".4g") -> str:   # null: undefined (no stereocentre among the beads)
        return "n/a" if value is None else format(value, spec)

    for name, metric in document["metrics"].items():
        low, high = metric["ci95"]
        ceiling_low, ceiling_high = metric["ceiling_ci95"]
        lines.append(f"| {name} | {number(metric['model'])} | {number(low, '.3g')} - {number(high, '.3g')} | "
                     f"{number(metric['ceiling'])} | {number(ceiling_low, '.3g')} - {number(ceiling_high, '.3g')} "
                     f"| {number(baseline[name]) if name in baseline else ''} |")
    backmap, speed = document["backmap"], document["speedup"]
    lines += ["", f"Backmapping ({backmap['frames']} held-out frames): heavy-atom RMSD "
              f"{backmap['rmsd_nm']['mean']:.4f} nm, "
              f"handedness {backmap['chirality_fraction']}, frames with clashes {backmap['clashes']} "
              f"(MD frames: {backmap['clashes_md_frames']}).",
              f"Speed-up (interleaved, {len(speed['rounds'])} rounds): median {speed['median']:.0f}x "
              f"(min {speed['min']:.0f}, max {speed['max']:.0f}).", "", "![Ramachandran](ramachandran.png)", ""]
    write_atomic(out / "report.md", "\n".join(lines))
