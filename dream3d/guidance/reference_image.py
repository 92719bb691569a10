"""Image-to-3D (`generate --image`): the input photo fixes one view, score distillation the rest.

A `ReferenceView` is one of the trainer's "inputs other than text", next to the shape guide:
every `image.every` steps it renders the reference camera (the front, from `image.*`) and returns

    ramp(progress) * (rgb_weight * masked colour MSE + mask_weight * silhouette MSE)

(DreamGaussian's reference terms, from `reference_view`). The run folder keeps its own copy
of the photo, so `--resume` and `dream3d export` need nothing else. A stage's representation
whose surface is the user's own mesh (`source_mesh`: `dream3d texture`) cannot follow the
photo's silhouette and is refused; so is a text-guided run without a prompt, and a guidance
that needs the photo (`takes_reference_image`) in a run without one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dream3d.errors import UserError
from dream3d.guidance.reference_view import (ReferenceViewConfig, masked_psnr, ramp, reference_camera,
                                             reference_losses, weighted_reference_loss)
from dream3d.image_input import load_reference_image, recentre

SAVED_STEM = "reference-image"  # the photo's copy in a run folder: reference-image<suffix>


@dataclass
class ImageConfig:
    path: str = ""
    """The input photo (`--image`); '' = none. A run folder's config names its own copy, relative to the folder."""
    elevation: float = 0.0
    """Elevation of the reference camera in degrees (the photo is taken level by default)."""
    azimuth: float = 0.0
    """Azimuth of the reference camera in degrees; 0 is the front (camera on +Z)."""
    distance: float = 2.9
    """Distance of the reference camera from the origin (the turntable's)."""
    fov: float = 45.0
    """Vertical field of view of the reference camera in degrees (the turntable's)."""
    resolution: int = 64
    """Side of the reference render (and of the photo, resized to it) in pixels."""
    fill: float = 0.0
    """Recentre the object so its longer side spans this share of the frame (DreamGaussian uses 0.8);
    0 keeps the photo's framing, for a photo taken with the reference camera."""
    tolerance: float = 0.08
    """Largest per-channel difference from the border colour that counts as background (no alpha)."""
    every: int = 1
    """Render the reference view every N steps."""
    rgb_weight: float = 10000.0
    """Weight of the masked colour MSE at the reference view (DreamGaussian's)."""
    mask_weight: float = 1000.0
    """Weight of the silhouette MSE between the rendered alpha and the mask (DreamGaussian's)."""
    ramp_start: float = 0.0
    """Stage progress (0..1) at which the reference terms start ramping in."""
    ramp_end: float = 0.0
    """Stage progress at which they reach full weight (DreamGaussian ramps over the whole run: 1)."""

    def __post_init__(self):
        for key in ("distance", "resolution", "every"):
            if not getattr(self, key) > 0:
                raise UserError(f"image.{key} must be positive, got {getattr(self, key)}")
        if not 1.0 <= self.fov < 180.0:
            raise UserError(f"image.fov must be between 1 and 180 degrees, got {self.fov}")
        if not 16 <= self.resolution <= 1024:
            raise UserError(f"image.resolution must be between 16 and 1024, got {self.resolution}")
        if not 0.0 <= self.fill <= 1.0:
            raise UserError(f"image.fill must be in [0, 1], got {self.fill}")
        if not (self.rgb_weight >= 0 and self.mask_weight >= 0):
            raise UserError("image.rgb_weight and image.mask_weight must be zero or positive")
        if not 0.0 <= self.ramp_start <= 1.0 or not 0.0 <= self.ramp_end <= 1.0:
            raise UserError("image.ramp_start and image.ramp_end must be in [0, 1]")

    def view(self) -> ReferenceViewConfig:
        return ReferenceViewConfig(self.rgb_weight, self.mask_weight, self.ramp_start, self.ramp_end,
                                   self.elevation, self.azimuth, self.distance, self.fov)


def headlight(cams) -> Tensor:
    """[B, 3] unit vectors from the origin towards each camera: the turntable's and eval's light."""
    eye = cams.c2w[:, :3, 3]
    return eye / eye.norm(dim=-1, keepdim=True)


