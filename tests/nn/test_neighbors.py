"""radius_graph against a brute-force reference: periodic or not, batched, both search paths."""
import itertools

import numpy as np
import pytest
import torch

from openmm_cgml.nn import edge_vectors, radius_graph


def brute_force(pos, cutoff, batch, boxes):
    """{(j, i): minimum-image vector j->i} by trying every image in -2..2 (numpy, float64)."""
    pos = np.asarray(pos, dtype=np.float64)
    out = {}
    for i, j in itertools.permutations(range(len(pos)), 2):
        if batch[i] != batch[j]:
            continue
        d = pos[i] - pos[j]
        box = None if boxes is None else np.asarray(boxes[batch[i]], dtype=np.float64)
        if box is None or not box.any():
            if np.linalg.norm(d) < cutoff:
                out[(j, i)] = d
            continue
        for n in itertools.product(range(-2, 3), repeat=3):
            dd = d + np.asarray(n) @ box
            if np.linalg.norm(dd) < cutoff:
                out[(j, i)] = dd
    return out


def as_dict(pos, edge_index, shift):
    vec = pos[edge_index[1]] - pos[edge_index[0]] + shift
    return {(int(j), int(i)): v.numpy() for (j, i), v in zip(edge_index.t(), vec)}


def check_against_reference(pos, cutoff, batch, boxes, method):
    edge_index, shift = radius_graph(pos, cutoff, batch, boxes, max_num_neighbors=10_000, method=method)
    got = as_dict(pos.double(), edge_index, shift.double())
    ref = brute_force(pos.numpy(), cutoff, batch.tolist(), None if boxes is None else boxes.numpy())
    assert set(got) == set(ref)
    for key, vec in ref.items():
        np.testing.assert_allclose(got[key], vec, atol=1e-9)
    # sorted by (target, source), no self loops, no cross-graph edges
    keys = edge_index[1] * len(pos) + edge_index[0]
    assert torch.all(keys[1:] > keys[:-1])
    assert torch.all(batch[edge_index[0]] == batch[edge_index[1]])


TRICLINIC = [[2.0, 0.0, 0.0], [0.6, 2.1, 0.0], [-0.5, 0.4, 1.9]]


@pytest.mark.parametrize("method", ["dense", "cell", "auto"])
def test_open_boundaries_batched(method):
    gen = torch.Generator().manual_seed(1)
    pos = torch.rand(70, 3, generator=gen, dtype=torch.float64) * 2.5
    batch = torch.randint(0, 3, (70,), generator=gen)       # unsorted on purpose
    check_against_reference(pos, 0.7, batch, None, method)


def test_many_small_graphs_auto_matches_the_cell_list():
    """Above DENSE_MAX_ATOMS, many small sorted graphs take the per-graph block search: the same edges."""
    gen = torch.Generator().manual_seed(3)
    sizes = torch.randint(1, 12, (120,), generator=gen)                 # uneven molecules, one of a single bead
    sizes[7] = 1
    batch = torch.arange(120).repeat_interleave(sizes)
    centres = torch.rand(120, 3, generator=gen) * 4.0                    # molecules overlap in space
    pos = centres[batch] + 0.4 * torch.randn(len(batch), 3, generator=gen)
    assert len(pos) > 512
    auto = radius_graph(pos, 0.6, batch)
    cell = radius_graph(pos, 0.6, batch, method="cell")
    assert torch.equal(auto[0], cell[0]) and torch.equal(auto[1], cell[1])
    assert auto[0].size(1) > 0 and torch.all(batch[auto[0][0]] == batch[auto[0][1]])
    check_against_reference(pos[:600], 0.6, batch[:600], None, "auto")


def test_few_hundred_beads_of_small_graphs_auto_matches_the_all_pairs_matrix():
    """Between 64 and DENSE_MAX_ATOMS nodes, small sorted graphs also take the block search: the same edges as
    the all-pairs matrix, in the same order; one larger graph keeps the matrix."""
    gen = torch.Generator().manual_seed(4)
    batch = torch.arange(40).repeat_interleave(8)                        # 40 chains of 8 beads: 320 nodes
    pos = (torch.rand(40, 3, generator=gen) * 3.0)[batch] + 0.3 * torch.randn(320, 3, generator=gen)
    for graph in (batch, torch.zeros_like(batch)):
        auto = radius_graph(pos, 0.6, graph)
        dense = radius_graph(pos, 0.6, graph, method="dense")
        assert torch.equal(auto[0], dense[0]) and torch.equal(auto[1], dense[1]) and auto[0].size(1) > 0


@pytest.mark.parametrize("method", ["dense", "cell"])
def test_triclinic_periodic_batched(method):
    gen = torch.Generator().manual_seed(2)
    pos = (torch.rand(80, 3, generator=gen, dtype=torch.float64) - 0.3) * 3.0   # partly outside the box
    batch = torch.randint(0, 2, (80,), generator=gen)
    boxes = torch.tensor([TRICLINIC, [[2.4, 0, 0], [0, 2.2, 0], [0, 0, 2.6]]], dtype=torch.float64)
    check_against_reference(pos, 0.85, batch, boxes, method)


@pytest.mark.parametrize("method", ["dense", "cell"])
def test_mixed_periodic_and_open_graphs(method):
    gen = torch.Generator().manual_seed(3)
    pos = torch.rand(50, 3, generator=gen, dtype=torch.float64) * 2.0
    batch = torch.cat([torch.zeros(25, dtype=torch.long), torch.ones(25, dtype=torch.long)])
    boxes = torch.zeros(2, 3, 3, dtype=torch.float64)        # zeros = graph 1 not periodic
    boxes[0] = torch.tensor(TRICLINIC)
    check_against_reference(pos, 0.8, batch, boxes, method)


