"""Reference images for image-to-3D: load a picture and find the object's mask.

The mask comes from the alpha channel when the image has real transparency,
otherwise from a plain background estimated from the image border. Anything
else (a photo with a busy background) is refused rather than guessed at, since
a wrong mask silently teaches the 3D model the background.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from dream3d.errors import UserError

MIN_SIDE = 32
"""Smallest accepted image side in pixels; below it there is no object to fit."""
BORDER_UNIFORM_FRACTION = 0.9
"""Share of border pixels that must match the median border colour."""
MIN_COVER = 0.001
"""Object (and background) must each cover at least this share of the image."""
HOW_TO_MASK = "save it with an alpha channel, or on a plain background"


@dataclass
class ReferenceImage:
    """An object photo with its mask, as float tensors in [0, 1]."""

    rgb: torch.Tensor  # [H, W, 3]; transparent pixels are filled with `background`
    mask: torch.Tensor  # [H, W]; 1 = object
    source: str  # "alpha" or "background": where the mask came from
    background: tuple[float, float, float]  # colour behind the object

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.mask.shape[0]), int(self.mask.shape[1])


def _refuse(path: Path, why: str) -> UserError:
    return UserError(f"reference image {path}: {why}; {HOW_TO_MASK}")


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise _refuse(path, "no such file")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _refuse(path, f"not a readable PNG/JPEG/WebP image ({type(exc).__name__})") from None
    if min(img.size) < MIN_SIDE:
        raise _refuse(path, f"{img.size[0]}x{img.size[1]} is too small (at least {MIN_SIDE} px a side)")
    return img


def _border(arr: np.ndarray) -> np.ndarray:
    """The one-pixel frame of an [H, W, C] array as [N, C]."""
    return np.concatenate([arr[0], arr[-1], arr[1:-1, 0], arr[1:-1, -1]], axis=0)


def _mask_from_background(path: Path, rgb: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    border = _border(rgb)
    colour = np.median(border, axis=0)
    near = np.abs(border - colour).max(axis=1) <= tolerance
    if near.mean() < BORDER_UNIFORM_FRACTION:
        raise _refuse(
            path,
            f"no transparency and no plain background ({near.mean():.0%} of the border matches its median colour)",
        )
    mask = (np.abs(rgb - colour).max(axis=2) > tolerance).astype(np.float32)
    return mask, colour


def load_reference_image(path: str | Path, resolution: int | None = None, tolerance: float = 0.08) -> ReferenceImage:
    """Read an image and its object mask; raises UserError when no mask can be found.

    `tolerance` is the largest per-channel difference (in [0, 1]) from the
    border colour that still counts as background. With `resolution`, the
    image is padded to a square (centred) and resized to resolution x resolution.
    """
    path = Path(path)
    img = _open(path)
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if alpha.max() <= 1.0 / 255.0:
        raise _refuse(path, "the image is fully transparent")
    # "Real" transparency: some pixel clearly below opaque (not a stray 254).
    has_alpha = alpha.min() < 0.95
    if has_alpha:
        source, mask, bg = "alpha", alpha, np.ones(3, dtype=np.float32)
        # Colour under transparent pixels is arbitrary; composite onto white.
        rgb = rgb * alpha[..., None] + bg * (1.0 - alpha[..., None])
    else:
        source = "background"
        mask, bg = _mask_from_background(path, rgb, tolerance)
    covered = float((mask > 0.5).mean())
    if covered < MIN_COVER:
        raise _refuse(path, "the mask covers nothing (no object found)")
    if covered > 1.0 - MIN_COVER:
        raise _refuse(path, "the mask covers the whole image (no background found)")
    ref = ReferenceImage(
        rgb=torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)),
        mask=torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)),
        source=source,
        background=tuple(float(c) for c in bg),
    )
    return _square(ref, resolution) if resolution is not None else ref


def _resize(ref: ReferenceImage, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Area-style (antialiased) resize of rgb and mask."""
    stack = torch.cat([ref.rgb, ref.mask[..., None]], dim=-1).permute(2, 0, 1)[None]
    out = F.interpolate(stack, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    out = out[0].permute(1, 2, 0).clamp(0.0, 1.0)
    return out[..., :3], out[..., 3]


def _paste(ref: ReferenceImage, rgb: torch.Tensor, mask: torch.Tensor, size: int, top: int, left: int) -> ReferenceImage:
    canvas = torch.tensor(ref.background, dtype=torch.float32).expand(size, size, 3).clone()
    canvas_mask = torch.zeros(size, size)
    h, w = mask.shape
    canvas[top : top + h, left : left + w] = rgb
    canvas_mask[top : top + h, left : left + w] = mask
    return ReferenceImage(canvas, canvas_mask, ref.source, ref.background)


def _square(ref: ReferenceImage, resolution: int) -> ReferenceImage:
    h, w = ref.size
    side = max(h, w)
    squared = _paste(ref, ref.rgb, ref.mask, side, (side - h) // 2, (side - w) // 2)
    rgb, mask = _resize(squared, resolution, resolution)
    return ReferenceImage(rgb, mask, ref.source, ref.background)


def recentre(ref: ReferenceImage, fill: float = 0.8, resolution: int = 256) -> ReferenceImage:
    """Crop to the mask's bounding box and centre it on a square canvas so its
    longer side spans `fill` of the frame (DreamGaussian-style preprocessing),
    keeping the object's aspect ratio. The reference camera then sees the
    object at a predictable size whatever the photo's framing was."""
    if not 0.0 < fill <= 1.0:
        raise UserError(f"recentre fill must be in (0, 1], got {fill}")
    rows = torch.nonzero((ref.mask > 0.5).any(dim=1)).flatten()
    cols = torch.nonzero((ref.mask > 0.5).any(dim=0)).flatten()
    if rows.numel() == 0:
        raise UserError(f"reference image has an empty mask; {HOW_TO_MASK}")
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = ReferenceImage(ref.rgb[top:bottom, left:right], ref.mask[top:bottom, left:right], ref.source, ref.background)
    h, w = crop.size
    scale = fill * resolution / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    rgb, mask = _resize(crop, new_h, new_w)
    return _paste(ref, rgb, mask, resolution, (resolution - new_h) // 2, (resolution - new_w) // 2)
