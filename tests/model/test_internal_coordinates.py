"""The internal-coordinate step noise: the coordinates, the rebuild, the draw against its density, the propagator."""
import math

import pytest
import torch

from openmm_cgml.model.internal_coordinates import (
    InternalCoordinateNoise,
    check_trees,
    doubling_rounds,
    frames,
    internal_coordinates,
    rebuild,
    rotation_matrix,
    rotation_vector,
    torsion_references,
    tree_layout,
)
from tests.model.test_propagator import random_orthogonal

# a 6-bead chain (0-5) and a branched 6-bead tree (6-11: 7 and 8 carry side beads 10 and 11)
EDGES = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [6, 7], [7, 8], [8, 9], [7, 10], [8, 11]]).T
N = 12
BATCH = torch.tensor([0] * 6 + [1] * 6)


def _positions(seed=0):
    """Random chains (nm) with bond angles of 90-130 degrees, so that every torsion is well defined."""
    g = torch.Generator().manual_seed(seed)
    parent, root, _, _ = tree_layout(EDGES, N)
    internal = torch.stack([0.1 + 0.1 * torch.rand(N, generator=g, dtype=torch.float64),
                            math.radians(90) + math.radians(40) * torch.rand(N, generator=g, dtype=torch.float64),
                            math.pi * (2 * torch.rand(N, generator=g, dtype=torch.float64) - 1)], 1)
    internal[[1, 7], 1], internal[[1, 2, 7, 8], 2] = math.pi, 0.0     # c1 and c2: the anchor's own values
    start = 2.0 * torch.randn(N, 3, generator=g, dtype=torch.float64)
    return rebuild(internal, random_orthogonal(seed, reflect=False).expand(N, 3, 3), start, parent, root)


def _dihedral(a, b, c, d):
    b0, b1, b2 = a - b, c - b, d - c
    b1 = b1 / b1.norm()
    v, w = b0 - (b0 @ b1) * b1, b2 - (b2 @ b1) * b1
    return torch.atan2(torch.linalg.cross(b1, v) @ w, v @ w)


def _layout_and_internals(x):
    parent, root, anchor, dof = tree_layout(EDGES, N)
    frame = frames(x, parent, root, anchor)
    return parent, root, anchor, dof, frame, internal_coordinates(x, frame, parent, dof)


def test_layout_roots_anchors_and_degrees_of_freedom():
    parent, root, anchor, dof = tree_layout(EDGES, N)
    assert parent.tolist() == [0, 0, 1, 2, 3, 4, 6, 6, 7, 8, 7, 8]
    assert root.tolist() == [0] * 6 + [6] * 6
    assert anchor[0].tolist() == [1, 2] and anchor[6].tolist() == [7, 8]
    # 3n - 6 internal coordinates per tree
    assert dof[:6].sum() == 12 and dof[6:].sum() == 12
    assert dof[1].tolist() == [1, 0, 0] and dof[2].tolist() == [1, 1, 0] and dof[10].tolist() == [1, 1, 1]


@pytest.mark.parametrize("length", [5, 8, 9])
def test_doubling_rounds_rebuild_a_chain_exactly_and_no_fewer_do(length):
    # a bead d bonds from its root composes d + 1 transforms (the root's own too): 2^rounds >= d + 1
    chain = torch.stack([torch.arange(length - 1), torch.arange(1, length)])
    parent, root, anchor, dof = tree_layout(chain, length)
    rounds = doubling_rounds(parent)
    assert rounds == math.ceil(math.log2(length))
    g = torch.Generator().manual_seed(length)
    x = torch.cumsum(0.15 * torch.randn(length, 3, generator=g, dtype=torch.float64), 0)
    frame = frames(x, parent, root, anchor)
    internal = internal_coordinates(x, frame, parent, dof.double())
    torch.testing.assert_close(rebuild(internal, frame, x, parent, root, rounds), x, atol=1e-9, rtol=0)
    assert not torch.allclose(rebuild(internal, frame, x, parent, root, rounds - 1), x, atol=1e-6)


