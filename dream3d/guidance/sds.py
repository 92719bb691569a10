"""Score distillation sampling (DreamFusion, arXiv 2209.14988).

Noise the encoded render to a level t from the timestep schedule with eps from the
noise source, ask the prior for the noise with classifier-free guidance, and push
g = w(t) (eps_hat - eps) into the render. Schedule (`timesteps`, random t in
[0.02, 0.98] T by default) and noise (`noise`, i.i.d. by default) are the shared
swappable pieces, as for every rule: `noise.kind=consistent-flow` gives SDS with
CFD's surface-attached noise.

CFG convention: eps_hat = eps_u + s (eps_c - eps_u), the diffusers form, so
s = 1 is the plain conditional prediction. DreamFusion's paper (and threestudio)
write eps_c + w (eps_c - eps_u), i.e. w = s - 1: their "100" is s = 101 here.

View guidance (optional, `view_guidance_scale` v): eps_hat += v (eps_c - eps_p), where
eps_p reads the prompt without its view suffix and without the camera, so what the
view adds to the prediction is amplified (the embedded prior's sampler does the same;
a prior that learned views faintly otherwise lets the front show from behind).

Perp-Neg (optional, `perp_neg`): the positive prompt is the view prompt interpolated
between adjacent views by azimuth, and the front and side prompts are negatives with
only their part perpendicular to the positive direction removed (`guidance.perp_neg`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dream3d.guidance import common
from dream3d.guidance.base import Guidance
from dream3d.guidance.perp_neg import PerpNegWeights
from dream3d.guidance.prompt import PromptProcessor
from dream3d.guidance.timesteps import TimestepConfig, build_timesteps
from dream3d.noise import NoiseConfig, build_noise_source
from dream3d.priors.base import DiffusionPrior
from dream3d.types import Cameras, GuidanceOutput, RenderOutput

# The flat schedule keys SDS had before it took a `timesteps` config; presets and older run configs use them.
_SCHEDULE_ALIASES = ("t_min", "t_max", "anneal_at", "anneal_t_max")


@dataclass
class SDSConfig:
    guidance_scale: float = 100.0
    """CFG scale s in eps_u + s (eps_c - eps_u); about 100 for Stable Diffusion, 20 for DeepFloyd IF."""
    weighting: common.Weighting = "sds"
    """w(t): 'sds' = sigma_t^2, 'uniform' = 1, 'fantasia' = alpha_t sigma_t^2, 'sigma_over_alpha'."""
    t_min: float | None = None
    """Shorthand for timesteps.t_min, which it overrides when set (None: not set)."""
    t_max: float | None = None
    """Shorthand for timesteps.t_max, which it overrides when set (None: not set)."""
    anneal_at: float | None = None
    """Shorthand for timesteps.anneal_at, which it overrides when set (None: not set)."""
    anneal_t_max: float | None = None
    """Shorthand for timesteps.anneal_t_max, which it overrides when set (None: not set)."""
    grad_clip: float | None = None
    """Clamp every element of g to [-grad_clip, grad_clip] (None: no clamp)."""
    view_guidance_scale: float = 0.0
    """v in + v (eps_c - eps_p), eps_p without view suffix and camera (0: off, saves a UNet pass)."""
    perp_neg: bool = False
    """Perp-Neg: the front and side prompts as negatives, only across the view prompt (two more UNet passes)."""
    perp_neg_weights: PerpNegWeights = field(default_factory=PerpNegWeights)
    """Perp-Neg's negative weights by azimuth, f(r) = p0 exp(-p1 r) + p2 (threestudio's defaults)."""
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    """The t schedule: random t in [0.02, 0.98] T per view by default (DreamFusion)."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """The noise source: fresh i.i.d. N(0, I) each step by default."""

    def __post_init__(self):
        given = {k: getattr(self, k) for k in _SCHEDULE_ALIASES if getattr(self, k) is not None}
        if given:  # a copy: a TimestepConfig passed in (or shared by stages) is never changed
            self.timesteps = dataclasses.replace(self.timesteps, **given)


class SDSGuidance(Guidance):
    """The negative prompt (CFG's unconditional branch) and view-dependent suffixes live in the
    `PromptProcessor` passed to each call, shared by every guidance of a run."""

    def __init__(self, prior: DiffusionPrior, cfg: SDSConfig | None = None, timesteps=None, noise_source=None):
        """`timesteps`: any object with `sample(batch, progress, generator)`; `noise_source`: any
        `source(out, cams, shape, generator)`; both built from `cfg` by default."""
        self.prior, self.cfg = prior, cfg or SDSConfig()
        self.timesteps = timesteps or build_timesteps(self.cfg.timesteps, prior.num_train_timesteps)
        self.noise_source = noise_source or build_noise_source(self.cfg.noise)
        self.alphas_cumprod = prior.alphas_cumprod  # [T] float32

    def param_groups(self) -> dict:
        return {}

    def modules(self) -> dict:
        return {"sds_noise": self.noise_source}  # a noise field (consistent-flow, ...) is part of the run's state

    def __call__(self, out: RenderOutput, cams: Cameras, prompt: PromptProcessor, progress: float,
                 noise: Tensor | None = None, generator: torch.Generator | None = None) -> GuidanceOutput:
        """`noise`: eps [B, C, h, w] to use instead of the noise source's."""
        c, prior = self.cfg, self.prior
        x = prior.encode(out.rgb).float()  # [B, C, h, w], differentiable
        t = self.timesteps.sample(x.shape[0], progress, generator).to(x.device)
        eps = common.draw_noise(noise, self.noise_source, out, cams, x, generator)
        # A NaN / inf prediction (fp16 overflow) is left in: the loss turns non-finite and the
        # trainer skips the step, logs it, and stops the run after repeated ones.
        g = common.score_gradient(prior, x, t, eps, prompt, cams, c.guidance_scale, c.weighting, c.grad_clip,
                                  c.view_guidance_scale, c.perp_neg_weights if c.perp_neg else None)
        logs = {"grad_norm": float(g.norm()), "t": float(t.float().mean())}
        return GuidanceOutput(common.distillation_loss(x, g), logs)
