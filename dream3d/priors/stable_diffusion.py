"""Stable Diffusion 1.x / 2.x as a latent-space prior (diffusers folder layout).

Renders are resized to `resolution`, encoded with the VAE into latents `x`, and
scored by the UNet conditioned on CLIP text embeddings. Every weight is frozen.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from dream3d.priors.base import DiffusionPrior
from dream3d.priors.codec import LatentCodec
from dream3d.priors.hub import default_dtype, eps_from_model_output, load_frozen_parts


class StableDiffusionPrior(DiffusionPrior):
    """Latent prior. `x` is the VAE posterior *mean* times `scaling_factor`: the mean keeps
    `encode` deterministic (the same render always gives the same latent, so gradients can be
    checked and the only noise in a guidance step is the diffusion noise), and SD's VAE
    posterior std is far below the smallest noise level guidance uses (t >= 0.02)."""

    name = "stable-diffusion"

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                 resolution: int = 512):
        """`folder`: a local diffusers folder, already resolved (`loading.load_prior` also
        takes Hugging Face ids and looks them up in the cache)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        self.folder = Path(folder)
        self.device = torch.device(device)
        self.dtype = default_dtype(self.device, dtype)
        self.resolution = resolution
        parts = load_frozen_parts(self.folder, "sd", self.device, self.dtype, text_encoder=CLIPTextModel,
                                  models={"unet": UNet2DConditionModel, "vae": AutoencoderKL})
        self.unet, self.vae, self.text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
        self.tokenizer, self.scheduler = parts["tokenizer"], parts["scheduler"]
        self.prediction_type = self.scheduler.config.prediction_type
        self.codec = LatentCodec(self.vae, resolution)
        self.latent_scale = self.codec.factor
        self.scaling_factor, self.shift_factor = self.codec.scaling_factor, self.codec.shift_factor
        self._text_cache: dict[str, Tensor] = {}

    def encode(self, images: Tensor) -> Tensor:
        """images [B, H, W, 3] in [0, 1] -> latents [B, 4, res/8, res/8] float32 (differentiable)."""
        return self.codec.encode(images)

    def decode(self, x: Tensor) -> Tensor:
        """latents [B, 4, h, w] -> images [B, 8h, 8w, 3] in [0, 1]."""
        return self.codec.decode(x)

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> Tensor:
        """CLIP last hidden states [N, 77, D] (the tokens the UNet cross-attends to), cached per string."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if new:
            tokens = self.tokenizer(new, padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
            hidden = self.text_encoder(tokens.input_ids.to(self.device))[0]
            self._text_cache.update(zip(new, hidden))
        return torch.stack([self._text_cache[p] for p in prompts])

    def predict_eps(self, x_t: Tensor, t: Tensor, embeds: Tensor, camera: Tensor | None = None) -> Tensor:
        """x_t [B, 4, h, w], t [B] long, embeds [B, L, D] -> eps [B, 4, h, w] float32."""
        t = t.to(self.device)
        out = self.unet(x_t.to(self.device, self.dtype), t, encoder_hidden_states=embeds.to(self.device, self.dtype)).sample
        return eps_from_model_output(out.float(), x_t.float(), self.alphas_cumprod[t].view(-1, 1, 1, 1),
                                     self.prediction_type)
