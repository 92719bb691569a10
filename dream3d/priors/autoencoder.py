"""The small image autoencoder of the latent embedded prior (a diffusers `AutoencoderKL`).

It maps 64x64 renders to 8 x 16 x 16 latents (f = 4) and back, trained on the same
procedural renders as the prior: L1 reconstruction plus a light KL term, as the
Stable Diffusion VAE is (without its perceptual and adversarial terms, which need
weights we do not ship). Its `scaling_factor` is set after training to 1 / std of the
latents, Stable Diffusion's recipe, so the diffusion model sees unit-variance latents.

The object is a small part of a render, the rest a solid grey background. Under a plain
L1 a VAE learns the background and the silhouettes and leaves the colours out (measured:
a 4-channel VAE so trained decoded 18% of its renders in a colour the classifier read
right, README, Priors). So pixels unlike the background weigh `foreground_weight` times
as much, and the mean colour of every f x f cell (what one latent pixel stands for) has an
L1 term of its own.

`train_autoencoder(cfg, out_dir, resume)` is seeded and resumable: it swaps in a
complete checkpoint every few minutes and writes the finished model to `out_dir/vae/`
(`AutoencoderKL.save_pretrained`).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from dream3d.errors import UserError
from dream3d.priors.codec import LatentCodec, reconstruction_psnr
from dream3d.priors.training_aids import write_checkpoint


@dataclass
class AutoencoderConfig:
    resolution: int = 64
    """Side of the square images it encodes."""
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    """Channels per level; len - 1 halvings, so three levels give f = 4."""
    latent_channels: int = 8
    """Channels of the latent (Stable Diffusion's 4; 8 leave room for the colour of a 4 x 4 cell)."""
    layers_per_block: int = 1
    """ResNet blocks per level."""
    norm_num_groups: int = 16
    """GroupNorm groups (must divide every channel count)."""
    mid_attention: bool = False
    """Self-attention in the bottleneck (off: costly at 16x16 and not needed for these renders)."""
    steps: int = 2000
    """Optimisation steps."""
    batch_size: int = 16
    """Images per step."""
    lr: float = 1e-3
    """Adam learning rate (cosine decay to a tenth over the run)."""
    kl_weight: float = 1e-6
    """Weight of the KL term (SD's VAE: 1e-6); keeps the latent near a unit Gaussian in scale only."""
    foreground_weight: float = 10.0
    """How much more a pixel unlike the image's background (its corner colour) weighs in the L1 terms."""
    cell_colour_weight: float = 1.0
    """Weight of the L1 between the f x f cell means of the reconstruction and of the image."""
    seed: int = 0
    """Seed of every draw of the run."""
    checkpoint_seconds: float = 240.0
    """Checkpoint at least this often (wall time)."""
    log_steps: int = 50
    """Print a line every this many steps."""


def build_autoencoder(cfg: AutoencoderConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups, sample_size=cfg.resolution, mid_block_add_attention=cfg.mid_attention,
    )


def foreground_mask(x: Tensor, threshold: float = 0.04) -> Tensor:
    """[B, 1, H, W] 1 where images x [B, 3, H, W] in [-1, 1] differ from their top-left pixel (the solid
    background of a render) by more than `threshold` in some channel, else 0."""
    return ((x - x[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > threshold).to(x.dtype)


def reconstruction_loss(recon: Tensor, x: Tensor, foreground_weight: float, cell_colour_weight: float,
                        factor: int) -> Tensor:
    """Foreground-weighted L1 of the pixels plus `cell_colour_weight` times that of the f x f cell means,
    each a weighted mean (weights 1 on the background, `foreground_weight` on the object)."""
    w = 1.0 + (foreground_weight - 1.0) * foreground_mask(x)
    pixels = ((recon - x).abs() * w).sum() / (3 * w.sum())
    pool = torch.nn.functional.avg_pool2d
    wc = pool(w, factor)
    cells = ((pool(recon, factor) - pool(x, factor)).abs() * wc).sum() / (3 * wc.sum())
    return pixels + cell_colour_weight * cells


@torch.no_grad()
def foreground_psnr(codec: LatentCodec, images: Tensor, batch: int = 64) -> float:
    """PSNR (dB) of encode -> decode over the object pixels alone (`foreground_mask`) of images
    [N, H, W, 3] in [0, 1]: the whole-image PSNR is mostly the flat background's."""
    se, count = 0.0, 0.0
    for s in range(0, images.shape[0], batch):
        x = images[s:s + batch]
        mask = foreground_mask(x.permute(0, 3, 1, 2) * 2 - 1)[:, 0]
        se += float((((codec.decode(codec.encode(x)) - x) ** 2).sum(-1) * mask).sum())
        count += 3 * float(mask.sum())
    return float(-10 * np.log10(max(se / max(count, 1.0), 1e-10)))


def autoencoder_loss(vae, x: Tensor, kl_weight: float, gen: torch.Generator, foreground_weight: float = 1.0,
                     cell_colour_weight: float = 0.0) -> tuple[Tensor, Tensor]:
    """(loss, L1) for images x [B, 3, H, W] in [-1, 1]: the reconstruction loss of a decode of a posterior
    sample (`reconstruction_loss`; with the defaults plain L1), plus kl_weight times the KL to N(0, I)
    summed per image (SD's VAE convention). L1 is the plain mean absolute error, for the log."""
    post = vae.encode(x).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
    recon = vae.decode(z).sample
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    rec = reconstruction_loss(recon, x, foreground_weight, cell_colour_weight, factor)
    kl = 0.5 * (post.mean ** 2 + post.var - 1.0 - post.logvar).sum(dim=(1, 2, 3)).mean()
    return rec + kl_weight * kl, (recon - x).abs().mean().detach()


def _save_checkpoint(out_dir: Path, step: int, vae, opt, gen: torch.Generator, cfg: AutoencoderConfig,
                     name: str = "vae-checkpoint") -> None:
    write_checkpoint(out_dir, name, {"model.safetensors": vae.state_dict()}, opt, {"step": step, "config": asdict(cfg)},
                     gen)


def _load_checkpoint(out_dir: Path, vae, opt, gen: torch.Generator, cfg: AutoencoderConfig,
                     name: str = "vae-checkpoint") -> int:
    for folder in (name, f"{name}.old"):
        d = out_dir / folder
        if (d / "state.json").exists():
            state = json.loads((d / "state.json").read_text())
            saved = {k: v for k, v in state["config"].items() if k in ("block_out_channels", "latent_channels",
                                                                       "layers_per_block", "resolution")}
            now = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k in saved}
            if saved != now:
                raise UserError(f"cannot resume {d}: its autoencoder differs from the requested one ({saved} vs {now})")
            vae.load_state_dict(load_file(d / "model.safetensors"))
            opt.load_state_dict(torch.load(d / "optimizer.pt", weights_only=True))
            gen.set_state(torch.tensor(state["rng"], dtype=torch.uint8))
            return int(state["step"])
    return 0


def latent_std(vae, images: Tensor, batch: int = 64) -> float:
    """Standard deviation of the unscaled posterior means over images [N, H, W, 3] in [0, 1]."""
    with torch.no_grad():
        zs = [vae.encode(images[s:s + batch].permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean
              for s in range(0, images.shape[0], batch)]
    return float(torch.cat(zs).std())


def train_autoencoder(cfg: AutoencoderConfig, out_dir: Path, sample_images: Callable[[int, torch.Generator], Tensor],
                      held_out: Tensor, resume: bool = False, log: Callable[[str], None] = print,
                      stop=None) -> Path | None:
    """Train the autoencoder on images drawn by `sample_images(n, gen)` ([n, H, W, 3] in [0, 1]);
    `held_out` images measure it and set its scaling factor. Returns `out_dir/vae`, or None when
    `stop.requested` ended the run early (a checkpoint is written first)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    vae = build_autoencoder(cfg)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = _load_checkpoint(out_dir, vae, opt, gen, cfg) if resume else 0
    vae.train()
    last, t_start, step0, l1s = time.time(), time.time(), step, []
    while step < cfg.steps and not (stop is not None and stop.requested):
        for g in opt.param_groups:  # cosine from lr to lr / 10
            g["lr"] = float(cfg.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))))  # a float: weights-only reload
        x = sample_images(cfg.batch_size, gen).permute(0, 3, 1, 2) * 2 - 1
        loss, l1 = autoencoder_loss(vae, x.contiguous(), cfg.kl_weight, gen, cfg.foreground_weight,
                                    cfg.cell_colour_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        l1s.append(l1.item())
        if step % cfg.log_steps == 0:
            rate = (time.time() - t_start) / (step - step0)
            log(f"autoencoder step {step}/{cfg.steps} L1 {np.mean(l1s[-cfg.log_steps:]):.4f} {rate:.2f}s/step "
                f"eta {(cfg.steps - step) * rate / 60:.0f} min")
        if time.time() - last > cfg.checkpoint_seconds:
            _save_checkpoint(out_dir, step, vae, opt, gen, cfg)
            last = time.time()
    _save_checkpoint(out_dir, step, vae, opt, gen, cfg)
    if step < cfg.steps:
        return None
    vae.eval()
    vae.register_to_config(scaling_factor=1.0 / latent_std(vae, held_out))
    codec = LatentCodec(vae, cfg.resolution)
    psnr, fg = reconstruction_psnr(codec, held_out), foreground_psnr(codec, held_out)
    final = _write_vae(out_dir, vae, {"steps": step, "held_out_psnr_db": psnr, "held_out_foreground_psnr_db": fg,
                                      "held_out_images": int(held_out.shape[0]),
                                      "config": asdict(cfg)})
    log(f"autoencoder done: {step} steps, held-out PSNR {psnr:.2f} dB (objects alone {fg:.2f} dB), scaling factor "
        f"{vae.config.scaling_factor:.4f}")
    return final


def _write_vae(out_dir: Path, vae, info: dict) -> Path:
    """Swap `out_dir/vae/` in atomically: the weights and `training.json` (`info`)."""
    tmp, final = out_dir / "vae.tmp", out_dir / "vae"
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def refine_decoder(cfg: AutoencoderConfig, out_dir: Path, steps: int,
                   sample_images: Callable[[int, torch.Generator], Tensor], held_out: Tensor, resume: bool = False,
                   log: Callable[[str], None] = print, stop=None) -> Path | None:
    """Train the decoder of `out_dir/vae/` alone for `steps` more steps, on the reconstruction loss of
    decode(posterior mean), the latents a diffusion model sees. The encoder and scaling factor stay as
    they are, so the latent space (and a diffusion model already learning it) is unchanged. Rewrites `out_dir/vae/`; returns it,
    or None when `stop` ended the run early (checkpointed, resumable)."""
    from diffusers import AutoencoderKL

    out_dir = Path(out_dir)
    info = json.loads((out_dir / "vae" / "training.json").read_text())
    if info.get("decoder_steps", 0) >= steps:
        return out_dir / "vae"
    vae = AutoencoderKL.from_pretrained(out_dir / "vae", local_files_only=True)
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr * 0.3)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    name = "decoder-checkpoint"
    step = _load_checkpoint(out_dir, vae, opt, gen, cfg, name) if resume else 0
    codec = LatentCodec(vae, cfg.resolution)
    last, l1s = time.time(), []
    while step < steps and not (stop is not None and stop.requested):
        x = sample_images(cfg.batch_size, gen).permute(0, 3, 1, 2) * 2 - 1
        with torch.no_grad():
            z = codec.encode_pixels(x)
        recon = codec.decode_pixels(z)
        loss = reconstruction_loss(recon, x, cfg.foreground_weight, cfg.cell_colour_weight, codec.factor)
        l1 = (recon - x).abs().mean().detach()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        l1s.append(l1.item())
        if step % cfg.log_steps == 0:
            log(f"decoder step {step}/{steps} L1 {np.mean(l1s[-cfg.log_steps:]):.4f}")
        if time.time() - last > cfg.checkpoint_seconds:
            _save_checkpoint(out_dir, step, vae, opt, gen, cfg, name)
            last = time.time()
    _save_checkpoint(out_dir, step, vae, opt, gen, cfg, name)
    if step < steps:
        return None
    vae.eval()
    psnr, fg = reconstruction_psnr(codec, held_out), foreground_psnr(codec, held_out)
    log(f"decoder refined: {steps} steps, held-out PSNR {info['held_out_psnr_db']:.2f} -> {psnr:.2f} dB "
        f"(objects alone {fg:.2f} dB)")
    return _write_vae(out_dir, vae, {**info, "decoder_steps": steps, "encoder_psnr_db": info["held_out_psnr_db"],
                                     "held_out_psnr_db": psnr, "held_out_foreground_psnr_db": fg})
