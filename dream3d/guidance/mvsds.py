"""Multi-view score distillation (MVDream, arXiv 2308.16512) under a joint-view prior.

The trainer renders each sampled camera as a group of `views` cameras `azimuth_step`
apart (`view_group`): one random elevation, distance and field of view per group and
a random starting azimuth, laid out group-major. The prior denoises every group
jointly (its self-attention spans the group's views, each view keeps its own camera)
at one t per group, and every view receives the SDS update

    g_i = w(t) (eps_hat_i - eps_i),   eps_hat = eps_u + s (eps_c - eps_u)

with eps drawn by the noise source for all views at once. CFG convention: the
diffusers form above (MVDream's too), so s = 1 is the plain conditional prediction.
By default every view reads the plain prompt, since the camera already tells the
prior which side it sees (MVDream); `view_prompts` adds each view's suffix.

Only a prior with joint views (`prior.joint_views`: an embedded prior trained with
`dream3d prior train --views 4`) can do this; any other is refused before training.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dream3d.errors import UserError
from dream3d.guidance import common
from dream3d.guidance.base import Guidance
from dream3d.guidance.prompt import PromptProcessor
from dream3d.guidance.timesteps import TimestepConfig, build_timesteps
from dream3d.guidance.view_groups import ViewGroup, check_groups
from dream3d.noise import NoiseConfig, build_noise_source
from dream3d.priors.base import DiffusionPrior
from dream3d.types import Cameras, GuidanceOutput, RenderOutput


@dataclass
class MVSDSConfig:
    guidance_scale: float = 20.0
    """CFG scale s in eps_u + s (eps_c - eps_u); 20 as SDS in the CPU presets (MVDream used about 50 on SD)."""
    views: int = 4
    """Views per group, denoised jointly (the joint prior was trained on 4)."""
    azimuth_step: float = 90.0
    """Azimuth between consecutive views of a group, degrees."""
    view_prompts: bool = False
    """Give each view its view-suffixed prompt ("..., back view"); off: the camera alone carries the view."""
    weighting: common.Weighting = "sds"
    """w(t): 'sds' = sigma_t^2, 'uniform' = 1, 'fantasia' = alpha_t sigma_t^2, 'sigma_over_alpha'."""
    grad_clip: float | None = None
    """Clamp every element of g to [-grad_clip, grad_clip] (None: no clamp)."""
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    """The t schedule, one t per group: random in [0.02, 0.98] T by default."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """The noise source (one draw covers every view of every group)."""


def require_joint_views(prior: DiffusionPrior, who: str) -> None:
    """UserError (one line) unless `prior` denoises groups of views jointly."""
    if not getattr(prior, "joint_views", False):
        raise UserError(f"{who} needs a prior that denoises several views of one object jointly, and '{prior.name}' "
                        "scores one view at a time; train one with `dream3d prior train --views 4` and pass its "
                        "prior/ folder with --model, or use another guidance (sds, csd)")


def joint_cfg_eps(prior: DiffusionPrior, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor,
                  camera: Tensor | None, scale: float, n_views: int) -> Tensor:
    """eps_u + s (eps_c - eps_u) for x_t [G*N, C, h, w] (G groups of N views, group-major), t [G*N],
    cond / uncond [G*N, L, D], camera [G*N, 16] or None, from one UNet call: [cond; uncond] stacks
    whole copies of the batch, so every group stays together and is denoised jointly."""
    eps = prior.predict_eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond]),
                            camera=None if camera is None else torch.cat([camera, camera]), n_views=n_views).float()
    eps_c, eps_u = eps.chunk(2)
    return eps_u + scale * (eps_c - eps_u)


class MVSDSGuidance(Guidance):
    def __init__(self, prior: DiffusionPrior, cfg: MVSDSConfig | None = None, timesteps=None, noise_source=None):
        """`timesteps`: any object with `sample(groups, progress, generator)`; `noise_source`: any
        `source(out, cams, shape, generator)`; both built from `cfg` by default."""
        self.cfg = c = cfg or MVSDSConfig()
        self.check_prior(prior, c)
        if c.views < 1:
            raise UserError(f"guidance.views must be at least 1, got {c.views}")
        self.prior = prior
        self.view_group = ViewGroup(c.views, c.azimuth_step)
        self.timesteps = timesteps or build_timesteps(c.timesteps, prior.num_train_timesteps)
        self.noise_source = noise_source or build_noise_source(c.noise)
        self.alphas_cumprod = prior.alphas_cumprod  # [T] float32

    @classmethod
    def check_prior(cls, prior, cfg) -> None:
        require_joint_views(prior, "mvsds")

    def modules(self) -> dict:
        return {"mvsds_noise": self.noise_source}  # a noise field (consistent-flow, ...) is part of the run's state

    def __call__(self, out: RenderOutput, cams: Cameras, prompt: PromptProcessor, progress: float,
                 noise: Tensor | None = None, generator: torch.Generator | None = None) -> GuidanceOutput:
        """`out`, `cams`: whole groups of `views` views, group-major; `noise`: eps [B, C, h, w] to use."""
        c, prior = self.cfg, self.prior
        groups = check_groups(cams, c.views, "mvsds")
        x = prior.encode(out.rgb).float()  # [B, C, h, w], differentiable
        t = self.timesteps.sample(groups, progress, generator).repeat_interleave(c.views).to(x.device)
        eps = common.draw_noise(noise, self.noise_source, out, cams, x, generator)
        with torch.no_grad():
            a_t = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            x_t = common.add_noise(x, eps, a_t)
            if c.view_prompts:
                cond, uncond = prompt(cams)
            else:
                cond = prompt.cond_plain.unsqueeze(0).expand(x.shape[0], *prompt.cond_plain.shape)
                uncond = prompt.uncond.unsqueeze(0).expand_as(cond)
            eps_hat = joint_cfg_eps(prior, x_t, t, cond, uncond, common.camera_features(prior, cams, x.device),
                                    c.guidance_scale, c.views)
            g = common.clip(common.weight(c.weighting, a_t) * (eps_hat - eps), c.grad_clip)
        logs = {"grad_norm": float(g.norm()), "t": float(t.float().mean())}
        return GuidanceOutput(common.distillation_loss(x, g), logs)
