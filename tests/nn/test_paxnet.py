"""PaxNet: E(3) equivariance, permutation equivariance, TorchScript round trip, smoothness, fitting."""
import pytest
import torch

from openmm_cgml.nn import PaxNet

N = 12


def chain(n=N, seed=0, dtype=torch.float64):
    """A random-walk chain with bond length ~0.15 nm: positions, bonds (one direction), inputs."""
    gen = torch.Generator().manual_seed(seed)
    steps = torch.randn(n, 3, generator=gen, dtype=dtype)
    pos = torch.cumsum(0.15 * steps / steps.norm(dim=1, keepdim=True), dim=0)
    bonds = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    s = torch.randn(n, 4, generator=gen, dtype=dtype)
    v = torch.randn(n, 3, 2, generator=gen, dtype=dtype)
    return pos, bonds, s, v


def model(**kw):
    torch.manual_seed(0)
    args = dict(hidden=16, n_layers=2, cutoff=0.5, local_cutoff=0.25, scalar_in=4, vector_in=2, n_rbf=8, n_sbf=4)
    args.update(kw)
    return PaxNet(**args).double()


def orthogonal(seed, reflect):
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    if (torch.det(q) > 0) == reflect:
        q = -q
    return q


@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_reflection_translation(reflect):
    net = model()
    pos, bonds, s, v = chain()
    batch = torch.zeros(N, dtype=torch.long)
    h, vec = net(s, v, pos, bonds, batch)
    q = orthogonal(1, reflect)
    h2, vec2 = net(s, torch.einsum("ab,nbc->nac", q, v), pos @ q.T + torch.tensor([0.3, -1.0, 2.0]), bonds, batch)
    torch.testing.assert_close(h2, h, atol=1e-5, rtol=0)
    torch.testing.assert_close(vec2, torch.einsum("ab,nbc->nac", q, vec), atol=1e-5, rtol=0)
    assert vec.abs().max() > 1e-3        # the vector channel is not trivially zero


def test_equivariance_in_a_periodic_triclinic_box():
    net = model()
    pos, bonds, s, v = chain()
    box = torch.tensor([[1.2, 0, 0], [0.3, 1.1, 0], [-0.2, 0.25, 1.3]], dtype=torch.float64)
    batch = torch.zeros(N, dtype=torch.long)
    h, vec = net(s, v, pos, bonds, batch, box)
    # wrapping atoms by lattice vectors changes nothing
    images = torch.randint(-2, 3, (N, 3), generator=torch.Generator().manual_seed(3)).double()
    h1, vec1 = net(s, v, pos + images @ box, bonds, batch, box)
    torch.testing.assert_close(h1, h, atol=1e-8, rtol=0)
    torch.testing.assert_close(vec1, vec, atol=1e-8, rtol=0)
    # rotating atoms and box together rotates the vectors
    q = orthogonal(2, True)
    h2, vec2 = net(s, torch.einsum("ab,nbc->nac", q, v), pos @ q.T, bonds, batch, box @ q.T)
    torch.testing.assert_close(h2, h, atol=1e-5, rtol=0)
    torch.testing.assert_close(vec2, torch.einsum("ab,nbc->nac", q, vec), atol=1e-5, rtol=0)


def test_permuting_atoms_permutes_outputs():
    net = model()
    pos, bonds, s, v = chain()
    batch = torch.zeros(N, dtype=torch.long)
    h, vec = net(s, v, pos, bonds, batch)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(4))
    inverse = torch.argsort(perm)
    h2, vec2 = net(s[perm], v[perm], pos[perm], inverse[bonds], batch)
    torch.testing.assert_close(h2, h[perm], atol=1e-10, rtol=0)
    torch.testing.assert_close(vec2, vec[perm], atol=1e-10, rtol=0)


