"""Stateless 3D Gaussian splatting: projection, compositing, and the device switch.

On CUDA the whole render is gsplat's fused `rasterization`. On the CPU the Gaussians
are projected by `project` (gsplat's EWA formulas written as broadcast products;
`project_reference` is the same through the 3x3-matrix helpers of `gaussian_math`)
and composited by a tile rasteriser written here: each (tile, Gaussian) pair whose
opacity-aware footprint reaches the tile becomes one row; the depth-sorted rows of
a tile are composited densely over its pixels. The exponents of all (row, pixel)
pairs are one matrix product (each Gaussian's quadratic form expanded in
pixel-offset monomials), and the backward pass is written by hand from the saved
alphas and weights, chunk by chunk of tiles so the working set stays in cache.
`rasterize_dense` is the slow twin the tests compare it with.

Rules shared by every path (gsplat's): a Gaussian is drawn when its camera depth
exceeds `near_plane`; the 2D covariance gets `eps2d` added on its diagonal; a pixel
sees alpha = min(0.999, o * exp(-q / 2)) and skips it below 1/255; and a pixel stops,
in depth order, at the first Gaussian that would leave it a transmittance
T (1 - alpha) <= 1e-4, *before* adding it (gsplat's kernel is exclusive). That
Gaussian and all behind it get no value and no gradient there; the rendered alpha
is 1 - T, so it never exceeds 1 - 1e-4. The stop is a piecewise-constant choice:
gradients treat it as fixed, as gsplat's backward does.

Cameras follow dream3d (OpenGL: looking down -Z, +Y up); they are converted once
here to the OpenCV view matrices and intrinsics gsplat expects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dream3d.render.gaussian_math import persp_proj, quat_scale_to_covar_preci, quat_to_rotmat, world_to_cam
from dream3d.types import Cameras

ALPHA_MIN = 1.0 / 255.0  # a Gaussian fainter than this at a pixel is skipped there
ALPHA_MAX = 0.999  # alpha is clamped below 1 so transmittance stays invertible
T_STOP = 1.0e-4  # a pixel stops before the Gaussian that would leave it this transmittance or less
LOG_T_STOP = math.log(T_STOP)
PAD_LOGIT = -1.0e4  # log-alpha of the padding rows: alpha is exactly 0
CHUNK_ELEMENTS = 1 << 16  # (row, pixel) pairs composited at once on the CPU


# ---------------------------------------------------------------- cameras
def opencv_viewmats(c2w: Tensor) -> Tensor:
    """World-to-camera [B, 4, 4] in OpenCV axes (x right, y down, looking down +z)
    from OpenGL camera-to-world matrices c2w [B, 4, 4]."""
    flip = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype, device=c2w.device)
    return flip[:, None] * torch.linalg.inv(c2w)


def intrinsics(cams: Cameras) -> Tensor:
    """Pinhole intrinsics [B, 3, 3] with the principal point at the image centre."""
    f = cams.focal()
    K = torch.zeros(cams.batch_size, 3, 3, dtype=cams.c2w.dtype, device=cams.device)
    K[:, 0, 0] = f
    K[:, 1, 1] = f
    K[:, 0, 2] = 0.5 * cams.width
    K[:, 1, 2] = 0.5 * cams.height
    K[:, 2, 2] = 1.0
    return K


# ---------------------------------------------------------------- projection
@dataclass
class Projected:
    """Gaussians seen by C cameras (pixel units, OpenCV image axes)."""

    means2d: Tensor  # [C, N, 2] projected centres
    cov2d: Tensor  # [C, N, 3] (xx, xy, yy) of the 2D covariance, eps2d included
    conics: Tensor  # [C, N, 3] (a, b, c) of its inverse
    depths: Tensor  # [C, N] camera-space z
    visible: Tensor  # [C, N] in front of the near plane


def project(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, any norm
    scales: Tensor,  # [N, 3] activated (positive)
    viewmats: Tensor,  # [C, 4, 4] OpenCV world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
) -> Projected:
    """EWA projection of 3D Gaussians: cov2d = (J W M)(J W M)^T with M = R(q) diag(s),
    W the camera rotation and J the perspective Jacobian (clamped 30% beyond the image
    as gsplat does). Written with broadcast products instead of thousands of 3x3 matmuls,
    which is several times faster on the CPU; `project_reference` is the same through
    the 3x3-matrix helpers."""
    rot, t = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]  # [C, 1, 3, 3], [C, 1, 3]
    means_c = torch.matmul(means, viewmats[:, :3, :3].transpose(1, 2)) + t  # [C, N, 3]
    x, y, z = means_c.unbind(-1)
    visible = z > near_plane
    z = torch.where(visible, z, torch.ones_like(z))  # culled: a harmless depth, no inf/NaN in any gradient
    fx, fy = Ks[:, None, 0, 0], Ks[:, None, 1, 1]  # [C, 1]
    cx, cy = Ks[:, None, 0, 2], Ks[:, None, 1, 2]
    lim_x, lim_y = 1.3 * 0.5 * width / fx, 1.3 * 0.5 * height / fy
    u = (x / z).clamp(-lim_x, lim_x)
    v = (y / z).clamp(-lim_y, lim_y)
    # Rows of J W: d(pixel)/d(world), [C, N, 3] each.
    row_x = (fx / z)[..., None] * (rot[..., 0, :] - u[..., None] * rot[..., 2, :])
    row_y = (fy / z)[..., None] * (rot[..., 1, :] - v[..., None] * rot[..., 2, :])
    m = quat_to_rotmat(quats) * scales[:, None, :]  # [N, 3, 3] = R diag(s)
    jx = (row_x[..., :, None] * m).sum(-2)  # [C, N, 3]
    jy = (row_y[..., :, None] * m).sum(-2)
    xx, xy, yy = (jx * jx).sum(-1) + eps2d, (jx * jy).sum(-1), (jy * jy).sum(-1) + eps2d
    det = (xx * yy - xy * xy).clamp(min=1e-12)
    means2d = torch.stack([fx * (x / z) + cx, fy * (y / z) + cy], -1)
    conics = torch.stack([yy / det, -xy / det, xx / det], -1)
    return Projected(means2d, torch.stack([xx, xy, yy], -1), conics, means_c[..., 2], visible)


def project_reference(means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor, Ks: Tensor, width: int,
                      height: int, eps2d: float = 0.3, near_plane: float = 0.01) -> Projected:
    """`project` through 3x3 covariance matrices (the slow twin for the tests)."""
    covars, _ = quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    means_c, covars_c = world_to_cam(means, covars, viewmats)  # [C, N, 3], [C, N, 3, 3]
    depths = means_c[..., 2]
    visible = depths > near_plane
    safe = torch.cat([means_c[..., :2], torch.where(visible, depths, torch.ones_like(depths))[..., None]], -1)
    means2d, cov = persp_proj(safe, covars_c, Ks, width, height)
    xx, xy, yy = cov[..., 0, 0] + eps2d, 0.5 * (cov[..., 0, 1] + cov[..., 1, 0]), cov[..., 1, 1] + eps2d
    det = (xx * yy - xy * xy).clamp(min=1e-12)
    conics = torch.stack([yy / det, -xy / det, xx / det], -1)
    return Projected(means2d, torch.stack([xx, xy, yy], -1), conics, depths, visible)


# ---------------------------------------------------------------- CPU tiles
@dataclass
class TilePlan:
    """Which Gaussians each tile composites, in depth order, grouped into chunks of tiles."""

    tile_size: int
    tiles_x: int
    tiles_y: int
    n_tiles: int  # cameras * tiles_y * tiles_x
    rows: Tensor  # [R] flat (camera * N + gaussian) index of each (tile, Gaussian) row
    row_tiles: Tensor  # [R] flat tile index (camera, y, x) of each row; rows sorted by tile, then depth
    chunks: list[tuple[Tensor, Tensor]]  # (tile ids [T], row table [T, n] with R as padding)


@torch.no_grad()
def plan_tiles(proj: Projected, opacities: Tensor, width: int, height: int, tile_size: int = 4,
               chunk_elements: int = CHUNK_ELEMENTS) -> TilePlan:
    """Rows for every (tile, Gaussian) pair where the Gaussian's footprint
    {q <= 2 log(255 o)} (outside it alpha < 1/255) can reach a pixel centre of the tile."""
    C, N = proj.depths.shape
    dev, ts = opacities.device, tile_size
    n_tx, n_ty = math.ceil(width / ts), math.ceil(height / ts)
    k = 2.0 * torch.log((255.0 * opacities.detach().float()).clamp(min=1e-30)).expand(C, N)
    ok = proj.visible & (k > 0)
    k = k.clamp(min=0.0)
    xx, xy, yy = proj.cov2d.detach().float().unbind(-1)
    mx, my = proj.means2d.detach().float().unbind(-1)
    radius2 = k * (0.5 * (xx + yy) + (0.25 * (xx - yy) ** 2 + xy * xy).sqrt())  # the footprint's bounding circle

    def tile_range(centre, half, n):  # tiles holding pixel centres i + 0.5 in [centre - half, centre + half]
        lo = (centre - half - 0.5).clamp(-1.0, n * ts).ceil().div_(ts).floor_().clamp_(0, n)
        hi = (centre + half - 0.5).clamp(-1.0, n * ts).floor().div_(ts).floor_().add_(1).clamp_(0, n)
        return lo, (hi - lo).clamp_(min=0)

    tx0, span_x = tile_range(mx, (k * xx).sqrt(), n_tx)
    ty0, span_y = tile_range(my, (k * yy).sqrt(), n_ty)
    count = (span_x * span_y).long() * ok
    order = proj.depths.detach().masked_fill(~ok, float("inf")).argsort(dim=1)  # [C, N] near to far
    flat = (order + torch.arange(C, device=dev)[:, None] * N).reshape(-1)
    count = count.reshape(-1).index_select(0, flat)
    total = int(count.sum())
    gid = torch.repeat_interleave(flat, count, output_size=total)
    first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count, output_size=total)
    local = (torch.arange(total, device=dev) - first).float()
    g = torch.stack([mx, my, tx0, ty0, span_x, radius2], -1).view(C * N, 6).index_select(0, gid)
    gx, gy, g_tx0, g_ty0, g_span, g_r2 = g.unbind(-1)
    dy = (local / g_span).floor_()
    tx, ty = g_tx0 + local - dy * g_span, g_ty0 + dy
    # Keep the tiles the bounding circle reaches (drops the corners of the box).
    ex = (gx - ts * tx - 0.5).clamp_(0, ts - 1).add_(ts * tx + 0.5).sub_(gx)
    ey = (gy - ts * ty - 0.5).clamp_(0, ts - 1).add_(ts * ty + 0.5).sub_(gy)
    near = (ex * ex + ey * ey <= g_r2).nonzero().squeeze(1)
    gid = gid.index_select(0, near)
    tile = (ty.index_select(0, near) * n_tx + tx.index_select(0, near)).long()
    key = torch.div(gid, N, rounding_mode="floor") * (n_tx * n_ty) + tile
    key, perm = torch.sort(key, stable=True)  # stable: depth order survives within a tile
    rows = gid.index_select(0, perm)
    tiles, counts = torch.unique_consecutive(key, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    counts, by_size = counts.sort(descending=True)  # chunk tiles of similar counts: little padding
    tiles, starts = tiles.index_select(0, by_size), starts.index_select(0, by_size)
    chunks, i, n_rows = [], 0, len(rows)
    counts_list = counts.tolist()
    while i < len(counts_list):
        n = counts_list[i]
        j = min(len(counts_list), i + max(1, chunk_elements // (n * ts * ts)))
        slot = torch.arange(n, device=dev)
        table = torch.where(slot < counts[i:j, None], starts[i:j, None] + slot, n_rows)
        chunks.append((tiles[i:j], table))
        i = j
    return TilePlan(ts, n_tx, n_ty, C * n_tx * n_ty, rows, key, chunks)


def _pixel_monomials(ts: int, dtype, device) -> Tensor:
    """[P, 6] (u^2, uv, v^2, u, v, 1) of pixel-centre offsets from the tile centre."""
    v, u = torch.meshgrid(torch.arange(ts, dtype=dtype, device=device) + 0.5 - 0.5 * ts,
                          torch.arange(ts, dtype=dtype, device=device) + 0.5 - 0.5 * ts, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, u * v, v * v, u, v, torch.ones_like(u)], -1)


def _row_exponents(g: Tensor, plan: TilePlan) -> tuple[Tensor, Tensor, Tensor]:
    """Row coefficients psi [R, 6] with log alpha = psi . (u^2, uv, v^2, u, v, 1) in
    tile-local pixels, from g [R, 6] = (mean x, mean y, conic a, b, c, log opacity);
    also the tile-local centres (mx, my) each [R]."""
    ts = plan.tile_size
    tile = plan.row_tiles % (plan.tiles_x * plan.tiles_y)
    cx = (tile % plan.tiles_x).to(g.dtype) * ts + 0.5 * ts
    cy = torch.div(tile, plan.tiles_x, rounding_mode="floor").to(g.dtype) * ts + 0.5 * ts
    mx, my, a, b, c, log_o = g.unbind(-1)
    mx, my = mx - cx, my - cy
    lin_x, lin_y = a * mx + b * my, b * mx + c * my
    psi = torch.stack([-0.5 * a, -b, -0.5 * c, lin_x, lin_y, log_o - 0.5 * (lin_x * mx + lin_y * my)], -1)
    return psi, mx, my


def _chunk_weights(psi: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
    """Alpha and compositing weights [T, P, n] of a chunk of tiles with depth-sorted rows
    psi [T, n, 6] over pixels phi [P, 6]. Rows run along the last, contiguous axis (a
    scan along it is several times faster than along a middle axis).
    gsplat's stop: the transmittance after row i only falls with i, so the rows the
    stop drops are exactly those after which it is <= T_STOP; their alpha is set to 0,
    which also gives them no gradient in the backward. Exponents are floored at -80 and
    the transmittance before a row just under T_STOP: exp() of lower values and
    arithmetic on denormals are many times slower, and such terms are 0 anyway."""
    alpha = torch.matmul(phi, psi.transpose(1, 2)).clamp_(min=-80.0).exp_().clamp_(max=ALPHA_MAX)
    alpha.masked_fill_(alpha < ALPHA_MIN, 0.0)  # skipped pairs: exactly 0
    log_t = torch.log1p(-alpha)
    log_after = log_t.cumsum(2)  # log transmittance after each row
    alpha.masked_fill_(log_after <= LOG_T_STOP, 0.0)  # the pixel stopped at or before this row
    w = log_after.sub_(log_t).clamp_(min=LOG_T_STOP - 1.0).exp_().mul_(alpha)  # T before the row * alpha
    return alpha, w


class _TileComposite(torch.autograd.Function):
    """out[t, p] = sum_i w_i feat_i over the depth-sorted rows i of tile t, with
    w_i = alpha_i prod_{j<i} (1 - alpha_j) and log alpha_i = psi_i . phi_p, psi_i a
    function of its Gaussian's g = (mean x, mean y, conic a, b, c, log opacity);
    alpha_i is 0 where skipped (< 1/255) or past the pixel's stop (see `_chunk_weights`)."""

    @staticmethod
    def forward(ctx, gauss: Tensor, feats: Tensor, plan: TilePlan) -> Tensor:
        phi = _pixel_monomials(plan.tile_size, gauss.dtype, gauss.device)
        g_rows = gauss.index_select(0, plan.rows)  # [R, 6]
        psi, mx, my = _row_exponents(g_rows, plan)
        psi = torch.cat([psi, psi.new_tensor([[0.0] * 5 + [PAD_LOGIT]])])
        feat_rows = torch.cat([feats.index_select(0, plan.rows), feats.new_zeros(1, feats.shape[1])])
        out = feats.new_zeros(plan.n_tiles, phi.shape[0], feats.shape[1])
        keep = any(ctx.needs_input_grad[:2])  # renders without gradients keep nothing
        saved = []
        for tiles, table in plan.chunks:
            flat = table.view(-1)
            feat = feat_rows.index_select(0, flat).view(*table.shape, -1)
            alpha, w = _chunk_weights(psi.index_select(0, flat).view(*table.shape, -1), phi)
            out.index_copy_(0, tiles, torch.bmm(w, feat))
            saved += [alpha, w, feat] if keep else []
        ctx.save_for_backward(g_rows, mx, my, *saved)  # freed after backward unless the graph is retained
        ctx.plan, ctx.phi, ctx.shapes = plan, phi, (gauss.shape, feats.shape)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        plan, phi = ctx.plan, ctx.phi
        n_rows = len(plan.rows)
        d_psi = grad_out.new_empty(n_rows + 1, 6)
        d_feat = grad_out.new_empty(n_rows + 1, ctx.shapes[1][1])
        g_rows, mx, my, *saved = ctx.saved_tensors
        for i, (tiles, table) in enumerate(plan.chunks):
            alpha, w, feat = saved[3 * i: 3 * i + 3]
            flat = table.view(-1)
            g = grad_out.index_select(0, tiles)  # [T, P, D]
            d_feat.index_copy_(0, flat, torch.bmm(w.transpose(1, 2), g).view(flat.shape[0], -1))
            # d out / d log alpha_i = alpha_i (feat_i T_i - sum_{j>i} feat_j w_j / (1 - alpha_i)):
            # 0 for rows past the stop (alpha = w = 0), whose terms also drop out of the sums.
            s = torch.bmm(g, feat.transpose(1, 2)).mul_(w)  # [T, P, n]
            behind = s.cumsum(2).neg_().add_(s.sum(2, keepdim=True))
            d_logit = s.sub_(behind.mul_(alpha).div_(1.0 - alpha))
            d_logit.masked_fill_(alpha >= ALPHA_MAX, 0.0)  # clamped alphas are constants
            d_psi.index_copy_(0, flat, torch.matmul(d_logit.transpose(1, 2), phi).view(flat.shape[0], -1))
        # Chain rule through psi = (-a/2, -b, -c/2, lx, ly, log_o - (lx mx + ly my) / 2),
        # with lx = a mx + b my and ly = b mx + c my.
        d = d_psi[:n_rows]
        _, _, a, b, c, _ = g_rows.unbind(-1)
        d0, d1, d2, d3, d4, d5 = d.unbind(-1)
        lin_x, lin_y = a * mx + b * my, b * mx + c * my
        d_rows = torch.stack([
            d3 * a + d4 * b - d5 * lin_x,
            d3 * b + d4 * c - d5 * lin_y,
            -0.5 * d0 + mx * (d3 - 0.5 * d5 * mx),
            -d1 + d3 * my + d4 * mx - d5 * mx * my,
            -0.5 * d2 + my * (d4 - 0.5 * d5 * my),
            d5,
        ], -1)
        d_gauss = grad_out.new_zeros(ctx.shapes[0]).index_add_(0, plan.rows, d_rows)
        d_feats = grad_out.new_zeros(ctx.shapes[1]).index_add_(0, plan.rows, d_feat[:n_rows])
        return d_gauss, d_feats, None


