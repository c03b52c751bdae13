"""The propagator networks: symmetry, the step maths, input checks (tiny, untrained models)."""
import json
import math

import pytest
import torch

from openmm_cgml.geometry import count_collisions
from openmm_cgml.model.propagator import (
    CGPropagator,
    PropagatorConfig,
    anneal_step,
    gaussian_nll,
    log_spaced_sigmas,
    type_mass_table,
)


def random_orthogonal(seed, reflect):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    if reflect:
        q = q @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    return q


@pytest.fixture
def inputs(chain_molecule, chain_history, n_beads):
    """``inputs(model, dtype=float32) -> (history, features, coarse, batch, box)``: the chain, ready for ``model``."""
    def build(model, dtype=torch.float32):
        atom_types, fine_edges, bead_of_atom, coarse = chain_molecule()
        features = model.embed(atom_types, fine_edges, bead_of_atom, n_beads)
        history = chain_history(model.k, dtype=dtype)
        batch = torch.zeros(n_beads, dtype=torch.long)
        return history, features, coarse, batch, torch.zeros(3, 3, dtype=dtype)
    return build


@pytest.mark.parametrize("noise", ["independent", "bonded"])
@pytest.mark.parametrize("reflect", [False, True])
def test_mean_equivariant_and_std_invariant(reflect, noise, inputs, make_model):
    model = make_model(noise=noise).double()
    history, features, coarse, batch, box = inputs(model, torch.float64)
    features = features.double()
    rotation = random_orthogonal(1, reflect)
    shift = torch.tensor([1.5, -2.0, 0.7], dtype=torch.float64)
    with torch.no_grad():
        mean, std = model.predict(history, features, coarse, batch, box)
        mean2, std2 = model.predict(history @ rotation.T + shift, features, coarse, batch, box)
    assert mean.abs().max() > 1e-6  # a non-trivial output, so the check below can fail
    torch.testing.assert_close(mean2, mean @ rotation.T, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(std2, std, atol=1e-9, rtol=1e-7)


def assert_step_equivariant(model, history, features, coarse, batch, box, rotation, shift, noise_seed):
    """Rotating (or reflecting) and shifting the history, and rotating the noise, moves the refined step alike.

    Returns the noise used, for further steps with the same draw.
    """
    noise = torch.randn(model.noise_draws(True), history.shape[1], 3, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(noise_seed))
    with torch.no_grad():
        x = model.step(history, features, coarse, batch, box, noise, True)
        x2 = model.step(history @ rotation.T + shift, features, coarse, batch, box, noise @ rotation.T, True)
    torch.testing.assert_close(x2, x @ rotation.T + shift, atol=1e-9, rtol=1e-7)
    return noise


@pytest.mark.parametrize("score_net, noise", [("pair", "independent"), ("paxnet", "independent"), ("pair", "bonded")])
def test_full_step_with_refinement_is_equivariant(score_net, noise, inputs, make_model):
    """Rotating positions and the noise rotates the refined next positions."""
    model = make_model(score_net=score_net, noise=noise).double()
    history, features, coarse, batch, box = inputs(model, torch.float64)
    features = features.double()
    # the bonded noise's rotation draw is a pseudo-vector: exact under rotations, in law under reflections
    assert_step_equivariant(model, history, features, coarse, batch, box,
                            random_orthogonal(2, reflect=noise == "independent"),
                            torch.tensor([0.3, 0.2, -4.0], dtype=torch.float64), noise_seed=3)


def test_std_positive_and_floored(inputs, make_model, n_beads):
    model = make_model()
    history, features, coarse, batch, box = inputs(model)
    with torch.no_grad():
        mean, std = model.predict(history, features, coarse, batch, box)
    assert mean.shape == (n_beads, 3) and std.shape == (n_beads, 1)
    assert torch.all(std >= model.min_std * model.accel_std_nm * (1 - 1e-6))


@pytest.mark.parametrize("noise_model", ["independent", "bonded"])
def test_step_is_semi_implicit_euler_of_predict(noise_model, inputs, make_model, n_beads):
    """x[t+1] = x[t] + (x[t] - x[t-1]) + a, a linear in the noise, mean and std as `predict` says."""
    model = make_model(k=4, noise=noise_model)
    history, features, coarse, batch, box = inputs(model)
    noise = torch.randn(model.noise_draws(True), n_beads, 3)
    plain = model.noise_draws(False)   # the dynamics' own draws
    with torch.no_grad():
        mean, std = model.predict(history, features, coarse, batch, box)
        x0 = model.step(history, features, coarse, batch, box, torch.zeros(plain, n_beads, 3), False)
        x1 = model.step(history, features, coarse, batch, box, noise[:plain], False)
        x2 = model.step(history, features, coarse, batch, box, 2 * noise[:plain], False)
        refined = model.step(history, features, coarse, batch, box, noise, True)
    torch.testing.assert_close(x0, history[-1] + (history[-1] - history[-2]) + mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x2 - x0, 2 * (x1 - x0), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(refined, x1)  # the score refinement does move the beads

    # many copies (one graph each, far apart): per-bead sample std matches predict's std
    copies = 1500
    spread = torch.arange(copies).repeat_interleave(n_beads).unsqueeze(1) * torch.tensor([0.0, 0.0, 40.0])
    many = history.repeat(1, copies, 1) + spread
    edges = torch.cat([coarse + c * n_beads for c in range(copies)], 1)
    copy_batch = torch.arange(copies).repeat_interleave(n_beads)
    with torch.no_grad():
        samples = model.step(many, features.repeat(copies, 1), edges, copy_batch, box,
                             torch.randn(plain, copies * n_beads, 3, generator=torch.Generator().manual_seed(5)), False)
    accel = (samples - spread - x0.repeat(copies, 1)).reshape(copies, n_beads, 3)  # a - mean
    empirical = accel.std(dim=(0, 2))
    torch.testing.assert_close(empirical, std.squeeze(1), rtol=0.06, atol=0)


@pytest.mark.parametrize("noise_model", ["independent", "bonded", "internal"])
def test_copies_in_one_batch_match_single_molecules(noise_model, inputs, make_model, n_beads):
    model = make_model(noise=noise_model)
    history, features, coarse, batch, box = inputs(model)
    far = history + torch.tensor([50.0, 0.0, 0.0])  # second copy, out of the cutoff
    both = torch.cat([history, far], 1)
    noise = torch.randn(model.noise_draws(True), n_beads, 3)
    with torch.no_grad():
        single = model.step(history, features, coarse, batch, box, noise, True)
        double = model.step(both, torch.cat([features, features]), torch.cat([coarse, coarse + n_beads], 1),
                            torch.cat([batch, batch + 1]), box, torch.cat([noise, noise], 1), True)
    torch.testing.assert_close(double[:n_beads], single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(double[n_beads:], single + torch.tensor([50.0, 0.0, 0.0]), atol=1e-5, rtol=1e-5)


def test_embed_pools_per_bead_and_appends_mass(chain_molecule, make_model, n_beads):
    model = make_model()
    atom_types, fine_edges, bead_of_atom, _ = chain_molecule()
    with torch.no_grad():
        features = model.embed(atom_types, fine_edges, bead_of_atom, n_beads)
    assert features.shape == (n_beads, model.n_features)
    torch.testing.assert_close(features[:, -1], torch.full((n_beads,), (12.011 + 1.008) / 13.0))


def test_wrong_molecule_is_refused(chain_molecule, inputs, make_model, n_beads):
    model = make_model()
    atom_types, fine_edges, bead_of_atom, coarse = chain_molecule()
    with pytest.raises(ValueError, match="molecule of 8 beads"):
        model.embed(atom_types[:14], fine_edges[:, :12], bead_of_atom[:14], 7)
    unseen = atom_types.clone()
    unseen[0] = 5
    with pytest.raises(ValueError, match="never seen in training"):
        model.embed(unseen, fine_edges, bead_of_atom, n_beads)
    history, features, coarse, batch, box = inputs(model)
    with pytest.raises(ValueError, match="molecule of 8 beads"):
        model.step(history[:, :7], features[:7], coarse[:, :12], batch[:7], box, torch.zeros(7, 3), False)
    with pytest.raises(ValueError, match="k = 3"):
        model.predict(history[:2], features, coarse, batch, box)
    bad = history.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.predict(bad, features, coarse, batch, box)


@pytest.mark.parametrize("noise_model", ["independent", "bonded"])
def test_scripted_module_matches_eager(noise_model, inputs, make_model, n_beads):
    model = make_model(noise=noise_model)
    scripted = torch.jit.script(model)
    history, features, coarse, batch, box = inputs(model)
    noise = torch.randn(model.noise_draws(True), n_beads, 3)
    with torch.no_grad():
        torch.testing.assert_close(scripted.step(history, features, coarse, batch, box, noise, True),
                                   model.step(history, features, coarse, batch, box, noise, True))


@pytest.mark.parametrize("noise_model", ["independent", "bonded"])
def test_losses_are_finite_and_differentiable(noise_model, inputs, make_model, n_beads):
    model = make_model(noise=noise_model).train()
    history, features, coarse, batch, box = inputs(model)
    target = history[-1] + (history[-1] - history[-2])
    sigma = torch.full((n_beads, 1), 0.05)
    terms = model.losses(history, target, features, coarse, batch, box.unsqueeze(0), sigma, sigma * 4)
    loss = terms["nll"] + terms["dsm"]
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.score.parameters())
    assert model.embedding.type_embedding.weight.grad.abs().sum() > 0
    noise_heads = model.bonded_noise if noise_model == "bonded" else model.std_head
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in noise_heads.parameters())


def test_gaussian_nll_matches_torch():
    target, mean = torch.randn(5, 3), torch.randn(5, 3)
    std = torch.rand(5, 1) + 0.1
    reference = torch.nn.functional.gaussian_nll_loss(mean, target, std.expand(5, 3) ** 2, reduction="sum") / 5
    torch.testing.assert_close(gaussian_nll(target, mean, std), reference)


def test_count_collisions_and_sigmas():
    pos = torch.tensor([[0.0, 0, 0], [0.05, 0, 0], [1.0, 0, 0], [1.09, 0, 0], [3.0, 0, 0]])
    assert count_collisions(pos, 0.1) == 2
    assert count_collisions(pos, 0.1, batch=torch.tensor([0, 1, 0, 0, 0])) == 1
    sigmas = log_spaced_sigmas(0.1, 0.01, 3)
    torch.testing.assert_close(sigmas, torch.tensor([0.1, 0.1 ** 1.5, 0.01]))


def test_type_mass_table_requires_one_mass_per_type():
    table = type_mass_table(torch.tensor([6, 1, 6]), torch.tensor([12.0, 1.0, 12.0]))
    assert table.shape == (7,) and table[6] == 12.0 and table[0] == 0.0
    with pytest.raises(ValueError, match="different masses"):
        type_mass_table(torch.tensor([6, 6]), torch.tensor([12.0, 13.0]))


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match="unknown model option"):
        PropagatorConfig.from_dict({"hiden": 3})
    with pytest.raises(ValueError, match="k must be >= 2"):
        PropagatorConfig.from_dict({"k": 1})