def test_doubling_rounds_follow_the_deepest_bead_not_the_bead_count():
    parent, root, anchor, dof = tree_layout(EDGES, N)
    assert doubling_rounds(parent) == 3                  # the chain's bead 5 is 5 bonds from its root: 2^3 >= 6
    copies = 50                                          # 600 beads, as deep as one copy
    edges = torch.cat([EDGES + N * c for c in range(copies)], 1)
    many, many_root, _, _ = tree_layout(edges, N * copies)
    assert doubling_rounds(many) == 3 and doubling_rounds(torch.arange(4)) == 0
    assert doubling_rounds(torch.tensor([0, 0, 1, 2, 3])) == 3 and doubling_rounds(torch.tensor([0, 0, 1, 2])) == 2
    x = torch.cat([_positions(seed) for seed in range(copies)])
    frame = frames(x, many, many_root, tree_layout(edges, N * copies)[2])
    internal = internal_coordinates(x, frame, many, tree_layout(edges, N * copies)[3].double())
    full = rebuild(internal, frame, x, many, many_root)           # log2(600) rounds
    torch.testing.assert_close(rebuild(internal, frame, x, many, many_root, 3), full, atol=0, rtol=0)
    torch.testing.assert_close(full, x, atol=1e-9, rtol=0)
    assert not torch.allclose(rebuild(internal, frame, x, many, many_root, 2), x)   # one round short


def test_a_comb_is_anchored_on_its_backbone_not_a_side_bead():
    """Known answer: backbone 0-2-4-6 with side beads 1, 3, 5 (the root's first child is a side bead): the anchor
    is 0 -> 2 -> 3, every bead's coordinates count 3n - 6, and the rebuild returns the positions."""
    bonds = torch.tensor([[0, 1], [0, 2], [2, 3], [2, 4], [4, 5], [4, 6]]).T
    edges = torch.cat([bonds, bonds.flip(0)], 1)
    parent, root, anchor, dof = tree_layout(edges, 7)
    check_trees(edges, 7)
    assert anchor[0].tolist() == [2, 3] and dof.sum() == 3 * 7 - 6
    x = _positions(13)[:7]
    frame = frames(x, parent, root, anchor)
    torch.testing.assert_close(rebuild(internal_coordinates(x, frame, parent, dof), frame, x, parent, root), x,
                               atol=1e-9, rtol=0)


def test_frames_are_proper_rotations_and_rebuild_inverts_the_coordinates():
    x = _positions()
    parent, root, _, _, frame, internal = _layout_and_internals(x)
    eye = torch.eye(3, dtype=x.dtype).expand(N, 3, 3)
    torch.testing.assert_close(torch.bmm(frame.transpose(1, 2), frame), eye)
    torch.testing.assert_close(torch.linalg.det(frame), torch.ones(N, dtype=x.dtype))
    torch.testing.assert_close(rebuild(internal, frame, x, parent, root), x, atol=1e-9, rtol=0)


def test_coordinates_are_bond_lengths_angles_and_iupac_torsions():
    x = _positions(1)
    *_, internal = _layout_and_internals(x)
    torch.testing.assert_close(internal[3, 0], (x[3] - x[2]).norm())
    cosine = torch.dot(x[1] - x[2], x[3] - x[2]) / ((x[1] - x[2]).norm() * (x[3] - x[2]).norm())
    torch.testing.assert_close(internal[3, 1], torch.acos(cosine))
    torch.testing.assert_close(internal[4, 2], _dihedral(x[1], x[2], x[3], x[4]))
    torch.testing.assert_close(internal[11, 2], _dihedral(x[6], x[7], x[8], x[11]))


def test_coordinates_are_invariant_under_rotation_and_torsions_flip_under_reflection():
    x = _positions(2)
    *_, internal = _layout_and_internals(x)
    *_, turned = _layout_and_internals(x @ random_orthogonal(3, reflect=False).T + 1.0)
    *_, mirrored = _layout_and_internals(x @ random_orthogonal(3, reflect=True).T)
    torch.testing.assert_close(turned, internal)
    torch.testing.assert_close(mirrored[:, :2], internal[:, :2])
    torch.testing.assert_close(mirrored[:, 2], -internal[:, 2])


def test_rotation_vector_inverts_rotation_matrix():
    omega = 0.8 * torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(rotation_vector(rotation_matrix(omega)), omega)


def _noise_module(scale=0.1, components=1):
    """A module and its parameters for random latents, every std scaled by ``scale``."""
    torch.manual_seed(0)
    module = InternalCoordinateNoise(8, length_scale_nm=0.1, torsion_components=components).double()
    with torch.no_grad():
        params = module(torch.randn(N, 8, dtype=torch.float64), BATCH)
    params[:, 4:6] = 0.0        # bond lengths and angles centred on the current ones
    return module, _scaled(module, params, scale)


