"""The CPU tile rasteriser against the dense reference and a one-Gaussian-at-a-time
emulation of gsplat's kernel (values and gradients, its early stop included), the
fast projection against the matrix helpers and gsplat's own pure-torch projection,
and hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch

from dream3d.cameras import orbit_cameras
from dream3d.render import splat as S
from dream3d.types import Cameras


def random_scene(n: int, seed: int, dtype=torch.float64, channels: int = 4, cams: int = 2, opaque: bool = True):
    """Gaussians in a ball, some anisotropic, some fully opaque (alpha clamps at 0.999),
    some behind a camera or outside its view; features per camera."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.5
    means[: n // 10] *= 6.0  # far out: partly outside the image, some behind a camera
    scales = 0.02 + 0.15 * torch.rand(n, 3, generator=g)
    scales[: n // 4, 0] *= 0.05  # flat ones
    quats = torch.randn(n, 4, generator=g)
    opac = 0.05 + 0.9 * torch.rand(n, generator=g)
    if opaque:
        opac[n // 2: n // 2 + n // 5] = 1.0
    feats = torch.rand(cams, n, channels, generator=g)
    el = torch.rand(cams, generator=g) * 60 - 10
    az = torch.rand(cams, generator=g) * 360
    return [t.to(dtype) for t in (means, quats, scales, opac, feats)], orbit_cameras(
        el, az, torch.full((cams,), 2.5), torch.full((cams,), 45.0), 23, 19)


def render_both(params, cams: Cameras, tile_size: int):
    means, quats, scales, opac, feats = params
    dt = means.dtype
    vm, K = S.opencv_viewmats(cams.c2w.to(dt)), S.intrinsics(cams).to(dt)
    out = []
    for dense in (True, False):
        proj = S.project(means, quats, scales, vm, K, cams.width, cams.height)
        if dense:
            img, alpha = S.rasterize_dense(proj, opac, feats, cams.width, cams.height)
        else:
            img, alpha, _ = S.rasterize_tiles(proj, opac, feats, cams.width, cams.height, tile_size)
        out.append((img, alpha))
    return out


def assert_gradients_match(params, reference, renders, seed: int) -> None:
    """The gradients in `params` of one random weighting of image and alpha agree between the
    reference (img, alpha) and each of `renders` [(img, alpha, label)]."""
    img_r, a_r = reference
    g = torch.Generator().manual_seed(seed)
    w_img = torch.randn(img_r.shape, generator=g, dtype=img_r.dtype)
    w_a = torch.randn(a_r.shape, generator=g, dtype=a_r.dtype)
    grads_r = torch.autograd.grad((img_r * w_img).sum() + (a_r * w_a).sum(), params, retain_graph=True)
    for img, a, kind in renders:
        grads = torch.autograd.grad((img * w_img).sum() + (a * w_a).sum(), params, retain_graph=True)
        for name, gr, gt in zip(["means", "quats", "scales", "opacities", "features"], grads_r, grads):
            assert gr.abs().max() > 0, name
            torch.testing.assert_close(gt, gr, rtol=1e-7, atol=1e-9, msg=lambda m: f"{kind} {name}: {m}")


@pytest.mark.parametrize("seed,tile_size", [(0, 4), (1, 8), (2, 3)])
def test_tiles_match_dense_reference_values_and_gradients(seed, tile_size):
    params, cams = random_scene(120, seed)
    params = [p.requires_grad_() for p in params]
    (img_d, a_d), (img_t, a_t) = render_both(params, cams, tile_size)
    assert a_d.max() > 0.9 and (a_d == 0).any()  # the scene has opaque and empty pixels
    torch.testing.assert_close(img_t, img_d, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(a_t, a_d, rtol=1e-9, atol=1e-10)
    assert_gradients_match(params, (img_d, a_d), [(img_t, a_t, "tiles")], seed + 100)


def test_tiles_match_dense_reference_in_float32():
    params, cams = random_scene(200, 3, dtype=torch.float32, channels=7, cams=1)
    params = [p.requires_grad_() for p in params]
    (img_d, a_d), (img_t, a_t) = render_both(params, cams, 4)
    torch.testing.assert_close(img_t, img_d, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a_t, a_d, rtol=1e-4, atol=1e-5)
    gd = torch.autograd.grad(img_d.square().sum() + a_d.sum(), params)
    gt = torch.autograd.grad(img_t.square().sum() + a_t.sum(), params)
    for x, y in zip(gt, gd):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-3 * float(y.abs().max()))


def test_tile_rasteriser_gradcheck():
    """Finite differences on a tiny scene (opacities away from the clamp)."""
    params, cams = random_scene(6, 4, cams=1, opaque=False)
    means, quats, scales, opac, feats = params
    cams = orbit_cameras(torch.tensor([10.0]), torch.tensor([20.0]), torch.tensor([2.0]), torch.tensor([40.0]), 9, 7)
    means = means * 0.3

    def fn(means, quats, scales, opac, feats):
        vm, K = S.opencv_viewmats(cams.c2w.double()), S.intrinsics(cams).double()
        proj = S.project(means, quats, scales * 3.0, vm, K, cams.width, cams.height)
        img, alpha, _ = S.rasterize_tiles(proj, opac, feats, cams.width, cams.height, 4)
        return img, alpha

    inputs = tuple(t.clone().requires_grad_() for t in (means, quats, scales, opac, feats))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_projection_matches_matrix_reference():
    params, cams = random_scene(300, 5)
    means, quats, scales, _, _ = [p.requires_grad_() for p in params]
    vm, K = S.opencv_viewmats(cams.c2w.double()), S.intrinsics(cams).double()
    fast = S.project(means, quats, scales, vm, K, cams.width, cams.height)
    ref = S.project_reference(means, quats, scales, vm, K, cams.width, cams.height)
    assert (~fast.visible).any() and fast.visible.any()
    for name in ("means2d", "cov2d", "conics", "depths"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name))
    assert torch.equal(fast.visible, ref.visible)
    loss = lambda p: (p.means2d.sin().sum() + (p.conics * p.visible[..., None]).cos().sum())  # noqa: E731
    grads_fast = torch.autograd.grad(loss(fast), [means, quats, scales])
    grads_ref = torch.autograd.grad(loss(ref), [means, quats, scales])
    for a, b in zip(grads_fast, grads_ref):
        torch.testing.assert_close(a, b)


def test_projection_by_hand():
    """A camera on +Z looking at the origin: world +X is image right, +Y image up; an
    isotropic Gaussian of std s at distance d has pixel variance (f s / d)^2 + eps2d."""
    cams = orbit_cameras(torch.zeros(1), torch.zeros(1), torch.tensor([4.0]), torch.tensor([60.0]), 32, 24)
    f = 0.5 * 24 / math.tan(math.radians(30.0))
    means = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 4.5]])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(4, 4)
    scales = torch.full((4, 3), 0.1)
    proj = S.project(means, quats, scales, S.opencv_viewmats(cams.c2w), S.intrinsics(cams), 32, 24, eps2d=0.3)
    torch.testing.assert_close(proj.means2d[0, 0], torch.tensor([16.0, 12.0]))
    assert proj.means2d[0, 1, 0] > 16.0 + 0.5 * f / 4.0 - 1e-4  # right
    assert proj.means2d[0, 2, 1] < 12.0  # up is towards row 0
    torch.testing.assert_close(proj.depths[0, :3], torch.tensor([4.0, 4.0, 4.0]))
    var = (f * 0.1 / 4.0) ** 2 + 0.3
    torch.testing.assert_close(proj.cov2d[0, 0], torch.tensor([var, 0.0, var]))
    torch.testing.assert_close(proj.conics[0, 0], torch.tensor([1 / var, 0.0, 1 / var]))
    assert proj.visible[0].tolist() == [True, True, True, False]  # the last is behind the camera