def test_periodic_images_give_the_same_dynamics(inputs, make_model, n_beads):
    """Moving one bead (in every frame) or only its past frames by a box vector changes nothing physical."""
    model = make_model(cutoff_nm=0.9).double()
    history, features, coarse, batch, _ = inputs(model, torch.float64)
    features = features.double()
    box = torch.diag(torch.tensor([3.0, 3.2, 3.4], dtype=torch.float64))
    noise = torch.randn(model.noise_draws(True), n_beads, 3, dtype=torch.float64)
    with torch.no_grad():
        mean, std = model.predict(history, features, coarse, batch, box)
        x = model.step(history, features, coarse, batch, box, noise, True)
        moved = history.clone()
        moved[:, 3] += box[1]            # bead 3 in another image, all frames
        moved[:-1, 5] -= box[2]          # bead 5 wrapped between the last two frames
        mean2, std2 = model.predict(moved, features, coarse, batch, box)
        x2 = model.step(moved, features, coarse, batch, box, noise, True)
    torch.testing.assert_close(mean2, mean, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(std2, std, atol=1e-9, rtol=1e-7)
    expected = x.clone()
    expected[3] += box[1]
    torch.testing.assert_close(x2, expected, atol=1e-9, rtol=1e-7)


# ------------------------------------------------------------------------------ hard core
def pair_minima(x, coarse):
    d = torch.cdist(x, x)
    bonded = torch.zeros_like(d, dtype=torch.bool)
    bonded[coarse[0], coarse[1]] = True
    off = ~bonded & ~torch.eye(len(x), dtype=torch.bool)
    return float(d[bonded].min()), float(d[off].min())


@pytest.mark.parametrize("refine", [True, False])
def test_hard_core_pushes_close_pairs_apart_keeping_centre_of_mass(refine, compressed_history, hard_core_model, inputs,
                                                                   n_beads):
    model = hard_core_model().double()
    _, features, coarse, batch, box = inputs(model, torch.float64)
    features = features.double()
    history = compressed_history(model.k)
    noise = torch.zeros(model.noise_draws(refine), n_beads, 3, dtype=torch.float64)
    with torch.no_grad():
        model.hard_core = False
        free = model.step(history, features, coarse, batch, box, noise, refine)
        model.hard_core = True
        x = model.step(history, features, coarse, batch, box, noise, refine)
    assert min(pair_minima(free, coarse)) < 0.28  # the step itself leaves pairs inside the hard core
    bonded, other = pair_minima(x, coarse)
    assert bonded > 0.30 * 0.97 and other > 0.45 * 0.97
    masses = features[:, -1:]
    torch.testing.assert_close((masses * x).sum(0), (masses * free).sum(0), atol=1e-10, rtol=0)
    assert int(model.hard_core_events) > 0


def test_hard_core_is_equivariant_and_a_no_op_when_nothing_is_close(chain_history, compressed_history, hard_core_model,
                                                                    inputs):
    model = hard_core_model().double()
    _, features, coarse, batch, box = inputs(model, torch.float64)
    features = features.double()
    history = compressed_history(model.k)
    noise = assert_step_equivariant(model, history, features, coarse, batch, box, random_orthogonal(5, reflect=True),
                                    torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64), noise_seed=4)
    with torch.no_grad():
        # a relaxed chain: the projection leaves the step exactly as it was
        relaxed = chain_history(model.k, dtype=torch.float64)
        events = int(model.hard_core_events)
        model.hard_core = False
        free = model.step(relaxed, features, coarse, batch, box, 0.0 * noise, True)
        model.hard_core = True
        assert min(pair_minima(free, coarse)) > 0.30  # nothing inside the hard core
        assert torch.equal(model.step(relaxed, features, coarse, batch, box, 0.0 * noise, True), free)
        assert int(model.hard_core_events) == events


