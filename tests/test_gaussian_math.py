"""dream3d's own Gaussian maths: properties that hold by construction, and each helper
against gsplat's private pure-torch version (values and gradients on random inputs)
where `gsplat.cuda._torch_impl` is importable."""
from __future__ import annotations

import math

import pytest
import torch

from dream3d.render import gaussian_math as GM

try:
    from gsplat.cuda import _torch_impl as gs
except ImportError:  # moved or renamed in this gsplat release
    gs = None

needs_gsplat = pytest.mark.skipif(
    gs is None, reason="gsplat's private reference module gsplat.cuda._torch_impl is not importable here")


def rand(*shape, seed=0, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).requires_grad_()


def assert_same_values_and_gradients(ours, theirs, inputs, seed=0):
    """ours and theirs: tuples of tensors from the same inputs; compares them and the
    gradients of one random linear functional of all of them."""
    g = torch.Generator().manual_seed(seed + 1000)
    weights = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in theirs]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    grads_ours = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, ours)), inputs, retain_graph=True)
    grads_theirs = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, theirs)), inputs, retain_graph=True)
    for a, b in zip(grads_ours, grads_theirs):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def random_camera_setup(seed: int, C: int = 3, N: int = 200):
    """World-to-camera matrices with random rotations, points in front of and behind
    the cameras, and off-centre intrinsics (cx != width / 2)."""
    g = torch.Generator().manual_seed(seed)
    rot = GM.quat_to_rotmat(torch.randn(C, 4, generator=g, dtype=torch.float64))
    viewmats = torch.eye(4, dtype=torch.float64).repeat(C, 1, 1)
    viewmats[:, :3, :3] = rot
    viewmats[:, :3, 3] = torch.randn(C, 3, generator=g, dtype=torch.float64) * 0.3 + torch.tensor([0.0, 0.0, 3.0])
    Ks = torch.zeros(C, 3, 3, dtype=torch.float64)
    Ks[:, 0, 0], Ks[:, 1, 1] = 30.0 + 5 * torch.rand(C, generator=g), 28.0 + 5 * torch.rand(C, generator=g)
    Ks[:, 0, 2], Ks[:, 1, 2], Ks[:, 2, 2] = 14.0, 9.5, 1.0  # for a 32 x 24 image
    return viewmats, Ks


# ---------------------------------------------------------------- by construction
def test_rotations_are_proper_and_quaternion_norm_is_ignored():
    q = rand(500, 4, seed=1)
    R = GM.quat_to_rotmat(q)
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(500, dtype=R.dtype))
    torch.testing.assert_close(GM.quat_to_rotmat(3.7 * q), R)
    # wxyz: a quarter turn about +z takes +x to +y.
    quarter = torch.tensor([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)], dtype=torch.float64)
    torch.testing.assert_close(GM.quat_to_rotmat(quarter) @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
                               torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))


def test_precision_is_the_inverse_covariance():
    q, s = rand(300, 4, seed=2), rand(300, 3, seed=3).detach().abs() + 0.05
    covar, preci = GM.quat_scale_to_covar_preci(q, s)
    torch.testing.assert_close(covar @ preci, torch.eye(3, dtype=covar.dtype).expand_as(covar))
    torch.testing.assert_close(torch.linalg.eigvalsh(covar), (s * s).sort(-1).values)
    assert GM.quat_scale_to_covar_preci(q, s, compute_covar=False)[0] is None


