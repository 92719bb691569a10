"""The hole-preference benchmark: its hole mask, its painting and its crossover scale, by hand,
and its denoising errors on the shipped prior against a direct computation."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import hole_preference as H  # noqa: E402


def ring(n: int = 12) -> torch.Tensor:
    """[1, n, n] coverage of a square ring: covered band 3 pixels wide around an open 6x6 middle (n = 12)."""
    cov = torch.zeros(1, n, n)
    cov[0, 0:n, 0:n] = 1.0
    cov[0, 3:n - 3, 3:n - 3] = 0.0
    return cov


def test_the_hole_is_the_enclosed_background_only():
    cov = ring()
    holes = H.enclosed_background(cov)
    assert holes.shape == (1, 12, 12)
    assert int(holes.sum()) == 36  # the 6x6 middle
    assert not (holes & (cov > 0.5)).any()
    open_c = torch.zeros(1, 12, 12)
    open_c[0, 2:10, 2:5] = 1.0  # a bar: its background is not enclosed
    assert not H.enclosed_background(open_c).any()


def test_painting_changes_the_hole_pixels_alone_to_a_shade_of_the_object():
    cov = ring()
    images = torch.rand(1, 12, 12, 3)
    holes = H.enclosed_background(cov)
    out = H.painted(images, cov, holes, 0.5)
    mean = images[0][cov[0] > 0.5].mean(0)
    assert torch.allclose(out[0][holes[0]], (0.5 * mean).expand(36, 3))
    assert torch.equal(out[0][~holes[0]], images[0][~holes[0]])


def test_crossover_scale_by_hand():
    # E_s = L_c - (s - 1)(L_u - L_c): open (0.010, 0.012) vs other (0.014, 0.020):
    # 0.010 - 0.002 (s - 1) = 0.014 - 0.006 (s - 1)  ->  s - 1 = 1  ->  s = 2.
    assert H.crossover((0.010, 0.012), (0.014, 0.020)) == pytest.approx(2.0)
    assert H.crossover((0.010, 0.012), (0.014, 0.015)) is None  # a smaller classifier gap never wins
    assert H.crossover((0.010, 0.012), (0.009, 0.010)) == 1.0  # already more likely


def test_denoising_errors_match_a_direct_computation_on_the_shipped_prior():
    from dream3d.cameras.orbit import orbit_cameras
    from dream3d.priors.loading import load_prior

    prior = load_prior("tiny-shapes", "cpu")
    n, res = 2, prior.resolution
    cams = orbit_cameras(torch.tensor([30.0, 30.0]), torch.tensor([0.0, 180.0]), torch.full((n,), 2.9),
                         torch.full((n,), 45.0), res, res)
    images = torch.rand(n, res, res, 3)
    e_c, e_u = H.denoising_errors(prior, images, cams, "a blue torus", samples=2, seed=3)
    # The same draws, one prediction at a time.
    gen = torch.Generator().manual_seed(3)
    x = prior.encode(images).float()
    cond = prior.embed(["a blue torus, front view", "a blue torus, back view"])
    uncond = prior.embed(["", ""])
    ref_c = ref_u = 0.0
    with torch.no_grad():
        for _ in range(2):
            t = torch.randint(20, 980, (n,), generator=gen)
            eps = torch.randn(x.shape, generator=gen)
            a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x + (1 - a).sqrt() * eps
            cam = cams.pose_features()
            ref_c += float(((prior.predict_eps(x_t, t, cond, camera=cam) - eps) ** 2).mean()) / 2
            ref_u += float(((prior.predict_eps(x_t, t, uncond, camera=cam) - eps) ** 2).mean()) / 2
    assert e_c == pytest.approx(ref_c, rel=1e-4)
    assert e_u == pytest.approx(ref_u, rel=1e-4)
    assert e_c != pytest.approx(e_u, rel=1e-3)  # the prompt matters
