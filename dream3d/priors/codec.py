"""Between renders and a prior's own space `x`: pixels, or the latents of a VAE.

Renders are [B, H, W, 3] in [0, 1]. A pixel prior's `x` is the render resized to
the prior's side and mapped to [-1, 1]; a latent prior's `x` is the VAE posterior
mean of that, times the VAE's scaling factor (Stable Diffusion's convention; the
mean keeps encoding deterministic). The embedded latent prior and Stable Diffusion
go through the same `LatentCodec`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_square(images: Tensor, size: int) -> Tensor:
    """[B, C, H, W] -> [B, C, size, size], bilinear; antialiased only when shrinking."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = images.shape[-1] > size or images.shape[-2] > size
    return F.interpolate(images, (size, size), mode="bilinear", align_corners=False, antialias=shrink)


class PixelCodec:
    """x = pixels in [-1, 1] at `resolution` squared."""

    channels = 3
    factor = 1

    def __init__(self, resolution: int):
        self.resolution = resolution

    def encode(self, images: Tensor) -> Tensor:
        """images [B, H, W, 3] in [0, 1] -> x [B, 3, r, r] in [-1, 1] (differentiable)."""
        return resize_square(images.permute(0, 3, 1, 2), self.resolution) * 2.0 - 1.0

    def decode(self, x: Tensor) -> Tensor:
        """x [B, 3, r, r] -> images [B, r, r, 3] in [0, 1]."""
        return ((x.float().clamp(-1.0, 1.0) + 1.0) * 0.5).permute(0, 2, 3, 1)


class LatentCodec:
    """x = scaled posterior means of a diffusers `AutoencoderKL` over renders resized to `resolution`."""

    def __init__(self, vae, resolution: int):
        self.vae, self.resolution = vae, resolution
        self.channels = int(vae.config.latent_channels)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @property
    def _param(self) -> Tensor:
        return next(self.vae.parameters())

    def encode_pixels(self, x: Tensor) -> Tensor:
        """x [B, 3, H, W] in [-1, 1] at the codec's resolution -> latents [B, C, H/f, W/f] float32."""
        p = self._param
        mean = self.vae.encode(x.to(p.device, p.dtype)).latent_dist.mean
        return ((mean - self.shift_factor) * self.scaling_factor).float()

    def encode(self, images: Tensor) -> Tensor:
        """images [B, H, W, 3] in [0, 1] -> latents [B, C, r/f, r/f] float32 (differentiable)."""
        return self.encode_pixels(resize_square(images.permute(0, 3, 1, 2), self.resolution) * 2.0 - 1.0)

    def decode_pixels(self, x: Tensor) -> Tensor:
        """latents [B, C, h, w] -> pixels [B, 3, fh, fw] in [-1, 1] float32 (not clamped)."""
        p = self._param
        z = x.to(p.device, p.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.float()

    def decode(self, x: Tensor) -> Tensor:
        """latents [B, C, h, w] -> images [B, fh, fw, 3] in [0, 1]."""
        return ((self.decode_pixels(x) + 1.0) * 0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)


@torch.no_grad()
def reconstruction_psnr(codec: LatentCodec, images: Tensor, batch: int = 64) -> float:
    """Mean PSNR (dB) of encode -> decode over images [N, H, W, 3] in [0, 1] at the codec's resolution."""
    out = []
    for s in range(0, images.shape[0], batch):
        x = images[s:s + batch]
        mse = ((codec.decode(codec.encode(x)) - x) ** 2).mean(dim=(1, 2, 3))
        out.append(-10 * torch.log10(mse.clamp_min(1e-10)))
    return float(torch.cat(out).mean())