def test_small_box_with_one_or_two_cells_per_axis():
    # widths 1.2-2.1 nm with cutoff 0.6: 2 or 3 cells per axis, the wrap must not double count
    gen = torch.Generator().manual_seed(4)
    pos = torch.rand(40, 3, generator=gen, dtype=torch.float64) * 1.5
    box = torch.tensor([[1.2, 0, 0], [0, 1.9, 0], [0, 0, 2.1]], dtype=torch.float64)
    check_against_reference(pos, 0.6, torch.zeros(40, dtype=torch.long), box.unsqueeze(0), "cell")


def test_cell_list_equals_dense_on_a_larger_periodic_system():
    gen = torch.Generator().manual_seed(5)
    box = torch.tensor([[4.0, 0, 0], [1.0, 4.2, 0], [0.5, -0.8, 3.9]], dtype=torch.float64)
    pos = torch.rand(700, 3, generator=gen, dtype=torch.float64) @ box
    dense = radius_graph(pos, 1.0, box=box, max_num_neighbors=1000, method="dense")
    cell = radius_graph(pos, 1.0, box=box, max_num_neighbors=1000, method="cell")
    assert torch.equal(dense[0], cell[0])
    torch.testing.assert_close(dense[1], cell[1])
    assert dense[0].size(1) > 10_000


def test_max_num_neighbors_keeps_the_nearest():
    gen = torch.Generator().manual_seed(6)
    pos = torch.rand(60, 3, generator=gen, dtype=torch.float64)
    full, _ = radius_graph(pos, 2.0, max_num_neighbors=1000)
    capped, _ = radius_graph(pos, 2.0, max_num_neighbors=5)
    assert torch.all(torch.bincount(capped[1], minlength=60) == 5)
    dist = (pos[full[1]] - pos[full[0]]).norm(dim=1)
    for i in range(60):
        nearest = full[0][full[1] == i][torch.argsort(dist[full[1] == i])[:5]]
        assert set(capped[0][capped[1] == i].tolist()) == set(nearest.tolist())


def test_torchscript_float32_and_eager_agree():
    scripted = torch.jit.script(radius_graph)
    pos = torch.rand(30, 3) * 2.0
    box = torch.eye(3) * 2.0
    for method in ("dense", "cell"):
        a = scripted(pos, 0.6, None, box, 64, method)
        b = radius_graph(pos, 0.6, None, box, 64, method)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert a[1].dtype == torch.float32


def test_edge_vectors_give_minimum_image_for_bonds():
    box = torch.eye(3, dtype=torch.float64) * 2.0
    pos = torch.tensor([[0.05, 1.0, 1.0], [1.95, 1.0, 1.0]], dtype=torch.float64)
    vec, shift = edge_vectors(pos, torch.tensor([[0], [1]]), None, box)
    torch.testing.assert_close(vec, torch.tensor([[-0.1, 0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(shift, torch.tensor([[-2.0, 0.0, 0.0]], dtype=torch.float64))


def test_bad_input_is_named():
    pos = torch.rand(10, 3)
    with pytest.raises(ValueError, match="half the shortest periodic box width"):
        radius_graph(pos, 0.6, box=torch.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        radius_graph(torch.full((4, 3), float("nan")), 0.5)
    with pytest.raises(ValueError, match="pos must have shape"):
        radius_graph(torch.rand(4, 2), 0.5)
    with pytest.raises(ValueError, match="cutoff must be positive"):
        radius_graph(pos, 0.0)
    with pytest.raises(ValueError, match="graphs"):
        radius_graph(pos, 0.2, torch.tensor([0] * 5 + [1] * 5), torch.eye(3).repeat(3, 1, 1))
    edge_index, shift = radius_graph(torch.zeros(0, 3), 0.5)
    assert edge_index.shape == (2, 0) and shift.shape == (0, 3)


def test_open_dense_fast_path_equals_cell_list_with_a_neighbour_cap():
    """No box (or an all-zero box) takes a short dense path; it must equal the general cell-list search."""
    gen = torch.Generator().manual_seed(8)
    pos = torch.rand(90, 3, generator=gen, dtype=torch.float64) * 1.5
    batch = torch.arange(90) % 3
    for cap in (4, 1000):
        cell = radius_graph(pos, 0.6, batch, max_num_neighbors=cap, method="cell")
        for box in (None, torch.zeros(3, 3, dtype=torch.float64)):
            dense = radius_graph(pos, 0.6, batch, box, max_num_neighbors=cap, method="dense")
            assert torch.equal(dense[0], cell[0]) and torch.equal(dense[1], cell[1])


def test_molecule_pairs_are_the_radius_graph_of_an_infinite_cutoff():
    """Every ordered pair within each graph, the second half the first reversed; None where the graphs do not
    allow it."""
    from openmm_cgml.nn.neighbors import molecule_pairs

    batch = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 2])
    pos = torch.randn(9, 3)
    edge, _ = radius_graph(pos, 1e3, batch)
    pairs = molecule_pairs(batch)
    half = pairs.size(1) // 2
    assert pairs.size(1) == 3 * 2 + 0 + 5 * 4
    assert torch.equal(pairs[:, half:], pairs[:, :half].flip(0)) and bool((pairs[0, :half] < pairs[1, :half]).all())
    order = torch.argsort(pairs[1] * 9 + pairs[0])                  # radius_graph's (i, j) order
    assert torch.equal(pairs[:, order], edge)
    assert molecule_pairs(batch, max_graph=4) is None           # a graph of 5 nodes
    assert molecule_pairs(batch.flip(0)) is None                # not sorted: no contiguous blocks
    assert torch.jit.script(molecule_pairs)(batch).equal(pairs)
