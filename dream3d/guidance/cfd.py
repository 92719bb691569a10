"""Consistent flow distillation (arXiv 2501.05445, ICLR 2025).

The SDS update shape, g = w(t) (eps_hat(x_t; y, t) - eps), with two changes that
turn random score distillation into following the sampler's probability-flow ODE:
  - eps is multi-view consistent: a noise field attached to the object's surface
    (`dream3d.noise.ConsistentFlowNoise`), so every view of a surface point is
    noised alike, and it stays fixed over the run (refresh gamma > 0: SDE variant);
  - t falls deterministically with progress (`DecreasingTimesteps`), integrating
    the flow from noise to data instead of sampling t at random.
Weighting w = sigma_t / alpha_t, since alpha_t (x - x0_hat) = sigma_t (eps_hat - eps):
g is the gap between the render and the prior's clean estimate, x - x0_hat.

CFG convention: eps_u + s (eps_c - eps_u) (diffusers), 7.5 by default as when sampling.
Both the schedule and the noise are ordinary swappable objects: any of them works
with any rule (`timesteps` / `noise` in the config, or the constructor arguments).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dream3d.guidance.base import Guidance
from dream3d.guidance import common
from dream3d.guidance.perp_neg import PerpNegWeights
from dream3d.guidance.prompt import PromptProcessor
from dream3d.guidance.timesteps import TimestepConfig, build_timesteps
from dream3d.noise import NoiseConfig, build_noise_source
from dream3d.priors.base import DiffusionPrior
from dream3d.types import Cameras, GuidanceOutput, RenderOutput


def _cfd_timesteps() -> TimestepConfig:
    return TimestepConfig(kind="decreasing", milestones=((0.0, 0.0), (0.5, 0.6), (1.0, 0.8)))


@dataclass
class CFDConfig:
    guidance_scale: float = 7.5
    """CFG scale s in eps_u + s (eps_c - eps_u)."""
    weighting: common.Weighting = "sigma_over_alpha"
    """w(t): 'sigma_over_alpha' (CFD), 'sds' sigma^2, 'uniform', 'fantasia' alpha sigma^2."""
    grad_clip: float | None = None
    """Clamp every element of g to [-grad_clip, grad_clip] (None: no clamp)."""
    timesteps: TimestepConfig = field(default_factory=_cfd_timesteps)
    """The t schedule: deterministic and decreasing (t/T from 0.98 to 0.21 by default)."""
    noise: NoiseConfig = field(default_factory=lambda: NoiseConfig(kind="consistent-flow"))
    """The noise source: the surface-attached consistent-flow field by default."""
    perp_neg: bool = False
    """Perp-Neg as in SDS: the front and side prompts as negatives, only across the view prompt."""
    perp_neg_weights: PerpNegWeights = field(default_factory=PerpNegWeights)
    """Perp-Neg's negative weights by azimuth, f(r) = p0 exp(-p1 r) + p2 (threestudio's defaults)."""


class CFDGuidance(Guidance):
    def __init__(self, prior: DiffusionPrior, cfg: CFDConfig | None = None, timesteps=None, noise_source=None):
        self.prior, self.cfg = prior, cfg or CFDConfig()
        self.timesteps = timesteps or build_timesteps(self.cfg.timesteps, prior.num_train_timesteps)
        self.noise_source = noise_source or build_noise_source(self.cfg.noise)
        self.alphas_cumprod = prior.alphas_cumprod

    def modules(self) -> dict:
        return {"cfd_noise": self.noise_source}  # the noise field is part of the run's state

    def __call__(self, out: RenderOutput, cams: Cameras, prompt: PromptProcessor, progress: float,
                 noise: Tensor | None = None, generator: torch.Generator | None = None) -> GuidanceOutput:
        c, prior = self.cfg, self.prior
        x = prior.encode(out.rgb).float()
        B, device = x.shape[0], x.device
        t = self.timesteps.sample(B, progress, generator).to(device)
        eps = common.draw_noise(noise, self.noise_source, out, cams, x, generator)
        g = common.score_gradient(prior, x, t, eps, prompt, cams, c.guidance_scale, c.weighting, c.grad_clip,
                                  perp_neg=c.perp_neg_weights if c.perp_neg else None)
        logs = {"grad_norm": float(g.norm()), "t": float(t.float().mean())}
        return GuidanceOutput(common.distillation_loss(x, g), logs)
