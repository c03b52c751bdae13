"""Observables that compare coarse-grained rollouts with reference MD.

Every function takes plain arrays of positions in nm, shape ``(n_frames,
n_beads, 3)`` (a single frame ``(n_beads, 3)`` is accepted too), an
``openmm.unit`` quantity of such an array, or an ``mdtraj.Trajectory``; so
the same code runs on reference beads (``Mapping.bead_positions``) and on
rollouts (DCD/XTC written by ``CGMLIntegrator``). Masses are in amu, times
in ps (plain numbers are taken in these units, as OpenMM does).

Molecules are assumed whole (``Mapping.bead_positions`` makes them whole;
rollouts never wrap beads). Periodic boxes are ``(n_frames, 3, 3)`` or
``(3, 3)`` box vectors in nm, rows = vectors, as OpenMM writes them.

Conventions chosen here, once:

* Relaxation time of the Rg^2 autocorrelation: the integrated ACF up to
  its first zero crossing (:func:`relaxation_time`, ``method="integrated"``).
* Jensen-Shannon divergence in base 2, so it lies in [0, 1]: 0 for identical
  distributions, 1 for disjoint ones (:func:`js_divergence`).
* Collisions: bead pairs closer than ``units.COLLISION_DISTANCE_NM`` (0.1 nm),
  the "bead collision" criterion of Fu et al. (TMLR 2023) (:func:`collisions`).
* r^2 across systems: both the coefficient of determination and the squared
  Pearson correlation (:func:`r_squared`); Fu et al. report the latter.
"""
from __future__ import annotations

import functools
import warnings
from typing import Sequence

import mdtraj
import numpy as np
import openmm.unit as u
from scipy import optimize, stats
from scipy.spatial import cKDTree
from scipy.spatial.distance import jensenshannon

from openmm_cgml.units import AMU, COLLISION_DISTANCE_NM, NM, PS, strip, strip_array

__all__ = [
    "as_positions", "radius_of_gyration", "autocorrelation", "relaxation_time",
    "angle_triplets", "dihedral_quadruplets", "bond_lengths", "bond_angles", "dihedral_angles",
    "common_edges", "comparison_edges", "histogram", "pair_distances", "rdf", "pair_distance_distribution",
    "all_pairs", "contact_map",
    "distance_features", "tica", "free_energy_surface", "js_divergence", "js_divergence_samples",
    "collisions", "r_squared", "ns_per_day", "speedup",
]

FRAME_CHUNK = 256  # frames per mdtraj call: bounds memory for (chunk, n_pairs) distance arrays


# --------------------------------------------------------------------------- input handling

def as_positions(positions, name: str = "positions") -> np.ndarray:
    """Return positions as a float64 array ``(n_frames, n_beads, 3)`` in nm.

    Accepts an array, a quantity, or an ``mdtraj.Trajectory``; a single frame
    ``(n_beads, 3)`` gains a frame axis. NaN/inf raise ``ValueError``.
    """
    if isinstance(positions, mdtraj.Trajectory):
        positions = positions.xyz  # mdtraj stores nm
    array = strip_array(positions, NM, name)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1] == 0:
        raise ValueError(f"{name} must have shape (n_frames, n_beads, 3), got {array.shape}")
    return array


def _as_box(box, n_frames: int) -> np.ndarray | None:
    """Box vectors ``(n_frames, 3, 3)`` nm, or None for a non-periodic system."""
    if box is None:
        return None
    array = strip_array(box, NM, "box", shape_tail=(3, 3))
    if array.ndim == 2:
        array = np.broadcast_to(array, (n_frames, 3, 3))
    if array.shape != (n_frames, 3, 3):
        raise ValueError(f"box must be (3, 3) or (n_frames={n_frames}, 3, 3), got {array.shape}")
    if np.any(np.abs(np.linalg.det(array)) < 1e-12):
        raise ValueError("box vectors are degenerate (zero volume)")
    return np.ascontiguousarray(array)


def _masses(masses, n_beads: int) -> np.ndarray:
    if masses is None:
        return np.ones(n_beads)
    array = strip_array(masses, AMU, "masses", shape_tail=None).reshape(-1)
    if array.shape != (n_beads,):
        raise ValueError(f"masses must have one entry per bead ({n_beads}), got {array.shape[0]}")
    if np.any(array <= 0):
        raise ValueError("masses must be positive (a bead with zero mass has no centre)")
    return array


