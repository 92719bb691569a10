"""Classifier score distillation (arXiv 2310.19415): distil only the implicit classifier.

    g = scale * w(t) [(eps_y - eps_null) - lambda (eps_neg - eps_null)]

eps_y is the prediction for the (view-dependent) prompt, eps_null for the empty
prompt and eps_neg for the negative prompt; there is no CFG scale and no "- eps"
term. lambda rises linearly from `negative_weight_start` to `negative_weight_end`
until `anneal_until` progress (the paper anneals it 0 -> 1). Without a negative
prompt eps_neg = eps_null and the second term vanishes. Optionally g is divided by
its L2 norm over the batch (as the reference implementation's `grad_normalize`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dream3d.guidance.base import Guidance
from dream3d.guidance import common
from dream3d.guidance.prompt import PromptProcessor
from dream3d.guidance.timesteps import TimestepConfig, build_timesteps
from dream3d.noise import NoiseConfig, build_noise_source
from dream3d.priors.base import DiffusionPrior
from dream3d.types import Cameras, GuidanceOutput, RenderOutput


@dataclass
class ClassifierScoreConfig:
    negative_weight_start: float = 0.0
    """lambda at progress 0."""
    negative_weight_end: float = 1.0
    """lambda from `anneal_until` on."""
    anneal_until: float = 1.0
    """Progress at which lambda reaches its end value (linear in between)."""
    scale: float = 1.0
    """Overall multiplier on g (there is no CFG scale; this sets the step size against regularisers)."""
    normalize: bool = False
    """Divide g by its L2 norm over the batch."""
    weighting: common.Weighting = "sds"
    """w(t): 'sds' sigma^2, 'uniform', 'fantasia' alpha sigma^2, 'sigma_over_alpha'."""
    grad_clip: float | None = None
    """Clamp every element of g to [-grad_clip, grad_clip] (None: no clamp)."""
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    """The t schedule."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """The noise source."""


class ClassifierScoreGuidance(Guidance):
    def __init__(self, prior: DiffusionPrior, cfg: ClassifierScoreConfig | None = None, timesteps=None,
                 noise_source=None):
        self.prior, self.cfg = prior, cfg or ClassifierScoreConfig()
        self.timesteps = timesteps or build_timesteps(self.cfg.timesteps, prior.num_train_timesteps)
        self.noise_source = noise_source or build_noise_source(self.cfg.noise)
        self.alphas_cumprod = prior.alphas_cumprod
        self.null = prior.embed([""])[0]  # [L, D]

    def modules(self) -> dict:
        return {"csd_noise": self.noise_source}

    def negative_weight(self, progress: float) -> float:
        c = self.cfg
        frac = 1.0 if c.anneal_until <= 0 else min(max(progress / c.anneal_until, 0.0), 1.0)
        return c.negative_weight_start + (c.negative_weight_end - c.negative_weight_start) * frac

    def __call__(self, out: RenderOutput, cams: Cameras, prompt: PromptProcessor, progress: float,
                 noise: Tensor | None = None, generator: torch.Generator | None = None) -> GuidanceOutput:
        c, prior = self.cfg, self.prior
        x = prior.encode(out.rgb).float()
        B, device = x.shape[0], x.device
        t = self.timesteps.sample(B, progress, generator).to(device)
        eps = common.draw_noise(noise, self.noise_source, out, cams, x, generator)
        lam = self.negative_weight(progress)
        with torch.no_grad():
            a_t = self.alphas_cumprod[t].view(B, 1, 1, 1)
            x_t = common.add_noise(x, eps, a_t)
            cond, negative = prompt(cams)
            null = self.null.to(cond.device, cond.dtype).unsqueeze(0).expand_as(cond)
            with_negative = bool(prompt.negative_prompt)
            embeds = [cond, null] + ([negative] if with_negative else [])
            k = len(embeds)
            camera = common.camera_features(prior, cams, device)
            preds = prior.predict_eps(torch.cat([x_t] * k), torch.cat([t] * k), torch.cat(embeds),
                                      camera=None if camera is None else torch.cat([camera] * k)).float()
            eps_y, eps_null, *rest = preds.chunk(k)
            score = eps_y - eps_null
            if with_negative:
                score = score - lam * (rest[0] - eps_null)
            g = c.scale * common.weight(c.weighting, a_t) * score
            if c.normalize:
                g = g / (g.norm() + 1e-8)
            g = common.clip(g, c.grad_clip)
        logs = {"grad_norm": float(g.norm()), "t": float(t.float().mean()), "negative_weight": lam}
        return GuidanceOutput(common.distillation_loss(x, g), logs)