def test_compositing_by_hand():
    """Two Gaussians on the optical axis: the pixel at the image centre sees
    alpha_i = o_i exp(-q_i / 2) and colour a1 c1 + (1 - a1) a2 c2 (front first)."""
    cams = orbit_cameras(torch.zeros(1), torch.zeros(1), torch.tensor([4.0]), torch.tensor([60.0]), 16, 16)
    means = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])  # the second is nearer the camera on +Z
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(2, 4)
    scales = torch.full((2, 3), 0.3)
    opac = torch.tensor([0.9, 0.6])
    feats = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    vm, K = S.opencv_viewmats(cams.c2w), S.intrinsics(cams)
    proj = S.project(means, quats, scales, vm, K, 16, 16)
    img, alpha, drawn = S.rasterize_tiles(proj, opac, feats, 16, 16, 4)
    assert drawn.all()
    d = torch.tensor([7.5, 7.5]) - proj.means2d[0]  # pixel (7, 7) centre
    a, b, c = proj.conics[0].unbind(-1)
    a_i = opac * torch.exp(-0.5 * (a * d[:, 0] ** 2 + 2 * b * d[:, 0] * d[:, 1] + c * d[:, 1] ** 2))
    front, back = 1, 0
    expected = a_i[front] * feats[0, front] + (1 - a_i[front]) * a_i[back] * feats[0, back]
    torch.testing.assert_close(img[0, 7, 7], expected)
    torch.testing.assert_close(alpha[0, 7, 7, 0], 1 - (1 - a_i[0]) * (1 - a_i[1]))


