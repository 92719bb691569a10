"""The Gaussian representation: rendering outputs, densification rules with the
optimiser, checkpoints after densification, PLY round trips, mesh extraction."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import trimesh

from dream3d.cameras import orbit_cameras
from dream3d.errors import UserError
from dream3d.representations import gaussian_ply
from dream3d.representations.gaussians import PARAMS, SH_C0, GaussianConfig, Gaussians, nearest_neighbour_scale
from dream3d.training.checkpoint import load_checkpoint, save_checkpoint


def cameras(n: int = 2, res: int = 24):
    return orbit_cameras(torch.linspace(0.0, 30.0, n), torch.linspace(0.0, 120.0, n), torch.full((n,), 2.8),
                         torch.full((n,), 45.0), res, res)


def small(**kw) -> Gaussians:
    torch.manual_seed(0)
    return Gaussians(GaussianConfig(n_init=kw.pop("n_init", 300), **kw))


def adam(rep: Gaussians) -> torch.optim.Adam:
    return torch.optim.Adam([{"params": ps, "lr": 1e-2, "name": n} for n, ps in rep.param_groups().items()], eps=1e-15)


def train_step(rep, opt, cams):
    out = rep.render(cams, torch.full((cams.batch_size, 3), 0.5))
    opt.zero_grad(set_to_none=True)
    ((out.rgb - 0.2) ** 2).mean().backward()
    opt.step()
    return out


# ---------------------------------------------------------------- rendering
@pytest.mark.parametrize("shading", ["diffuse", "albedo", "textureless"])
def test_render_shapes_ranges_and_gradients(shading):
    rep = small(sh_degree=1)
    cams = cameras()
    out = rep.render(cams, torch.tensor([[0.2, 0.3, 0.4], [1.0, 1.0, 1.0]]), shading=shading,
                     light_dir=torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    assert out.rgb.shape == (2, 24, 24, 3) and out.alpha.shape == out.depth.shape == (2, 24, 24, 1)
    assert out.normal.shape == (2, 24, 24, 3)
    assert 0 <= out.rgb.detach().min().item() and out.rgb.detach().max().item() <= 1 + 1e-5
    assert out.alpha.max().item() > 0.5 and out.alpha.min().item() == 0.0
    corner = out.rgb[:, 0, 0]  # empty pixels show the background
    torch.testing.assert_close(corner, torch.tensor([[0.2, 0.3, 0.4], [1.0, 1.0, 1.0]]))
    # depth is the alpha-weighted camera distance, so depth / alpha lies around the object
    covered = out.alpha > 0.5
    mean_dist = (out.depth[covered] / out.alpha[covered])
    assert 2.8 - 0.8 < mean_dist.min().item() and mean_dist.max().item() < 2.8 + 0.8
    (out.rgb.mean() + out.extras["opacity"]).backward()
    groups = rep.param_groups()
    assert set(groups) == {"means", "scales", "rotations", "opacities", "colors"}
    for name in ("means", "scales", "opacities"):
        assert groups[name][0].grad.abs().max() > 0, name
    if shading != "textureless":
        assert rep.sh0.grad.abs().max() > 0 and rep.sh_rest.grad.abs().max() > 0


def test_normal_of_a_flat_gaussian_faces_the_camera():
    rep = small(n_init=1)
    with torch.no_grad():
        rep.means.zero_()
        rep.log_scales.copy_(torch.tensor([[0.3, 0.3, 0.002]]).log())  # a disc in the XY plane, normal +-Z
        rep.opacity_logits.fill_(5.0)
        rep.quats.copy_(torch.tensor([[0.0, 1.0, 0.0, 0.0]]))  # rotated 180 degrees about X: its normal points to -Z
    for az, expected in ((0.0, [0.0, 0.0, 1.0]), (180.0, [0.0, 0.0, -1.0])):  # cameras on +Z, then on -Z
        cams = orbit_cameras(torch.zeros(1), torch.tensor([az]), torch.tensor([3.0]), torch.tensor([40.0]), 16, 16)
        out = rep.render(cams, torch.zeros(1, 3), shading="albedo")
        centre = out.normal[0, 8, 8] / out.alpha[0, 8, 8]
        torch.testing.assert_close(centre, torch.tensor(expected), atol=1e-4, rtol=0)


def test_diffuse_shading_is_albedo_times_light():
    rep = small(n_init=200)
    cams = cameras(1)
    light = torch.tensor([[0.0, 0.0, 1.0]])
    albedo = rep.render(cams, torch.zeros(1, 3), shading="albedo", light_dir=light)
    diffuse = rep.render(cams, torch.zeros(1, 3), shading="diffuse", light_dir=light)
    shade = rep.render(cams, torch.zeros(1, 3), shading="textureless", light_dir=light)
    # every Gaussian is grey 0.5, so a diffuse render is half the textureless one
    torch.testing.assert_close(diffuse.rgb, 0.5 * shade.rgb, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(albedo.rgb, 0.5 * albedo.alpha.expand(-1, -1, -1, 3), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- initialisation
def test_initialisation_shapes_and_nearest_neighbour_scale():
    rep = small(init_shape="sphere", init_radius=0.4, n_init=500)
    assert rep.num_gaussians == 500 and rep.means.norm(dim=-1).max().item() <= 0.4 + 1e-6
    box = small(init_shape="box", init_radius=0.3, n_init=500)
    assert box.means.abs().max().item() <= 0.3 + 1e-6 and box.means.norm(dim=-1).max().item() > 0.4
    grid = torch.stack(torch.meshgrid(*[torch.arange(6.0) * 0.1] * 3, indexing="ij"), -1).reshape(-1, 3)
    scale = nearest_neighbour_scale(grid)
    interior = grid.sub(0.25).abs().max(-1).values < 0.2
    torch.testing.assert_close(scale[interior], torch.full((64,), 0.1))
    colours = torch.rand(grid.shape[0], 3)
    rep.initialize(grid, colours, opacity=0.3)
    torch.testing.assert_close(rep.means, grid)
    torch.testing.assert_close(rep.colours(), colours, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.sigmoid(rep.opacity_logits), torch.full((216,), 0.3))


# ---------------------------------------------------------------- densification
def prepared(rep: Gaussians):
    """Five groups of 4: high-gradient small (clone), high-gradient large (split),
    low-gradient faint (prune), low-gradient huge (prune), low-gradient normal (kept)."""
    rep.initialize(torch.rand(20, 3) - 0.5)
    c = rep.cfg
    with torch.no_grad():
        size = torch.tensor([0.5 * c.split_scale] * 4 + [4 * c.split_scale] * 4 + [c.split_scale] * 4
                            + [2 * c.prune_scale] * 4 + [c.split_scale] * 4)
        rep.log_scales.copy_(size.log()[:, None].expand(20, 3))
        rep.opacity_logits[8:12] = math.log(0.2 * c.prune_opacity)
    rep.reset_stats()
    rep.grad_sum[:8] = 3 * c.grad_threshold * 2
    rep.grad_sum[8:] = 0.5 * c.grad_threshold * 2
    rep.grad_count[:] = 2


def test_densify_and_prune_follow_the_rules_and_update_adam():
    rep = small(n_init=20)
    prepared(rep)
    opt = adam(rep)
    train_step(rep, opt, cameras(1))  # Adam moments exist
    before = {n: p.detach().clone() for n, p in zip(PARAMS, [getattr(rep, n) for n in PARAMS])}
    moments = opt.state[rep.means]["exp_avg"].clone()
    old_means = rep.means
    counts = rep.densify_and_prune(opt)
    assert counts == {"cloned": 4, "split": 4, "pruned": 8, "total": 20 + 4 + 4 - 8}
    assert rep.means is not old_means and all(old_means is not p for g in opt.param_groups for p in g["params"])
    in_optimizer = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for ps in rep.param_groups().values() for p in ps}
    # kept originals first (clones' sources 0-3 and the normal 16-19), then 4 clones, then 2 x 4 children
    torch.testing.assert_close(rep.means[:4], before["means"][:4])
    torch.testing.assert_close(rep.means[4:8], before["means"][16:20])
    torch.testing.assert_close(rep.means[8:12], before["means"][:4])
    torch.testing.assert_close(rep.log_scales[12:], (before["log_scales"][4:8].exp() / 1.6).log().repeat(2, 1))
    offset = (rep.means[12:] - before["means"][4:8].repeat(2, 1)).norm(dim=-1)
    assert offset.max().item() < 6 * 4 * rep.cfg.split_scale and offset.min().item() > 0
    state = opt.state[rep.means]
    torch.testing.assert_close(state["exp_avg"][:4], moments[:4])
    torch.testing.assert_close(state["exp_avg"][4:8], moments[16:20])
    assert state["exp_avg"][8:].abs().max() == 0 and state["exp_avg_sq"].shape == rep.means.shape
    for p in (p for g in opt.param_groups for p in g["params"]):
        for v in opt.state[p].values():
            if torch.is_tensor(v) and v.dim() > 0:
                assert v.shape == p.shape
    assert rep.grad_sum.shape == (20,) and rep.grad_sum.abs().max() == 0
    train_step(rep, opt, cameras(1))  # the optimiser still steps the new parameters
    assert not torch.equal(rep.means[12:], before["means"][4:8].repeat(2, 1))


def test_max_gaussians_caps_growth():
    rep = small(n_init=20, max_gaussians=22)
    prepared(rep)
    rep.grad_sum[:8] = torch.arange(8.0) + 10.0  # the two largest gradients win: indices 6, 7 (split)
    counts = rep.densify_and_prune(adam(rep))
    assert counts["cloned"] == 0 and counts["split"] == 2 and counts["total"] == 20 + 2 - 8


def test_on_step_schedule_needs_the_optimizer(monkeypatch):
    rep = small(n_init=20, densify_every=10, densify_from=0.1, densify_until=0.5)
    opt = adam(rep)
    cams = cameras(1)
    calls = []
    monkeypatch.setattr(rep.strategy, "densify_and_prune", lambda params, optimizer, state: calls.append(optimizer))
    for step, progress in [(5, 0.2), (10, 0.05), (10, 0.2), (20, 0.6), (30, 0.3)]:
        out = train_step(rep, opt, cams)
        rep.on_step(step, progress, out, optimizer=opt)
    assert calls == [opt, opt]  # steps 10 and 30 inside [0.1, 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep.on_step(40, 0.3, out)
    assert len(calls) == 2 and any("optimizer" in str(w.message) for w in caught)


def test_gradient_statistics_use_ndc_units():
    rep = small(n_init=100)
    cams = cameras(2, res=20)
    out = rep.render(cams, torch.zeros(2, 3))
    out.rgb.sum().backward()
    means2d, drawn, W, H = (out.info[k] for k in ("means2d", "drawn", "width", "height"))
    expected = (means2d.grad * torch.tensor([0.5 * W * 2, 0.5 * H * 2])).norm(dim=-1) * drawn
    rep.on_step(1, 0.0, out)  # before the densify window: statistics only
    torch.testing.assert_close(rep.grad_sum, expected.sum(0))
    torch.testing.assert_close(rep.grad_count, drawn.sum(0).float())
    assert rep.grad_count.max() == 2


def test_reset_opacity_lowers_and_forgets_moments():
    rep = small(n_init=50, init_opacity=0.5)
    opt = adam(rep)
    train_step(rep, opt, cameras(1))
    rep.reset_opacity(opt)
    assert torch.sigmoid(rep.opacity_logits).max().item() <= rep.cfg.reset_opacity_value + 1e-6
    assert opt.state[rep.opacity_logits]["exp_avg"].abs().max() == 0


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_after_densify_loads_into_a_fresh_model(tmp_path):
    rep = small(n_init=20)
    prepared(rep)
    opt = adam(rep)
    train_step(rep, opt, cameras(1))
    rep.densify_and_prune(opt)
    train_step(rep, opt, cameras(1))
    save_checkpoint(tmp_path, 2, {"representation": rep}, opt, torch.Generator())
    fresh = small(n_init=20)
    fresh_opt = adam(fresh)  # built before loading, as the trainer does
    load_checkpoint(tmp_path, {"representation": fresh}, fresh_opt, torch.Generator())
    assert fresh.num_gaussians == rep.num_gaussians == 20
    for name in PARAMS:
        torch.testing.assert_close(getattr(fresh, name), getattr(rep, name))
    cams = cameras(1)
    torch.testing.assert_close(fresh.render(cams, torch.zeros(1, 3)).rgb, rep.render(cams, torch.zeros(1, 3)).rgb)
    train_step(fresh, fresh_opt, cams)  # Adam moments match the loaded sizes
    bigger = small(n_init=37)
    bigger.load_state_dict(rep.state_dict(), strict=True)
    assert bigger.num_gaussians == 20


# ---------------------------------------------------------------- files
def test_ply_round_trip_and_standard_layout(tmp_path):
    rep = small(n_init=64, sh_degree=1)
    with torch.no_grad():
        rep.sh_rest.copy_(torch.randn_like(rep.sh_rest))
        rep.quats.copy_(torch.nn.functional.normalize(torch.randn_like(rep.quats), dim=-1))
    path = rep.save_splats(tmp_path / "splat.ply")
    arrays = gaussian_ply.read_ply(path)
    np.testing.assert_allclose(arrays.means, rep.means.detach().numpy())
    np.testing.assert_allclose(arrays.sh_rest, rep.sh_rest.detach().numpy())
    np.testing.assert_allclose(arrays.opacity_logits, rep.opacity_logits.detach().numpy())
    # an independent parser (trimesh) sees the standard 3DGS property names and values
    raw = trimesh.load(path, process=False).metadata["_ply_raw"]["vertex"]["data"]
    assert list(raw.dtype.names) == gaussian_ply.property_names(3)
    assert all(raw.dtype[n] == np.dtype("<f4") for n in raw.dtype.names)
    np.testing.assert_allclose(raw["opacity"], rep.opacity_logits.detach().numpy())
    np.testing.assert_allclose(raw["scale_1"], rep.log_scales[:, 1].detach().numpy())
    np.testing.assert_allclose(raw["rot_0"], rep.quats[:, 0].detach().numpy(), rtol=1e-6)  # w first
    np.testing.assert_allclose(raw["f_rest_3"], rep.sh_rest[:, 0, 1].detach().numpy())  # channel-major: green's first
    np.testing.assert_allclose(0.5 + SH_C0 * raw["f_dc_2"], rep.colours()[:, 2].detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(arrays.log_scales, rep.log_scales.detach().numpy())
    np.testing.assert_allclose(arrays.quats, rep.quats.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(arrays.sh_dc, rep.sh0[:, 0].detach().numpy())


def reference_3dgs_properties(degree: int) -> list[str]:
    """The vertex properties of the original 3DGS code's PLY, spelled out here (not taken from dream3d)."""
    n_rest = 3 * ((degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_ply_read_by_plyfile_has_the_reference_layout(tmp_path, sh_degree):
    """plyfile (an independent PLY reader, as 3DGS tools use) sees the reference layout and the parameters."""
    plyfile = pytest.importorskip("plyfile")  # a dev extra
    rep = small(n_init=50, sh_degree=sh_degree)
    with torch.no_grad():
        rep.sh_rest.copy_(torch.randn_like(rep.sh_rest))
        rep.quats.copy_(3.0 * torch.randn_like(rep.quats))  # not unit: the file holds the normalised rotation
        rep.opacity_logits.copy_(torch.randn_like(rep.opacity_logits))
    ply = plyfile.PlyData.read(str(rep.save_splats(tmp_path / "gaussians.ply")))
    assert not ply.text and ply.byte_order == "<"
    assert [e.name for e in ply.elements] == ["vertex"] and ply["vertex"].count == 50
    props = ply["vertex"].properties
    assert [p.name for p in props] == reference_3dgs_properties(sh_degree)
    assert all(np.dtype(p.val_dtype) == np.float32 for p in props)
    v = ply["vertex"].data
    col = lambda *names: np.stack([v[n] for n in names], 1)  # noqa: E731
    t = lambda x: x.detach().numpy()  # noqa: E731
    np.testing.assert_array_equal(col("x", "y", "z"), t(rep.means))
    np.testing.assert_array_equal(col("nx", "ny", "nz"), 0.0)
    # opacity is stored as its logit (sigmoid^-1), scales as natural logs
    np.testing.assert_allclose(1 / (1 + np.exp(-v["opacity"])), t(torch.sigmoid(rep.opacity_logits)), rtol=1e-6)
    np.testing.assert_allclose(np.exp(col("scale_0", "scale_1", "scale_2")), t(rep.log_scales.exp()), rtol=1e-6)
    quats = col("rot_0", "rot_1", "rot_2", "rot_3")  # w x y z, unit length
    np.testing.assert_allclose(np.linalg.norm(quats, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(quats, t(torch.nn.functional.normalize(rep.quats, dim=-1)), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(col("f_dc_0", "f_dc_1", "f_dc_2"), t(rep.sh0[:, 0]))
    np.testing.assert_allclose(0.5 + SH_C0 * col("f_dc_0", "f_dc_1", "f_dc_2"), t(rep.colours()), rtol=1e-5)
    k = (sh_degree + 1) ** 2 - 1
    for c in range(3):  # channel-major: all of red's higher coefficients, then green's, then blue's
        for i in range(k):
            np.testing.assert_array_equal(v[f"f_rest_{c * k + i}"], t(rep.sh_rest[:, i, c]))


def test_ply_reader_accepts_ascii_and_rejects_other_files(tmp_path):
    names = gaussian_ply.property_names(0)
    values = np.arange(2 * len(names), dtype=np.float64).reshape(2, -1)
    header = ["ply", "format ascii 1.0", "comment made by hand", "element vertex 2"]
    header += [f"property double {n}" for n in names]
    text = "\n".join(header + ["end_header"] + [" ".join(map(str, row)) for row in values]) + "\n"
    (tmp_path / "a.ply").write_text(text)
    arrays = gaussian_ply.read_ply(tmp_path / "a.ply")
    np.testing.assert_allclose(arrays.means, values[:, :3])
    np.testing.assert_allclose(arrays.quats, values[:, -4:])
    assert arrays.sh_rest.shape == (2, 0, 3)
    trimesh.creation.box().export(tmp_path / "mesh.ply")
    with pytest.raises(UserError):
        gaussian_ply.read_ply(tmp_path / "mesh.ply")
    (tmp_path / "short.ply").write_bytes(gaussian_ply.encode_ply(small(n_init=4).to_splat_arrays())[:-10])
    with pytest.raises(UserError, match="truncated"):
        gaussian_ply.read_ply(tmp_path / "short.ply")


# ---------------------------------------------------------------- mesh
@pytest.mark.parametrize("smoothing", [0.0, 0.04])
def test_mesh_of_one_gaussian_is_its_level_sphere(smoothing):
    """A Gaussian blurred by s is a Gaussian of variance sigma^2 + s^2 and peak (sigma^2 / (sigma^2 + s^2))^1.5."""
    rep = small(n_init=1, mesh_threshold=0.5, mesh_smoothing=smoothing)
    sigma = 0.2
    with torch.no_grad():
        rep.means.zero_()
        rep.log_scales.fill_(math.log(sigma))
        rep.opacity_logits.fill_(20.0)  # opacity 1
        rep.sh0.copy_(((torch.tensor([0.9, 0.2, 0.1]) - 0.5) / SH_C0).view(1, 1, 3))
    mesh = rep.extract_mesh(48)
    wide = math.sqrt(sigma**2 + smoothing**2)
    peak = (sigma / wide) ** 3
    radius = wide * math.sqrt(2 * math.log(peak / 0.5))  # peak exp(-r^2 / 2 wide^2) = 0.5
    r = mesh.vertices.norm(dim=-1)
    assert abs(r.mean().item() - radius) < 0.01 and (r - radius).abs().max().item() < 0.03
    v = mesh.vertices[mesh.faces]  # counter-clockwise from outside: positive signed volume
    volume = torch.linalg.det(v).sum().item() / 6.0
    assert volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.05)
    expected = torch.tensor([[0.9, 0.2, 0.1]]).expand_as(mesh.vertex_colors)
    torch.testing.assert_close(mesh.vertex_colors, expected, atol=1e-4, rtol=0)


def test_mesh_colours_come_from_the_nearby_gaussians():
    rep = small(n_init=2)
    with torch.no_grad():
        rep.means.copy_(torch.tensor([[-0.4, 0.0, 0.0], [0.4, 0.0, 0.0]]))
        rep.log_scales.fill_(math.log(0.15))
        rep.opacity_logits.fill_(20.0)
        rep.sh0.copy_(((torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) - 0.5) / SH_C0)[:, None, :])
    mesh = rep.extract_mesh(40)
    left = mesh.vertices[:, 0] < 0
    assert left.any() and (~left).any()
    assert (mesh.vertex_colors[left] - torch.tensor([1.0, 0.0, 0.0])).abs().max().item() < 0.05
    assert (mesh.vertex_colors[~left] - torch.tensor([0.0, 0.0, 1.0])).abs().max().item() < 0.05


def test_closing_matches_max_pools_of_the_edge_padded_grid():
    """`surface_grid`'s closing (scipy, separable) equals a dilation then an erosion by torch's
    max-pool over the grid padded with its edge values, density and density x colour alike."""
    rep = small(n_init=60, mesh_smoothing=0.0, mesh_closing=0.1)
    with torch.no_grad():
        rep.opacity_logits.uniform_(-2.0, 3.0)
    res = 21
    density, weighted = rep.density_grid(res)
    closed, closed_weighted = rep.surface_grid(res)
    k = round(0.1 / (2.0 / (res - 1)))

    def close(x):  # [C, R, R, R]
        pad = lambda y: torch.nn.functional.pad(y[None], (k,) * 6, mode="replicate")[0]  # noqa: E731
        pool = lambda y: torch.nn.functional.max_pool3d(pad(y), 2 * k + 1, 1)  # noqa: E731
        return -pool(-pool(x))

    torch.testing.assert_close(closed, close(density[None])[0])
    torch.testing.assert_close(closed_weighted, close(weighted.permute(3, 0, 1, 2)).permute(1, 2, 3, 0))
    assert (closed >= density - 1e-6).all() and (closed > density + 1e-3).any()  # closing only adds


@pytest.mark.parametrize("closing, components", [(0.0, 2), (0.06, 1)])
def test_closing_bridges_a_narrow_crack_and_keeps_a_ring_open(closing, components):
    """Two blobs 0.1 apart (narrower than the 0.06 half-side footprint) join; a ring of
    radius 0.5 keeps its hole (genus 1) either way."""
    rep = small(n_init=2, mesh_smoothing=0.0, mesh_closing=closing)
    with torch.no_grad():
        rep.means.copy_(torch.tensor([[-0.17, 0.0, 0.0], [0.17, 0.0, 0.0]]))
        rep.log_scales.fill_(math.log(0.1))
        rep.opacity_logits.fill_(20.0)
    pair = trimesh.Trimesh(rep.extract_mesh(64).vertices.numpy(), rep.extract_mesh(64).faces.numpy())
    assert len(pair.split(only_watertight=False)) == components
    angles = torch.linspace(0, 2 * math.pi, 41)[:-1]
    ring = small(n_init=40, mesh_smoothing=0.0, mesh_closing=closing)
    with torch.no_grad():
        ring.means.copy_(torch.stack([0.5 * angles.cos(), torch.zeros(40), 0.5 * angles.sin()], -1))
        ring.log_scales.fill_(math.log(0.08))
        ring.opacity_logits.fill_(20.0)
    mesh = ring.extract_mesh(64)
    ring_mesh = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy())
    assert ring_mesh.is_watertight and 1 - ring_mesh.euler_number // 2 == 1


def test_empty_density_raises_user_error():
    rep = small(n_init=10)
    with torch.no_grad():
        rep.opacity_logits.fill_(-40.0)
    with pytest.raises(UserError, match="empty"):
        rep.extract_mesh(16)


def test_density_grid_matches_dense_sum_within_truncation():
    """The blockwise 3-sigma splat equals the dense sum up to what lies beyond 3 sigma,
    including a Gaussian larger than the grid (the whole-grid path)."""
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    rep = small(n_init=40)
    with torch.no_grad():
        rep.log_scales[0] = math.log(2.0)
        rep.opacity_logits.uniform_(-2.0, 3.0)
    res = 17
    density, weighted = rep.density_grid(res)
    axis = torch.linspace(-1.0, 1.0, res)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    _, precis = _quat_scale_to_covar_preci(rep.quats, rep.log_scales.exp(), compute_covar=False)
    d = pts[..., None, :] - rep.means.detach()
    q = torch.einsum("...ni,nij,...nj->...n", d, precis, d)
    w = torch.sigmoid(rep.opacity_logits.detach()) * torch.exp(-0.5 * q)
    tail = torch.sigmoid(rep.opacity_logits).sum().item() * math.exp(-4.5)
    assert (density - w.sum(-1)).abs().max().item() <= tail
    assert density.max().item() > 20 * tail
    grey = (w.sum(-1, keepdim=True) * 0.5).expand(-1, -1, -1, 3)  # every Gaussian is grey 0.5
    torch.testing.assert_close(weighted, grey, atol=tail, rtol=0)


def test_fitting_a_target_view_converges_with_densification():
    """Photometric fitting of one view (the gradients work in practice): the loss
    falls far below its start while densification and pruning run in between."""
    torch.manual_seed(1)
    cams = cameras(2, res=16)
    target = small(n_init=150, init_opacity=0.8)
    with torch.no_grad():
        target.sh0.copy_(((torch.rand(150, 1, 3) - 0.5) / SH_C0))
        goal = target.render(cams, torch.zeros(2, 3), shading="albedo").rgb
    rep = small(n_init=100, grad_threshold=1e-4, densify_every=15, densify_from=0.0, densify_until=1.0)
    lrs = {"means": 3e-3, "scales": 1e-2, "rotations": 1e-2, "opacities": 5e-2, "colors": 2e-2}
    opt = torch.optim.Adam([{"params": ps, "lr": lrs[n]} for n, ps in rep.param_groups().items()], eps=1e-15)
    losses = []
    for step in range(60):
        out = rep.render(cams, torch.zeros(2, 3), shading="albedo")
        loss = (out.rgb - goal).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rep.on_step(step, step / 60, out, optimizer=opt)
        losses.append(loss.item())
    assert rep.num_gaussians != 100  # densify / prune changed the set
    assert sum(losses[-5:]) / 5 < 0.3 * losses[0]
