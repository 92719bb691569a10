"""The hash-grid NeRF: renders, the initial blob, gradients, normals and mesh export."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import trimesh

from dream3d.cameras import CameraConfig, orbit_cameras
from dream3d.errors import UserError
from dream3d.representations.hashgrid_nerf import HashGridNeRF, NeRFConfig


def cams(batch: int = 2, height: int = 20, width: int = 24):
    az = torch.linspace(20.0, 200.0, batch)
    return orbit_cameras(torch.full((batch,), 15.0), az, torch.full((batch,), 2.9), torch.full((batch,), 45.0), width, height)


def make(seed: int = 0, **overrides) -> HashGridNeRF:
    torch.manual_seed(seed)
    return HashGridNeRF(NeRFConfig(**overrides))


@pytest.mark.parametrize("shading", ["diffuse", "albedo", "textureless"])
def test_render_shapes_and_ranges(shading):
    rep = make()
    c = cams()
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 1.0, 1.0]])
    out = rep.render(c, bg, shading=shading, light_dir=F.normalize(torch.tensor([[0.0, 1.0, 1.0]] * 2), dim=-1))
    assert out.rgb.shape == (2, 20, 24, 3) and out.alpha.shape == (2, 20, 24, 1)
    assert out.depth.shape == (2, 20, 24, 1) and out.normal.shape == (2, 20, 24, 3)
    assert out.rgb.min() >= 0 and out.rgb.max() <= 1 + 1e-6
    assert out.alpha.min() >= 0 and out.alpha.max() <= 1 + 1e-6
    assert out.normal.abs().max() <= 1 + 1e-5
    covered = out.alpha[..., 0] > 0.5
    assert covered.any() and (~covered).any()
    # The object sits around the origin, 2.9 away from the cameras.
    depth = out.depth[..., 0][covered] / out.alpha[..., 0][covered]
    assert depth.min() > 2.0 and depth.max() < 3.6
    # Empty pixels show the background.
    empty = out.alpha[..., 0] < 1e-4
    torch.testing.assert_close(out.rgb[0][empty[0]], bg[0].expand(int(empty[0].sum()), 3), atol=1e-4, rtol=0)
    for key in ("orient", "opacity"):
        assert out.extras[key].dim() == 0 and torch.isfinite(out.extras[key])
    if shading == "textureless":  # white albedo: grey wherever the object covers a grey background
        grey = rep.render(c, torch.full((2, 3), 0.5), shading=shading).rgb
        assert (grey.amax(-1) - grey.amin(-1)).max() < 1e-5


def test_each_camera_uses_its_own_light_and_background():
    rep = make().eval()
    c = cams()
    light = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [-0.3, 1.0, 0.4]]), dim=-1)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]])
    with torch.no_grad():
        both = rep.render(c, bg, light_dir=light).rgb
        for i in range(2):
            alone = rep.render(c[i], bg[i : i + 1], light_dir=light[i : i + 1]).rgb
            torch.testing.assert_close(both[i : i + 1], alone, atol=1e-5, rtol=0)
    assert (both[0] - both[1]).abs().max() > 0.1


def test_background_images_are_composited():
    rep = make().eval()  # no jitter: both renders sample the same points
    c = cams()
    bg = torch.rand(2, 20, 24, 3, generator=torch.Generator().manual_seed(0))
    out = rep.render(c, bg)
    expected = out.rgb - (1 - out.alpha) * bg  # what the object itself contributes
    solid = rep.render(c, torch.zeros(2, 3)).rgb
    torch.testing.assert_close(expected, solid, atol=1e-5, rtol=0)


def test_blob_is_denser_at_the_centre_and_normals_point_outwards():
    rep = make().eval()
    c = cams(batch=1, height=32, width=32)
    out = rep.render(c, torch.ones(1, 3))
    centre = out.alpha[0, 15:17, 15:17, 0].mean()
    edge = out.alpha[0, :2, :, 0].mean()
    assert centre > 0.9 and edge < 0.05
    # The centre pixel's normal faces the camera.
    n = F.normalize(out.normal[0, 16, 16].detach(), dim=0)
    to_camera = F.normalize(c.c2w[0, :3, 3], dim=0)
    assert float(n @ to_camera) > 0.9
    # Field normals on a sphere inside the blob point away from the centre, for both methods.
    x = F.normalize(torch.randn(3, 200, generator=torch.Generator().manual_seed(1)), dim=0) * 0.4
    _, analytic, _ = rep._field(x, want_albedo=False)
    rep.cfg.normals = "finite_difference"
    _, finite, _ = rep._field(x, want_albedo=False)
    radial = F.normalize(x, dim=0)
    assert (analytic * radial).sum(0).min() > 0.95
    assert (finite * radial).sum(0).min() > 0.95
    assert (analytic * finite).sum(0).min() > 0.99


def test_analytic_normals_and_their_gradients_match_autograd():
    """Normals are -grad(density logit) by the encoding's Jacobian and a vector-Jacobian
    product through the MLP; compare with autograd's gradient (double backward for the
    parameter gradients of a loss on normals)."""
    rep = make(3, n_levels=4, log2_table_size=10, hidden_dim=16, hidden_layers=2, blob_density=2.0)
    with torch.no_grad():
        rep.albedo_field.encoding.table.normal_(0.0, 0.5)  # a field with structure, not just the blob
    x = torch.rand(3, 64, generator=torch.Generator().manual_seed(2)) * 1.6 - 0.8
    g = torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
    # The last layer's bias shifts the density, not its gradient: normals do not depend on it.
    params = [rep.albedo_field.encoding.table, *rep.density_mlp.parameters()][:-1]

    _, normal, _ = rep._field(x, want_albedo=False)
    grads = torch.autograd.grad((normal * g).sum(), params, allow_unused=True)

    x_ref = x.clone().requires_grad_(True)
    (d_logit,) = torch.autograd.grad(rep._density_logit(x_ref).sum(), x_ref, create_graph=True)
    ref = -F.normalize(d_logit, dim=0)
    ref_grads = torch.autograd.grad((ref * g).sum(), params, allow_unused=True)

    torch.testing.assert_close(normal, ref, atol=1e-4, rtol=1e-4)
    nonzero = 0
    for p, a, b in zip(params, grads, ref_grads):
        # Hidden biases only move ReLU kinks: no gradient (None) on either side, or zeros.
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
        nonzero += int(b.abs().sum() > 0)
    assert nonzero >= 4  # the table and the three weight matrices


def test_gradients_reach_every_parameter_group():
    rep = make()
    out = rep.render(cams(), torch.full((2, 3), 0.5), shading="diffuse")
    loss = out.rgb.square().mean() + 0.1 * out.extras["orient"] + 0.1 * out.extras["opacity"]
    loss.backward()
    groups = rep.param_groups()
    assert set(groups) == {"encoding", "mlp"}
    grouped = [p for ps in groups.values() for p in ps]
    assert {id(p) for p in grouped} == {id(p) for p in rep.parameters()} and len(grouped) == len(list(rep.parameters()))
    for name, ps in groups.items():
        for p in ps:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_skipping_empty_space_changes_little():
    """With a low occupancy threshold, skipping unoccupied cells (and sampling only the
    box of occupied cells) renders what sampling the whole cube renders. (The default
    threshold also skips faint haze: up to ~0.09 alpha on grazing rays past the blob.)"""
    rep = make(occupancy_threshold=1e-5).eval()
    c = cams()
    bg = torch.full((2, 3), 0.6)
    with torch.no_grad():
        skipped = rep.render(c, bg)
        assert not rep.occupancy.binaries.all()
        rep.occupancy.binaries.fill_(True)  # every cell occupied: the whole cube is sampled
        full = rep.render(c, bg)
    assert (skipped.alpha - full.alpha).abs().max() < 1e-3
    assert (skipped.rgb - full.rgb).abs().max() < 1e-3


def test_occupancy_grows_with_the_density():
    rep = make()
    before = int(rep.occupancy.binaries.sum())
    rep.cfg.blob_radius = 0.8
    rep.on_step(0, 0.0, None)
    assert int(rep.occupancy.binaries.sum()) > 1.5 * before


def test_queries():
    rep = make()
    p = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.9, 0.9]])
    density = rep.query_density(p)
    albedo = rep.albedo(p)
    assert density.shape == (2,) and albedo.shape == (2, 3)
    assert density[0] > 5.0 and density[1] < 0.01  # blob: logit 10 at the centre
    assert albedo.min() >= 0 and albedo.max() <= 1


def test_extract_mesh_of_the_blob_is_a_closed_sphere():
    rep = make()
    mesh = rep.extract_mesh(40)
    tm = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
    assert tm.is_watertight
    assert tm.volume > 0  # faces wound counter-clockwise seen from outside
    radius = mesh.vertices.norm(dim=-1)
    # The blob's logit is blob_density (1 - |x| / blob_radius); the isosurface is where
    # softplus(logit) = mesh_threshold (the untrained MLP adds a small offset).
    cfg = rep.cfg
    logit = math.log(math.expm1(cfg.mesh_threshold))
    expected = cfg.blob_radius * (1 - logit / cfg.blob_density)
    assert abs(float(radius.mean()) - expected) < 0.03
    assert float(radius.std()) < 0.02
    assert mesh.vertex_colors.shape == mesh.vertices.shape
    assert mesh.vertex_colors.min() >= 0 and mesh.vertex_colors.max() <= 1


def test_mesh_colours_match_the_albedo_renders():
    from dream3d.export.run_export import albedo_render_luminance, mesh_luminance

    rep = make(5)
    with torch.no_grad():
        rep.albedo_field.encoding.table.normal_(0.0, 1.0)  # colours that vary in space...
        rep.density_mlp.layers[-1].weight.zero_()  # ...on the plain blob
        rep.albedo_field.mlp.layers[-1].bias.copy_(torch.tensor([1.5, -1.0, 0.0]))
    mesh = rep.extract_mesh(40)
    gap = mesh_luminance(mesh) - albedo_render_luminance(rep, CameraConfig(), 40, 0.7)
    assert abs(gap) < 0.05


def test_empty_field_raises_a_user_error():
    rep = make(blob_density=0.0)
    with torch.no_grad():
        rep.density_mlp.layers[-1].weight.zero_()  # density is the same everywhere
    with pytest.raises(UserError, match="no surface"):
        rep.extract_mesh(16)