def test_batched_equals_separate():
    net = model()
    pos_a, bonds_a, s_a, v_a = chain(seed=5)
    pos_b, bonds_b, s_b, v_b = chain(n=7, seed=6)
    pos_b = pos_b + 0.05          # overlapping in space: only `batch` keeps them apart
    batch = torch.cat([torch.zeros(N, dtype=torch.long), torch.ones(7, dtype=torch.long)])
    h, vec = net(torch.cat([s_a, s_b]), torch.cat([v_a, v_b]), torch.cat([pos_a, pos_b]),
                 torch.cat([bonds_a, bonds_b + N], dim=1), batch)
    h_a, vec_a = net(s_a, v_a, pos_a, bonds_a, torch.zeros(N, dtype=torch.long))
    h_b, vec_b = net(s_b, v_b, pos_b, bonds_b, torch.zeros(7, dtype=torch.long))
    torch.testing.assert_close(h, torch.cat([h_a, h_b]), atol=1e-10, rtol=0)
    torch.testing.assert_close(vec, torch.cat([vec_a, vec_b]), atol=1e-10, rtol=0)


def test_torchscript_round_trip(tmp_path):
    net = model().float()
    pos, bonds, s, v = chain(dtype=torch.float32)
    batch = torch.zeros(N, dtype=torch.long)
    path = tmp_path / "paxnet.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    loaded = torch.jit.load(str(path))
    for box in (None, torch.eye(3) * 1.5):
        h, vec = net(s, v, pos, bonds, batch, box)
        h2, vec2 = loaded(s, v, pos, bonds, batch, box)
        assert h2.dtype == torch.float32
        assert torch.equal(h, h2) and torch.equal(vec, vec2)


def test_no_inputs_and_no_bonds():
    net = PaxNet(hidden=8, n_layers=1, cutoff=0.5)
    pos = torch.rand(5, 3) * 0.4
    h, vec = net(torch.zeros(5, 0), torch.zeros(5, 3, 0), pos, torch.zeros(2, 0, dtype=torch.long),
                 torch.zeros(5, dtype=torch.long))
    assert h.shape == (5, 8) and vec.shape == (5, 3, 8)
    assert torch.isfinite(h).all() and torch.isfinite(vec).all()


