"""Score distillation sampling (DreamFusion, arXiv 2209.14988).

Noise the encoded render to a random level t, ask the prior for the noise with
classifier-free guidance, and push g = w(t) (eps_hat - eps) into the render.

CFG convention: eps_hat = eps_u + s (eps_c - eps_u), the diffusers form, so
s = 1 is the plain conditional prediction. DreamFusion's paper (and threestudio)
write eps_c + w (eps_c - eps_u), i.e. w = s - 1: their "100" is s = 101 here.

View guidance (optional, `view_guidance_scale` v): eps_hat += v (eps_c - eps_p), where
eps_p reads the prompt without its view suffix and without the camera, so what the
view adds to the prediction is amplified (the embedded prior's sampler does the same;
a prior that learned views faintly otherwise lets the front show from behind).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from dream3d.guidance.prompt import PromptProcessor
from dream3d.guidance.timesteps import RandomTimesteps
from dream3d.priors.base import DiffusionPrior
from dream3d.types import Cameras, GuidanceOutput, RenderOutput


@dataclass
class SDSConfig:
    guidance_scale: float = 100.0
    """CFG scale s in eps_u + s (eps_c - eps_u); about 100 for Stable Diffusion, 20 for DeepFloyd IF."""
    weighting: Literal["sds", "uniform", "fantasia"] = "sds"
    """w(t): 'sds' = sigma_t^2, 'uniform' = 1, 'fantasia' = alpha_t sigma_t^2."""
    t_min: float = 0.02
    """Lowest timestep, as a fraction of the prior's T."""
    t_max: float = 0.98
    """Highest timestep, as a fraction of the prior's T."""
    anneal_at: float | None = None
    """Progress from which t_max drops to `anneal_t_max` (None: never)."""
    anneal_t_max: float = 0.5
    """t_max after annealing."""
    grad_clip: float | None = None
    """Clamp every element of g to [-grad_clip, grad_clip] (None: no clamp)."""
    view_guidance_scale: float = 0.0
    """v in + v (eps_c - eps_p), eps_p without view suffix and camera (0: off, saves a UNet pass)."""


class SDSGuidance:
    """The negative prompt (CFG's unconditional branch) and view-dependent suffixes live in the
    `PromptProcessor` passed to each call, shared by every guidance of a run."""

    def __init__(self, prior: DiffusionPrior, cfg: SDSConfig, timesteps=None):
        """`timesteps`: any object with `sample(batch, progress, generator)`; default from `cfg`."""
        self.prior, self.cfg = prior, cfg
        anneal = None if cfg.anneal_at is None else (cfg.anneal_at, cfg.anneal_t_max)
        self.timesteps = timesteps or RandomTimesteps(cfg.t_min, cfg.t_max, anneal, prior.num_train_timesteps)
        self.alphas_cumprod = prior.alphas_cumprod  # [T] float32

    def param_groups(self) -> dict:
        return {}

    def weight(self, a_t: torch.Tensor) -> torch.Tensor:
        """w(t) from alpha_bar_t [B, 1, 1, 1]."""
        if self.cfg.weighting == "sds":
            return 1.0 - a_t
        if self.cfg.weighting == "fantasia":
            return a_t.sqrt() * (1.0 - a_t)
        if self.cfg.weighting == "uniform":
            return torch.ones_like(a_t)
        raise ValueError(f"unknown SDS weighting {self.cfg.weighting!r}")

    def __call__(self, out: RenderOutput, cams: Cameras, prompt: PromptProcessor, progress: float,
                 noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> GuidanceOutput:
        x = self.prior.encode(out.rgb).float()  # [B, C, h, w], differentiable
        B = x.shape[0]
        t = self.timesteps.sample(B, progress, generator).to(x.device)
        with torch.no_grad():
            if noise is None:  # i.i.d. noise, drawn where the generator lives
                gen_device = generator.device if generator is not None else x.device
                noise = torch.randn(x.shape, generator=generator, device=gen_device)
            if noise.shape != x.shape:
                raise ValueError(f"noise {tuple(noise.shape)} does not match the prior's x {tuple(x.shape)}")
            eps = noise.to(x.device, torch.float32)
            a_t = self.alphas_cumprod[t].view(B, 1, 1, 1)
            x_t = a_t.sqrt() * x + (1.0 - a_t).sqrt() * eps
            cond, uncond = prompt(cams)
            embeds = [cond, uncond]
            camera = cams.pose_features().to(x.device) if self.prior.takes_camera else None
            cameras = None if camera is None else [camera, camera]
            if self.cfg.view_guidance_scale:
                embeds.append(prompt.cond_plain.expand_as(cond))
                cameras = None if cameras is None else [*cameras, torch.zeros_like(camera)]
            n = len(embeds)  # one batched call: [conditional; unconditional; (view-free)]
            eps_pred = self.prior.predict_eps(torch.cat([x_t] * n), torch.cat([t] * n), torch.cat(embeds),
                                              camera=None if cameras is None else torch.cat(cameras)).float()
            eps_c, eps_u, *eps_p = eps_pred.chunk(n)
            eps_hat = eps_u + self.cfg.guidance_scale * (eps_c - eps_u)
            if eps_p:
                eps_hat = eps_hat + self.cfg.view_guidance_scale * (eps_c - eps_p[0])
            # A NaN / inf prediction (fp16 overflow) is left in: the loss turns non-finite and the
            # trainer skips the step, logs it, and stops the run after repeated ones.
            g = self.weight(a_t) * (eps_hat - eps)
            if self.cfg.grad_clip is not None:
                g = g.clamp(-self.cfg.grad_clip, self.cfg.grad_clip)
        # d loss / d x = g / B; the loss value itself carries no meaning.
        target = (x - g).detach()
        loss = 0.5 * ((x - target) ** 2).sum() / B
        return GuidanceOutput(loss, {"grad_norm": float(g.norm()), "t": float(t.float().mean())})