def test_hard_core_scripts_and_models_without_minima_keep_it_off(compressed_history, hard_core_model, inputs,
                                                                 make_model, n_beads):
    plain = make_model()
    assert not plain.hard_core and plain.min_bonded_nm == 0.0  # older checkpoints: no minima, no projection
    model = hard_core_model()
    assert model.hard_core
    scripted = torch.jit.script(model)
    _, features, coarse, batch, box = inputs(model)
    history = compressed_history(model.k, torch.float32)
    noise = torch.zeros(model.noise_draws(False), n_beads, 3)   # one block per attempt of the truncated step
    with torch.no_grad():
        torch.testing.assert_close(scripted.step(history, features, coarse, batch, box, noise, False),
                                   model.step(history, features, coarse, batch, box, noise, False))
    with pytest.raises(ValueError, match="hard_core_sweeps"):
        PropagatorConfig(hard_core_sweeps=0).validate()


# ------------------------------------------------------------------------------ refinement sampler
MIXTURE = (torch.tensor([0.3, 0.7], dtype=torch.float64), torch.tensor([-1.5, 1.0], dtype=torch.float64),
           torch.tensor([0.4, 0.6], dtype=torch.float64))  # weights, means, stds of a 1-D Gaussian mixture


def mixture_eps(x, sigma):
    """Exact unit noise ``-sigma * score`` of the mixture convolved with N(0, sigma^2)."""
    weights, means, stds = MIXTURE
    var = stds ** 2 + sigma ** 2
    responsibility = torch.softmax(torch.log(weights) - 0.5 * (x[..., None] - means) ** 2 / var
                                   - 0.5 * torch.log(var), dim=-1)
    return sigma * (responsibility * (x[..., None] - means) / var).sum(-1)


