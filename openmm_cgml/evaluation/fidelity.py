"""Fidelity metrics of bead trajectories against a reference, with confidence intervals and ceilings.

Each test molecule has a reference trajectory (replica A), an independent
second reference (replica B) and a rollout. Every metric is computed for the
rollout against A (the model) and for B against A (the ceiling: what a
perfect propagator would score with trajectories of that length). Intervals
are 95% percentile bootstraps: over molecules for statistics across
molecules, and, for per-molecule means, a moving-block bootstrap in time
nested inside it.

The inputs are :class:`Chain` objects: bead positions of one molecule and the
little the metrics need to know about it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from openmm_cgml.evaluation import analysis, dynamics
from openmm_cgml.evaluation.statistics import block_bootstrap_means, bootstrap_ci, percentile_ci, r2_scores
from openmm_cgml.units import COLLISION_DISTANCE_NM

__all__ = ["Chain", "ChainObservables", "observe", "across_chains", "distribution_metrics",
           "collision_metrics", "type_pair_minima", "at_limit_fraction"]


@dataclass
class Chain:
    """One molecule's bead trajectory.

    ``positions`` (F, N, 3) nm, frames ``dt_ps`` apart; ``masses`` (N,) amu;
    ``bonds`` (C, 2) coarse bonds; ``bead_types`` (N,) integer labels of the
    bead kinds (for per-type-pair minimum distances); ``name`` for the JSON.
    """
    name: str
    positions: np.ndarray
    dt_ps: float
    masses: np.ndarray
    bonds: np.ndarray
    bead_types: np.ndarray
    features: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n_beads(self) -> int:
        return int(self.positions.shape[1])

    @property
    def angles(self) -> np.ndarray:
        return analysis.angle_triplets(self.bonds)

    @property
    def nonbonded_pairs(self) -> np.ndarray:
        """Bead pairs that are neither bonded nor share a bonded neighbour (1-2 and 1-3 excluded)."""
        excluded = {tuple(sorted(b)) for b in self.bonds.tolist()}
        excluded |= {tuple(sorted((a, c))) for a, _, c in self.angles.tolist()}
        pairs = analysis.all_pairs(self.n_beads)
        keep = [tuple(p) not in excluded for p in pairs.tolist()]
        return pairs[np.asarray(keep, dtype=bool)]


@dataclass
class ChainObservables:
    """What one trajectory of a chain gives: the time series and scalars the metrics compare."""
    rg: np.ndarray
    mean_rg_replicates: np.ndarray
    tau_integrated: float
    tau_exponential: float
    rouse_times: np.ndarray
    com_diffusion: float
    bonds: np.ndarray
    angles: np.ndarray
    end_to_end: np.ndarray
    pairs: np.ndarray


def observe(chain: Chain, n_boot: int = 1000, seed: int = 0) -> ChainObservables:
    """Compute every observable of one chain trajectory."""
    xyz = chain.positions
    rg = analysis.radius_of_gyration(xyz, chain.masses)
    relaxation = dynamics.rg2_relaxation(xyz, chain.masses, chain.dt_ps)
    return ChainObservables(
        rg=rg,
        mean_rg_replicates=block_bootstrap_means(rg, n_boot=n_boot, seed=seed),
        tau_integrated=relaxation["integrated"],
        tau_exponential=relaxation["exponential"],
        rouse_times=dynamics.rouse_times(xyz, chain.dt_ps),
        com_diffusion=dynamics.com_diffusion(xyz, chain.masses, chain.dt_ps),
        bonds=analysis.bond_lengths(xyz, chain.bonds).ravel(),
        angles=analysis.bond_angles(xyz, chain.angles).ravel() if len(chain.angles) else np.zeros(0),
        end_to_end=np.linalg.norm(xyz[:, -1] - xyz[:, 0], axis=-1),
        pairs=analysis.pair_distances(xyz, chain.nonbonded_pairs).ravel() if len(chain.nonbonded_pairs)
        else np.zeros(0),
    )


def _metric(model: float, ceiling: float, ci95, **extra) -> dict:
    return {"model": float(model), "ceiling": float(ceiling), "ci95": [float(v) for v in ci95], **extra}


def across_chains(reference: list[ChainObservables], replica: list[ChainObservables],
                  rollout: list[ChainObservables], baseline_rg: np.ndarray | None, n_boot: int = 1000,
                  seed: int = 0, prefix: str = "") -> dict:
    """Metrics across chains: mean-Rg R^2/r^2 (with the composition baseline), log-tau r^2/R^2,
    Rouse-mode and centre-of-mass-diffusion ratios. Each ``{"model", "ceiling", "ci95"}``."""
    rng = np.random.default_rng(seed)
    n = len(reference)

    def mean_rg(obs):
        return np.array([o.rg.mean() for o in obs])

    truth, model, ceiling = mean_rg(reference), mean_rg(rollout), mean_rg(replica)
    # nested bootstrap: chains resampled, and each chain's means drawn from its block-bootstrap replicates
    draws = {name: np.stack([o.mean_rg_replicates for o in obs]) for name, obs in
             (("truth", reference), ("model", rollout), ("ceiling", replica))}
    boot = {"R2": [], "r2": [], "ceiling_R2": [], "ceiling_r2": [], "baseline_R2": [], "baseline_r2": []}
    for _ in range(n_boot):
        chains = rng.integers(0, n, size=n)
        pick = {name: d[chains, rng.integers(0, d.shape[1], size=n)] for name, d in draws.items()}
        R2, r2 = r2_scores(pick["truth"], pick["model"])
        boot["R2"].append(R2)
        boot["r2"].append(r2)
        R2, r2 = r2_scores(pick["truth"], pick["ceiling"])
        boot["ceiling_R2"].append(R2)
        boot["ceiling_r2"].append(r2)
        if baseline_rg is not None:
            R2, r2 = r2_scores(pick["truth"], baseline_rg[chains])
            boot["baseline_R2"].append(R2)
            boot["baseline_r2"].append(r2)
    metrics = {}
    for kind, index in (("R2", 0), ("r2", 1)):
        extra = {}
        if baseline_rg is not None:
            extra = {"baseline": r2_scores(truth, baseline_rg)[index],
                     "baseline_ci95": percentile_ci(boot[f"baseline_{kind}"])}
            extra["gain_over_baseline"] = r2_scores(truth, model)[index] - extra["baseline"]
        metrics[f"{prefix}rg_{kind}"] = _metric(r2_scores(truth, model)[index], r2_scores(truth, ceiling)[index],
                                                percentile_ci(boot[kind]),
                                                ceiling_ci95=percentile_ci(boot[f"ceiling_{kind}"]), **extra)
    if prefix:  # the long-chain set reports sizes only: its references are too short for kinetics
        return metrics

    for name, attr in (("logtau", "tau_integrated"), ("logtau_exp", "tau_exponential")):
        t_ref = np.log([getattr(o, attr) for o in reference])
        t_model = np.log([getattr(o, attr) for o in rollout])
        t_ceiling = np.log([getattr(o, attr) for o in replica])
        for kind, index in (("r2", 1), ("R2", 0)):
            _, ci, _ = bootstrap_ci(t_ref, lambda i: r2_scores(t_ref[i], t_model[i])[index], n_boot, seed)
            _, ceiling_ci, _ = bootstrap_ci(t_ref, lambda i: r2_scores(t_ref[i], t_ceiling[i])[index], n_boot,
                                            seed)
            metrics[f"{name}_{kind}"] = _metric(r2_scores(t_ref, t_model)[index],
                                                r2_scores(t_ref, t_ceiling)[index], ci, ceiling_ci95=ceiling_ci)

    def ratio_metric(values):
        ref = np.log([values(o) for o in reference])
        model_ratio = np.log([values(o) for o in rollout]) - ref
        ceiling_ratio = np.log([values(o) for o in replica]) - ref
        _, ci, _ = bootstrap_ci(ref, lambda i: np.exp(model_ratio[i].mean()), n_boot, seed)
        _, ceiling_ci, _ = bootstrap_ci(ref, lambda i: np.exp(ceiling_ratio[i].mean()), n_boot, seed)
        # geometric means over chains: a ratio of 2 and one of 1/2 average to 1
        return _metric(np.exp(model_ratio.mean()), np.exp(ceiling_ratio.mean()), ci, ceiling_ci95=ceiling_ci)

    for p in range(3):
        metrics[f"rouse{p + 1}_ratio"] = ratio_metric(lambda o, p=p: o.rouse_times[p])
    metrics["com_diffusion_ratio"] = ratio_metric(lambda o: o.com_diffusion)
    return metrics


def _js(reference: np.ndarray, other: np.ndarray, n_bins: int, value_range=None) -> float:
    if reference.size == 0 or other.size == 0:
        return float("nan")
    return analysis.js_divergence_samples(reference, other, n_bins=n_bins, value_range=value_range)


def distribution_metrics(reference: list[ChainObservables], replica: list[ChainObservables],
                         rollout: list[ChainObservables], n_bins: int = 50, pair_cutoff_nm: float = 1.2,
                         n_boot: int = 1000, seed: int = 0) -> tuple[dict, list[dict]]:
    """Per-chain JS divergences, averaged over chains (bootstrap over chains), and the stretched-bond fraction.

    Bins come from the reference (A) sample, with one overflow bin, so mass a
    rollout puts outside the reference's range counts fully. Non-bonded pair
    distances are histogrammed on ``[0, pair_cutoff_nm]``; farther pairs share
    the overflow bin. Returns (metrics, per-chain rows).
    """
    observables = {
        "bond_js": (lambda o: o.bonds, None),
        "angle_js": (lambda o: o.angles, (0.0, np.pi)),
        "rg_js": (lambda o: o.rg, None),
        "end_to_end_js": (lambda o: o.end_to_end, None),
        "pair_js": (lambda o: np.minimum(o.pairs, pair_cutoff_nm + 1.0), (0.0, pair_cutoff_nm)),
    }
    rows = [dict() for _ in reference]
    metrics = {}
    for name, (values, value_range) in observables.items():
        model = np.array([_js(values(a), values(r), n_bins, value_range) for a, r in zip(reference, rollout)])
        ceiling = np.array([_js(values(a), values(b), n_bins, value_range) for a, b in zip(reference, replica)])
        for row, m, c in zip(rows, model, ceiling):
            row[name] = {"model": float(m), "ceiling": float(c)}
        _, ci, _ = bootstrap_ci(model, lambda i: np.nanmean(model[i]), n_boot, seed)
        _, ceiling_ci, _ = bootstrap_ci(ceiling, lambda i: np.nanmean(ceiling[i]), n_boot, seed)
        metrics[name] = _metric(np.nanmean(model), np.nanmean(ceiling), ci, ceiling_ci95=ceiling_ci,
                                ratio_to_ceiling=float(np.nanmean(model) / max(np.nanmean(ceiling), 1e-12)))

    def over_max(a, x):
        return float(np.mean(x.bonds > a.bonds.max())) if x.bonds.size else float("nan")

    model = np.array([over_max(a, r) for a, r in zip(reference, rollout)])
    ceiling = np.array([over_max(a, b) for a, b in zip(reference, replica)])
    _, ci, _ = bootstrap_ci(model, lambda i: model[i].mean(), n_boot, seed)
    metrics["bond_over_max_fraction"] = _metric(model.mean(), ceiling.mean(), ci)
    return metrics, rows


def type_pair_minima(chains: list[Chain]) -> dict:
    """Closest approach seen per (bead type, bead type, bonded) over the given chains' frames, nm."""
    minima: dict = {}
    for chain in chains:
        for key, distances in _typed_pair_distances(chain).items():
            minima[key] = min(minima.get(key, np.inf), float(distances.min()))
    return minima


