"""The CPU rasteriser against slow references: visibility and barycentrics against
per-pixel ray casting, gradients (incl. the silhouette's) against finite differences."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dream3d.cameras import orbit_cameras
from dream3d.errors import UserError
from dream3d.render import raster
from dream3d.representations.tetgrid import TetGrid, marching_tets


def cameras(n: int, width: int, height: int, dtype=torch.float64, distance: float = 2.5):
    el = torch.linspace(-20.0, 40.0, n, dtype=dtype)
    az = torch.linspace(10.0, 250.0, n, dtype=dtype)
    return orbit_cameras(el, az, torch.full((n,), distance, dtype=dtype), torch.full((n,), 40.0, dtype=dtype), width, height)


def octahedron(seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A closed, randomly perturbed octahedron (faces counter-clockwise from outside)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=dtype) * 0.6
    v = v + 0.08 * torch.randn(v.shape, generator=g, dtype=dtype)
    f = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    return v, f


def reference_raycast(verts: torch.Tensor, faces: torch.Tensor, cams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel, per triangle Moller-Trumbore in float64: nearest face [B, H, W] (-1
    none), its barycentrics [B, H, W, 3] and the ray distance [B, H, W]."""
    origins, dirs = (t.double().numpy() for t in cams.rays())
    tri = verts.double().numpy()[faces.numpy()]
    B, H, W = origins.shape[:3]
    ids, bary, dist = -np.ones((B, H, W), dtype=np.int64), np.zeros((B, H, W, 3)), np.zeros((B, H, W))
    for b in range(B):
        for y in range(H):
            for x in range(W):
                o, d = origins[b, y, x], dirs[b, y, x]
                best = np.inf
                for k, (v0, v1, v2) in enumerate(tri):
                    e1, e2 = v1 - v0, v2 - v0
                    p = np.cross(d, e2)
                    det = e1 @ p
                    if abs(det) < 1e-14:
                        continue
                    s = o - v0
                    u = (s @ p) / det
                    q = np.cross(s, e1)
                    v = (d @ q) / det
                    t = (e2 @ q) / det
                    if u >= 0 and v >= 0 and u + v <= 1 and 0 < t < best:
                        best = t
                        ids[b, y, x], bary[b, y, x], dist[b, y, x] = k, (1 - u - v, u, v), t
    return ids, bary, dist