def _scaled(module, params, factor):
    """``params`` with every std (not the weights or offsets) times ``factor``."""
    k = module.components
    return torch.cat([params[:, :4] * factor, params[:, 4:6 + 2 * k], params[:, 6 + 2 * k:] * factor], 1)


def _stds(params):
    """``[s_b, s_theta, s_phi]`` (N, 3) of a one-component module."""
    return params[:, [0, 1, 8]]


def _draws(module, params, x, masses, count, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([module.sample(params, torch.randn(module.draws(), N, 3, generator=g, dtype=x.dtype), x,
                                      x, masses, EDGES, BATCH)
                        for _ in range(count)])


def _torsion_changes(ys, x, relative=True):
    """Changes of the internal coordinates of draws ``ys`` from ``x``; with ``relative``, a later sibling's torsion
    change less its first sibling's (the coordinate the module draws)."""
    parent, root, anchor, dof = tree_layout(EDGES, N)
    internal = internal_coordinates(x, frames(x, parent, root, anchor), parent, dof)
    delta = torch.stack([internal_coordinates(y, frames(y, parent, root, anchor), parent, dof) for y in ys]) - internal
    if relative:
        sibling = torsion_references(parent)
        has = sibling >= 0
        delta[:, has, 2] -= delta[:, sibling[has], 2] * dof[sibling[has], 2]
    delta[..., 2] = torch.atan2(torch.sin(delta[..., 2]), torch.cos(delta[..., 2]))
    return delta, dof > 0


def test_torsion_references_are_the_parents_first_child():
    parent, *_ = tree_layout(EDGES, N)
    # 7 has children 8 and 10, 8 has 9 and 11: 10 turns with 8, 11 with 9; the chain has no branch
    assert torsion_references(parent).tolist() == [-1] * 10 + [8, 9]


def test_a_branch_turns_with_its_first_sibling():
    """Known answer: bead 11's torsion step is its own draw plus its first sibling 9's, so its change has the std
    sqrt(s9^2 + s11^2), correlates with 9's by s9 / sqrt(s9^2 + s11^2), and less 9's has the std s11."""
    module, params = _noise_module()
    x, masses = _positions(5), torch.ones(N, dtype=torch.float64)
    with torch.no_grad():
        ys = _draws(module, params, x, masses, 3000, seed=16)
    raw, _ = _torsion_changes(ys, x, relative=False)
    s9, s11 = _stds(params)[9, 2], _stds(params)[11, 2]
    total = torch.sqrt(s9 ** 2 + s11 ** 2)
    torch.testing.assert_close(raw[:, 11, 2].std(), total, rtol=0.07, atol=0)
    correlation = torch.corrcoef(torch.stack([raw[:, 9, 2], raw[:, 11, 2]]))[0, 1]
    torch.testing.assert_close(correlation, s9 / total, atol=0.05, rtol=0)
    torch.testing.assert_close((raw[:, 11, 2] - raw[:, 9, 2]).std(), s11, rtol=0.07, atol=0)


def test_draw_has_the_mean_and_stds_it_claims():
    """Known answer: the internal coordinates, centre and orientation of many draws scatter about the mean's by the
    module's own stds (small stds, so wrapping and angle limits do not matter)."""
    module, params = _noise_module()
    x, masses = _positions(5), torch.linspace(1.0, 3.0, N, dtype=torch.float64)
    parent, root, anchor, dof, frame, internal = _layout_and_internals(x)
    with torch.no_grad():
        zero = module.sample(params, torch.zeros(3, N, 3, dtype=x.dtype), x, x, masses, EDGES, BATCH)
        ys = _draws(module, params, x, masses, 3000, seed=6)
    torch.testing.assert_close(zero, x, atol=1e-9, rtol=0)
    delta, used = _torsion_changes(ys, x)
    ratio = (delta.std(0) / _stds(params))[used]
    assert ratio.min() > 0.93 and ratio.max() < 1.07, ratio
    assert (delta.mean(0) / _stds(params))[used].abs().max() < 0.1
    # centre of mass of the first tree, and the rotation of its anchor frame
    w = masses[:6, None] / masses[:6].sum()
    shift = (ys[:, :6] * w).sum(1) - (x[:6] * w).sum(0)
    torch.testing.assert_close(shift.std(0), params[0, 2].expand(3), rtol=0.07, atol=0)
    omega = rotation_vector(torch.stack([frames(y, parent, root, anchor)[0] @ frame[0].T for y in ys]))
    torch.testing.assert_close(omega.std(0), params[0, 3].expand(3), rtol=0.07, atol=0)


@pytest.mark.parametrize("components", [1, 3])
def test_density_is_lowest_at_the_stds_that_drew_the_samples(components):
    """The NLL of draws from known stds, per bead: scaling every std by 0.8 or 1.25 raises it."""
    module, params = _noise_module(components=components)
    x, masses = _positions(7), torch.ones(N, dtype=torch.float64)
    with torch.no_grad():
        ys = _draws(module, params, x, masses, 400, seed=8)
        scores = [sum(float(module.nll(y, x, x, _scaled(module, params, factor), masses, EDGES, BATCH)) for y in ys)
                  for factor in (0.8, 1.0, 1.25)]
    assert scores[1] < scores[0] and scores[1] < scores[2], scores


def test_torsion_mixture_draws_each_component_by_its_weight():
    """Known answer: with two well-separated components (offsets -0.6 and +0.6 rad, weights 0.25 and 0.75,
    std 0.05 rad) the torsion changes fall near each offset in those proportions; a later sibling's relative
    torsion takes the first component only."""
    module, params = _noise_module(components=2)
    params = params.clone()
    params[:, 6:8] = torch.log(torch.tensor([0.25, 0.75], dtype=torch.float64))
    params[:, 8:10] = torch.tensor([-0.6, 0.6], dtype=torch.float64)
    params[:, 10:12] = 0.05
    x, masses = _positions(9), torch.ones(N, dtype=torch.float64)
    with torch.no_grad():
        ys = _draws(module, params, x, masses, 2000, seed=10)
    delta, used = _torsion_changes(ys, x)
    later = torsion_references(tree_layout(EDGES, N)[0]) >= 0
    # a later sibling's relative torsion is stiff: the first component alone
    assert (delta[:, later & used[:, 2], 2] < 0).all()
    used[later, 2] = False
    turns = delta[..., 2][:, used[:, 2]]
    assert turns.abs().sub(0.6).abs().max() < 0.4                  # every draw near one of the two offsets
    torch.testing.assert_close((turns > 0).double().mean(0), torch.full((turns.size(1),), 0.75, dtype=torch.float64),
                               atol=0.04, rtol=0)
    torch.testing.assert_close(turns[turns > 0].std(), torch.tensor(0.05, dtype=torch.float64), rtol=0.1, atol=0)


def test_bonds_and_angles_are_centred_on_the_current_ones_plus_the_predicted_change():
    """Known answer: with zero noise, a draw from mean positions ``x_mean`` keeps their torsions and orientation but
    takes its bond lengths and angles from the current positions ``x_now`` plus the predicted changes, and a
    later sibling's torsion relative to its first sibling (bead 10's to 8's, 11's to 9's) from ``x_now`` too."""
    module, params = _noise_module()
    params[:, 4], params[:, 5] = 0.01, -0.05
    x_now, x_mean, masses = _positions(11), _positions(12), torch.ones(N, dtype=torch.float64)
    with torch.no_grad():
        y = module.sample(params, torch.zeros(3, N, 3, dtype=x_now.dtype), x_now, x_mean, masses, EDGES, BATCH)
    *_, now = _layout_and_internals(x_now)
    *_, mean = _layout_and_internals(x_mean)
    *_, drawn = _layout_and_internals(y)
    _, _, _, dof = tree_layout(EDGES, N)
    used = dof > 0
    torch.testing.assert_close(drawn[:, 0][used[:, 0]], now[:, 0][used[:, 0]] + 0.01)
    torch.testing.assert_close(drawn[:, 1][used[:, 1]], now[:, 1][used[:, 1]] - 0.05)
    first = used[:, 2].clone()
    first[[10, 11]] = False                        # the later siblings (of 8 and of 9)
    torch.testing.assert_close(drawn[:, 2][first], mean[:, 2][first])
    for later, sibling in ((10, 8), (11, 9)):
        turn = (drawn[later, 2] - drawn[sibling, 2]) - (now[later, 2] - now[sibling, 2])
        assert abs(math.remainder(float(turn), 2 * math.pi)) < 1e-9
        assert abs(math.remainder(float(mean[later, 2] - mean[sibling, 2] - now[later, 2] + now[sibling, 2]),
                                  2 * math.pi)) > 0.1


def test_tree_without_three_beads_in_a_row_is_refused():
    star = torch.tensor([[0, 1], [0, 2], [0, 3]]).T
    with pytest.raises(ValueError, match="three bonded beads in a row"):
        check_trees(star, 4)
    check_trees(EDGES, N)


def _step_inputs(make_model, chain_molecule, chain_history, n_beads, **config):
    model = make_model(noise="internal", **config).double()
    atom_types, fine_edges, bead_of_atom, coarse = chain_molecule()
    features = model.embed(atom_types, fine_edges, bead_of_atom, n_beads).double()
    history = chain_history(model.k, dtype=torch.float64)
    return model, history, features, coarse, torch.zeros(n_beads, dtype=torch.long), torch.zeros(3, 3)


def test_step_is_rotation_equivariant_and_not_mirror_symmetric(make_model, chain_molecule,
                                                                              chain_history, n_beads):
    model, history, features, coarse, batch, box = _step_inputs(make_model, chain_molecule, chain_history, n_beads,
                                                                chirality=True)
    noise = torch.randn(model.noise_draws(True), n_beads, 3, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(9))
    q, shift = random_orthogonal(10, reflect=False), torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    rotated = noise.clone()
    rotated[1:] = noise[1:] @ q.T      # the centre shift, the rotation vector and the refinement noise are vectors
    draws = model.noise_draws(False)
    with torch.no_grad():
        x = model.step(history, features, coarse, batch, box, noise, True)
        x2 = model.step(history @ q.T + shift, features, coarse, batch, box, rotated, True)
        plain = model.step(history, features, coarse, batch, box, noise[:draws], False)
        mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
        x3 = model.step(history @ mirror, features, coarse, batch, box, noise[:draws] @ mirror, False)
    torch.testing.assert_close(x2, x @ q.T + shift, atol=1e-9, rtol=1e-7)
    assert (x3 - plain @ mirror).abs().max() > 1e-4    # SE(3): the mirror image is another molecule


@pytest.mark.parametrize("components", [1, 2])
def test_propagator_with_internal_noise_scripts_and_trains(components, make_model, chain_molecule, chain_history,
                                                           n_beads):
    model, history, features, coarse, batch, box = _step_inputs(make_model, chain_molecule, chain_history, n_beads,
                                                                torsion_components=components)
    assert model.noise_draws(False) == 2 + components
    noise = torch.randn(model.noise_draws(True), n_beads, 3, dtype=torch.float64)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted.step(history, features, coarse, batch, box, noise, True),
                                   model.step(history, features, coarse, batch, box, noise, True))
    target = history[-1] + (history[-1] - history[-2])
    sigma = torch.full((n_beads, 1), 0.05, dtype=torch.float64)
    terms = model.train().losses(history, target, features, coarse, batch, box.unsqueeze(0).double(), sigma, sigma)
    terms["nll"].backward()
    assert math.isfinite(float(terms["nll"].detach()))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.coordinate_noise.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.accel_head.parameters())