def rasterize_tiles(proj: Projected, opacities: Tensor, features: Tensor, width: int, height: int,
                    tile_size: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    """Composite features [C, N, D] of Gaussians with activated opacities [N].
    Returns the image [C, H, W, D], alpha [C, H, W, 1] and which Gaussians reached a tile [C, N]."""
    C, N = proj.depths.shape
    plan = plan_tiles(proj, opacities, width, height, tile_size)
    log_o = torch.log(opacities.clamp(min=1e-30)).expand(C, N)
    gauss = torch.cat([proj.means2d, proj.conics, log_o[..., None]], -1).view(C * N, 6)
    ones = torch.ones_like(features[..., :1])  # alpha rides along as one more channel
    feats = torch.cat([features, ones], -1).view(C * N, features.shape[-1] + 1)
    out = _TileComposite.apply(gauss, feats, plan)  # [C * tiles, P, D + 1]
    ts, n_tx, n_ty = tile_size, plan.tiles_x, plan.tiles_y
    img = out.view(C, n_ty, n_tx, ts, ts, -1).permute(0, 1, 3, 2, 4, 5).reshape(C, n_ty * ts, n_tx * ts, -1)
    img = img[:, :height, :width]
    drawn = torch.zeros(C * N, dtype=torch.bool, device=features.device)
    drawn[plan.rows] = True
    return img[..., :-1], img[..., -1:], drawn.view(C, N)


def rasterize_dense(proj: Projected, opacities: Tensor, features: Tensor, width: int,
                    height: int) -> tuple[Tensor, Tensor]:
    """Slow reference: every pixel against every visible Gaussian, in depth order,
    stopping where gsplat does. Returns the image [C, H, W, D] and alpha [C, H, W, 1]."""
    C, N = proj.depths.shape
    y, x = torch.meshgrid(torch.arange(height, dtype=features.dtype) + 0.5,
                          torch.arange(width, dtype=features.dtype) + 0.5, indexing="ij")
    pix = torch.stack([x.reshape(-1), y.reshape(-1)], -1).to(features.device)  # [HW, 2]
    images, alphas = [], []
    for ci in range(C):
        idx = proj.visible[ci].nonzero().squeeze(1)
        idx = idx[proj.depths[ci, idx].argsort()]
        d = pix[:, None, :] - proj.means2d[ci, idx][None]  # [HW, n, 2]
        a, b, c = proj.conics[ci, idx].unbind(-1)
        q = a * d[..., 0] ** 2 + 2.0 * b * d[..., 0] * d[..., 1] + c * d[..., 1] ** 2
        alpha = (opacities[idx] * torch.exp(-0.5 * q)).clamp(max=ALPHA_MAX)
        alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
        after = torch.cumprod(1.0 - alpha.detach(), 1)  # transmittance after each Gaussian, non-increasing
        alpha = torch.where(after > T_STOP, alpha, torch.zeros_like(alpha))  # stopped at or before it
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], 1), 1)
        w = alpha * trans
        images.append((w @ features[ci, idx]).view(height, width, -1))
        alphas.append(w.sum(1).view(height, width, 1))
    return torch.stack(images), torch.stack(alphas)