def test_energy_is_smooth_when_a_pair_crosses_the_cutoff():
    net = model(local_cutoff=None, vector_in=0, scalar_in=0)
    zeros_s, zeros_v = torch.zeros(2, 0, dtype=torch.float64), torch.zeros(2, 3, 0, dtype=torch.float64)
    no_bonds = torch.zeros(2, 0, dtype=torch.long)
    batch = torch.zeros(2, dtype=torch.long)

    def energy(r):
        pos = torch.tensor([[0.0, 0.0, 0.0], [r, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
        h, _ = net(zeros_s, zeros_v, pos, no_bonds, batch)
        e = h.sum()
        (force,) = torch.autograd.grad(e, pos)
        return e.item(), force[1, 0].item()

    inside, outside = energy(0.5 - 1e-6), energy(0.5 + 1e-6)
    assert abs(inside[0] - outside[0]) < 1e-8
    assert abs(inside[1]) < 1e-5 and outside[1] == 0.0
    assert abs(energy(0.3)[1]) > 1e-4       # forces exist inside the cutoff


def test_small_model_overfits_a_few_configurations():
    """Energies and forces of a bonded + pair toy potential on 4 configurations, and a dipole vector."""
    torch.manual_seed(0)
    n_conf, n = 4, 8
    net = PaxNet(hidden=32, n_layers=2, cutoff=0.6, n_rbf=8, n_sbf=3, scalar_in=2)
    head = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.SiLU(), torch.nn.Linear(32, 1))
    vec_head = torch.nn.Linear(32, 1, bias=False)
    pos = torch.cat([chain(n=n, seed=10 + k, dtype=torch.float32)[0] for k in range(n_conf)])
    batch = torch.arange(n_conf).repeat_interleave(n)
    one = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    bonds = torch.cat([one + n * k for k in range(n_conf)], dim=1)
    s = torch.nn.functional.one_hot(torch.arange(n_conf * n) % 2, 2).float()
    charges = torch.tensor([0.4, -0.4]).repeat(n_conf * n // 2)
    pairs = torch.triu_indices(n, n, 2)

    def reference(p):
        p = p.view(n_conf, n, 3)
        bond = (p[:, 1:] - p[:, :-1]).norm(dim=2)
        far = (p[:, pairs[0]] - p[:, pairs[1]]).norm(dim=2)
        energy = 1000.0 * ((bond - 0.15) ** 2).sum(1) + (0.01 / far ** 2).sum(1)
        return energy, (charges.view(n_conf, n, 1) * p).sum(1)

    p = pos.clone().requires_grad_(True)
    e_ref, mu_ref = reference(p)
    f_ref = -torch.autograd.grad(e_ref.sum(), p)[0]
    e_ref, mu_ref = e_ref.detach(), mu_ref.detach()
    params = list(net.parameters()) + list(head.parameters()) + list(vec_head.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)

    def loss_fn():
        p = pos.clone().requires_grad_(True)
        h, vec = net(s, torch.zeros(n_conf * n, 3, 0), p, bonds, batch)
        e = torch.zeros(n_conf).index_add(0, batch, head(h).squeeze(1))
        f = -torch.autograd.grad(e.sum(), p, create_graph=True)[0]
        mu = torch.zeros(n_conf, 3).index_add(0, batch, vec_head(vec).squeeze(2))
        return (((e - e_ref) ** 2).mean() / 100.0 + ((f - f_ref) ** 2).mean() / 1000.0
                + ((mu - mu_ref) ** 2).sum(1).mean() * 100)

    first = float(loss_fn().detach())
    for _ in range(200):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert float(loss_fn().detach()) < 0.01 * first


def test_bad_inputs_are_named():
    net = model()
    pos, bonds, s, v = chain()
    batch = torch.zeros(N, dtype=torch.long)
    with pytest.raises(ValueError, match="s must have shape"):
        net(s[:, :2], v, pos, bonds, batch)
    with pytest.raises(ValueError, match="v must have shape"):
        net(s, v[..., :1], pos, bonds, batch)
    with pytest.raises(ValueError, match="local_edge_index"):
        net(s, v, pos, bonds + N, batch)
    with pytest.raises(ValueError, match="NaN"):
        net(s, v, pos * float("nan"), bonds, batch)
    with pytest.raises(ValueError, match="cutoff"):
        PaxNet(cutoff=-1.0)


def test_accepts_length_quantities():
    import openmm.unit as u

    net = PaxNet(hidden=8, n_layers=1, cutoff=5 * u.angstrom, local_cutoff=0.2 * u.nanometer)
    assert net.cutoff == pytest.approx(0.5) and net.local_cutoff == pytest.approx(0.2)
    with pytest.raises(ValueError, match="cutoff"):
        PaxNet(cutoff=1 * u.picosecond)


@pytest.mark.cuda
def test_cuda_float32_matches_cpu():
    net = model().float()
    pos, bonds, s, v = chain(dtype=torch.float32)
    batch = torch.zeros(N, dtype=torch.long)
    h, vec = net(s, v, pos, bonds, batch)
    scripted = torch.jit.script(net).cuda()
    h2, vec2 = scripted(s.cuda(), v.cuda(), pos.cuda(), bonds.cuda(), batch.cuda(), torch.eye(3).cuda() * 2.0)
    torch.testing.assert_close(h2.cpu(), h, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(vec2.cpu(), vec, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scripted", [False, True])
def test_cached_bond_indices_follow_changes_of_the_local_graph(scripted):
    """The bond/angle indices are cached between calls; every change of the bonds must be seen."""
    import copy

    net = model(local_cutoff=None)
    fresh = copy.deepcopy(net)           # an untouched copy: nothing cached, the uncached path
    cached = torch.jit.script(net) if scripted else net
    pos, bonds, s, v = chain()
    batch = torch.zeros(N, dtype=torch.long)
    ring = torch.cat([bonds, torch.tensor([[N - 1], [0]])], dim=1)
    branched = bonds.clone()
    branched[0, 5] = 2                   # node 6 now hangs off node 2
    mutable = bonds.clone()
    sequence = [bonds, bonds, ring, bonds.flip(0), branched, bonds.int(), mutable, torch.zeros(2, 0, dtype=torch.long)]
    for step, edges in enumerate(sequence):
        if step == 7:
            mutable[1, 3] = 9            # changed in place after being cached at step 6
            edges = mutable
        h, vec = cached(s, v, pos, edges, batch)
        h_ref, vec_ref = copy.deepcopy(fresh)(s, v, pos, edges, batch)
        torch.testing.assert_close(h, h_ref, atol=1e-12, rtol=0)
        torch.testing.assert_close(vec, vec_ref, atol=1e-12, rtol=0)
    # in-place change of the cached tensor itself
    h, _ = cached(s, v, pos, mutable, batch)
    torch.testing.assert_close(h, copy.deepcopy(fresh)(s, v, pos, mutable, batch)[0], atol=1e-12, rtol=0)
    # a different node count with the same bond tensor
    short = bonds[:, :-1].clone()
    cached(s, v, pos, short, batch)
    h, _ = cached(s[:-1], v[:-1], pos[:-1], short, batch[:-1])
    torch.testing.assert_close(h, copy.deepcopy(fresh)(s[:-1], v[:-1], pos[:-1], short, batch[:-1])[0],
                               atol=1e-12, rtol=0)
    # the cache is no state: the state dict is unchanged and bad bonds are still caught after a hit
    assert set(net.state_dict()) == set(fresh.state_dict())
    with pytest.raises((ValueError, torch.jit.Error), match="local_edge_index"):   # scripted: torch.jit.Error
        cached(s, v, pos, bonds + N, batch)


def test_cached_model_follows_positions_and_dtype():
    """Same bonds, new positions / dtype: the cache holds indices only, so results track the inputs."""
    import copy

    net = model(local_cutoff=None)
    fresh = copy.deepcopy(net)
    pos, bonds, s, v = chain()
    batch = torch.zeros(N, dtype=torch.long)
    net(s, v, pos, bonds, batch)
    moved = pos + 0.05 * torch.randn(N, 3, generator=torch.Generator().manual_seed(4), dtype=pos.dtype)
    torch.testing.assert_close(net(s, v, moved, bonds, batch)[0], fresh(s, v, moved, bonds, batch)[0],
                               atol=1e-12, rtol=0)
    net32, fresh32 = copy.deepcopy(net).float(), copy.deepcopy(fresh).float()
    assert net32._cache_n == -1 and net._cache_n == N     # .float()/.to() empty it: no stale device tensors
    out = net32(s.float(), v.float(), moved.float(), bonds, batch)[0]
    torch.testing.assert_close(out, fresh32(s.float(), v.float(), moved.float(), bonds, batch)[0])


@pytest.mark.cuda
def test_cuda_cache_follows_the_device():
    """Bond cache filled on CPU, then used on CUDA (eager after .cuda(), and scripted): same results."""
    net = model(local_cutoff=None).float()
    pos, bonds, s, v = chain(dtype=torch.float32)
    batch = torch.zeros(N, dtype=torch.long)
    h, vec = net(s, v, pos, bonds, batch)
    scripted = torch.jit.script(net)
    scripted(s, v, pos, bonds, batch)                    # scripted cache on CPU
    scripted.cuda()
    net.cuda()
    for module in (net, scripted, scripted):             # twice: a cache miss (device), then a hit
        h2, vec2 = module(s.cuda(), v.cuda(), pos.cuda(), bonds.cuda(), batch.cuda())
        torch.testing.assert_close(h2.cpu(), h, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(vec2.cpu(), vec, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scripted", [False, True])
def test_bond_cache_made_under_inference_mode_does_not_break_training(scripted):
    """Lightning validates under torch.inference_mode; the next training step must still backpropagate."""
    torch.manual_seed(0)
    net = PaxNet(hidden=16, n_layers=2, cutoff=1.0, scalar_in=4, vector_in=1).double()
    if scripted:
        net = torch.jit.script(net)
    n = 6
    pos = torch.randn(n, 3, dtype=torch.double) * 0.3
    s, v = torch.randn(n, 4, dtype=torch.double), torch.randn(n, 3, 1, dtype=torch.double)
    bonds = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4, 4, 5], [1, 0, 2, 1, 3, 2, 4, 3, 5, 4]])
    batch = torch.zeros(n, dtype=torch.long)
    with torch.inference_mode():
        net(s, v, pos, bonds, batch)
    pos.requires_grad_(True)
    scalars, vectors = net(s, v, pos, bonds, batch)
    (scalars.sum() + vectors.sum()).backward()
    assert pos.grad is not None and torch.isfinite(pos.grad).all() and pos.grad.abs().sum() > 0
