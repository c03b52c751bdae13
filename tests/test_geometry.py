"""The one minimum image and pair-distance code, on boxes with known answers."""
import numpy as np
import torch

from openmm_cgml.geometry import count_collisions, minimum_image, minimum_image_torch, pair_distances_torch


def test_rectangular_minimum_image_numpy_and_torch_agree_with_hand_values():
    box = np.diag([2.0, 3.0, 4.0])
    delta = np.array([[1.5, -2.0, 3.9], [0.2, 0.3, -0.4]])
    expected = np.array([[-0.5, 1.0, -0.1], [0.2, 0.3, -0.4]])
    np.testing.assert_allclose(minimum_image(delta, box), expected, atol=1e-12)
    np.testing.assert_allclose(minimum_image_torch(torch.tensor(delta), torch.tensor(box)).numpy(), expected,
                               atol=1e-12)


def test_triclinic_minimum_image_is_shortest_over_neighbouring_images():
    box = np.array([[3.0, 0.0, 0.0], [1.0, 3.0, 0.0], [-1.0, 1.0, 3.0]])
    rng = np.random.default_rng(0)
    delta = rng.uniform(-0.6, 0.6, size=(200, 3)) + rng.integers(-2, 3, size=(200, 3)) @ box
    shifts = np.array([[i, j, k] for i in (-2, -1, 0, 1, 2) for j in (-2, -1, 0, 1, 2) for k in (-2, -1, 0, 1, 2)])
    images = delta[:, None, :] + (shifts @ box)[None]
    shortest = np.linalg.norm(images, axis=-1).min(axis=1)
    np.testing.assert_allclose(np.linalg.norm(minimum_image(delta, box), axis=-1), shortest, atol=1e-12)
    np.testing.assert_allclose(
        torch.linalg.vector_norm(minimum_image_torch(torch.tensor(delta), torch.tensor(box)), dim=-1).numpy(),
        shortest, atol=1e-12)


def test_pair_distances_and_collisions_count_each_pair_once():
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [1.0, 0.0, 0.0], [1.95, 0.0, 0.0]])
    d = pair_distances_torch(pos, torch.eye(3) * 2.0)
    assert abs(float(d[0, 3]) - 0.05) < 1e-6  # across the periodic boundary
    assert count_collisions(pos, 0.1) == 1
    assert count_collisions(pos, 0.1, batch=torch.tensor([0, 1, 0, 0])) == 0