class ReferenceView:
    """The photo at the reference camera and its loss on a representation's render."""

    name = "reference"
    weight = 1.0  # the terms carry their own weights (image.rgb_weight, image.mask_weight)

    def __init__(self, cfg: ImageConfig, path: Path):
        self.cfg, self.path = cfg, Path(path)
        # missing, unreadable, too small, no mask: one line each
        if cfg.fill > 0:
            self.image = recentre(load_reference_image(self.path, tolerance=cfg.tolerance), cfg.fill, cfg.resolution)
        else:  # padded to a square and resized, keeping the photo's framing
            self.image = load_reference_image(self.path, resolution=cfg.resolution, tolerance=cfg.tolerance)
        self.camera = reference_camera(cfg.view(), cfg.resolution, cfg.resolution)  # [1]

    @property
    def rgb(self) -> Tensor:
        """[1, H, W, 3] in [0, 1] (the `set_reference` layout)."""
        return self.image.rgb[None]

    @property
    def mask(self) -> Tensor:
        """[1, H, W, 1] in [0, 1]."""
        return self.image.mask[None, ..., None]

    def save(self, run_dir: Path) -> str:
        """Copy the photo as given into the run folder; its name there."""
        from dream3d.atomic import write_bytes_atomic

        name = SAVED_STEM + (self.path.suffix.lower() or ".png")
        write_bytes_atomic({Path(run_dir) / name: self.path.read_bytes()}, what="copying the reference image")
        return name

    def render(self, rep) -> Tensor:
        """rgb [1, H, W, 3] and alpha [1, H, W, 1] of `rep` at the reference camera, lit like the turntable."""
        held = next(iter(rep.parameters()), None)
        device = (held if held is not None else next(iter(rep.buffers()), torch.zeros(()))).device
        cams = self.camera.to(device)
        bg = torch.tensor([self.image.background], dtype=torch.float32, device=device)  # [1, 3]
        out = rep.render(cams, bg, shading="diffuse", light_dir=headlight(cams))
        return out.rgb, out.alpha

    def __call__(self, rep, generator: torch.Generator, step: int = 0, progress: float = 0.0) -> Tensor | None:
        """The ramped reference loss; None on steps it skips (image.every) or before its ramp starts."""
        view = self.cfg.view()
        if step % self.cfg.every or ramp(progress, view.ramp_start, view.ramp_end) == 0.0:
            return None  # no render on a step whose terms weigh nothing
        rgb, alpha = self.render(rep)
        losses = reference_losses(rgb, alpha, self.rgb, self.mask)
        return weighted_reference_loss(losses, view, progress)

    @torch.no_grad()
    def measure(self, asset) -> dict:
        """Masked PSNR (dB) and masked L1 of `asset`'s render at the reference camera against the photo."""
        rgb, _ = self.render(asset)
        rgb = rgb.float().cpu()
        m = self.mask
        l1 = float(((rgb - self.rgb).abs().mean(dim=-1, keepdim=True) * m).sum() / m.sum().clamp_min(1e-8))
        psnr = masked_psnr(rgb, self.rgb, m)
        return {"psnr_db": round(psnr, 2) if math.isfinite(psnr) else None, "l1": round(l1, 4),
                "resolution": self.cfg.resolution}


def image_conditioned(stage) -> bool:
    from dream3d import registry

    return registry.lookup("guidance", stage.guidance.name).cls().takes_reference_image


def reference_for(cfg, run_dir: Path | None) -> ReferenceView | None:
    """The run's reference view (None without `--image`), after every refusal that can be said before
    training: a guidance that needs a photo without one, a prompt-less text-guided run, a
    representation that cannot follow a silhouette, a bad photo. `run_dir`: a resumed run's folder."""
    from dream3d import registry

    needs = [s for s in cfg.stages if image_conditioned(s)]
    if not cfg.image.path:
        if needs:
            raise UserError(f"stage '{needs[0].name}' uses the guidance '{needs[0].guidance.name}', which is "
                            "conditioned on an input image: give one with --image PHOTO.png")
        return None
    if not cfg.prompt.strip():
        text = [s for s in cfg.stages if not image_conditioned(s)]
        if text:
            raise UserError(f"--image without a prompt: stage '{text[0].name}' uses the text-guided guidance "
                            f"'{text[0].guidance.name}', so say what the photo shows, e.g. \"a red cube\"")
    for stage in cfg.stages:
        rep_name = stage.representation.name
        if registry.lookup("representation", rep_name).cls().has("source_mesh"):
            raise UserError(f"--image: stage '{stage.name}' uses the representation '{rep_name}', whose surface "
                            "is a mesh given as is, so it cannot follow the photo's silhouette")
    path = Path(cfg.image.path)
    if run_dir is not None and not path.is_absolute():
        path = Path(run_dir) / path
    return ReferenceView(cfg.image, path)
