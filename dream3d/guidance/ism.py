"""Interval score matching (LucidDreamer, arXiv 2311.11284).

Instead of noising the render with random eps, reach x_t deterministically: run
DDIM inversion with the empty prompt from x (t = 0) up to s = t - delta in
`inversion_steps` steps, then one more inversion step from s to t:

    x0_s = (x_s - sigma_s eps(x_s, s, null)) / alpha_s
    x_t  = alpha_t x0_s + sigma_t eps(x_s, s, null)
    g    = w(t) (eps_hat(x_t; y, t) - eps(x_s, s, null))

so the target compares two predictions along one DDIM trajectory (the interval
from s to t) instead of a prediction and the sampled noise. w(t) = sigma_t / alpha_t
by default. CFG convention: eps_u + s (eps_c - eps_u) (diffusers; LucidDreamer's 7.5).
No noise source is used: the only noise is the prior's own inversion.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dream3d.guidance.base import Guidance
from dream3d.guidance import common
from dream3d.guidance.prompt import PromptProcessor
from dream3d.guidance.timesteps import TimestepConfig, build_timesteps
from dream3d.priors.base import DiffusionPrior
from dream3d.types import Cameras, GuidanceOutput, RenderOutput


@dataclass
class ISMConfig:
    guidance_scale: float = 7.5
    """CFG scale s in eps_u + s (eps_c - eps_u)."""
    interval: float = 0.2
    """delta: s = t - delta, as a fraction of T."""
    inversion_steps: int = 3
    """DDIM inversion steps from 0 to s (more: a more faithful x_s, one UNet call each)."""
    weighting: common.Weighting = "sigma_over_alpha"
    """w(t): 'sigma_over_alpha' (ISM), 'sds' sigma^2, 'uniform', 'fantasia' alpha sigma^2."""
    grad_clip: float | None = None
    """Clamp every element of g to [-grad_clip, grad_clip] (None: no clamp)."""
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    """The t schedule."""


class ISMGuidance(Guidance):
    def __init__(self, prior: DiffusionPrior, cfg: ISMConfig | None = None, timesteps=None):
        self.prior, self.cfg = prior, cfg or ISMConfig()
        self.timesteps = timesteps or build_timesteps(self.cfg.timesteps, prior.num_train_timesteps)
        self.alphas_cumprod = prior.alphas_cumprod
        self.null = prior.embed([""])[0]  # [L, D]

    def _ddim(self, x: Tensor, eps: Tensor, t_from: Tensor, t_to: Tensor) -> Tensor:
        """One deterministic DDIM step of x [B, C, h, w] with prediction eps from t_from to t_to ([B] each)."""
        a_from = self.alphas_cumprod[t_from].view(-1, 1, 1, 1)
        a_to = self.alphas_cumprod[t_to].view(-1, 1, 1, 1)
        x0 = (x - (1.0 - a_from).sqrt() * eps) / a_from.sqrt()
        return a_to.sqrt() * x0 + (1.0 - a_to).sqrt() * eps

    def invert(self, x: Tensor, s: Tensor, null: Tensor, camera: Tensor | None) -> tuple[Tensor, Tensor]:
        """(x_s, eps(x_s, s, null)): DDIM inversion of x [B, C, h, w] from 0 up to s [B]."""
        K = max(self.cfg.inversion_steps, 1)
        fractions = torch.linspace(0, 1, K + 1, device=s.device)[:, None]
        grid = torch.round(fractions * s[None, :].float()).long()  # [K + 1, B] timesteps of each view
        x_cur = x
        for k in range(K):
            eps = self.prior.predict_eps(x_cur, grid[k], null, camera=camera).float()
            x_cur = self._ddim(x_cur, eps, grid[k], grid[k + 1])
        return x_cur, self.prior.predict_eps(x_cur, s, null, camera=camera).float()

    def __call__(self, out: RenderOutput, cams: Cameras, prompt: PromptProcessor, progress: float,
                 noise: Tensor | None = None, generator: torch.Generator | None = None) -> GuidanceOutput:
        c, prior = self.cfg, self.prior
        x = prior.encode(out.rgb).float()
        B, device = x.shape[0], x.device
        t = self.timesteps.sample(B, progress, generator).to(device)
        s = (t - round(c.interval * prior.num_train_timesteps)).clamp_min(0)
        with torch.no_grad():
            cond, uncond = prompt(cams)
            null = self.null.to(cond.device, cond.dtype).unsqueeze(0).expand_as(cond)
            camera = common.camera_features(prior, cams, device)
            x_s, eps_s = self.invert(x, s, null, camera)
            x_t = self._ddim(x_s, eps_s, s, t)
            eps_hat = common.cfg_eps(prior, x_t, t, cond, uncond, camera, c.guidance_scale)
            a_t = self.alphas_cumprod[t].view(B, 1, 1, 1)
            g = common.clip(common.weight(c.weighting, a_t) * (eps_hat - eps_s), c.grad_clip)
        logs = {"grad_norm": float(g.norm()), "t": float(t.float().mean())}
        return GuidanceOutput(common.distillation_loss(x, g), logs)
