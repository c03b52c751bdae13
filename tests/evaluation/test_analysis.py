"""Analysis functions on cases with known answers."""
import math

import mdtraj
import numpy as np
import openmm.unit as u
import pytest
from scipy.signal import lfilter

from openmm_cgml.evaluation import analysis

# --------------------------------------------------------------------------- radius of gyration

def test_rg_of_sphere_shell_equals_radius():
    radius = 1.7
    octahedron = radius * np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    frames = np.stack([octahedron + shift for shift in ([0, 0, 0], [5.0, -3.0, 2.0])])
    np.testing.assert_allclose(analysis.radius_of_gyration(frames), [radius, radius], rtol=1e-12)


def test_rg_of_uniform_rod():
    n, length = 11, 2.0
    rod = np.zeros((n, 3))
    rod[:, 2] = np.linspace(0, length, n)
    expected = math.sqrt(length ** 2 * (n + 1) / (12 * (n - 1)))  # variance of n evenly spaced points
    assert analysis.radius_of_gyration(rod)[0] == pytest.approx(expected, rel=1e-12)


def test_rg_is_mass_weighted_and_per_molecule():
    m1, m2, d = 12.0, 36.0, 0.5
    pair = np.array([[0, 0, 0], [d, 0, 0]], float)
    dumbbell = math.sqrt(m1 * m2) * d / (m1 + m2)
    positions = np.concatenate([pair, pair + 10.0, 2 * pair])[None]  # molecules 0, 0, 1, 1, 2, 2
    masses = [m1, m2, m1, m2, 1.0, 1.0]
    rg = analysis.radius_of_gyration(positions, masses=masses, molecule_of_bead=[0, 0, 1, 1, 2, 2])
    np.testing.assert_allclose(rg, [[dumbbell, dumbbell, d]], rtol=1e-12)


def test_rg_accepts_quantities_and_mdtraj(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(3, 8, 3)).astype(np.float32)
    topology = analysis._bare_topology(8)
    traj = mdtraj.Trajectory(xyz, topology)
    np.testing.assert_allclose(analysis.radius_of_gyration(traj), mdtraj.compute_rg(traj), rtol=1e-5)
    in_angstrom = (xyz.astype(float) * 10) * u.angstrom
    np.testing.assert_allclose(analysis.radius_of_gyration(in_angstrom), mdtraj.compute_rg(traj), rtol=1e-5)


