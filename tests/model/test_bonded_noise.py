"""Bond-correlated acceleration noise: the tree solve, the exact density, the draw (against dense linear algebra)."""
import math

import torch

from openmm_cgml.model.bonded_noise import BondedNoise, bond_parents, tree_covariance, tree_solve

# two molecules: a branched one with a ring (0-1, 1-2, 1-3, 3-4, 1-4, 2-5) and a chain 6-7-8-9
EDGES = torch.tensor([[0, 1, 3, 4, 1, 2, 6, 8, 8], [1, 2, 1, 3, 4, 5, 7, 7, 9]])
N = 10
BATCH = torch.tensor([0] * 6 + [1] * 4)


def test_parents_are_the_highest_lower_bonded_neighbour():
    parent = bond_parents(EDGES, N)
    assert parent.tolist() == [0, 0, 1, 1, 3, 2, 6, 6, 7, 8]
    both = torch.cat([EDGES, EDGES.flip(0)], 1)
    assert bond_parents(both, N).tolist() == parent.tolist()
    assert bond_parents(torch.zeros(2, 0, dtype=torch.long), 3).tolist() == [0, 1, 2]


def _sequential_solve(w, coupling, parent):
    x = torch.zeros_like(w)
    for i in range(w.size(0)):   # parents have lower indices
        x[i] = w[i] + (coupling[i] @ x[parent[i]] if parent[i] != i else 0)
    return x


def test_pointer_doubling_solves_the_tree_and_its_covariance():
    g = torch.Generator().manual_seed(0)
    parent = bond_parents(EDGES, N)
    coupling = torch.randn(N, 3, 3, generator=g, dtype=torch.float64) * (parent != torch.arange(N)).view(-1, 1, 1)
    w = torch.randn(N, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(tree_solve(w, coupling, parent), _sequential_solve(w, coupling, parent))
    # covariance: x = M w for the dense M whose columns are solves of unit vectors
    factor = torch.randn(N, 3, 3, generator=g, dtype=torch.float64)
    cov = factor @ factor.transpose(1, 2)
    dense = torch.stack([_sequential_solve(e.view(N, 3), coupling, parent).flatten()
                         for e in torch.eye(3 * N, dtype=torch.float64)], 1)
    block = torch.block_diag(*cov)
    full = dense @ block @ dense.T
    want = torch.stack([full[3 * i:3 * i + 3, 3 * i:3 * i + 3] for i in range(N)])
    torch.testing.assert_close(tree_covariance(cov, coupling, parent), want)


def _noise_model_and_params(seed=1):
    torch.manual_seed(seed)
    noise = BondedNoise(hidden=8, min_std=0.05).double()
    latents = torch.randn(N, 8, dtype=torch.float64)
    x = torch.randn(N, 3, dtype=torch.float64)
    return noise, noise(latents, BATCH), x


def _draw(noise, params, eps, x):
    """A draw from (2, N, 3) standard normal noise: the tree's, then the rotation's."""
    return noise.sample(params, eps[0], eps[1], x, EDGES, BATCH)


def _dense_factor(noise, params, x):
    """The (3N, 6N) matrix M with r = M eps, column by column from unit noise."""
    return torch.stack([_draw(noise, params, e.view(2, N, 3), x).flatten()
                        for e in torch.eye(6 * N, dtype=torch.float64)], 1)


def test_density_is_the_exact_gaussian_of_the_draw():
    """nll == -log N(r; 0, M M^T) / N up to the constant, for the M the draw applies."""
    noise, params, x = _noise_model_and_params()
    factor = _dense_factor(noise, params, x)
    dist = torch.distributions.MultivariateNormal(torch.zeros(3 * N, dtype=torch.float64),
                                                  covariance_matrix=factor @ factor.T)
    for seed in range(3):
        r = torch.randn(N, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        want = (-dist.log_prob(r.flatten()) - 1.5 * N * math.log(2 * math.pi)) / N
        torch.testing.assert_close(noise.nll(r, params, x, EDGES, BATCH), want)


def test_draw_is_linear_keeps_bonds_when_coupled_and_its_std_is_the_marginal():
    noise, params, x = _noise_model_and_params()
    factor = _dense_factor(noise, params, x)
    eps = torch.randn(2, N, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(_draw(noise, params, eps, x).flatten(), factor @ eps.flatten())
    per_bead = torch.diagonal(factor @ factor.T).view(N, 3).sum(-1, keepdim=True) / 3
    torch.testing.assert_close(noise.marginal_std(params, x, EDGES, BATCH), per_bead.sqrt())

    # full coupling, tiny own noise, no rotation: a whole molecule moves together (its bonds barely change)
    tight = torch.tensor([0.01, 0.01, 0.01, 1.0, 1.0, 1.0, 0.0], dtype=torch.float64).repeat(N, 1)
    tight[[0, 6], :3] = 1.0     # the roots carry the motion
    r = _draw(noise, tight, eps, x)
    parent = bond_parents(EDGES, N)
    relative = (r - r[parent]).norm(dim=-1)[parent != torch.arange(N)]
    assert relative.max() < 0.1 and r.norm(dim=-1).min() > 0.3

    # rotation only: each molecule turns rigidly about its centroid (distances kept to first order)
    turn = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1e-3], dtype=torch.float64).repeat(N, 1)
    r = _draw(noise, turn, eps, x)
    for beads in (slice(0, 6), slice(6, 10)):
        d = x[beads] - x[beads].mean(0)
        assert torch.allclose((r[beads] * d).sum(-1), torch.zeros(d.size(0), dtype=torch.float64), atol=1e-9)
        assert r[beads].norm(dim=-1).max() > 1e-4


def test_each_internal_direction_has_its_own_std():
    """Only the torsion std on: a bead moves along the normal of its bond plane (and its subtree with it)."""
    noise, _, x = _noise_model_and_params()
    params = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64).repeat(N, 1)
    eps = torch.zeros(2, N, 3, dtype=torch.float64)
    eps[0, 4] = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64)   # bead 4: parent 3, grandparent 1
    r = _draw(noise, params, eps, x)
    u = (x[4] - x[3]) / (x[4] - x[3]).norm()
    n = torch.linalg.cross((x[3] - x[1]) / (x[3] - x[1]).norm(), u)
    n = n / n.norm()
    torch.testing.assert_close(r[4], (eps[0, 4] @ n) * n)
    assert r[[0, 1, 2, 3, 6, 7, 8, 9]].abs().max() == 0


def test_draw_rotates_with_the_molecule():
    noise, params, x = _noise_model_and_params()
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    q = q * torch.det(q)   # a proper rotation: the rotation noise is a pseudo-vector
    eps = torch.randn(2, N, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(_draw(noise, params, eps @ q.T, x @ q.T + 1.0), _draw(noise, params, eps, x) @ q.T)
    r = torch.randn(N, 3, dtype=torch.float64)
    torch.testing.assert_close(noise.nll(r @ q.T, params, x @ q.T, EDGES, BATCH), noise.nll(r, params, x, EDGES, BATCH))
