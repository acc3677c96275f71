"""slerp against its closed form, and at (nearly) opposite latents, where sin(omega) -> 0."""

import numpy as np
import pytest

from jaxvae.sample import slerp

RNG = np.random.default_rng(0)
Z0, V = RNG.normal(size=16), RNG.normal(size=16)
T = np.linspace(0, 1, 11)


def test_slerp_is_the_great_circle_between_well_separated_latents():
    z1 = 2.0 * RNG.normal(size=16)
    u0, u1 = Z0 / np.linalg.norm(Z0), z1 / np.linalg.norm(z1)
    w = np.arccos(np.dot(u0, u1))
    textbook = (np.sin((1 - T[:, None]) * w) * u0 + np.sin(T[:, None] * w) * u1) / np.sin(w)
    norms = (1 - T[:, None]) * np.linalg.norm(Z0) + T[:, None] * np.linalg.norm(z1)
    np.testing.assert_allclose(slerp(Z0, z1, T), textbook * norms, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("z1", [-Z0, -Z0 + 1e-12 * V, -Z0 + 1e-7 * V, -Z0 + 1e-4 * V],
                         ids=["-z0", "1e-12", "1e-7", "1e-4"])
def test_slerp_of_nearly_opposite_latents_stays_on_the_sphere(z1):
    path = slerp(Z0, z1, T).astype(np.float64)
    norms = np.linalg.norm(path, axis=1)
    want = (1 - T) * np.linalg.norm(Z0) + T * np.linalg.norm(z1)
    np.testing.assert_allclose(norms, want, rtol=1e-6)  # the midpoint has norm |z0|, not 0 or 1e4
    np.testing.assert_allclose(path[0], Z0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(path[-1], z1, rtol=1e-5, atol=1e-5)
    # a great circle: each step turns by the same angle, pi / 10 in all
    u = path / norms[:, None]
    steps = np.arccos(np.clip(np.sum(u[1:] * u[:-1], axis=1), -1, 1))
    np.testing.assert_allclose(steps, np.arccos(np.clip(np.dot(u[0], u[-1]), -1, 1)) / 10, atol=1e-5)


def test_the_opposite_path_is_a_fixed_choice():
    np.testing.assert_array_equal(slerp(Z0, -Z0, T), slerp(Z0, -Z0, T))
    np.testing.assert_allclose(slerp(Z0, -Z0, T), slerp(Z0, -Z0 + 1e-12 * V, T), atol=1e-5)