def _index_array(indices, width: int, n_beads: int, name: str) -> np.ndarray:
    array = np.asarray(indices, dtype=np.int64).reshape(-1, width)
    if array.size and (array.min() < 0 or array.max() >= n_beads):
        raise ValueError(f"{name} refer to beads outside 0..{n_beads - 1}")
    return array


@functools.lru_cache(maxsize=8)
def _bare_topology(n_beads: int) -> mdtraj.Topology:
    """A topology of ``n_beads`` element-less atoms: mdtraj's geometry kernels only need the count."""
    topology = mdtraj.Topology()
    residue = topology.add_residue("CG", topology.add_chain())
    for i in range(n_beads):
        topology.add_atom(f"B{i}", None, residue)
    return topology


def _chunks(xyz: np.ndarray, box: np.ndarray | None):
    """Yield ``mdtraj.Trajectory`` pieces of at most FRAME_CHUNK frames (nm; box as unit-cell vectors)."""
    topology = _bare_topology(xyz.shape[1])
    for start in range(0, len(xyz), FRAME_CHUNK):
        piece = mdtraj.Trajectory(xyz[start:start + FRAME_CHUNK].astype(np.float32), topology)
        if box is not None:
            piece.unitcell_vectors = box[start:start + FRAME_CHUNK].astype(np.float32)
        yield piece


