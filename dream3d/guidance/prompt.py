"""Prompt embeddings per camera, with DreamFusion's view-dependent suffixes.

A camera in front of the object reads "<prompt>, front view", one behind it
"<prompt>, back view", and so on (`dream3d.cameras.views`): telling the prior
which side it is looking at reduces multi-faced ("Janus") objects.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dream3d.cameras.views import VIEW_NAMES, view_names, with_view
from dream3d.errors import UserError
from dream3d.guidance.perp_neg import NEGATIVE_VIEWS, PerpNegWeights, view_weights
from dream3d.priors.base import DiffusionPrior
from dream3d.types import Cameras


class PromptProcessor:
    """Embeds a prompt (and its view variants) and a negative prompt once, then hands out
    per-camera batches. The negative prompt is the unconditional branch of CFG ("" = none).
    Whether the prior can read the prompt is checked by the caller (`prior.check_prompt`).
    The empty prompt is embedded too, so a guidance that needs the null embedding finds it in
    the prior's cache after the run frees the text encoder (`prior.release_text_encoder()`)."""

    def __init__(self, prior: DiffusionPrior, prompt: str, negative_prompt: str = "", view_dependent: bool = True,
                 ignored_words: tuple[str, ...] = ()):
        """`ignored_words`: words of `prompt` the prior does not know and skips (shown to the user)."""
        self.prompt = prompt
        self.ignored_words = tuple(ignored_words)
        self.negative_prompt = negative_prompt
        self.view_dependent = view_dependent
        self.view_prompts = {v: with_view(prompt, v) if view_dependent else prompt for v in VIEW_NAMES}
        texts = [self.view_prompts[v] for v in VIEW_NAMES] + [prompt, negative_prompt, ""]
        embeds = prior.embed(texts)  # [7, L, D]
        self._views = {v: embeds[i] for i, v in enumerate(VIEW_NAMES)}
        self.cond_plain = embeds[len(VIEW_NAMES)]  # [L, D] the prompt without a view suffix
        self.uncond = embeds[len(VIEW_NAMES) + 1]  # [L, D]

    def __call__(self, cams: Cameras) -> tuple[Tensor, Tensor]:
        """(cond [B, L, D], uncond [B, L, D]) for a batch of cameras."""
        names = view_names(cams.elevation, cams.azimuth)
        cond = torch.stack([self._views[v] for v in names])
        uncond = self.uncond.unsqueeze(0).expand_as(cond)
        return cond, uncond

    def perp_neg(self, cams: Cameras, weights: PerpNegWeights) -> tuple[Tensor, Tensor, list[Tensor], Tensor]:
        """Perp-Neg's prompts (`guidance.perp_neg`): positive [B, L, D] (the view prompts mixed by
        azimuth), uncond [B, L, D], the negatives [B, L, D] each (front, side) and their weights [B, 2]."""
        if not self.view_dependent:
            raise UserError("guidance.perp_neg needs view-dependent prompts: set view_dependent: true")
        overhead = torch.tensor([v == "overhead" for v in view_names(cams.elevation, cams.azimuth)])
        mix, neg = view_weights(cams.azimuth, overhead, weights)
        views = torch.stack([self._views[v] for v in VIEW_NAMES])  # [4, L, D]
        # mixed in float32: interpolating fp16 embeddings would round twice
        pos = torch.einsum("bv,vld->bld", mix.to(views.device), views.float()).to(views.dtype)
        uncond = self.uncond.unsqueeze(0).expand_as(pos)
        negs = [self._views[v].unsqueeze(0).expand_as(pos) for v in NEGATIVE_VIEWS]
        return pos, uncond, negs, neg