def test_nothing_visible_renders_empty_with_zero_gradients():
    params, cams = random_scene(20, 6, cams=1)
    means, quats, scales, opac, feats = params
    behind = torch.tensor([0.0, 0.0, 50.0], dtype=means.dtype)  # behind the camera on +Z
    means = (means * 0.0 + behind).requires_grad_()
    cams = orbit_cameras(torch.zeros(1), torch.zeros(1), torch.tensor([3.0]), torch.tensor([45.0]), 12, 12)
    vm, K = S.opencv_viewmats(cams.c2w.double()), S.intrinsics(cams).double()
    proj = S.project(means, quats, scales, vm, K, 12, 12)
    img, alpha, drawn = S.rasterize_tiles(proj, opac, feats, 12, 12)
    assert not drawn.any() and img.abs().max() == 0 and alpha.abs().max() == 0
    (grad,) = torch.autograd.grad(img.sum() + alpha.sum(), [means])
    assert torch.isfinite(grad).all() and grad.abs().max() == 0


def test_tile_plan_covers_every_visible_pair():
    """Every (pixel, Gaussian) pair the dense reference gives alpha > 1/255 has a row in that pixel's tile."""
    params, cams = random_scene(80, 7, cams=1)
    means, quats, scales, opac, feats = params
    vm, K = S.opencv_viewmats(cams.c2w.double()), S.intrinsics(cams).double()
    proj = S.project(means, quats, scales, vm, K, cams.width, cams.height)
    plan = S.plan_tiles(proj, opac, cams.width, cams.height, 4)
    pairs = set(zip(plan.row_tiles.tolist(), plan.rows.tolist()))
    y, x = torch.meshgrid(torch.arange(cams.height) + 0.5, torch.arange(cams.width) + 0.5, indexing="ij")
    d = torch.stack([x, y], -1).double()[:, :, None, :] - proj.means2d[0]  # [H, W, N, 2]
    a, b, c = proj.conics[0].unbind(-1)
    alpha = opac * torch.exp(-0.5 * (a * d[..., 0] ** 2 + 2 * b * d[..., 0] * d[..., 1] + c * d[..., 1] ** 2))
    hits = ((alpha > S.ALPHA_MIN) & proj.visible[0]).nonzero().tolist()
    assert len(hits) > 100
    for row, col, gi in hits:
        assert ((row // 4) * plan.tiles_x + col // 4, gi) in pairs
    assert len(pairs) < 4 * len(hits)  # and the plan is not wildly larger than needed


def test_cpu_splat_never_calls_gsplat_kernels(monkeypatch):
    import gsplat

    def refuse(*args, **kwargs):
        raise AssertionError("gsplat's CUDA rasterization was called on CPU tensors")

    monkeypatch.setattr(gsplat, "rasterization", refuse)
    params, cams = random_scene(30, 8, dtype=torch.float32, channels=3, cams=1)
    res = S.splat(*params, cams)
    assert res.image.shape == (1, 19, 23, 3) and res.alpha.shape == (1, 19, 23, 1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's kernels need CUDA")
def test_gsplat_path_matches_cpu_rasteriser():
    params, cams = random_scene(300, 9, dtype=torch.float32, channels=7, cams=2)
    cpu = S.splat(*params, cams)
    gpu = S.splat(*[p.cuda() for p in params], cams.to("cuda"))
    # Both stop a pixel at transmittance 1e-4; what is left is float32 rounding (__expf).
    torch.testing.assert_close(gpu.image.cpu(), cpu.image, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(gpu.alpha.cpu(), cpu.alpha, atol=2e-4, rtol=1e-4)
    assert gpu.means2d.shape == cpu.means2d.shape
    torch.testing.assert_close(gpu.means2d.cpu(), cpu.means2d, atol=1e-3, rtol=1e-4)


# ---------------------------------------------------------------- gsplat's early stop
def composite_like_gsplat(proj, opacities, features, width, height):
    """Slow reference of gsplat's rasterize-to-pixels kernel (RasterizeToPixels3DGSFwd.cu),
    one Gaussian at a time in depth order over every pixel: alpha = min(0.999, o exp(-sigma))
    with sigma = (a dx^2 + c dy^2) / 2 + b dx dy; alpha < 1/255 is skipped; otherwise
    next_T = T (1 - alpha), and if next_T <= 1e-4 the pixel is done *before* adding this
    Gaussian, else it adds alpha T feat and T = next_T. The rendered alpha is 1 - T.
    Autograd through it gives the reference gradients. Also returns which pixels stopped."""
    C, N = proj.depths.shape
    y, x = torch.meshgrid(torch.arange(height, dtype=features.dtype) + 0.5,
                          torch.arange(width, dtype=features.dtype) + 0.5, indexing="ij")
    px, py = x.reshape(-1), y.reshape(-1)
    images, alphas, stops = [], [], []
    for ci in range(C):
        T = torch.ones(height * width, dtype=features.dtype)
        done = torch.zeros(height * width, dtype=torch.bool)
        out = torch.zeros(height * width, features.shape[-1], dtype=features.dtype)
        idx = proj.visible[ci].nonzero().squeeze(1)
        for gi in idx[proj.depths[ci, idx].argsort()].tolist():
            dx, dy = px - proj.means2d[ci, gi, 0], py - proj.means2d[ci, gi, 1]
            a, b, c = proj.conics[ci, gi]
            sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
            alpha = (opacities[gi] * torch.exp(-sigma)).clamp(max=0.999)
            used = alpha >= 1.0 / 255.0
            next_T = T * (1.0 - alpha)
            done = done | (used & (next_T <= 1e-4))
            draw = used & ~done
            out = out + torch.where(draw, alpha * T, torch.zeros_like(T))[:, None] * features[ci, gi]
            T = torch.where(draw, next_T, T)
        images.append(out.view(height, width, -1))
        alphas.append((1.0 - T).view(height, width, 1))
        stops.append(done.view(height, width))
    return torch.stack(images), torch.stack(alphas), torch.stack(stops)


def near_opaque_scene(n: int, seed: int, dtype=torch.float64, channels: int = 3, cams: int = 2):
    """Many large, nearly opaque Gaussians: most pixels reach transmittance 1e-4."""
    (means, quats, scales, opac, feats), cams = random_scene(n, seed, dtype, channels, cams)
    g = torch.Generator().manual_seed(seed + 7)
    means = means.clamp(-0.8, 0.8) * 0.5
    scales = scales * 2.5
    opac = (0.85 + 0.15 * torch.rand(n, generator=g, dtype=torch.float64)).to(dtype)
    opac[: n // 3] = 1.0  # clamped at alpha 0.999
    return [means, quats, scales, opac, feats], cams


@pytest.mark.parametrize("scene,seed,tile_size", [("random", 10, 4), ("opaque", 11, 4), ("opaque", 12, 5)])
def test_cpu_rasterisers_stop_like_gsplat_values_and_gradients(scene, seed, tile_size):
    """The tile rasteriser (forward and hand-written backward) and the dense twin stop a
    pixel where gsplat's kernel does, against the one-Gaussian-at-a-time reference."""
    make = near_opaque_scene if scene == "opaque" else random_scene
    params, cams = make(120, seed)
    params = [p.requires_grad_() for p in params]
    means, quats, scales, opac, feats = params
    W, H = cams.width, cams.height
    vm, K = S.opencv_viewmats(cams.c2w.double()), S.intrinsics(cams).double()
    proj = S.project(means, quats, scales, vm, K, W, H)
    img_r, a_r, stopped = composite_like_gsplat(proj, opac, feats, W, H)
    if scene == "opaque":
        assert stopped.float().mean() > 0.25  # the stop is exercised on many pixels
    else:
        assert stopped.any() and not stopped.all()
    img_t, a_t, _ = S.rasterize_tiles(proj, opac, feats, W, H, tile_size)
    img_d, a_d = S.rasterize_dense(proj, opac, feats, W, H)
    for img, a, name in ((img_t, a_t, "tiles"), (img_d, a_d, "dense")):
        torch.testing.assert_close(img, img_r, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name} image: {m}")
        torch.testing.assert_close(a, a_r, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name} alpha: {m}")
    assert_gradients_match(params, (img_r, a_r), [(img_t, a_t, "tiles"), (img_d, a_d, "dense")], seed + 100)


def test_cpu_rasteriser_stops_like_gsplat_in_float32():
    params, cams = near_opaque_scene(150, 13, dtype=torch.float32, channels=4, cams=1)
    params = [p.requires_grad_() for p in params]
    means, quats, scales, opac, feats = params
    vm, K = S.opencv_viewmats(cams.c2w), S.intrinsics(cams)
    proj = S.project(means, quats, scales, vm, K, cams.width, cams.height)
    img_r, a_r, stopped = composite_like_gsplat(proj, opac, feats, cams.width, cams.height)
    assert stopped.float().mean() > 0.25
    img_t, a_t, _ = S.rasterize_tiles(proj, opac, feats, cams.width, cams.height, 4)
    torch.testing.assert_close(img_t, img_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a_t, a_r, rtol=1e-4, atol=1e-5)
    gr = torch.autograd.grad(img_r.square().sum() + a_r.sum(), params, retain_graph=True)
    gt = torch.autograd.grad(img_t.square().sum() + a_t.sum(), params)
    for x, y in zip(gt, gr):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-3 * float(y.abs().max()))


def test_tiles_match_gsplat_projection_and_stopping_reference():
    """End to end against gsplat's own pure-torch projection (`_fully_fused_projection`,
    whose zero radii mark culled Gaussians) composited by the gsplat-kernel emulation."""
    gs = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat's private pure-torch module is not importable")
    params, cams = near_opaque_scene(100, 14)
    params = [p.requires_grad_() for p in params]
    means, quats, scales, opac, feats = params
    W, H = cams.width, cams.height
    vm, K = S.opencv_viewmats(cams.c2w.double()), S.intrinsics(cams).double()
    covars, _ = gs._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, _ = gs._fully_fused_projection(means, covars, vm, K, W, H, eps2d=0.3)
    drawn = (radii > 0).all(-1)
    ref_proj = S.Projected(means2d, torch.zeros_like(conics), conics, depths, drawn)
    img_r, a_r, stopped = composite_like_gsplat(ref_proj, opac, feats, W, H)
    assert stopped.float().mean() > 0.25
    proj = S.project(means, quats, scales, vm, K, W, H)
    img_t, a_t, _ = S.rasterize_tiles(proj, opac, feats, W, H, 4)
    torch.testing.assert_close(img_t, img_r, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(a_t, a_r, rtol=1e-9, atol=1e-10)
    g = torch.Generator().manual_seed(114)
    w_img = torch.randn(img_r.shape, generator=g, dtype=img_r.dtype)
    grads_r = torch.autograd.grad((img_r * w_img).sum() + a_r.sum(), params)
    grads_t = torch.autograd.grad((img_t * w_img).sum() + a_t.sum(), params)
    for name, gr, gt in zip(["means", "quats", "scales", "opacities", "features"], grads_r, grads_t):
        assert gr.abs().max() > 0, name
        torch.testing.assert_close(gt, gr, rtol=1e-7, atol=1e-9, msg=lambda m: f"{name}: {m}")
