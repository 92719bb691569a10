"""Marching tetrahedra, mesh regularisers and the DMTet representation."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from dream3d.cameras import orbit_cameras
from dream3d.errors import UserError
from dream3d.render.raster import mesh_edges
from dream3d.representations.dmtet import DMTet, DMTetConfig, blur_grid
from dream3d.representations.tetgrid import KUHN_CORNERS, TetGrid, crossing_topology, marching_tets, zero_crossings
from dream3d.render.mesh_ops import face_normals, laplacian_smoothness, normal_consistency, vertex_normals


def small_config(**kw) -> DMTetConfig:
    base = dict(grid_resolution=16, gradient_smoothing=0.0, n_levels=4, log2_table_size=12, base_resolution=4, per_level_scale=1.5, hidden_dim=16)
    return DMTetConfig(**{**base, **kw})


def cameras(n: int, res: int = 24, dtype=torch.float32):
    el = torch.linspace(-10.0, 40.0, n, dtype=dtype)
    az = torch.linspace(0.0, 200.0, n, dtype=dtype)
    return orbit_cameras(el, az, torch.full((n,), 2.6, dtype=dtype), torch.full((n,), 45.0, dtype=dtype), res, res)


def signed_volume(verts, faces) -> float:
    v0, v1, v2 = verts[faces].unbind(1)
    return float((v0 * torch.linalg.cross(v1, v2, dim=-1)).sum() / 6.0)


# ------------------------------------------------------------ grid and marching tets
def test_kuhn_grid_fills_the_cube_with_positive_tets():
    grid = TetGrid(3, radius=1.0)
    tets = grid.all_tets()
    p = grid.vertices[tets]
    e1, e2, e3 = (p[:, k] - p[:, 0] for k in (1, 2, 3))
    vol = (e1 * torch.linalg.cross(e2, e3, dim=-1)).sum(-1) / 6.0
    assert (vol > 0).all()
    torch.testing.assert_close(vol.sum(), torch.tensor(8.0))  # the cube [-1, 1]^3
    assert len({tuple(sorted(map(tuple, c.tolist()))) for c in torch.from_numpy(KUHN_CORNERS)}) == 6


def test_marching_tets_sphere_is_closed_with_the_right_radius():
    grid = TetGrid(24)
    r = 0.6
    verts, faces, _ = marching_tets(grid.vertices, grid.vertices.norm(dim=-1) - r, grid.all_tets())
    dist = verts.norm(dim=-1)
    # Vertices lie on grid edges where the linear interpolation of |x| - r vanishes:
    # within the chord error of a cell (about h^2 / 2r) of the sphere.
    h = grid.cell_size
    assert (dist - r).abs().max() < h * h / r
    e = mesh_edges(faces, verts.shape[0])
    assert (e.edge_faces >= 0).all()  # every edge has two faces: closed
    counts = torch.bincount(e.face_edges.view(-1), minlength=e.edges.shape[0])
    assert (counts == 2).all()  # and no more: manifold
    assert verts.shape[0] - e.edges.shape[0] + faces.shape[0] == 2  # Euler characteristic of a sphere
    assert signed_volume(verts, faces) == pytest.approx(4 / 3 * math.pi * r**3, rel=0.03)  # positive: faces wind outwards
    n = face_normals(verts, faces)
    assert ((n * verts[faces].mean(1)).sum(-1) > 0).float().mean() > 0.95


def test_fast_surface_matches_marching_every_tet():
    grid = TetGrid(7, radius=0.8)
    g = torch.Generator().manual_seed(0)
    sdf = torch.randn(grid.n_vertices, generator=g)
    faces_ref, edges_ref = crossing_topology(sdf, grid.all_tets())
    faces, edges = grid.surface(sdf)

    def triangles(f, e):  # each triangle as its grid-edge keys, rotated to start at the smallest
        keys = e[:, 0] * grid.n_vertices + e[:, 1]
        t = keys[f]
        start = t.argmin(1, keepdim=True)
        return sorted(map(tuple, t.gather(1, (start + torch.arange(3)) % 3).tolist()))

    assert faces.shape == faces_ref.shape and len(faces) > 100
    assert triangles(faces, edges) == triangles(faces_ref, edges_ref)
    assert sorted(map(tuple, edges.tolist())) == sorted(map(tuple, edges_ref.tolist()))


def test_zero_crossing_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(1)
    x_a, x_b = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    s_a = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    s_b = -torch.rand(5, generator=g, dtype=torch.float64) - 0.1
    inputs = tuple(t.requires_grad_() for t in (x_a, x_b, s_a, s_b))
    assert torch.autograd.gradcheck(lambda *a: zero_crossings(*a)[0], inputs)
    p, _ = zero_crossings(*inputs)
    # The crossing is where the linear interpolation of s vanishes.
    t = s_a / (s_a - s_b)
    torch.testing.assert_close(p, x_a + t[:, None] * (x_b - x_a))


# ------------------------------------------------------------ regularisers
def test_normal_consistency_by_hand():
    """Two triangles sharing the edge (0, 1), folded by a known angle."""
    theta = 0.7
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0.5, 1, 0], [0.5, -math.cos(theta), math.sin(theta)]])
    faces = torch.tensor([[0, 1, 2], [1, 0, 3]])
    # Face 0 has normal +Z; face 1's is perpendicular to (1, 0, 0) and to (0.5, -cos, sin).
    n1 = torch.linalg.cross(verts[0] - verts[1], verts[3] - verts[1])
    n1 = n1 / n1.norm()
    expected = 1.0 - float(n1[2])
    assert normal_consistency(verts, faces).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1.0 - math.cos(theta), abs=1e-6)
    flat = verts.clone()
    flat[3] = torch.tensor([0.5, -1.0, 0.0])
    assert normal_consistency(flat, faces).item() == pytest.approx(0.0, abs=1e-7)


def test_laplacian_by_hand():
    g = torch.Generator().manual_seed(2)
    verts = torch.randn(6, 3, generator=g, dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1], [1, 4, 5]])
    neighbours: dict[int, set[int]] = {i: set() for i in range(6)}
    for tri in faces.tolist():
        for a in tri:
            neighbours[a].update(b for b in tri if b != a)
    expected = sum(
        float(((verts[i] - verts[sorted(nb)].mean(0)) ** 2).sum()) for i, nb in neighbours.items()
    ) / 6
    assert laplacian_smoothness(verts, faces).item() == pytest.approx(expected, rel=1e-12)


def test_vertex_normals_of_a_sphere_point_outwards():
    grid = TetGrid(12)
    verts, faces, _ = marching_tets(grid.vertices, grid.vertices.norm(dim=-1) - 0.7, grid.all_tets())
    n = vertex_normals(verts, faces)
    cos = (n * verts / verts.norm(dim=-1, keepdim=True)).sum(-1)
    assert cos.min() > 0.9


# ------------------------------------------------------------ the representation
@pytest.mark.parametrize("shading", ["diffuse", "albedo", "textureless"])
def test_render_shapes_and_ranges(shading):
    torch.manual_seed(0)
    rep = DMTet(small_config())
    cams = cameras(2, 20)
    bg = torch.tensor([[0.2, 0.3, 0.4], [1.0, 1.0, 1.0]])
    out = rep.render(cams, bg, shading=shading)
    for t, c in ((out.rgb, 3), (out.alpha, 1), (out.depth, 1), (out.normal, 3)):
        assert t.shape == (2, 20, 20, c) and torch.isfinite(t).all()
    assert 0 <= out.alpha.min() and out.alpha.max() <= 1
    empty = out.alpha[..., 0] == 0
    assert empty.any() and (out.alpha == 1).any()
    torch.testing.assert_close(out.rgb[empty], bg[:, None, None, :].expand(2, 20, 20, 3)[empty])
    assert (out.depth[empty] == 0).all()
    hit = out.depth[..., 0] > 0
    # A sphere of radius 0.5 seen from 2.6: depths in [2.1, 2.6].
    assert out.depth[hit].min() > 2.6 - 0.5 - 0.05 and out.depth[hit].max() < 2.6 + 0.05
    torch.testing.assert_close(out.normal[hit].norm(dim=-1), torch.ones(int(hit.sum())), atol=1e-5, rtol=0)
    assert set(out.extras) == {"normal_consistency", "laplacian"}


def test_gradients_reach_every_parameter_group():
    torch.manual_seed(0)
    rep = DMTet(small_config())
    with torch.no_grad():
        rep.deform.normal_(0.0, 0.3)
    out = rep.render(cameras(2), torch.full((2, 3), 0.5), light_dir=torch.tensor([[0.0, 1.0, 0.0], [0.6, 0.8, 0.0]]))
    loss = out.rgb.square().mean() + out.alpha.mean() + out.extras["normal_consistency"] + out.extras["laplacian"]
    loss.backward()
    groups = rep.param_groups()
    assert set(groups) == {"sdf", "deform", "encoding", "mlp"}
    for name, params in groups.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name


def test_render_gradient_matches_finite_differences():
    """End to end in float64: d loss / d (sdf, deform) of vertices on the surface."""
    torch.manual_seed(0)
    rep = DMTet(small_config(grid_resolution=8)).double()
    with torch.no_grad():
        rep.deform.normal_(0.0, 0.5)
    cams = cameras(1, 16, dtype=torch.float64)
    bg = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    w = torch.randn(1, 16, 16, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def loss():
        out = rep.render(cams, bg, shading="diffuse", light_dir=torch.tensor([[0.0, 0.6, 0.8]], dtype=torch.float64))
        return (w * torch.cat([out.rgb, out.alpha], -1)).sum()

    loss().backward()
    _, edges = rep.grid.surface(rep.sdf.detach())
    candidates = edges.unique()
    picked = [int(i) for i in candidates[torch.randperm(len(candidates), generator=torch.Generator().manual_seed(4))]
              if rep.sdf.grad[i] != 0][:6]
    assert len(picked) == 6
    eps = 1e-6
    for param, index in [(rep.sdf, (i,)) for i in picked] + [(rep.deform, (i, 1)) for i in picked[:3]]:
        with torch.no_grad():
            param[index] += eps
            hi = loss().item()
            param[index] -= 2 * eps
            lo = loss().item()
            param[index] += eps
        assert param.grad[index].item() == pytest.approx((hi - lo) / (2 * eps), rel=1e-4, abs=1e-6)


def test_freeze_geometry_keeps_only_texture_groups():
    rep = DMTet(small_config(freeze_geometry=True))
    assert set(rep.param_groups()) == {"encoding", "mlp"}
    out = rep.render(cameras(1), torch.ones(1, 3))
    out.rgb.mean().backward()
    assert rep.sdf.grad is None and rep.deform.grad is None
    assert rep.albedo_field.encoding.table.grad is not None
    geometry_only = DMTet(small_config(freeze_texture=True))
    assert set(geometry_only.param_groups()) == {"sdf", "deform"}


def test_frozen_geometry_is_reused_until_the_parameters_change():
    rep = DMTet(small_config(freeze_geometry=True))
    cams, bg = cameras(1), torch.ones(1, 3)
    first = rep.render(cams, bg)
    assert rep._surface()[0] is rep._surface()[0]  # kept between renders
    torch.testing.assert_close(rep.render(cams, bg).alpha, first.alpha)
    rep.init_sphere(0.3)  # writes the parameters: the surface is rebuilt
    assert rep.render(cams, bg).alpha.sum() < 0.6 * first.alpha.sum()


def test_topology_is_marched_once_per_sdf_and_renders_share_it_with_gradients(monkeypatch):
    """A training step renders its cameras and `--image`'s reference view with the same SDF: the
    tets are marched once, both renders still carry gradients, and a step whose update was skipped
    (no write to the SDF) backpropagates again through fresh vertices."""
    torch.manual_seed(0)
    rep = DMTet(small_config())
    marched = []
    surface = rep.grid.surface
    monkeypatch.setattr(rep.grid, "surface", lambda sdf: marched.append(1) or surface(sdf))
    cams, bg = cameras(2), torch.full((2, 3), 0.5)
    for _ in range(2):  # the second pass is a skipped step: same SDF version, graph freed by backward
        a = rep.render(cams[:1], bg[:1])
        b = rep.render(cams[1:], bg[1:])
        rep.sdf.grad = None
        (a.alpha.mean() + b.alpha.mean()).backward()
        assert rep.sdf.grad is not None and rep.sdf.grad.abs().sum() > 0
    assert len(marched) == 1
    uncached = DMTet(small_config())
    uncached.load_state_dict(rep.state_dict())
    torch.testing.assert_close(uncached.render(cams, bg).alpha, rep.render(cams, bg).alpha)
    with torch.no_grad():
        rep.sdf.sub_(0.2)  # an optimizer step writes in place: the surface moves
    grown = rep.render(cams, bg).alpha.sum()
    assert len(marched) == 2 and grown > uncached.render(cams, bg).alpha.sum()
    faces = rep.extract_mesh(0).faces
    faces.zero_()  # an exporter editing its mesh in place leaves the representation's topology alone
    torch.testing.assert_close(rep.render(cams, bg).alpha.sum(), grown)


def test_texture_copied_from_a_nerf_reads_the_same_albedo():
    from dream3d.representations.hashgrid_nerf import HashGridNeRF, NeRFConfig

    torch.manual_seed(0)
    nerf = HashGridNeRF(NeRFConfig(n_levels=4, log2_table_size=12, base_resolution=4, per_level_scale=1.5, hidden_dim=16))
    with torch.no_grad():
        nerf.albedo_field.encoding.table.normal_(0.0, 1.0)
    rep = DMTet(small_config())
    rep.init_texture_from(nerf.albedo_field)
    points = torch.rand(100, 3) * 1.6 - 0.8
    torch.testing.assert_close(rep.albedo(points), nerf.albedo(points))
    with pytest.raises(UserError, match="settings differ"):
        DMTet(small_config(hidden_dim=8)).init_texture_from(nerf.albedo_field)


def test_regularizers_can_be_switched_off():
    out = DMTet(small_config(regularizers=False)).render(cameras(1), torch.ones(1, 3))
    assert out.extras["normal_consistency"] == 0 and out.extras["laplacian"] == 0
    out = DMTet(small_config()).render(cameras(1), torch.ones(1, 3))
    assert out.extras["normal_consistency"] > 0 and out.extras["laplacian"] > 0


def test_init_from_density_places_the_level_set():
    rep = DMTet(small_config(grid_resolution=20))

    def density(x):  # a ball of radius 0.45 around (0.1, 0, 0): density 10 at the centre, falling off linearly
        return 10.0 * (1.0 - (x - torch.tensor([0.1, 0.0, 0.0])).norm(dim=-1) / 0.9)

    rep.init_from_density(density, threshold=5.0)
    verts, faces = rep.mesh()
    centre = torch.tensor([0.1, 0.0, 0.0])
    assert len(faces) > 100
    assert ((verts - centre).norm(dim=-1) - 0.45).abs().max() < 0.02
    # Close to a signed distance near the surface: slope about 1 per world unit.
    inside_point = rep.grid.vertices.sub(centre).norm(dim=-1).argmin()
    assert rep.sdf[inside_point].item() == pytest.approx(-0.45, abs=0.06)
    with pytest.raises(UserError, match="never crosses"):
        rep.init_from_density(density, threshold=50.0)


def test_extract_mesh_and_empty_surface():
    rep = DMTet(small_config())
    mesh = rep.extract_mesh(64)
    assert mesh.vertices.shape[1] == 3 and mesh.faces.shape[1] == 3 and len(mesh.faces) > 100
    assert mesh.vertex_colors.shape == mesh.vertices.shape
    assert 0 <= mesh.vertex_colors.min() and mesh.vertex_colors.max() <= 1
    assert signed_volume(mesh.vertices, mesh.faces) > 0
    with torch.no_grad():
        rep.sdf.fill_(1.0)
    with pytest.raises(UserError, match="empty"):
        rep.extract_mesh(64)
    out = rep.render(cameras(1), torch.full((1, 3), 0.3))
    assert (out.alpha == 0).all()
    out.rgb.sum().backward()  # a training step with no surface still runs


def test_silhouettes_alone_fit_the_shape():
    """Fitting only the alpha masks of an ellipsoid from a sphere: the masks depend on
    the geometry only through the antialiased outline, which must carry it there."""
    torch.manual_seed(0)
    cfg = small_config(grid_resolution=20, regularizers=False)
    target = DMTet(cfg)
    v = target.grid.vertices
    with torch.no_grad():
        target.sdf.copy_((v / torch.tensor([0.7, 0.35, 0.45])).norm(dim=-1) - 1.0)
    g = torch.Generator().manual_seed(0)

    def views(n: int, res: int):
        return orbit_cameras(torch.rand(n, generator=g) * 60 - 20, torch.rand(n, generator=g) * 360,
                             torch.full((n,), 2.6), torch.full((n,), 45.0), res, res)

    def masks(rep, cams, **kw):
        return rep.render(cams, torch.zeros(cams.batch_size, 3), shading="textureless", **kw).alpha

    held_out = views(4, 32)

    def iou(rep) -> float:
        with torch.no_grad():
            a, b = masks(rep, held_out) > 0.5, masks(target, held_out) > 0.5
        return float((a & b).sum() / (a | b).sum())

    hard = DMTet(small_config(grid_resolution=20, regularizers=False, antialias=False))
    cams = views(2, 24)
    ((masks(hard, cams) - masks(target, cams).detach()) ** 2).mean().backward()
    assert hard.sdf.grad.abs().max() == 0  # without antialiasing the masks carry no gradient

    rep = DMTet(cfg)
    start = iou(rep)
    opt = torch.optim.Adam([rep.sdf, rep.deform], lr=1e-2)
    for _ in range(40):
        cams = views(2, 24)
        with torch.no_grad():
            goal = masks(target, cams)
        loss = ((masks(rep, cams) - goal) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert start < 0.75 and iou(rep) > 0.9


def test_gradient_smoothing_blurs_the_grid_gradient_like_a_direct_sum():
    n, sigma = 5, 0.8
    values = torch.randn(n ** 3, 2, dtype=torch.float64)
    radius = max(1, int(3 * sigma + 0.5))
    weights = [math.exp(-0.5 * (d / sigma) ** 2) for d in range(-radius, radius + 1)]
    total = sum(weights)
    cube = values.view(n, n, n, 2)
    slow = torch.zeros_like(cube)
    for i, j, k in itertools.product(range(n), repeat=3):  # edges repeat their last value
        for a, b, c in itertools.product(range(-radius, radius + 1), repeat=3):
            w = weights[a + radius] * weights[b + radius] * weights[c + radius] / total ** 3
            slow[i, j, k] += w * cube[min(max(i + a, 0), n - 1), min(max(j + b, 0), n - 1), min(max(k + c, 0), n - 1)]
    torch.testing.assert_close(blur_grid(values, n, sigma), slow.view(-1, 2))

    rep = DMTet(small_config(grid_resolution=n - 1, gradient_smoothing=sigma))
    target = torch.randn(n ** 3)
    (rep.sdf * target).sum().backward()
    torch.testing.assert_close(rep.sdf.grad, blur_grid(target, n, sigma))


# ------------------------------------------------------------ texture: carried in, baked out
def test_exported_texture_is_baked_from_the_texture_field_not_the_vertex_colours(tmp_path):
    """A coarse surface with a busy texture field: the baked texture must show the field
    between the vertices, where interpolated vertex colours cannot."""
    import numpy as np
    import trimesh

    from dream3d.cameras import CameraConfig
    from dream3d.export.mesh import sample_texture
    from dream3d.export.run_export import export_representation

    torch.manual_seed(0)
    rep = DMTet(small_config(grid_resolution=8, n_levels=2, base_resolution=32, per_level_scale=2.0)).eval()
    with torch.no_grad():
        rep.albedo_field.encoding.table.uniform_(-6.0, 6.0)  # colour changes many times per face
    assert rep.has("albedo")
    files = export_representation(rep, tmp_path, mesh=True, video=False, formats=["glb"], mesh_resolution=8,
                                  video_resolution=16, n_frames=1, background=0.7, camera_cfg=CameraConfig(),
                                  decimate_faces=None, texture_size=256)
    geom = trimesh.load(files["glb"], force="mesh", process=False)
    image = np.asarray(geom.visual.material.baseColorTexture.convert("RGB"), np.float64) / 255.0
    faces, uv = np.asarray(geom.faces), np.asarray(geom.visual.uv, np.float64)
    tri = np.asarray(geom.vertices, np.float64)[faces]
    w = np.array([1.0, 1.0, 1.0]) / 3.0  # face centres: farthest from every vertex
    centres, centre_uv = np.einsum("k,fkd->fd", w, tri), np.einsum("k,fkd->fd", w, uv[faces])
    with torch.no_grad():
        field = rep.albedo(torch.from_numpy(centres).float()).double().numpy()
        vertex_colours = rep.albedo(torch.from_numpy(np.asarray(geom.vertices)).float()).double().numpy()
    baked_error = np.abs(sample_texture(centre_uv, image) - field).mean()
    interpolated_error = np.abs(np.einsum("k,fkd->fd", w, vertex_colours[faces]) - field).mean()
    assert interpolated_error > 0.05  # the field really varies inside faces
    print(f"baked {baked_error:.4f}, vertex colours {interpolated_error:.4f}")
    assert baked_error < 0.2 * interpolated_error and baked_error < 0.02


def test_gaussians_to_dmtet_carries_the_gaussians_colours():
    from dream3d.representations.convert import convert
    from dream3d.representations.gaussians import GaussianConfig, Gaussians

    gen = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(4000, 3, generator=gen), dim=-1)
    points = d * 0.45 * torch.rand(4000, 1, generator=gen) ** (1 / 3)
    red, blue = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.9])
    colours = torch.where(points[:, 1:2] > 0, red, blue)  # red above, blue below
    splats = Gaussians(GaussianConfig(n_init=10, init_opacity=0.8))
    splats.initialize(points, colours)
    mesh = DMTet(small_config(grid_resolution=32, freeze_texture=True))  # a geometry stage's texture is fitted too
    convert(splats, mesh)
    assert not any(p.requires_grad for p in mesh.albedo_field.parameters())
    verts, _ = mesh.mesh()
    with torch.no_grad():
        albedo = mesh.albedo(verts)
    away = verts[:, 1].abs() > 0.15  # clear of the seam at y = 0
    top, bottom = away & (verts[:, 1] > 0), away & (verts[:, 1] < 0)
    assert (albedo[top] - red).abs().mean() < 0.08
    assert (albedo[bottom] - blue).abs().mean() < 0.08