def refine_with_known_score(x, levels, generator):
    """The refinement of ``CGPropagator.step`` (re-noise to the first level, then ``anneal_step`` down)."""
    x = x + levels[0] * torch.randn(x.shape, dtype=x.dtype, generator=generator)
    for i, sigma in enumerate(levels):
        following = levels[i + 1] if i + 1 < len(levels) else 0.0
        x = anneal_step(x, mixture_eps(x, sigma), sigma, following,
                        torch.randn(x.shape, dtype=x.dtype, generator=generator))
    return x


@pytest.mark.parametrize("levels", [[0.6, 0.3, 0.1], [0.6, 0.3, 0.15, 0.05]])
def test_refinement_keeps_a_known_distribution(levels):
    """Started on the target (a bimodal mixture), the refinement with its exact score keeps the mean,
    the variance and the mode weights within 5%; chained deterministic Tweedie steps shrink the variance."""
    weights, means, stds = MIXTURE
    generator = torch.Generator().manual_seed(0)
    n = 200_000
    component = torch.multinomial(weights, n, replacement=True, generator=generator)
    sample = means[component] + stds[component] * torch.randn(n, dtype=torch.float64, generator=generator)
    mean = float((weights * means).sum())
    variance = float((weights * (stds ** 2 + means ** 2)).sum()) - mean ** 2
    refined = refine_with_known_score(sample, levels, generator)
    assert float(refined.mean()) == pytest.approx(mean, rel=0.05)
    assert float(refined.var()) == pytest.approx(variance, rel=0.05)
    left = float((weights * 0.5 * (1 + torch.erf((-0.25 - means) / (stds * math.sqrt(2))))).sum())  # P(x < -0.25)
    assert float((refined < -0.25).double().mean()) == pytest.approx(left, rel=0.05)
    tweedie = sample.clone()
    for sigma in levels:
        tweedie = tweedie - sigma * mixture_eps(tweedie, sigma)
    assert float(tweedie.var()) < 0.9 * variance  # the old deterministic refinement cools the sample


