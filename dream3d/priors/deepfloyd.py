"""DeepFloyd IF stage I as a pixel-space prior (64x64, T5 text encoder).

`x` is the render itself, resized to `resolution` and mapped to [-1, 1]. The IF
UNet predicts 6 channels (noise and a learned variance); the first 3 are eps.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from dream3d.priors.base import DiffusionPrior
from dream3d.priors.hub import default_dtype, eps_from_model_output, load_frozen_parts, resize_square

TEXT_TOKENS = 77  # IF was trained on 77 T5 tokens


class DeepFloydPrior(DiffusionPrior):
    name = "deepfloyd-if"

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                 resolution: int = 64):
        """`folder`: a local diffusers folder, already resolved (`loading.load_prior` also
        takes Hugging Face ids and looks them up in the cache)."""
        from diffusers import UNet2DConditionModel
        from transformers import T5EncoderModel

        self.folder = Path(folder)
        self.device = torch.device(device)
        self.dtype = default_dtype(self.device, dtype)
        self.resolution = resolution
        parts = load_frozen_parts(self.folder, "if", self.device, self.dtype, text_encoder=T5EncoderModel,
                                  models={"unet": UNet2DConditionModel})
        self.unet, self.text_encoder = parts["unet"], parts["text_encoder"]
        self.tokenizer, self.scheduler = parts["tokenizer"], parts["scheduler"]
        self.prediction_type = self.scheduler.config.prediction_type
        self._text_cache: dict[str, Tensor] = {}

    def encode(self, images: Tensor) -> Tensor:
        """images [B, H, W, 3] in [0, 1] -> x [B, 3, res, res] in [-1, 1], float32."""
        return resize_square(images.permute(0, 3, 1, 2).float(), self.resolution) * 2.0 - 1.0

    def decode(self, x: Tensor) -> Tensor:
        """x [B, 3, h, w] -> images [B, h, w, 3] in [0, 1]."""
        return ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> Tensor:
        """T5 hidden states [N, 77, D], cached per string."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if new:
            if self.text_encoder is None:
                raise RuntimeError(f"text encoder released; prompts {new} were never embedded")
            tokens = self.tokenizer(new, padding="max_length", max_length=TEXT_TOKENS, truncation=True,
                                    add_special_tokens=True, return_tensors="pt")
            hidden = self.text_encoder(tokens.input_ids.to(self.device),
                                       attention_mask=tokens.attention_mask.to(self.device))[0]
            self._text_cache.update(zip(new, hidden))
        return torch.stack([self._text_cache[p] for p in prompts])

    def release_text_encoder(self) -> None:
        """Drop T5 (about 9 GB in fp16) once every prompt is embedded; cached prompts keep working,
        a new one raises RuntimeError."""
        self.text_encoder = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def predict_eps(self, x_t: Tensor, t: Tensor, embeds: Tensor, camera: Tensor | None = None) -> Tensor:
        """x_t [B, 3, h, w], t [B] long, embeds [B, L, D] -> eps [B, 3, h, w] float32."""
        t = t.to(self.device)
        out = self.unet(x_t.to(self.device, self.dtype), t, encoder_hidden_states=embeds.to(self.device, self.dtype)).sample
        eps = out[:, :3].float()  # channels 3..5 parameterise the learned variance
        return eps_from_model_output(eps, x_t.float(), self.alphas_cumprod[t].view(-1, 1, 1, 1), self.prediction_type)
