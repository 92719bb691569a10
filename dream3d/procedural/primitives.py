"""Signed distance functions of analytic primitives, batched over scenes.

Every function takes points `p` [N, P, 3] (N scenes, P points each) and size
parameters [N] (one per scene, broadcast over the points) and returns distances
[N, P]. Some are exact, some are conservative bounds (never larger than the true
distance), which is all sphere tracing needs.
"""
from __future__ import annotations

import torch
from torch import Tensor


def col(v: Tensor | float, like: Tensor) -> Tensor:
    """A per-scene scalar [N] (or a float) as [N, 1], ready to broadcast over points."""
    if not torch.is_tensor(v):
        return torch.full((like.shape[0], 1), float(v), dtype=like.dtype, device=like.device)
    return v.reshape(-1, 1)


def _point(v: tuple, like: Tensor) -> Tensor:
    """(x, y, z) of floats or [N] tensors as [N, 1, 3]."""
    return torch.stack([col(c, like) for c in v], dim=-1)


def translate(p: Tensor, x=0.0, y=0.0, z=0.0) -> Tensor:
    """Points [N, P, 3] expressed in a frame whose origin is at (x, y, z)."""
    return p - _point((x, y, z), p)


def rotate_y(p: Tensor, degrees: Tensor) -> Tensor:
    """Points [N, P, 3] in the frame of a shape turned by `degrees` [N] about +Y."""
    a = torch.deg2rad(col(degrees, p))
    c, s = torch.cos(a), torch.sin(a)
    x, y, z = p.unbind(-1)
    return torch.stack([c * x - s * z, y, s * x + c * z], dim=-1)


def rotate_x(p: Tensor, degrees: Tensor) -> Tensor:
    """Points [N, P, 3] in the frame of a shape tilted by `degrees` [N] about +X."""
    a = torch.deg2rad(col(degrees, p))
    c, s = torch.cos(a), torch.sin(a)
    x, y, z = p.unbind(-1)
    return torch.stack([x, c * y + s * z, -s * y + c * z], dim=-1)


def rotate_z(p: Tensor, degrees: Tensor) -> Tensor:
    """Points [N, P, 3] in the frame of a shape rolled by `degrees` [N] about +Z."""
    a = torch.deg2rad(col(degrees, p))
    c, s = torch.cos(a), torch.sin(a)
    x, y, z = p.unbind(-1)
    return torch.stack([c * x + s * y, -s * x + c * y, z], dim=-1)


def mirror_x(p: Tensor) -> Tensor:
    """Points [N, P, 3] folded onto x >= 0: a shape placed at x > 0 then also appears at -x."""
    return torch.stack([p[..., 0].abs(), p[..., 1], p[..., 2]], dim=-1)


def mirror_z(p: Tensor) -> Tensor:
    """Points [N, P, 3] folded onto z >= 0 (front and back copies of one shape)."""
    return torch.stack([p[..., 0], p[..., 1], p[..., 2].abs()], dim=-1)


def fold_around_y(p: Tensor, copies: int) -> Tensor:
    """Points [N, P, 3] folded into one sector of 360/copies degrees around +Y, centred on +X:
    a shape placed on +X then repeats `copies` times around the axis (merlons, petals, sprinkles).
    Exact for shapes that stay inside their sector."""
    sector = 2.0 * torch.pi / copies
    x, y, z = p.unbind(-1)
    r = torch.sqrt(x * x + z * z)
    a = torch.remainder(torch.atan2(z, x) + 0.5 * sector, sector) - 0.5 * sector
    return torch.stack([r * torch.cos(a), y, r * torch.sin(a)], dim=-1)


def along_x(p: Tensor) -> Tensor:
    """Swap X and Y: a vertical primitive evaluated on these points lies along X."""
    return p[..., [1, 0, 2]]


def along_z(p: Tensor) -> Tensor:
    """Swap Y and Z: a vertical primitive evaluated on these points lies along Z (its +Y on +Z)."""
    return p[..., [0, 2, 1]]


def sphere(p: Tensor, radius) -> Tensor:
    return p.norm(dim=-1) - col(radius, p)


def ellipsoid(p: Tensor, rx, ry, rz) -> Tensor:
    """Conservative bound: distance in the scaled frame times the smallest radius."""
    radii = torch.stack([col(rx, p), col(ry, p), col(rz, p)], dim=-1)  # [N, 1, 3]
    return ((p / radii).norm(dim=-1) - 1.0) * radii.amin(dim=-1)


def box(p: Tensor, hx, hy, hz, rounding=0.0) -> Tensor:
    """Box with half sizes (hx, hy, hz) whose edges are rounded by `rounding` (exact)."""
    r = col(rounding, p)
    half = torch.stack([col(hx, p), col(hy, p), col(hz, p)], dim=-1) - r[..., None]  # [N, 1, 3]
    q = p.abs() - half
    outside = q.clamp(min=0.0).norm(dim=-1)
    inside = q.amax(dim=-1).clamp(max=0.0)
    return outside + inside - r