def test_bad_positions_are_named():
    xyz = np.zeros((2, 4, 3))
    xyz[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        analysis.radius_of_gyration(xyz)
    with pytest.raises(ValueError, match="compatible"):
        analysis.radius_of_gyration(np.ones((2, 4, 3)) * u.picosecond)
    with pytest.raises(ValueError, match="one entry per bead"):
        analysis.radius_of_gyration(np.ones((2, 4, 3)), masses=[1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        analysis.radius_of_gyration(np.ones((2, 2, 3)), masses=[1.0, 0.0])


# --------------------------------------------------------------------------- autocorrelation

def ar1(phi, n, seed=0):
    """x[t] = phi x[t-1] + N(0, 1), started in its stationary distribution."""
    noise = np.random.default_rng(seed).normal(size=n)
    noise[0] /= math.sqrt(1 - phi ** 2)
    return lfilter([1.0], [1.0, -phi], noise)


def test_acf_matches_direct_unbiased_estimate():
    x = np.random.default_rng(1).normal(size=50).cumsum()
    acf = analysis.autocorrelation(x, max_lag=20)
    dx = x - x.mean()
    direct = np.array([np.mean(dx[: len(x) - t] * dx[t:]) for t in range(21)])
    np.testing.assert_allclose(acf, direct / direct[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["integrated", "exp_fit"])
def test_ar1_relaxation_time(method):
    phi = 0.9
    tau_frames = -1 / math.log(phi)  # 9.49 frames
    acf = analysis.autocorrelation(ar1(phi, 1_000_000), max_lag=1000)
    assert acf[1] == pytest.approx(phi, abs=0.005)
    assert analysis.relaxation_time(acf, dt=1.0, method=method) == pytest.approx(tau_frames, rel=0.05)
    # dt in ps scales the answer, and quantities are accepted
    tau_ps = analysis.relaxation_time(acf, dt=2.0 * u.femtosecond, method=method)
    assert tau_ps == pytest.approx(0.002 * analysis.relaxation_time(acf, method=method), rel=1e-9)


def test_acf_of_constant_series_is_an_error_and_short_acf_warns():
    with pytest.raises(ValueError, match="constant"):
        analysis.autocorrelation(np.ones(100))
    with pytest.warns(RuntimeWarning, match="lower bound"):
        analysis.relaxation_time(np.linspace(1.0, 0.5, 10))


def test_acf_per_column():
    series = np.stack([ar1(0.5, 5000, seed=2), ar1(0.95, 5000, seed=3)], axis=1)
    acf = analysis.autocorrelation(series, max_lag=50)
    assert acf.shape == (51, 2)
    assert acf[1, 0] == pytest.approx(0.5, abs=0.05) and acf[1, 1] == pytest.approx(0.95, abs=0.03)


# --------------------------------------------------------------------------- internal coordinates

def zigzag_chain(n, bond=0.38, angle_deg=110.0):
    """Planar all-trans chain: every bond ``bond`` nm, every angle ``angle_deg``, every dihedral 180 deg."""
    half = math.radians(angle_deg) / 2
    dx, dy = bond * math.sin(half), bond * math.cos(half)
    return np.array([[i * dx, (i % 2) * dy, 0.0] for i in range(n)])


def test_bond_angle_dihedral_distributions_of_known_chain():
    n = 10
    chain = zigzag_chain(n)
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(5):  # rigid rotations + translations leave internal coordinates unchanged
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        frames.append(chain @ q.T + rng.normal(size=3))
    frames = np.array(frames)
    bonds = np.array([[i, i + 1] for i in range(n - 1)])
    triplets = analysis.angle_triplets(bonds)
    quads = analysis.dihedral_quadruplets(bonds)
    assert triplets.shape == (n - 2, 3) and quads.shape == (n - 3, 4)
    np.testing.assert_allclose(analysis.bond_lengths(frames, bonds), 0.38, atol=1e-5)
    np.testing.assert_allclose(np.degrees(analysis.bond_angles(frames, triplets)), 110.0, atol=1e-3)
    np.testing.assert_allclose(np.abs(np.degrees(analysis.dihedral_angles(frames, quads))), 180.0, atol=1e-2)
    edges = np.linspace(0.3, 0.5, 21)
    density = analysis.histogram(analysis.bond_lengths(frames, bonds), edges)
    assert np.argmax(density) == np.searchsorted(edges, 0.38) - 1
    assert np.sum(density * np.diff(edges)) == pytest.approx(1.0)


def test_gaussian_bond_lengths_histogram_moments():
    rng = np.random.default_rng(4)
    lengths = rng.normal(0.47, 0.02, size=(4000, 1))
    directions = rng.normal(size=(4000, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    frames = np.stack([np.zeros((4000, 3)), directions * lengths], axis=1)
    measured = analysis.bond_lengths(frames, [[0, 1]])
    edges = analysis.common_edges(measured, n_bins=60)
    density = analysis.histogram(measured, edges)
    centres = 0.5 * (edges[1:] + edges[:-1])
    mean = np.sum(centres * density * np.diff(edges))
    assert mean == pytest.approx(0.47, abs=0.002)


def test_branched_topology_angles_and_dihedrals():
    bonds = [[0, 1], [1, 2], [1, 3], [3, 4]]  # bead 1 has three neighbours
    triplets = {tuple(t) for t in analysis.angle_triplets(bonds).tolist()}
    assert triplets == {(0, 1, 2), (0, 1, 3), (2, 1, 3), (1, 3, 4)}
    quads = {tuple(q) for q in analysis.dihedral_quadruplets(bonds).tolist()}
    assert quads == {(0, 1, 3, 4), (2, 1, 3, 4)}


# --------------------------------------------------------------------------- RDF, contacts, collisions

def test_rdf_of_ideal_gas_is_one():
    rng = np.random.default_rng(5)
    length = 3.0
    xyz = rng.uniform(0, length, size=(40, 300, 3))
    r, g = analysis.rdf(xyz, box=np.eye(3) * length, r_range=(0.3, 1.4), n_bins=22)
    assert r.shape == g.shape == (22,)
    assert np.mean(g) == pytest.approx(1.0, abs=0.02)
    assert np.all(np.abs(g - 1) < 0.1)
    with pytest.raises(ValueError, match="periodic box"):
        analysis.rdf(xyz, box=None)


def test_pair_distance_distribution_integrates_to_one():
    positions = np.array([[[0, 0, 0], [0.3, 0, 0], [0, 0.4, 0]]], float)  # distances 0.3, 0.4, 0.5
    edges = np.linspace(0, 1, 11)
    r, p = analysis.pair_distance_distribution(positions, edges=edges)
    np.testing.assert_allclose(p * 0.1, [0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0, 0], atol=1e-12)


def test_contact_map_fractions():
    frames = np.array([[[0, 0, 0], [0.5, 0, 0], [3, 0, 0]],
                       [[0, 0, 0], [1.5, 0, 0], [3, 0, 0]]], float)
    cmap = analysis.contact_map(frames, cutoff=0.8)
    np.testing.assert_allclose(cmap, [[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]])


def test_collisions_counts_pairs_closer_than_threshold_with_periodic_images():
    xyz = np.array([[[0.02, 0, 0], [1.95, 0, 0], [1.0, 1.0, 1.0], [1.05, 1.0, 1.0], [1.5, 1.5, 1.5]]])
    assert analysis.collisions(xyz).tolist() == [1]  # only 2-3 without the box
    assert analysis.collisions(xyz, box=np.eye(3) * 2.0).tolist() == [2]  # 0-1 across the boundary
    assert analysis.collisions(xyz, threshold=1.0 * u.angstrom, box=np.eye(3) * 2.0).tolist() == [2]
    triclinic = np.array([[2.0, 0, 0], [0.5, 2.0, 0], [0, 0, 2.0]])
    rng = np.random.default_rng(6)
    many = rng.uniform(0, 2, size=(3, 60, 3))
    orthorhombic = analysis.collisions(many, threshold=0.25, box=np.eye(3) * 2.0)
    brute = (analysis.pair_distances(many, box=np.eye(3) * 2.0)
             < 0.25).sum(axis=1)
    np.testing.assert_array_equal(orthorhombic, brute)
    assert analysis.collisions(many, threshold=0.25, box=triclinic).shape == (3,)


# --------------------------------------------------------------------------- TICA, free energy, JS

def test_tica_finds_the_slow_coordinate_and_projects_rollouts():
    rng = np.random.default_rng(7)
    n = 4000
    state = np.zeros(n)
    for t in range(1, n):  # two-state telegraph process, mean dwell 200 frames
        state[t] = 1 - state[t - 1] if rng.random() < 0.005 else state[t - 1]
    slow = state + 0.1 * rng.normal(size=n)
    features = np.stack([rng.normal(size=n), slow, rng.normal(size=n)], axis=1)
    model, ref, (other,) = analysis.tica(features, lagtime=10, dim=1, others=[features[:500]])
    assert ref.shape == (n, 1) and other.shape == (500, 1)
    assert abs(np.corrcoef(ref[:, 0], slow)[0, 1]) > 0.95
    np.testing.assert_allclose(other, ref[:500])
    with pytest.raises(ValueError, match="lagtime"):
        analysis.tica(features[:5], lagtime=10)


def test_free_energy_surface_minimum_is_zero():
    rng = np.random.default_rng(8)
    projection = rng.normal(size=(5000, 2))
    edges = np.linspace(-3, 3, 13)
    fes = analysis.free_energy_surface(projection, edges, edges)
    assert fes.shape == (12, 12) and np.nanmin(fes) == 0.0
    assert np.unravel_index(np.argmin(fes), fes.shape) in {(5, 5), (5, 6), (6, 5), (6, 6)}
    fes_kj = analysis.free_energy_surface(projection, edges, edges, temperature=300 * u.kelvin)
    finite = np.isfinite(fes)
    np.testing.assert_allclose(fes_kj[finite], fes[finite] * 2.494339, rtol=1e-5)


def test_js_divergence_identical_zero_disjoint_one():
    p = np.array([1.0, 2.0, 3.0, 0.0])
    assert analysis.js_divergence(p, 10 * p) == pytest.approx(0.0, abs=1e-12)
    assert analysis.js_divergence([1, 1, 0, 0], [0, 0, 1, 1]) == pytest.approx(1.0)
    assert analysis.js_divergence([1, 1, 0, 0], [0, 0, 1, 1], base=math.e) == pytest.approx(math.log(2))
    partial = analysis.js_divergence([1, 1, 1, 0], [0, 1, 1, 1])
    assert 0 < partial < 1
    rng = np.random.default_rng(9)
    samples = rng.normal(size=10_000)
    assert analysis.js_divergence_samples(samples, samples) == pytest.approx(0.0, abs=1e-12)
    assert analysis.js_divergence_samples(samples, samples + 100) == pytest.approx(1.0)
    two_d = rng.normal(size=(5000, 2))
    assert analysis.js_divergence_samples(two_d, two_d + 50) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same bins"):
        analysis.js_divergence([1, 2], [1, 2, 3])


def test_js_divergence_counts_far_outliers_without_losing_resolution():
    reference = np.random.default_rng(11).normal(size=9000)
    blown_up = np.concatenate([reference, np.full(1000, 1e6)])  # 10 % of frames far away
    edges = analysis.comparison_edges(reference, blown_up, n_bins=40)
    assert edges[-1] < 10  # the bins still resolve the reference
    # q = 0.9 p + 0.1 outside: JS = (-log2 0.95 + 0.9 log2(0.9/0.95) + 0.1 log2 2) / 2
    expected = (-math.log2(0.95) + 0.9 * math.log2(0.9 / 0.95) + 0.1) / 2
    assert analysis.js_divergence_samples(reference, blown_up, n_bins=40) == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------- across systems, speed

def test_r_squared_exact_affine_and_noisy():
    x = np.linspace(1.0, 2.0, 20)
    exact = analysis.r_squared(x, x)
    assert exact["coefficient_of_determination"] == pytest.approx(1.0)
    assert exact["pearson_r2"] == pytest.approx(1.0) and exact["n"] == 20
    affine = analysis.r_squared(x, 2 * x + 1)  # perfectly correlated, badly wrong
    assert affine["pearson_r2"] == pytest.approx(1.0)
    assert affine["coefficient_of_determination"] < 0
    assert affine["slope"] == pytest.approx(2.0)
    noisy_y = x + np.random.default_rng(10).normal(scale=0.1, size=20)
    noisy = analysis.r_squared(x, noisy_y)
    assert noisy["pearson_r2"] == pytest.approx(np.corrcoef(x, noisy_y)[0, 1] ** 2)
    assert 0.5 < noisy["coefficient_of_determination"] < 1.0
    with pytest.raises(ValueError, match="at least 2"):
        analysis.r_squared([1.0], [1.0])


def test_speed_and_speedup_with_units():
    assert analysis.ns_per_day(1.0 * u.nanosecond, 86400 * u.second) == pytest.approx(1.0)
    assert analysis.ns_per_day(500.0, 43.2) == pytest.approx(1000.0)  # ps and s
    assert analysis.speedup(2000.0, 100.0) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        analysis.ns_per_day(1.0, 0.0)
