"""Score distillation under Zero-1-to-3 / Stable Zero123 (arXiv 2303.11328): image-to-3D.

The prior sees each render's noisy latent beside the reference image's latent, and
cross-attends to cc_projection([CLIP(reference), pose]), where pose is the camera of the
render relative to the reference camera (`relative_pose`). Every render gets the SDS update

    g = w(t) (eps_hat - eps),   eps_hat = eps_u + s (eps_c - eps_u)

CFG convention: the diffusers form above (threestudio's and DreamGaussian's for Zero123
too, s = 5 there), so s = 1 is the plain conditional prediction. The unconditional branch
zeroes both the reference latent and the projected image-and-camera token, as those do.

The trainer hands the reference once, before the stage trains (`set_reference`); the rule
needs a Zero-1-to-3 prior (`--model FOLDER`) and reads no text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from dream3d.errors import UserError
from dream3d.guidance import common
from dream3d.guidance.base import Guidance
from dream3d.guidance.timesteps import TimestepConfig, build_timesteps
from dream3d.noise import NoiseConfig, build_noise_source
from dream3d.priors.base import DiffusionPrior
from dream3d.types import Cameras, GuidanceOutput, RenderOutput

PoseKind = Literal["zero123", "stable-zero123"]


@dataclass
class Zero123Config:
    guidance_scale: float = 5.0
    """CFG scale s in eps_u + s (eps_c - eps_u) over the image conditioning (threestudio and DreamGaussian: 5)."""
    pose: PoseKind = "zero123"
    """Fourth camera number: 'zero123' the distance change (Zero-1-to-3, XL), 'stable-zero123' the reference polar angle."""
    white_background: bool = True
    """Put the reference object on white (mask outside it), the background Zero-1-to-3 was trained on."""
    weighting: common.Weighting = "sds"
    """w(t): 'sds' = sigma_t^2, 'uniform' = 1, 'fantasia' = alpha_t sigma_t^2, 'sigma_over_alpha'."""
    grad_clip: float | None = None
    """Clamp every element of g to [-grad_clip, grad_clip] (None: no clamp)."""
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    """The t schedule: random t in [0.02, 0.98] T per view by default."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """The noise source: fresh i.i.d. N(0, I) each step by default."""


def relative_pose(cams: Cameras, ref: Cameras, kind: PoseKind = "zero123") -> Tensor:
    """The four camera numbers [B, 4] of each view in `cams` relative to the reference camera `ref` [1].

    Zero-1-to-3 measures the polar angle from the up axis (polar = 90 - elevation) and the
    azimuth counter-clockwise seen from above; dream3d's azimuth (0 on +Z, 90 on +X, +Y up) is a
    right-handed turn about the up axis too, so its differences carry over unchanged:
    [rad(polar - polar_ref), sin(rad(az - az_ref)), cos(rad(az - az_ref)), r - r_ref], or with
    'stable-zero123' the reference's own polar angle rad(90 - el_ref) last (threestudio's form)."""
    el, az, dist = (v.to(torch.float32) for v in (cams.elevation, cams.azimuth, cams.distance))
    ref_el, ref_az, ref_dist = (v.to(el.device, torch.float32) for v in (ref.elevation, ref.azimuth, ref.distance))
    d_polar = torch.deg2rad((90.0 - el) - (90.0 - ref_el))
    d_az = torch.deg2rad(az - ref_az)
    if kind == "zero123":
        last = dist - ref_dist
    elif kind == "stable-zero123":
        last = torch.deg2rad(90.0 - ref_el).expand_as(el)
    else:
        raise ValueError(f"unknown pose kind {kind!r}")
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), last], dim=-1)


class Zero123Guidance(Guidance):
    takes_reference_image = True

    def __init__(self, prior: DiffusionPrior, cfg: Zero123Config | None = None, timesteps=None, noise_source=None):
        """`timesteps`: any object with `sample(batch, progress, generator)`; `noise_source`: any
        `source(out, cams, shape, generator)`; both built from `cfg` by default."""
        self.cfg = c = cfg or Zero123Config()
        self.check_prior(prior, c)
        self.prior = prior
        self.timesteps = timesteps or build_timesteps(c.timesteps, prior.num_train_timesteps)
        self.noise_source = noise_source or build_noise_source(c.noise)
        self.alphas_cumprod = prior.alphas_cumprod  # [T] float32
        self.reference: tuple[Tensor, Tensor, Cameras] | None = None  # (clip [1, 1, E], latent [1, C, h, w], camera)

    @classmethod
    def check_prior(cls, prior, cfg) -> None:
        from dream3d.priors.zero123 import Zero123Prior

        if not isinstance(prior, Zero123Prior):
            raise UserError(f"guidance zero123 needs a Zero-1-to-3 / Stable Zero123 folder (diffusers layout with "
                            f"cc_projection/ and image_encoder/) passed with --model, and '{prior.name}' is a "
                            "text-to-image prior; use sds for it")

    def modules(self) -> dict:
        return {"zero123_noise": self.noise_source}  # a noise field (consistent-flow, ...) is part of the run's state

    def set_reference(self, rgb: Tensor, mask: Tensor, camera: Cameras) -> None:
        """The image every render is scored against: rgb [1, H, W, 3] in [0, 1], mask [1, H, W, 1]
        (1 = object), taken from `camera` [1]. Embedded once here; called before the stage trains."""
        if rgb.dim() != 4 or rgb.shape[0] != 1 or rgb.shape[-1] != 3 or mask.shape != (*rgb.shape[:3], 1):
            raise ValueError(f"reference rgb must be [1, H, W, 3] and mask [1, H, W, 1], "
                             f"got {tuple(rgb.shape)} and {tuple(mask.shape)}")
        if camera.batch_size != 1:
            raise ValueError(f"the reference camera must be one camera, got {camera.batch_size}")
        rgb, mask = rgb.float(), mask.float().clamp(0.0, 1.0)
        if self.cfg.white_background:
            rgb = rgb * mask + (1.0 - mask)
        clip, latent = self.prior.embed_reference(rgb.clamp(0.0, 1.0))
        self.reference = (clip, latent, camera.to(self.prior.device))

    def __call__(self, out: RenderOutput, cams: Cameras, prompt, progress: float,
                 noise: Tensor | None = None, generator: torch.Generator | None = None) -> GuidanceOutput:
        """`prompt` is not read (the reference image is the condition); `noise`: eps [B, C, h, w] to use."""
        if self.reference is None:
            raise UserError("guidance zero123 scores renders against a reference image, and none was given: "
                            "pass one with --image PATH")
        c, prior = self.cfg, self.prior
        clip, latent, ref_cam = self.reference
        x = prior.encode(out.rgb).float()  # [B, C, h, w], differentiable
        B = x.shape[0]
        t = self.timesteps.sample(B, progress, generator).to(x.device)
        eps = common.draw_noise(noise, self.noise_source, out, cams, x, generator)
        with torch.no_grad():
            a_t = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            x_t = common.add_noise(x, eps, a_t)
            cond = prior.condition(clip, relative_pose(cams, ref_cam, c.pose))  # [B, 1, D]
            image = latent.expand(B, *latent.shape[1:])
            # [conditional; unconditional] in one UNet call; unconditional = no image, no camera
            eps_c, eps_u = prior.predict_eps(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                             torch.cat([cond, torch.zeros_like(cond)]),
                                             image_latents=torch.cat([image, torch.zeros_like(image)])).chunk(2)
            eps_hat = eps_u + c.guidance_scale * (eps_c - eps_u)
            g = common.clip(common.weight(c.weighting, a_t) * (eps_hat - eps), c.grad_clip)
        logs = {"grad_norm": float(g.norm()), "t": float(t.float().mean())}
        return GuidanceOutput(common.distillation_loss(x, g), logs)