def test_perspective_projection_of_a_point_on_axis_and_its_jacobian():
    means = torch.tensor([[[0.2, -0.1, 2.0]]], dtype=torch.float64)
    K = torch.tensor([[[50.0, 0.0, 16.0], [0.0, 40.0, 12.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    cov = torch.eye(3, dtype=torch.float64).expand(1, 1, 3, 3)
    m2d, c2d = GM.persp_proj(means, cov, K, 32, 24)
    torch.testing.assert_close(m2d[0, 0], torch.tensor([50 * 0.1 + 16, 40 * -0.05 + 12], dtype=torch.float64))
    J = torch.autograd.functional.jacobian(lambda p: torch.stack([50 * p[0] / p[2], 40 * p[1] / p[2]]), means[0, 0])
    torch.testing.assert_close(c2d[0, 0], J @ J.T)


def test_sh_basis_is_orthonormal_on_the_sphere():
    """Quadrature over a Fibonacci sphere: integral of Y_i Y_j is the identity."""
    n = 40000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (1.0 + math.sqrt(5.0)) * i
    r = (1.0 - z * z).sqrt()
    dirs = torch.stack([r * phi.cos(), r * phi.sin(), z], -1)
    Y = GM.sh_basis(3, dirs)  # [n, 16]
    gram = Y.T @ Y * (4.0 * math.pi / n)
    torch.testing.assert_close(gram, torch.eye(16, dtype=gram.dtype), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="degree"):
        GM.sh_basis(4, dirs)


# ---------------------------------------------------------------- against gsplat's private helpers
@needs_gsplat
def test_quat_to_rotmat_matches_gsplat():
    q = rand(400, 4, seed=4)
    assert_same_values_and_gradients((GM.quat_to_rotmat(q),), (gs._quat_to_rotmat(q),), [q])


@needs_gsplat
def test_covariance_and_precision_match_gsplat():
    q, log_s = rand(400, 4, seed=5), rand(400, 3, seed=6, scale=0.7, shift=-2.0)
    s = log_s.exp()
    ours = GM.quat_scale_to_covar_preci(q, s)
    theirs = gs._quat_scale_to_covar_preci(q, s)
    assert_same_values_and_gradients(ours, theirs, [q, log_s])
    ours_p = GM.quat_scale_to_covar_preci(q, s, compute_covar=False)[1]
    theirs_p = gs._quat_scale_to_covar_preci(q, s, compute_covar=False)[1]
    assert_same_values_and_gradients((ours_p,), (theirs_p,), [q, log_s])


@needs_gsplat
def test_world_to_cam_matches_gsplat():
    viewmats, _ = random_camera_setup(7)
    viewmats.requires_grad_()
    means = rand(200, 3, seed=8)
    covars = GM.quat_scale_to_covar_preci(rand(200, 4, seed=9), rand(200, 3, seed=10).exp())[0]
    assert_same_values_and_gradients(GM.world_to_cam(means, covars, viewmats),
                                     gs._world_to_cam(means, covars, viewmats), [means, viewmats])


@needs_gsplat
def test_perspective_projection_matches_gsplat_including_the_clamp():
    viewmats, Ks = random_camera_setup(11)
    means = rand(200, 3, seed=12)
    means.data[:40] *= 8.0  # far outside the view: the Jacobian clamp applies
    covars = GM.quat_scale_to_covar_preci(rand(200, 4, seed=13), (rand(200, 3, seed=14) - 2.0).exp())[0]
    means_c, covars_c = GM.world_to_cam(means, covars, viewmats)
    z = means_c[..., 2:]
    means_c = torch.cat([means_c[..., :2], torch.where(z.abs() < 0.05, z.sign() * 0.05 + 0.1, z)], -1)
    px = Ks[:, None, 0, 0] * means_c[..., 0] / means_c[..., 2]  # pixels from the principal point
    assert (px > 32 - 14 + 0.3 * 16).any() and (px < -14 - 0.3 * 16).any()  # clamped on both sides
    focal_centre = Ks[:, [0, 1, 0, 1], [0, 1, 2, 2]].clone().requires_grad_()  # zero skew, as dream3d's cameras
    Ks = torch.zeros_like(Ks).index_put((torch.arange(3)[:, None], torch.tensor([0, 1, 0, 1]),
                                         torch.tensor([0, 1, 2, 2])), focal_centre)
    Ks[:, 2, 2] = 1.0
    assert_same_values_and_gradients(GM.persp_proj(means_c, covars_c, Ks, 32, 24),
                                     gs._persp_proj(means_c, covars_c, Ks, 32, 24), [means, focal_centre])


@needs_gsplat
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_spherical_harmonics_match_gsplat(degree):
    dirs = rand(2, 300, 3, seed=15 + degree)  # not unit length: both normalise
    coeffs = rand(2, 300, 16, 3, seed=20 + degree)  # more coefficients than the degree uses
    ours = GM.spherical_harmonics(degree, dirs, coeffs)
    theirs = gs._spherical_harmonics(degree, dirs, coeffs)
    inputs = [coeffs] if degree == 0 else [dirs, coeffs]  # degree 0 does not depend on dirs
    assert_same_values_and_gradients((ours,), (theirs,), inputs)
