"""The one interface every diffusion prior implements.

A prior is loaded once per run and shared by every guidance. It works in its
own space `x` (pixels in [-1, 1] for pixel priors, VAE latents for latent
priors); `encode` / `decode` move between renders and that space.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class DiffusionPrior(ABC):
    name: str = "prior"
    resolution: int
    """Side of the square image (in pixels) that `encode` resizes renders to."""
    scheduler: object
    """A diffusers scheduler with `alphas_cumprod` and `config.num_train_timesteps`."""
    takes_camera: bool = False
    """Whether `predict_eps` uses the `camera` argument (camera-conditioned UNet)."""
    joint_views: bool = False
    """Whether `predict_eps` also takes `n_views=N` and denoises each run of N consecutive images (one
    object from N cameras, one t) jointly, self-attention spanning the views (MVDream); multi-view SDS needs it."""
    reads_text: bool = True
    """Whether `embed` reads prompts; False for an image-conditioned prior (Zero-1-to-3), which only the
    rules that take a reference image can use."""
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def alphas_cumprod(self) -> Tensor:
        """[T] on the prior's device, float32."""
        return self.scheduler.alphas_cumprod.to(self.device, torch.float32)

    @abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """images [B, H, W, 3] in [0, 1] -> x [B, C, h, w] in the prior's space (differentiable)."""

    @abstractmethod
    def decode(self, x: Tensor) -> Tensor:
        """x [B, C, h, w] -> images [B, H, W, 3] in [0, 1]."""

    @abstractmethod
    def embed(self, prompts: list[str]) -> Tensor:
        """Text embeddings [N, L, D] for the UNet's cross-attention ("" gives the unconditional one)."""

    @abstractmethod
    def predict_eps(self, x_t: Tensor, t: Tensor, embeds: Tensor, camera: Tensor | None = None) -> Tensor:
        """Noise prediction [B, C, h, w] for x_t [B, C, h, w] at integer timesteps t [B],
        text embeddings [B, L, D], and optional camera pose features [B, 16]."""

    def release_text_encoder(self) -> None:
        """Free the text encoder once every prompt the run needs is embedded (called after the
        run's `PromptProcessor` is built). Prompts embedded before keep working from the cache;
        a new one raises. Default: nothing to free (a small text encoder stays loaded)."""

    def check_prompt(self, prompt: str, allow_unknown_words: bool = False) -> list[str]:
        """Raise UserError if the prior cannot read the prompt; return the words it will ignore."""
        return []