# ---------------------------------------------------------------- the device switch
@dataclass
class SplatResult:
    image: Tensor  # [C, H, W, D] composited features (no background)
    alpha: Tensor  # [C, H, W, 1]
    means2d: Tensor  # [C, N, 2] projected centres; its .grad drives densification
    drawn: Tensor  # [C, N] bool, the Gaussian reached some pixel


def splat(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, features: Tensor, cams: Cameras,
          eps2d: float = 0.3, near_plane: float = 0.01, tile_size: int = 4) -> SplatResult:
    """Render per-camera features [C, N, D] of Gaussians (means [N, 3], quats [N, 4],
    activated scales [N, 3] and opacities [N]) with gsplat on CUDA, the tile rasteriser elsewhere."""
    viewmats, Ks = opencv_viewmats(cams.c2w.to(means.dtype)), intrinsics(cams).to(means.dtype)
    if means.is_cuda:
        return _splat_gsplat(means, quats, scales, opacities, features, viewmats, Ks, cams.width, cams.height,
                             eps2d, near_plane)
    proj = project(means, quats, scales, viewmats, Ks, cams.width, cams.height, eps2d, near_plane)
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    image, alpha, drawn = rasterize_tiles(proj, opacities, features, cams.width, cams.height, tile_size)
    return SplatResult(image, alpha, proj.means2d, drawn)


def _splat_gsplat(means, quats, scales, opacities, features, viewmats, Ks, width, height, eps2d,
                  near_plane) -> SplatResult:
    """gsplat's fused CUDA rasteriser (never called on CPU tensors)."""
    from gsplat import rasterization

    image, alpha, meta = rasterization(
        means, quats, scales, opacities, features, viewmats, Ks, width, height,
        near_plane=near_plane, eps2d=eps2d, sh_degree=None, packed=False, render_mode="RGB",
        rasterize_mode="classic", backgrounds=None,
    )
    means2d = meta["means2d"]  # [C, N, 2]
    if means2d.requires_grad:
        means2d.retain_grad()
    drawn = (meta["radii"] > 0).all(-1) if meta["radii"].dim() == 3 else meta["radii"] > 0
    return SplatResult(image, alpha, means2d, drawn)
