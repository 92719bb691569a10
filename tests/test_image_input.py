import math

import numpy as np
import pytest
import torch
from PIL import Image

from dream3d.errors import UserError
from dream3d.guidance.reference_view import (
    ReferenceViewConfig,
    masked_psnr,
    ramp,
    reference_camera,
    reference_losses,
    weighted_reference_loss,
)
from dream3d.image_input import load_reference_image, recentre


def _disc(size=64, radius=14, centre=(32, 32), bg=(128, 128, 128), fg=(220, 40, 30)):
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = bg
    img[inside] = fg
    return img, inside


def _save(tmp_path, arr, name="ref.png", **kw):
    path = tmp_path / name
    Image.fromarray(arr).save(path, **kw)
    return path


def test_disc_on_grey_background(tmp_path):
    img, inside = _disc()
    ref = load_reference_image(_save(tmp_path, img))
    assert ref.source == "background"
    assert np.array_equal(ref.mask.numpy() > 0.5, inside)
    assert ref.background == pytest.approx((128 / 255,) * 3)
    assert ref.rgb.shape == (64, 64, 3) and ref.mask.shape == (64, 64)


def test_rgba_uses_alpha(tmp_path):
    img, inside = _disc()
    alpha = np.where(inside, 255, 0).astype(np.uint8)
    alpha[0, 0] = 128  # a soft edge pixel survives as a fractional mask
    ref = load_reference_image(_save(tmp_path, np.dstack([img, alpha])))
    assert ref.source == "alpha"
    assert torch.allclose(ref.mask, torch.from_numpy(alpha / 255.0).float())
    # Transparent pixels are composited onto white.
    assert torch.allclose(ref.rgb[5, 5], torch.ones(3))


def test_noisy_uniform_background_within_tolerance(tmp_path):
    img, inside = _disc()
    rng = np.random.default_rng(0)
    noise = rng.integers(-10, 11, size=img.shape)  # |10/255| < 0.08
    noisy = np.where(inside[..., None], img, np.clip(img.astype(int) + noise, 0, 255)).astype(np.uint8)
    ref = load_reference_image(_save(tmp_path, noisy))
    assert np.array_equal(ref.mask.numpy() > 0.5, inside)


def test_jpeg_round_trip(tmp_path):
    img, inside = _disc()
    ref = load_reference_image(_save(tmp_path, img, "ref.jpg", quality=90))
    wrong = (ref.mask.numpy() > 0.5) != inside
    yy, xx = np.mgrid[:64, :64]
    near_edge = np.abs(np.hypot(yy - 32, xx - 32) - 14) <= 2.5
    # JPEG ringing and chroma subsampling may only flip pixels at the disc's edge.
    assert not (wrong & ~near_edge).any()
    assert wrong.mean() < 0.05


def test_webp_reads(tmp_path):
    img, inside = _disc()
    ref = load_reference_image(_save(tmp_path, img, "ref.webp", lossless=True))
    assert np.array_equal(ref.mask.numpy() > 0.5, inside)


def test_resolution_pads_to_square(tmp_path):
    img, _ = _disc(size=64)
    wide = np.concatenate([img, img[:, :32]], axis=1)  # 64 x 96
    ref = load_reference_image(_save(tmp_path, wide), resolution=48)
    assert ref.size == (48, 48)


def _assert_refused(path, needle):
    with pytest.raises(UserError) as info:
        load_reference_image(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert "alpha channel" in msg and "plain background" in msg
    assert needle in msg


def test_refusals(tmp_path):
    _assert_refused(tmp_path / "missing.png", "no such file")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x00not an image at all" * 10)
    _assert_refused(garbage, "not a readable")
    _assert_refused(_save(tmp_path, np.full((16, 16, 3), 128, np.uint8), "tiny.png"), "too small")
    clear = np.zeros((64, 64, 4), np.uint8)
    _assert_refused(_save(tmp_path, clear, "clear.png"), "fully transparent")
    noise = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3)).astype(np.uint8)
    _assert_refused(_save(tmp_path, noise, "photo.png"), "plain background")
    _assert_refused(_save(tmp_path, np.full((64, 64, 3), 90, np.uint8), "flat.png"), "covers nothing")
    full_alpha = np.dstack([np.full((64, 64, 3), 90, np.uint8), np.full((64, 64), 255, np.uint8)])
    full_alpha[0, 0, 3] = 100  # real transparency in one pixel, yet everything else is object
    _assert_refused(_save(tmp_path, full_alpha, "all.png"), "whole image")