def _per_chunk(kernel, xyz: np.ndarray, indices: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """An mdtraj geometry kernel (compute_distances, _angles, _dihedrals) over chunks of frames, joined."""
    return np.concatenate([kernel(piece, indices, periodic=box is not None) for piece in _chunks(xyz, box)])


def _pair_distances(xyz: np.ndarray, pairs: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """Distances (n_frames, n_pairs) nm; minimum image when a box is given."""
    return _per_chunk(mdtraj.compute_distances, xyz, pairs, box)


def pair_distances(positions, pairs=None, box=None) -> np.ndarray:
    """Bead-bead distances (n_frames, n_pairs) in nm (default all pairs i < j; minimum image with a box)."""
    xyz = as_positions(positions)
    pairs = all_pairs(xyz.shape[1]) if pairs is None else _index_array(pairs, 2, xyz.shape[1], "pairs")
    return _pair_distances(xyz, pairs, _as_box(box, len(xyz)))


# --------------------------------------------------------------------------- size and dynamics

def radius_of_gyration(positions, masses=None, molecule_of_bead=None) -> np.ndarray:
    """Mass-weighted radius of gyration in nm.

    ``Rg^2 = sum_i m_i |r_i - r_com|^2 / sum_i m_i`` over the beads of each
    molecule. Returns ``(n_frames,)`` for the whole set of beads, or
    ``(n_frames, n_molecules)`` when ``molecule_of_bead`` (one integer per
    bead, 0..n_molecules-1) is given. Equal masses when ``masses`` is None.
    """
    xyz = as_positions(positions)
    m = _masses(masses, xyz.shape[1])
    if molecule_of_bead is None:
        groups = [np.arange(xyz.shape[1])]
    else:
        labels = np.asarray(molecule_of_bead, dtype=np.int64).reshape(-1)
        if labels.shape != (xyz.shape[1],):
            raise ValueError(f"molecule_of_bead must have one entry per bead ({xyz.shape[1]}), got {labels.shape[0]}")
        groups = [np.flatnonzero(labels == mol) for mol in np.unique(labels)]
    result = np.empty((len(xyz), len(groups)))
    for column, beads in enumerate(groups):
        weights = m[beads] / m[beads].sum()
        sub = xyz[:, beads]
        com = np.einsum("b,fbx->fx", weights, sub)
        result[:, column] = np.sqrt(np.einsum("b,fb->f", weights, ((sub - com[:, None]) ** 2).sum(-1)))
    return result[:, 0] if molecule_of_bead is None else result


def autocorrelation(series, max_lag: int | None = None) -> np.ndarray:
    """Normalised autocorrelation function of a time series, by FFT.

    ``C(t) = <dx(s) dx(s+t)> / <dx^2>`` with ``dx = x - mean(x)``; each lag
    is averaged over the ``n - t`` pairs it has (the unbiased estimator), so
    a slowly decaying ACF is not artificially damped at long lags. Lags
    beyond ``n/2`` rest on few pairs and are noisy: ``max_lag`` defaults to
    ``n // 2``. A 2-D input ``(n_frames, n_series)`` gives one ACF per
    column, shape ``(max_lag + 1, n_series)``.
    """
    x = np.asarray(series, dtype=np.float64)
    one_dimensional = x.ndim == 1
    x = x.reshape(len(x), -1)
    n = len(x)
    if n < 4:
        raise ValueError(f"autocorrelation needs at least 4 frames, got {n}")
    if not np.all(np.isfinite(x)):
        raise ValueError("autocorrelation: series contains NaN or infinite values")
    max_lag = n // 2 if max_lag is None else int(max_lag)
    if not 0 < max_lag < n:
        raise ValueError(f"max_lag must be in 1..{n - 1}, got {max_lag}")
    dx = x - x.mean(axis=0)
    variance = (dx ** 2).mean(axis=0)
    if np.any(variance <= 1e-300):
        raise ValueError("autocorrelation: the series is constant (zero variance)")
    size = 1 << (2 * n - 1).bit_length()  # zero padding to >= 2n-1 avoids circular wrap-around
    spectrum = np.fft.rfft(dx, size, axis=0)
    covariance = np.fft.irfft(spectrum * spectrum.conj(), size, axis=0)[:max_lag + 1]
    covariance /= (n - np.arange(max_lag + 1))[:, None]
    acf = covariance / covariance[0]
    return acf[:, 0] if one_dimensional else acf


def relaxation_time(acf, dt=1.0, method: str = "integrated") -> float:
    """Relaxation time of a normalised ACF sampled every ``dt`` (ps, or frames when dt=1).

    ``method="integrated"`` (primary): ``tau = integral_0^t0 C(t) dt`` by the
    trapezoid rule, where ``t0`` is the first zero crossing (linearly
    interpolated). It is exact for ``C = exp(-t/tau)``, needs no model of the
    decay (polymer Rg^2 relaxes through several Rouse-like modes, where a
    single-exponential fit depends on the chosen fit window), and stopping
    at the first zero keeps the noise of the ACF tail out. If the ACF never
    reaches zero the run is too short: a warning is issued and the value is
    a lower bound.

    ``method="exp_fit"``: least-squares fit of ``exp(-t/tau)`` to the ACF
    up to its first drop below ``exp(-2)`` (or zero), for comparison.
    """
    acf = np.asarray(acf, dtype=np.float64).reshape(-1)
    dt = strip(dt, PS, "dt")
    if dt <= 0:
        raise ValueError(f"dt must be positive, got {dt}")
    if len(acf) < 2 or not np.all(np.isfinite(acf)):
        raise ValueError("relaxation_time needs a finite ACF with at least 2 lags")
    below = np.flatnonzero(acf <= 0)
    if method == "integrated":
        if len(below) == 0:
            warnings.warn("ACF does not reach zero within the lag window; the relaxation time "
                          "is a lower bound (simulate longer)", RuntimeWarning, stacklevel=2)
            return float(np.trapezoid(acf) * dt)
        t0 = below[0]
        area = np.trapezoid(acf[:t0])
        area += acf[t0 - 1] ** 2 / (2 * (acf[t0 - 1] - acf[t0]))  # triangle down to the interpolated zero
        return float(area * dt)
    if method == "exp_fit":
        stop = np.flatnonzero(acf < np.exp(-2.0))
        end = max(int(stop[0]) if len(stop) else len(acf), 2)
        lags = np.arange(end, dtype=np.float64)
        guess = max(float(np.trapezoid(np.clip(acf[:end], 0, None))), 0.5)
        (tau,), _ = optimize.curve_fit(lambda t, tau: np.exp(-t / tau), lags, acf[:end], p0=[guess],
                                       bounds=(1e-9, np.inf))
        return float(tau * dt)
    raise ValueError(f"method must be 'integrated' or 'exp_fit', got {method!r}")


# --------------------------------------------------------------------------- internal coordinates

def _bonded_neighbours(bonds: np.ndarray) -> dict[int, set[int]]:
    """Each bead's bonded neighbours (self-bonds ignored)."""
    neighbours: dict[int, set[int]] = {}
    for a, b in bonds:
        if a != b:
            neighbours.setdefault(int(a), set()).add(int(b))
            neighbours.setdefault(int(b), set()).add(int(a))
    return neighbours


def angle_triplets(bonds) -> np.ndarray:
    """Bead triplets (i, j, k) with bonds i-j and j-k, each angle once, shape (A, 3)."""
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    neighbours = _bonded_neighbours(bonds)
    triplets = [(i, j, k) for j, nbrs in sorted(neighbours.items())
                for i in sorted(nbrs) for k in sorted(nbrs) if i < k]
    return np.asarray(triplets, dtype=np.int64).reshape(-1, 3)


def dihedral_quadruplets(bonds) -> np.ndarray:
    """Bead quadruplets (i, j, k, l) along bonded paths i-j-k-l, each torsion once, shape (D, 4)."""
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    neighbours = _bonded_neighbours(bonds)
    quads = set()
    for j, k in bonds:
        j, k = int(min(j, k)), int(max(j, k))
        for i in neighbours.get(j, ()):
            for m in neighbours.get(k, ()):
                if len({i, j, k, m}) == 4:
                    quads.add((i, j, k, m) if (i, j) <= (m, k) else (m, k, j, i))
    return np.asarray(sorted(quads), dtype=np.int64).reshape(-1, 4)


def bond_lengths(positions, bonds, box=None) -> np.ndarray:
    """Bond lengths (n_frames, n_bonds) in nm (minimum image when ``box`` is given)."""
    xyz = as_positions(positions)
    bonds = _index_array(bonds, 2, xyz.shape[1], "bonds")
    return _pair_distances(xyz, bonds, _as_box(box, len(xyz)))


def bond_angles(positions, triplets, box=None) -> np.ndarray:
    """Angles (n_frames, n_triplets) in radians, in [0, pi]; see :func:`angle_triplets`."""
    xyz = as_positions(positions)
    return _per_chunk(mdtraj.compute_angles, xyz, _index_array(triplets, 3, xyz.shape[1], "angle triplets"),
                      _as_box(box, len(xyz)))


def dihedral_angles(positions, quadruplets, box=None) -> np.ndarray:
    """Dihedral angles (n_frames, n_quadruplets) in radians, in [-pi, pi] (IUPAC sign)."""
    xyz = as_positions(positions)
    return _per_chunk(mdtraj.compute_dihedrals, xyz,
                      _index_array(quadruplets, 4, xyz.shape[1], "dihedral quadruplets"), _as_box(box, len(xyz)))


# --------------------------------------------------------------------------- distributions

def common_edges(*samples, n_bins: int = 50, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Bin edges shared by several samples: their joint min..max unless ``value_range`` is given.

    Comparing distributions (and JS divergences) needs the same bins on both sides.
    """
    if value_range is None:
        finite = [np.asarray(s, dtype=np.float64).ravel() for s in samples]
        finite = np.concatenate([s[np.isfinite(s)] for s in finite]) if finite else np.empty(0)
        if finite.size == 0:
            raise ValueError("common_edges: no finite values to bin")
        low, high = float(finite.min()), float(finite.max())
        if high <= low:
            low, high = low - 0.5, high + 0.5
        else:
            pad = 1e-9 * (high - low)
            low, high = low - pad, high + pad
    else:
        low, high = map(float, value_range)
        if not high > low:
            raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    return np.linspace(low, high, int(n_bins) + 1)


def histogram(values, edges) -> np.ndarray:
    """Probability density of ``values`` on ``edges`` (integrates to the fraction inside the range)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    counts, edges = np.histogram(values[np.isfinite(values)], bins=edges)
    total = max(values.size, 1)
    return counts / (total * np.diff(edges))


def all_pairs(n_beads: int, exclude=None) -> np.ndarray:
    """All bead pairs i < j, shape (P, 2), minus the pairs in ``exclude`` (e.g. bonds)."""
    i, j = np.triu_indices(int(n_beads), k=1)
    pairs = np.stack([i, j], axis=1).astype(np.int64)
    if exclude is not None and len(exclude):
        excluded = {tuple(sorted(map(int, p))) for p in np.asarray(exclude).reshape(-1, 2)}
        keep = np.array([tuple(p) not in excluded for p in pairs.tolist()], dtype=bool)
        pairs = pairs[keep]
    return pairs


def rdf(positions, box, pairs=None, r_range=(0.0, 1.5), n_bins: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """Radial distribution function g(r) of a periodic system, via ``mdtraj.compute_rdf``.

    g(r) is normalised by the ideal-gas count of the given pairs at the
    box's density, so uniform random points give g = 1. ``pairs`` defaults
    to all bead pairs; ``r_range`` (nm) should stay below half the shortest
    box length. Returns bin centres (nm) and g(r), frames averaged.
    """
    xyz = as_positions(positions)
    if box is None:
        raise ValueError("rdf needs the periodic box; use pair_distance_distribution for a non-periodic system")
    box = _as_box(box, len(xyz))
    pairs = all_pairs(xyz.shape[1]) if pairs is None else _index_array(pairs, 2, xyz.shape[1], "pairs")
    lo, hi = (strip(r, NM, "r_range") for r in r_range)
    total = np.zeros(int(n_bins))
    weight = 0
    for piece in _chunks(xyz, box):
        r, g = mdtraj.compute_rdf(piece, pairs, r_range=(lo, hi), n_bins=int(n_bins), periodic=True)
        total += g * piece.n_frames
        weight += piece.n_frames
    return r, total / weight


def pair_distance_distribution(positions, pairs=None, edges=None, box=None) -> tuple[np.ndarray, np.ndarray]:
    """Distribution of bead-bead distances: the RDF analogue for a finite, non-periodic system.

    Without a box the ideal-gas normalisation of g(r) is undefined (no
    volume), so this returns the probability density p(r) (1/nm) of the
    distances of ``pairs`` (default all i < j) on ``edges`` (nm; default 100
    bins from 0 to the largest distance), integrating to 1.
    Returns bin centres (nm) and p(r).
    """
    xyz = as_positions(positions)
    pairs = all_pairs(xyz.shape[1]) if pairs is None else _index_array(pairs, 2, xyz.shape[1], "pairs")
    distances = _pair_distances(xyz, pairs, _as_box(box, len(xyz)))
    edges = common_edges(distances, n_bins=100, value_range=(0.0, float(distances.max()) * 1.0001 + 1e-9)) \
        if edges is None else np.asarray(edges, dtype=np.float64)
    return 0.5 * (edges[1:] + edges[:-1]), histogram(distances, edges)


def contact_map(positions, cutoff=0.8, box=None) -> np.ndarray:
    """Fraction of frames (n_beads, n_beads) in which each bead pair is closer than ``cutoff`` (nm).

    The diagonal is 1 (a bead is in contact with itself).
    """
    xyz = as_positions(positions)
    cutoff = strip(cutoff, NM, "cutoff")
    n = xyz.shape[1]
    pairs = all_pairs(n)
    fraction = (_pair_distances(xyz, pairs, _as_box(box, len(xyz))) < cutoff).mean(axis=0)
    result = np.eye(n)
    result[pairs[:, 0], pairs[:, 1]] = fraction
    result[pairs[:, 1], pairs[:, 0]] = fraction
    return result


# --------------------------------------------------------------------------- slow coordinates

def distance_features(positions, pairs=None, box=None, max_features: int = 300) -> np.ndarray:
    """Bead-bead distances (n_frames, P) nm as TICA features.

    Pairwise distances are invariant to rotation and translation, which a
    rollout does not preserve frame to frame. With many beads, an evenly
    strided subset of at most ``max_features`` pairs keeps TICA well
    conditioned and cheap; the subset depends only on the bead count, so
    reference and rollout get the same features.
    """
    xyz = as_positions(positions)
    if pairs is None:
        pairs = all_pairs(xyz.shape[1])
        if len(pairs) > max_features:
            pairs = pairs[np.linspace(0, len(pairs) - 1, max_features).round().astype(int)]
    return _pair_distances(xyz, _index_array(pairs, 2, xyz.shape[1], "pairs"), _as_box(box, len(xyz)))


def tica(reference_features, lagtime: int, dim: int = 2, others: Sequence = ()):
    """TICA fitted on reference features, applied to the reference and to ``others``.

    ``reference_features`` is an array (n_frames, n_features) or a list of
    them (independent trajectories); ``lagtime`` is in reference frames.
    Uses ``deeptime.decomposition.TICA`` with kinetic-map scaling. Fitting
    on the reference alone puts rollouts in the reference's coordinates, so
    their free-energy surfaces are directly comparable. Returns
    ``(model, reference_projection, [projection of each of others])``.
    """
    from deeptime.decomposition import TICA

    trajectories = ([np.asarray(f, np.float64) for f in reference_features]
                    if isinstance(reference_features, (list, tuple)) else [np.asarray(reference_features, np.float64)])
    lagtime = int(lagtime)
    shortest = min(len(t) for t in trajectories)
    if lagtime < 1 or lagtime >= shortest:
        raise ValueError(f"TICA lagtime must be in 1..{shortest - 1} frames, got {lagtime}")
    model = TICA(lagtime=lagtime, dim=int(dim)).fit(trajectories).fetch_model()
    reference = np.concatenate([model.transform(t) for t in trajectories])
    return model, reference, [model.transform(np.asarray(o, dtype=np.float64)) for o in others]


def free_energy_surface(projection, edges_x, edges_y, temperature=None) -> np.ndarray:
    """Free energy ``-kT ln p`` on a 2-D grid (x bins, y bins), minimum shifted to 0.

    In units of kT when ``temperature`` is None, else kJ/mol. Empty bins are +inf;
    so is every bin when no sample falls on the grid (a rollout that left the
    reference's region entirely).
    """
    projection = np.asarray(projection, dtype=np.float64)
    counts, _, _ = np.histogram2d(projection[:, 0], projection[:, 1], bins=[edges_x, edges_y])
    if counts.sum() == 0:
        return np.full(counts.shape, np.inf)
    with np.errstate(divide="ignore"):
        energy = -np.log(counts / counts.sum())
    energy -= energy[np.isfinite(energy)].min()
    if temperature is not None:
        kT = strip(temperature, u.kelvin, "temperature") * u.MOLAR_GAS_CONSTANT_R.value_in_unit(
            u.kilojoule_per_mole / u.kelvin)
        energy *= kT
    return energy


# --------------------------------------------------------------------------- comparison

def js_divergence(p, q, base: float = 2.0) -> float:
    """Jensen-Shannon divergence of two histograms on the same bins (any shape; normalised here).

    ``JS = (KL(p||m) + KL(q||m)) / 2`` with ``m = (p + q) / 2``; in base 2 it
    lies in [0, 1]: 0 for identical, 1 for disjoint distributions. (SciPy's
    ``jensenshannon`` returns the distance, the square root of this.)
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    if p.shape != q.shape:
        raise ValueError(f"js_divergence needs histograms on the same bins, got {p.size} and {q.size} bins")
    if np.any(p < 0) or np.any(q < 0) or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("js_divergence needs non-negative histograms with some weight")
    return float(jensenshannon(p, q, base=base) ** 2)


def comparison_edges(reference, rollout, n_bins: int = 50, value_range=None, margin: float = 0.25) -> np.ndarray:
    """Bins for comparing a rollout sample with a reference one.

    The reference range widened by ``margin`` of its span on each side (and
    never beyond the data), or ``value_range`` when given (e.g. (0, pi) for
    angles). Spanning the reference rather than the union keeps the
    resolution where the reference is when a rollout has far outliers (a
    blown-up trajectory would otherwise squeeze the reference into one bin).
    """
    if value_range is not None:
        return common_edges(n_bins=n_bins, value_range=value_range)
    reference = np.asarray(reference, dtype=np.float64).ravel()
    rollout = np.asarray(rollout, dtype=np.float64).ravel()
    reference, rollout = reference[np.isfinite(reference)], rollout[np.isfinite(rollout)]
    if reference.size == 0:
        raise ValueError("comparison_edges: the reference has no finite values")
    low, high = float(reference.min()), float(reference.max())
    span = high - low if high > low else max(abs(high), 1.0) * 1e-3
    both = np.concatenate([reference, rollout])
    low = max(low - margin * span, float(both.min()))
    high = min(high + margin * span, float(both.max()))
    return common_edges(n_bins=n_bins, value_range=(low, high + 1e-9 * span))


def _counts_with_overflow(values: np.ndarray, edges_per_axis: list[np.ndarray]) -> np.ndarray:
    """Histogram counts on the bins plus one last bin for everything outside them."""
    values = values.reshape(len(values), -1)
    inside = np.all([(values[:, d] >= e[0]) & (values[:, d] <= e[-1]) for d, e in enumerate(edges_per_axis)], axis=0)
    counts = np.histogramdd(values[inside], bins=edges_per_axis)[0].ravel()
    return np.append(counts, np.count_nonzero(~inside))


def js_divergence_samples(reference, rollout, n_bins: int = 50, value_range=None, base: float = 2.0) -> float:
    """JS divergence between two samples of a 1-D quantity, or 2-D points (shape (n, 2), e.g. TICA).

    Bins per axis from :func:`comparison_edges`; the rollout (or reference)
    mass outside them goes to one overflow bin, so far-off rollout frames
    count fully as a difference: samples that do not overlap give 1.
    """
    reference = np.asarray(reference, dtype=np.float64)
    rollout = np.asarray(rollout, dtype=np.float64)
    if reference.ndim == 2 and reference.shape[1] == 2:
        edges = [comparison_edges(reference[:, d], rollout[:, d], n_bins) for d in range(2)]
    else:
        reference, rollout = reference.ravel(), rollout.ravel()
        edges = [comparison_edges(reference, rollout, n_bins, value_range)]
    return js_divergence(_counts_with_overflow(reference, edges), _counts_with_overflow(rollout, edges), base)


def collisions(positions, threshold=COLLISION_DISTANCE_NM, box=None) -> np.ndarray:
    """Number of bead pairs closer than ``threshold`` in each frame, shape (n_frames,).

    ``threshold``: Quantity compatible with nanometers (default: 0.1*unit.nanometer,
    ``units.COLLISION_DISTANCE_NM``).

    All pairs count, bonded ones too: no physical bond is shorter than 1 A
    between bead centres. Uses a k-d tree (periodic for rectangular boxes;
    a triclinic box falls back to all-pair minimum-image distances).
    """
    xyz = as_positions(positions)
    threshold = strip(threshold, NM, "threshold")
    box = _as_box(box, len(xyz))
    if box is not None and np.any(np.abs(box - np.einsum("fii->fi", box)[:, :, None] * np.eye(3)) > 1e-9):
        return (_pair_distances(xyz, all_pairs(xyz.shape[1]), box) < threshold).sum(axis=1)
    counts = np.empty(len(xyz), dtype=np.int64)
    for frame, coordinates in enumerate(xyz):
        if box is None:
            tree = cKDTree(coordinates)
        else:
            lengths = np.diag(box[frame])
            tree = cKDTree(np.mod(coordinates, lengths), boxsize=lengths)
        counts[frame] = len(tree.query_pairs(threshold, output_type="ndarray"))
    return counts


def r_squared(reference, predicted) -> dict:
    """Agreement of per-system values (e.g. mean Rg) predicted by rollouts with the reference.

    Returns ``coefficient_of_determination`` (``1 - SS_res / SS_tot``: 1 only
    when predicted == reference, negative when worse than the mean) and
    ``pearson_r2`` (squared Pearson correlation: 1 for any exact linear
    relation, blind to offsets and scale). Fu et al. (TMLR 2023) report r^2
    from a correlation, i.e. ``pearson_r2``; both are given because a
    systematic bias only shows in the first. Also ``slope``, ``intercept``
    of the least-squares line and ``n``.
    """
    x = np.asarray(reference, dtype=np.float64).ravel()
    y = np.asarray(predicted, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"r_squared needs as many predicted as reference values, got {y.size} and {x.size}")
    if x.size < 2:
        raise ValueError(f"r_squared needs at least 2 systems, got {x.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("r_squared: values contain NaN or infinity")
    ss_tot = float(((x - x.mean()) ** 2).sum())
    ss_res = float(((y - x) ** 2).sum())
    determination = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    if ss_tot > 0 and np.ptp(y) > 0:
        fit = stats.linregress(x, y)
        pearson, slope, intercept = float(fit.rvalue ** 2), float(fit.slope), float(fit.intercept)
    else:
        pearson = slope = intercept = float("nan")
    return {"coefficient_of_determination": determination, "pearson_r2": pearson,
            "slope": slope, "intercept": intercept, "n": int(x.size)}


def ns_per_day(simulated_time, wall_time) -> float:
    """Simulation speed in ns of simulated time per day of wall time (plain numbers: ps and s)."""
    simulated = strip(simulated_time, PS, "simulated_time")
    wall = strip(wall_time, u.second, "wall_time")
    if wall <= 0 or simulated < 0:
        raise ValueError(f"need simulated_time >= 0 and wall_time > 0, got {simulated} ps and {wall} s")
    return simulated * 1e-3 / (wall / 86400.0)


def speedup(rollout_ns_per_day: float, reference_ns_per_day: float) -> float:
    """Speed-up in simulated time per wall second: rollout speed / reference MD speed."""
    rollout, reference = float(rollout_ns_per_day), float(reference_ns_per_day)
    if not (rollout > 0 and reference > 0):
        raise ValueError(f"speeds must be positive ns/day, got rollout {rollout} and reference {reference}")
    return rollout / reference
