"""Coupled score distillation (arXiv 2505.04262): a 2D prior and a multi-view prior together.

    L = L_2D(view c) + lambda * L_MV({c, c + 90, c + 180, c + 270})

The trainer renders each sampled camera as a group of `views` cameras `azimuth_step`
apart (`view_group`). L_2D is SDS or VSD (a full guidance object) on view 0 of every
group, with the view-dependent prompt; L_MV is SDS under a camera-conditioned prior
on all views of the group with one t shared by the group, the plain prompt (the
camera carries the view) and CFG `multiview_guidance_scale` (7.5). lambda is about
0.5 for coarse shape and 0.1 when refining texture.

The multi-view prior is the run's prior when it takes a camera (the embedded prior
on a CPU) or another camera-conditioned model named by `multiview_model`. When one
prior plays both parts, the 2D term sees it without its camera input (zeros = "no
camera", as it was trained with camera dropout), so the two terms stay distinct.
When the multi-view prior has joint views (`prior.joint_views`), it denoises each group
jointly, self-attention spanning the group's views (as `mvsds` does); otherwise it
scores each view on its own, under its camera.

CFG convention: eps_u + s (eps_c - eps_u) (diffusers) for both terms.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from dream3d.errors import UserError
from dream3d.guidance.base import Guidance
from dream3d.guidance import common
from dream3d.guidance.mvsds import joint_cfg_eps
from dream3d.guidance.prompt import PromptProcessor
from dream3d.guidance.sds import SDSConfig, SDSGuidance
from dream3d.guidance.timesteps import TimestepConfig, build_timesteps
from dream3d.guidance.view_groups import ViewGroup, check_groups, select_views
from dream3d.guidance.vsd import VSDConfig, VSDGuidance
from dream3d.noise import NoiseConfig, build_noise_source
from dream3d.priors.base import DiffusionPrior
from dream3d.types import Cameras, GuidanceOutput, RenderOutput


@dataclass
class CSDConfig:
    multiview_weight: float = 0.5
    """lambda: weight of the multi-view term (about 0.5 coarse, 0.1 texture refinement)."""
    multiview_guidance_scale: float = 7.5
    """CFG scale of the multi-view term."""
    multiview_model: str = ""
    """Camera-conditioned prior of the multi-view term ("" = the run's prior, which must take a camera)."""
    views: int = 4
    """Views per group for the multi-view term."""
    azimuth_step: float = 90.0
    """Azimuth between the views of a group, degrees."""
    two_d: Literal["sds", "vsd"] = "sds"
    """The 2D term: SDS, or VSD with its LoRA (then set train.lr.lora)."""
    sds: SDSConfig = field(default_factory=SDSConfig)
    """Options of the 2D term when two_d = sds."""
    vsd: VSDConfig = field(default_factory=VSDConfig)
    """Options of the 2D term when two_d = vsd."""
    weighting: common.Weighting = "sds"
    """w(t) of the multi-view term."""
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    """The t schedule of the multi-view term (one t per group)."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """The noise source of the multi-view term."""


class WithoutCamera:
    """A camera-conditioned prior seen as a text-only one: every call gets no camera."""

    takes_camera = False
    joint_views = False

    def __init__(self, prior: DiffusionPrior):
        self._prior = prior

    def __getattr__(self, name):
        return getattr(self._prior, name)

    def predict_eps(self, x_t: Tensor, t: Tensor, embeds: Tensor, camera: Tensor | None = None) -> Tensor:
        return self._prior.predict_eps(x_t, t, embeds, camera=None)


class CSDGuidance(Guidance):
    def __init__(self, prior: DiffusionPrior, cfg: CSDConfig | None = None,
                 multiview_prior: DiffusionPrior | None = None, timesteps=None, noise_source=None):
        self.cfg = c = cfg or CSDConfig()
        if multiview_prior is None and c.multiview_model:
            from dream3d.priors.loading import load_prior

            multiview_prior = load_prior(c.multiview_model, device=prior.device)
        self.mv_prior = multiview_prior or prior
        if not self.mv_prior.takes_camera:
            raise UserError(f"csd needs a camera-conditioned multi-view prior, and '{self.mv_prior.name}' takes no "
                            "camera; set guidance.multiview_model (e.g. tiny-shapes) or use another guidance")
        self.prior = prior
        two_d_prior = WithoutCamera(prior) if self.mv_prior is prior else prior
        self.two_d = (SDSGuidance(two_d_prior, c.sds) if c.two_d == "sds" else VSDGuidance(two_d_prior, c.vsd))
        self.view_group = ViewGroup(c.views, c.azimuth_step)
        self.timesteps = timesteps or build_timesteps(c.timesteps, self.mv_prior.num_train_timesteps)
        self.noise_source = noise_source or build_noise_source(c.noise)
        self.alphas_cumprod = self.mv_prior.alphas_cumprod
        self._mv_prompts: dict[tuple[str, str], PromptProcessor] = {}

    def param_groups(self) -> dict:
        return self.two_d.param_groups()

    def modules(self) -> dict:
        return {**self.two_d.modules(), "csd_noise": self.noise_source}

    def close(self) -> None:
        self.two_d.close()

    def _mv_prompt(self, prompt: PromptProcessor) -> PromptProcessor:
        """The prompt embedded by the multi-view prior (its own text encoder when it is another model)."""
        if self.mv_prior is self.prior:
            return prompt
        key = (prompt.prompt, prompt.negative_prompt)
        if key not in self._mv_prompts:
            self._mv_prompts[key] = PromptProcessor(self.mv_prior, *key, view_dependent=False)
        return self._mv_prompts[key]

    def multiview_loss(self, out: RenderOutput, cams: Cameras, prompt: PromptProcessor, progress: float,
                       noise: Tensor | None, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, g [B, C, h, w], t [B]) of the multi-view SDS term over whole groups."""
        c, mv = self.cfg, self.mv_prior
        groups = check_groups(cams, c.views, "csd")
        x = mv.encode(out.rgb).float()
        B, device = x.shape[0], x.device
        t = self.timesteps.sample(groups, progress, generator).repeat_interleave(c.views).to(device)
        eps = common.draw_noise(noise, self.noise_source, out, cams, x, generator)
        p = self._mv_prompt(prompt)
        with torch.no_grad():
            a_t = self.alphas_cumprod[t].view(B, 1, 1, 1)
            x_t = common.add_noise(x, eps, a_t)
            cond = p.cond_plain.unsqueeze(0).expand(B, *p.cond_plain.shape)
            uncond = p.uncond.unsqueeze(0).expand_as(cond)
            pose = cams.pose_features().to(device)
            if getattr(mv, "joint_views", False):  # the group denoised together, one t
                eps_hat = joint_cfg_eps(mv, x_t, t, cond, uncond, pose, c.multiview_guidance_scale, c.views)
            else:
                eps_hat = common.cfg_eps(mv, x_t, t, cond, uncond, pose, c.multiview_guidance_scale)
            g = common.weight(c.weighting, a_t) * (eps_hat - eps)
        return common.distillation_loss(x, g), g, t

    def __call__(self, out: RenderOutput, cams: Cameras, prompt: PromptProcessor, progress: float,
                 noise: Tensor | None = None, generator: torch.Generator | None = None,
                 noise_2d: Tensor | None = None) -> GuidanceOutput:
        """`noise`: eps of the multi-view term [B, C, h, w]; `noise_2d`: of the 2D term (view 0 of each group)."""
        check_groups(cams, self.cfg.views, "csd")
        first_out, first_cams = select_views(out, cams, slice(0, None, self.cfg.views))
        two_d = self.two_d(first_out, first_cams, prompt, progress, noise=noise_2d, generator=generator)
        loss_mv, g_mv, t_mv = self.multiview_loss(out, cams, prompt, progress, noise, generator)
        logs = {**two_d.logs, "grad_norm_mv": float(g_mv.norm()), "t_mv": float(t_mv.float().mean())}
        return GuidanceOutput(two_d.loss + self.cfg.multiview_weight * loss_mv, logs)