def test_refinement_noise_leaves_the_centre_of_mass_to_the_dynamics(inputs, make_model, n_beads):
    """With a zero Score network the refinement only adds internal noise: each molecule's centre of mass is kept."""
    model = make_model()
    for parameter in model.score.parameters():
        parameter.data.zero_()
    history, features, coarse, batch, box = inputs(model)
    noise = torch.randn(model.noise_draws(True), n_beads, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model.step(history, features, coarse, batch, box, noise[:1], False)
        refined = model.step(history, features, coarse, batch, box, noise, True)
    assert not torch.allclose(refined, plain)
    torch.testing.assert_close(refined.mean(0), plain.mean(0), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ truncated step
def _replicated(model, inputs, n_beads, copies):
    """The chain ``copies`` times as separate molecules of one batch."""
    history, features, coarse, _, box = inputs(model, torch.float64)
    edges = torch.cat([coarse + r * n_beads for r in range(copies)], dim=1)
    batch = torch.arange(copies).repeat_interleave(n_beads)
    return history.repeat(1, copies, 1), features.double().repeat(copies, 1), edges, batch, box


def _bond_lengths(x, n_beads):
    x = x.view(-1, n_beads, 3)
    return torch.linalg.vector_norm(x[:, 1:] - x[:, :-1], dim=-1)   # (copies, n_beads - 1)


def test_truncated_step_is_the_step_conditioned_on_the_minimum_distance(make_model, inputs, n_beads):
    """Rejection sampling, checked against its definition: the truncated step's molecules are distributed as
    the plain step's molecules that have no bond under the minimum; nothing piles up at the limit, where
    the hard core's projection puts a spike."""
    from scipy.stats import ks_2samp

    plain = make_model().double()
    init = json.loads(plain.init_json)
    init.update(min_bonded_nm=0.35, min_nonbonded_nm=0.0)   # the chain's bonds are ~0.38 nm: many steps violate
    model = CGPropagator.from_init_json(json.dumps(init)).double()
    model.load_state_dict(plain.state_dict())
    model.eval().hard_core = False
    copies = 3000
    history, features, coarse, batch, box = _replicated(model, inputs, n_beads, copies)
    generator = torch.Generator().manual_seed(5)

    def step(retries, hard_core=False):
        model.exclusion_retries, model.hard_core = retries, hard_core
        noise = torch.randn(model.noise_draws(True), copies * n_beads, 3, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            return _bond_lengths(model.step(history, features, coarse, batch, box, noise, True), n_beads)

    free = step(0)
    violating = (free < 0.35).any(dim=1)
    assert 0.3 < float(violating.double().mean()) < 0.8
    events = model.exclusion_events.clone()
    truncated = step(6)
    assert int(model.exclusion_events[0] - events[0]) > copies * 0.2   # redraws happened ...
    left = (truncated < 0.35).any(dim=1)
    fraction = float(violating.double().mean())   # independent redraws: a molecule is left outside with f^(1+6)
    assert abs(float(left.double().mean()) - fraction ** 7) < 0.02
    kept, accepted = free[~violating], truncated[~left]
    for bond in (0, 3, 6):
        assert ks_2samp(kept[:, bond].numpy(), accepted[:, bond].numpy()).pvalue > 0.01
    near = (accepted > 0.35) & (accepted < 0.351)
    assert float(near.double().mean()) < 3 * float(((kept > 0.35) & (kept < 0.351)).double().mean()) + 1e-3
    projected = step(0, hard_core=True)
    assert float(((projected > 0.345) & (projected < 0.351)).double().mean()) > 5 * float(near.double().mean())