def _frustum_2d(q_r: Tensor, q_y: Tensor, half_h: Tensor, r_bottom: Tensor, r_top: Tensor) -> Tensor:
    """Exact distance to a solid of revolution whose profile is a trapezoid centred at y = 0."""
    r_cap = torch.where(q_y < 0.0, r_bottom, r_top)
    ca_x = q_r - torch.minimum(q_r, r_cap)
    ca_y = q_y.abs() - half_h
    k2_x, k2_y = r_top - r_bottom, 2.0 * half_h
    t = ((r_top - q_r) * k2_x + (half_h - q_y) * k2_y) / (k2_x**2 + k2_y**2)
    t = t.clamp(0.0, 1.0)
    cb_x = q_r - r_top + k2_x * t
    cb_y = q_y - half_h + k2_y * t
    sign = torch.where((cb_x < 0.0) & (ca_y < 0.0), -1.0, 1.0)
    return sign * torch.minimum(ca_x**2 + ca_y**2, cb_x**2 + cb_y**2).sqrt()


def frustum(p: Tensor, half_height, r_bottom, r_top) -> Tensor:
    """Vertical capped cone centred at the origin (r_top = 0 gives a cone, equal radii a cylinder)."""
    q_r = p[..., [0, 2]].norm(dim=-1)
    return _frustum_2d(q_r, p[..., 1], col(half_height, p), col(r_bottom, p), col(r_top, p))


def cylinder(p: Tensor, radius, half_height, rounding=0.0) -> Tensor:
    """Vertical cylinder centred at the origin, with edges rounded by `rounding` (exact)."""
    r = col(rounding, p)
    d_r = p[..., [0, 2]].norm(dim=-1) - col(radius, p) + r
    d_y = p[..., 1].abs() - col(half_height, p) + r
    outside = torch.stack([d_r.clamp(min=0.0), d_y.clamp(min=0.0)], -1).norm(dim=-1)
    return outside + torch.maximum(d_r, d_y).clamp(max=0.0) - r


def capsule(p: Tensor, a: tuple, b: tuple, radius) -> Tensor:
    """Segment from a to b (each (x, y, z) of floats or [N] tensors) thickened by `radius` (exact)."""
    pa = p - _point(a, p)  # [N, P, 3]
    ba = _point(b, p) - _point(a, p)  # [N, 1, 3]
    h = ((pa * ba).sum(-1) / (ba * ba).sum(-1).clamp(min=1e-12)).clamp(0.0, 1.0)  # [N, P]
    return (pa - ba * h[..., None]).norm(dim=-1) - col(radius, p)


def torus(p: Tensor, major, minor) -> Tensor:
    """Torus in the XZ plane centred at the origin (exact)."""
    q_r = p[..., [0, 2]].norm(dim=-1) - col(major, p)
    return torch.stack([q_r, p[..., 1]], -1).norm(dim=-1) - col(minor, p)


def pyramid(p: Tensor, half_base, height) -> Tensor:
    """Square pyramid, base centred at the origin in the XZ plane, apex at y = height.
    Conservative bound: the largest signed distance to its five face planes."""
    b, h = col(half_base, p), col(height, p)
    inv = torch.rsqrt(h**2 + b**2)
    x, y, z = p[..., 0].abs(), p[..., 1], p[..., 2].abs()
    side_x = (h * x + b * y - b * h) * inv
    side_z = (h * z + b * y - b * h) * inv
    return torch.maximum(torch.maximum(side_x, side_z), -y)


def prism(p: Tensor, half_width, half_depth, height) -> Tensor:
    """Gable roof: a triangular prism along X, base centred at the origin, ridge at y = height
    running along X. Conservative bound (largest face-plane distance)."""
    w, d, h = col(half_width, p), col(half_depth, p), col(height, p)
    inv = torch.rsqrt(h**2 + d**2)
    x, y, z = p[..., 0].abs(), p[..., 1], p[..., 2].abs()
    slope = (h * z + d * y - d * h) * inv
    return torch.maximum(torch.maximum(slope, -y), x - w)


def union(parts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """parts: (distance [N, P], colour [N, 3]) per part -> (distance [N, P], colour [N, P, 3])
    of the nearest part at each point."""
    dists = torch.stack([d for d, _ in parts], dim=0)  # [K, N, P]
    colours = torch.stack([c for _, c in parts], dim=0)  # [K, N, 3]
    d, idx = dists.min(dim=0)  # [N, P]
    K, N, _ = colours.shape
    colour = colours.permute(1, 0, 2).gather(1, idx[..., None].expand(N, idx.shape[1], 3))  # [N, P, 3]
    return d, colour