def test_visibility_and_barycentrics_match_ray_casting():
    g = torch.Generator().manual_seed(3)
    n_tris = 14
    centres = 0.5 * torch.randn(n_tris, 1, 3, generator=g, dtype=torch.float64)
    verts = (centres + 0.35 * torch.randn(n_tris, 3, 3, generator=g, dtype=torch.float64)).reshape(-1, 3)
    faces = torch.arange(3 * n_tris).view(n_tris, 3)
    cams = cameras(2, 20, 16)
    rast = raster.rasterize(verts, faces, cams, backend="torch")
    ids, bary, dist = reference_raycast(verts, faces, cams)
    assert (ids >= 0).sum() > 100 and (ids < 0).sum() > 50  # both covered and empty pixels
    np.testing.assert_array_equal(rast.tri_id.numpy(), ids)
    flat = rast.pixels.numpy()
    np.testing.assert_allclose(rast.bary.detach().numpy(), bary.reshape(-1, 3)[flat], atol=1e-9)
    pos = raster.interpolate(verts, faces, rast)
    eye = cams.c2w[rast.pixels // (16 * 20), :3, 3]
    np.testing.assert_allclose((pos - eye).norm(dim=-1).detach().numpy(), dist.reshape(-1)[flat], rtol=1e-9)
    # The z-buffer depth (along -Z) of the visible surface agrees with the ray distance.
    origins, dirs = cams.rays()
    forward = -cams.c2w[:, None, None, :3, 2]
    cos = (dirs * forward).sum(-1).numpy()
    np.testing.assert_allclose(rast.depth.numpy().reshape(-1)[flat], (dist * cos).reshape(-1)[flat], rtol=1e-5)


@pytest.mark.parametrize("mesh", ["soup", "closed"])
def test_mesh_edges_match_loops(mesh):
    g = torch.Generator().manual_seed(0)
    if mesh == "soup":  # boundary and non-manifold edges
        faces = torch.stack([torch.randperm(9, generator=g)[:3] for _ in range(25)])
    else:  # every edge on exactly two faces, vertices shuffled
        faces = torch.randperm(9, generator=g)[:6][octahedron(0)[1]]
    e = raster.mesh_edges(faces, 9)
    by_edge: dict[tuple[int, int], list[int]] = {}
    for f, tri in enumerate(faces.tolist()):
        for j in range(3):
            a, b = tri[(j + 1) % 3], tri[(j + 2) % 3]
            key = (min(a, b), max(a, b))
            by_edge.setdefault(key, []).append(f)
            assert tuple(e.edges[e.face_edges[f, j]].tolist()) == key
    assert sorted(map(tuple, e.edges.tolist())) == sorted(by_edge)
    for k, (a, b) in enumerate(e.edges.tolist()):
        owners = by_edge[(a, b)]
        assert e.edge_faces[k, 0] == owners[0]
        assert e.edge_faces[k, 1] == (owners[1] if len(owners) > 1 else -1)


def shaded_image(verts, faces, colours, cams, bg, aa: bool):
    rast = raster.rasterize(verts, faces, cams, backend="torch")
    values = torch.cat([raster.interpolate(colours, faces, rast), torch.ones(rast.pixels.shape[0], 1, dtype=verts.dtype)], -1)
    fill = torch.cat([bg, torch.zeros(bg.shape[0], 1, dtype=bg.dtype)], -1)
    image = raster.to_image(values, rast, fill)
    return raster.antialias(image, rast, faces, raster.mesh_edges(faces, verts.shape[0])) if aa else image


def finite_difference(fn, x: torch.Tensor, eps: float) -> torch.Tensor:
    grad = torch.zeros_like(x)
    flat = grad.view(-1)
    for i in range(x.numel()):
        hi, lo = x.clone(), x.clone()
        hi.view(-1)[i] += eps
        lo.view(-1)[i] -= eps
        flat[i] = (fn(hi) - fn(lo)) / (2 * eps)
    return grad


@pytest.mark.parametrize("seed", [0, 1])
def test_gradients_match_finite_differences(seed):
    verts, faces = octahedron(seed)
    g = torch.Generator().manual_seed(10 + seed)
    colours = torch.rand(verts.shape[0], 3, generator=g, dtype=torch.float64)
    cams = cameras(2, 18, 14)
    bg = torch.rand(2, 3, generator=g, dtype=torch.float64)
    weights = torch.randn(2, 14, 18, 4, generator=g, dtype=torch.float64)

    def loss(v, c):
        return (weights * shaded_image(v, faces, c, cams, bg, aa=True)).sum()

    v, c = verts.clone().requires_grad_(), colours.clone().requires_grad_()
    loss(v, c).backward()
    fd_v = finite_difference(lambda x: loss(x, colours), verts, 1e-6)
    fd_c = finite_difference(lambda x: loss(verts, x), colours, 1e-6)
    assert fd_v.abs().max() > 1.0
    torch.testing.assert_close(v.grad, fd_v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c.grad, fd_c, atol=1e-6, rtol=1e-6)


def test_silhouette_gradient_comes_from_antialiasing():
    """A uniformly coloured shape on a background: only its outline depends on the
    vertex positions, so without antialiasing the gradient is zero; with it, it matches
    finite differences of the antialiased image."""
    verts, faces = octahedron(2)
    colours = torch.full((verts.shape[0], 3), 0.9, dtype=torch.float64)
    cams = cameras(1, 16, 16)
    bg = torch.full((1, 3), 0.1, dtype=torch.float64)
    weights = torch.randn(1, 16, 16, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def loss(v, aa=True):
        return (weights * shaded_image(v, faces, colours, cams, bg, aa)).sum()

    v = verts.clone().requires_grad_()
    loss(v, aa=False).backward()
    assert v.grad.abs().max() == 0
    v.grad = None
    loss(v).backward()
    fd = finite_difference(loss, verts, 1e-6)
    assert fd.abs().max() > 1.0
    torch.testing.assert_close(v.grad, fd, atol=1e-5, rtol=1e-5)


def test_antialiased_image_is_continuous_in_the_vertices():
    """Sliding a faceted sphere across pixel centres: the hard image jumps by the whole
    colour difference wherever a centre changes sides; the antialiased one changes
    by a fraction of it at the same events (larger steps remain only where the
    outline turns through 45 degrees, between row- and column-resolved edges)."""
    grid = TetGrid(16)
    points = grid.vertices.double()
    verts, faces, _ = marching_tets(points, points.norm(dim=-1) - 0.7, grid.all_tets())
    colours = torch.ones(verts.shape[0], 3, dtype=torch.float64)
    cams = cameras(1, 16, 16)
    bg = torch.zeros(1, 3, dtype=torch.float64)
    shift = torch.tensor([1.0, 0.3, 0.0], dtype=torch.float64)
    jumps = {}
    for aa in (False, True):
        frames = torch.stack([shaded_image(verts + s * shift, faces, colours, cams, bg, aa) for s in np.linspace(0, 0.05, 101)])
        jumps[aa] = (frames[1:] - frames[:-1]).abs()[..., 0]
    assert (jumps[False] > 0.99).sum() >= 8
    assert (jumps[True] > 0.25).sum() <= (jumps[False] > 0.25).sum() / 4
    assert jumps[True].max() < 0.5


def test_clip_positions_agree_with_projection():
    """The nvdiffrast path's clip coordinates put vertices on the same pixels."""
    verts, _ = octahedron(0)
    cams = cameras(3, 24, 16)
    clip = raster.clip_positions(verts, cams)
    ndc = clip[..., :2] / clip[..., 3:]
    pixels = (ndc + 1.0) * 0.5 * torch.tensor([24.0, 16.0], dtype=torch.float64)
    screen, depth = raster.project(verts, cams)
    torch.testing.assert_close(pixels, screen)
    torch.testing.assert_close(clip[..., 3], depth)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without CUDA")
def test_nvdiffrast_backend_is_refused_without_cuda():
    verts, faces = octahedron(0)
    with pytest.raises(UserError, match="nvdiffrast"):
        raster.rasterize(verts, faces, cameras(1, 8, 8), backend="nvdiffrast")


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and raster.nvdiffrast_available(torch.device("cuda"))),
                    reason="needs CUDA and nvdiffrast")
def test_nvdiffrast_agrees_with_the_torch_rasteriser():
    verts, faces = octahedron(0, torch.float32)
    colours = torch.rand(verts.shape[0], 3, generator=torch.Generator().manual_seed(0))
    cams = cameras(2, 32, 24, torch.float32)
    ref = raster.rasterize(verts, faces, cams, backend="torch")
    nv = raster.rasterize(verts.cuda(), faces.cuda(), cams.to("cuda"), backend="nvdiffrast")
    same = nv.tri_id.cpu() == ref.tri_id
    assert same.float().mean() > 0.98  # pixel centres exactly on an edge may go either way
    ref_img = raster.to_image(raster.interpolate(colours, faces, ref), ref, torch.zeros(2, 3))
    nv_img = raster.to_image(raster.interpolate(colours.cuda(), faces.cuda(), nv), nv, torch.zeros(2, 3, device="cuda"))
    torch.testing.assert_close(nv_img.cpu()[same], ref_img[same], atol=1e-4, rtol=0)