@pytest.mark.parametrize("extra", [(), ("CB", "O")])
def test_chignolin_backbone_beads_are_a_tree_the_coordinates_rebuild(extra):
    """The backbone mapping of a real peptide (chignolin, with side branches for CB and O): one tree, 3n - 6
    internal coordinates, and the rebuild returns the folded structure's beads."""
    import openmm.unit as unit

    from openmm_cgml import systems
    from openmm_cgml.mapping import Mapping

    chignolin = systems.load("chignolin")
    mapping = Mapping.build("backbone", chignolin.topology, chignolin.system, extra=list(extra))
    x = torch.as_tensor(mapping.bead_positions(chignolin.positions.value_in_unit(unit.nanometer)),
                        dtype=torch.float64)
    bonds = torch.as_tensor(mapping.coarse_bonds, dtype=torch.long).T
    edges = torch.cat([bonds, bonds.flip(0)], 1)
    n = mapping.n_beads
    check_trees(edges, n)
    parent, root, anchor, dof = tree_layout(edges, n)
    assert root.unique().numel() == 1 and dof.sum() == 3 * n - 6
    frame = frames(x, parent, root, anchor)
    torch.testing.assert_close(rebuild(internal_coordinates(x, frame, parent, dof), frame, x, parent, root), x,
                               atol=1e-9, rtol=0)
