"""Pure-torch maths of 3D Gaussians: rotations, covariances, the EWA camera
projection and real spherical harmonics, in gsplat's / 3DGS's conventions.

dream3d owns these (rather than importing gsplat's private `gsplat.cuda._torch_impl`,
whose names and signatures move between gsplat releases); tests compare each with
gsplat's version when that module is importable. All functions broadcast over
leading batch dimensions and are differentiable by autograd.

Conventions: quaternions are wxyz and need not be normalised; a Gaussian's
covariance is M M^T with M = R(q) diag(s); view matrices are OpenCV world-to-camera
(x right, y down, looking down +z); intrinsics K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
(no skew).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Normalisation constants of the real spherical harmonics Y_l^m (Condon-Shortley
# phase included, as in 3DGS), by degree; each multiplies the polynomial below.
_SH_C0 = 0.5 * math.sqrt(1.0 / math.pi)
_SH_C1 = math.sqrt(3.0 / (4.0 * math.pi))
_SH_C2 = (math.sqrt(15.0 / math.pi) / 2.0, math.sqrt(5.0 / math.pi) / 4.0, math.sqrt(15.0 / math.pi) / 4.0)
_SH_C3 = (math.sqrt(35.0 / (2.0 * math.pi)) / 4.0, math.sqrt(105.0 / math.pi) / 2.0,
          math.sqrt(21.0 / (2.0 * math.pi)) / 4.0, math.sqrt(7.0 / math.pi) / 4.0, math.sqrt(105.0 / math.pi) / 4.0)
MAX_SH_DEGREE = 3


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] of quaternions [..., 4] (wxyz, normalised here)."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
        2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
        2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y),
    ]
    return torch.stack(rows, -1).unflatten(-1, (3, 3))


def quat_scale_to_covar_preci(
    quats: Tensor,  # [..., 4] wxyz
    scales: Tensor,  # [..., 3] positive
    compute_covar: bool = True,
    compute_preci: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """Covariance R diag(s^2) R^T and precision R diag(s^-2) R^T, each [..., 3, 3]
    (None where not asked for)."""
    rot = quat_to_rotmat(quats)
    covar = preci = None
    if compute_covar:
        m = rot * scales[..., None, :]  # R diag(s)
        covar = m @ m.transpose(-1, -2)
    if compute_preci:
        p = rot / scales[..., None, :]  # R diag(1/s)
        preci = p @ p.transpose(-1, -2)
    return covar, preci


def world_to_cam(
    means: Tensor,  # [..., N, 3] world
    covars: Tensor,  # [..., N, 3, 3] world
    viewmats: Tensor,  # [..., C, 4, 4] world-to-camera
) -> tuple[Tensor, Tensor]:
    """Means [..., C, N, 3] (W x + t) and covariances [..., C, N, 3, 3] (W Sigma W^T)
    in each camera's frame, with W, t the rotation and translation of the view matrix."""
    rot = viewmats[..., :3, :3].unsqueeze(-3)  # [..., C, 1, 3, 3]
    t = viewmats[..., :3, 3].unsqueeze(-2)  # [..., C, 1, 3]
    means_c = (rot @ means.unsqueeze(-3).unsqueeze(-1)).squeeze(-1) + t
    covars_c = rot @ covars.unsqueeze(-4) @ rot.transpose(-1, -2)
    return means_c, covars_c


def persp_proj(
    means: Tensor,  # [..., C, N, 3] camera frame
    covars: Tensor,  # [..., C, N, 3, 3] camera frame
    Ks: Tensor,  # [..., C, 3, 3]
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Pinhole projection of Gaussians (EWA splatting): centres [..., C, N, 2] in pixels
    and 2D covariances [..., C, N, 2, 2] = J Sigma J^T, with J the Jacobian of
    (fx x / z + cx, fy y / z + cy) at the mean. As in 3DGS / gsplat, J is evaluated
    with x / z and y / z clamped to 30% of the half field of view beyond the image
    edges, so Gaussians far outside the view do not get huge footprints; the centre
    itself is not clamped. No near-plane test here (z must be non-zero)."""
    x, y, z = means.unbind(-1)  # [..., C, N]
    fx, fy = Ks[..., 0, 0, None], Ks[..., 1, 1, None]  # [..., C, 1]
    cx, cy = Ks[..., 0, 2, None], Ks[..., 1, 2, None]
    margin_x, margin_y = 0.3 * 0.5 * width / fx, 0.3 * 0.5 * height / fy
    u = torch.clamp(x / z, min=-(cx / fx + margin_x), max=(width - cx) / fx + margin_x)
    v = torch.clamp(y / z, min=-(cy / fy + margin_y), max=(height - cy) / fy + margin_y)
    zero = torch.zeros_like(z)
    jac = torch.stack([fx / z, zero, -fx * u / z, zero, fy / z, -fy * v / z], -1).unflatten(-1, (2, 3))
    cov2d = jac @ covars @ jac.transpose(-1, -2)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)
    return means2d, cov2d


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real spherical harmonics [..., (degree + 1)^2] at unit directions dirs [..., 3],
    ordered by degree l, then m = -l..l (3DGS's and gsplat's coefficient order)."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"spherical-harmonics degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, _SH_C0)]
    if degree >= 1:
        out += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        a, b, c = _SH_C2
        out += [a * x * y, -a * y * z, b * (2.0 * zz - xx - yy), -a * x * z, c * (xx - yy)]
    if degree >= 3:
        a, b, c, d, e = _SH_C3
        out += [
            -a * y * (3.0 * xx - yy),
            b * x * y * z,
            -c * y * (4.0 * zz - xx - yy),
            d * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            -c * x * (4.0 * zz - xx - yy),
            e * z * (xx - yy),
            -a * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, -1)


def spherical_harmonics(
    degree: int,
    dirs: Tensor,  # [..., 3] any length
    coeffs: Tensor,  # [..., K, D] with K >= (degree + 1)^2
) -> Tensor:
    """Colours [..., D] = sum_k Y_k(dirs / |dirs|) coeffs_k over the first (degree + 1)^2
    coefficients (further ones are ignored). No DC offset: 3DGS adds 0.5 afterwards."""
    n = (degree + 1) ** 2
    if coeffs.shape[-2] < n:
        raise ValueError(f"degree {degree} needs {n} coefficients, got {coeffs.shape[-2]}")
    basis = sh_basis(degree, F.normalize(dirs, dim=-1))  # [..., n]
    return (basis.unsqueeze(-1) * coeffs[..., :n, :]).sum(-2)