def _typed_pair_distances(chain: Chain) -> dict:
    pairs = analysis.all_pairs(chain.n_beads)
    bonded = {tuple(sorted(b)) for b in chain.bonds.tolist()}
    distances = analysis.pair_distances(chain.positions, pairs)  # (F, P)
    groups: dict = {}
    for column, (i, j) in enumerate(pairs.tolist()):
        ti, tj = sorted((int(chain.bead_types[i]), int(chain.bead_types[j])))
        groups.setdefault((ti, tj, (i, j) in bonded), []).append(column)
    return {key: distances[:, columns] for key, columns in groups.items()}


def collision_metrics(rollouts: list[Chain], minima: dict) -> dict:
    """Raw collision counts of rollouts (no correction applied): pairs under 1 A, and under the reference's
    closest approach for their type pair. Counts are pair-frames; fractions are per pair-frame."""
    under_1a = under_min = total = 0
    for chain in rollouts:
        for key, distances in _typed_pair_distances(chain).items():
            total += distances.size
            under_1a += int(np.count_nonzero(distances < COLLISION_DISTANCE_NM))
            if key in minima:
                under_min += int(np.count_nonzero(distances < minima[key]))
    return {"under_1_angstrom": under_1a, "under_reference_minimum": under_min, "pair_frames": total,
            "under_reference_minimum_fraction": under_min / total if total else float("nan")}


def at_limit_fraction(chains: list[Chain], bonded_limit: float, nonbonded_limit: float,
                      tolerance: float = 0.01) -> float:
    """Fraction of pair distances within ``tolerance`` (relative) of the hard-core limit of their pair class.

    A projection that holds pairs at its limit piles probability there; a
    physical repulsion does not. Compare a rollout's value with the reference's.
    """
    hits = total = 0
    for chain in chains:
        for (_, _, bonded), distances in _typed_pair_distances(chain).items():
            limit = bonded_limit if bonded else nonbonded_limit
            if limit <= 0:
                continue
            hits += int(np.count_nonzero(np.abs(distances / limit - 1.0) <= tolerance))
            total += distances.size
    return hits / total if total else float("nan")