def test_recentre_fills_fraction_and_keeps_aspect(tmp_path):
    img = np.full((64, 64, 3), 128, np.uint8)
    img[4:14, 40:60] = (10, 200, 10)  # a 10 x 20 box off in a corner
    ref = recentre(load_reference_image(_save(tmp_path, img)), fill=0.8, resolution=100)
    assert ref.size == (100, 100)
    m = ref.mask > 0.5
    rows = torch.nonzero(m.any(dim=1)).flatten()
    cols = torch.nonzero(m.any(dim=0)).flatten()
    height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    assert width == 80 and height == 40  # longer side fills 0.8, aspect 2:1 kept
    assert abs((rows[0] + rows[-1]) / 2 - 49.5) <= 1 and abs((cols[0] + cols[-1]) / 2 - 49.5) <= 1
    assert ref.rgb[0, 0].tolist() == pytest.approx([128 / 255] * 3)  # background colour outside


def test_reference_losses_by_hand():
    render = torch.tensor([[[[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0], [0.2, 0.2, 0.2]]]])
    alpha = torch.tensor([[[[1.0], [0.5]], [[0.0], [1.0]]]])
    ref_rgb = torch.tensor([[[0.3, 0.3, 0.3], [0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0], [0.2, 0.2, 0.2]]])
    ref_mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = reference_losses(render, alpha, ref_rgb, ref_mask)
    # Over the two mask pixels: squared errors 0.04 and 0; background errors ignored.
    assert out["rgb"].item() == pytest.approx(0.02)
    # Alpha vs mask: errors 0, 0.5, 0, 0 -> (0.25) / 4.
    assert out["mask"].item() == pytest.approx(0.0625)
    cfg = ReferenceViewConfig(rgb_weight=10.0, mask_weight=2.0, ramp_start=0.0, ramp_end=0.5)
    total = weighted_reference_loss(out, cfg, progress=0.25)
    assert total.item() == pytest.approx(0.5 * (10 * 0.02 + 2 * 0.0625))


def test_losses_have_gradients():
    render = torch.rand(2, 4, 4, 3, requires_grad=True)
    alpha = torch.rand(2, 4, 4, 1, requires_grad=True)
    out = reference_losses(render, alpha, torch.rand(4, 4, 3), (torch.rand(4, 4) > 0.5).float())
    (out["rgb"] + out["mask"]).backward()
    assert render.grad is not None and alpha.grad is not None


def test_ramp():
    assert ramp(0.0, 0.1, 0.3) == 0.0
    assert ramp(0.1, 0.1, 0.3) == 0.0
    assert ramp(0.2, 0.1, 0.3) == pytest.approx(0.5)
    assert ramp(0.3, 0.1, 0.3) == 1.0
    assert ramp(0.9, 0.1, 0.3) == 1.0
    assert ramp(0.0, 0.0, 0.0) == 1.0  # no ramp: full weight at once


def test_masked_psnr_by_hand():
    ref = torch.full((2, 2, 3), 0.5)
    render = (ref + 0.1)[None]
    render[0, 1, 1] = 0.0  # outside the mask: must not count
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert masked_psnr(render, ref, mask) == pytest.approx(20.0)
    assert masked_psnr(ref[None], ref, mask) == math.inf


def test_reference_camera_front():
    cam = reference_camera(ReferenceViewConfig(distance=2.5), width=32, height=32)
    eye = cam.c2w[0, :3, 3]
    assert torch.allclose(eye, torch.tensor([0.0, 0.0, 2.5]), atol=1e-6)
    # The camera looks down its -Z, which must point at the origin.
    forward = -cam.c2w[0, :3, 2]
    assert torch.allclose(forward, -eye / eye.norm(), atol=1e-6)
    assert cam.azimuth.item() == 0.0 and cam.width == 32
