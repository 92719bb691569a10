"""Timings for the GPU check: training steps of every CPU preset's stages on the embedded prior,
and one SDS step of a Stable-Diffusion-2.1-sized UNet and VAE built from config (random weights).

    python benchmarks/gpu_timings.py --device cuda          # the table the README quotes
    python benchmarks/gpu_timings.py --device cpu --tiny    # the same code on tiny settings
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

SD21_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=1024,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, use_linear_projection=True)
SD21_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2)
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, cross_attention_dim=16,
                 block_out_channels=(8, 16), attention_head_dim=2, norm_num_groups=4,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def preset_step_ms(preset: str, device: torch.device, steps: int, resolution: int | None) -> list[tuple[str, float]]:
    """Median ms per training step of each stage of `preset` (fresh stages, the embedded prior)."""
    from dream3d import presets
    from dream3d.pipeline import build_stage, load_prior_for

    overrides = [f"train.resolution={resolution}"] if resolution else []
    cfg = presets.resolve(preset, {"prompt": "a red cube", "device": device.type}, overrides)
    prior, prompt = load_prior_for(cfg, device)
    rows = []
    for index, stage in enumerate(cfg.stages):
        trainer = build_stage(cfg, index, prior, prompt, Path(tempfile.mkdtemp()), device)
        times = []
        for step in range(steps):
            sync(device)
            start = time.perf_counter()
            trainer.step(step)
            sync(device)
            times.append(time.perf_counter() - start)
        trainer.guidance.close()
        rows.append((f"{preset} / {stage.name}", 1000 * statistics.median(times[steps // 4:])))
    return rows


def sd_step_ms(device: torch.device, tiny: bool, repeats: int) -> float:
    """Median ms of one SDS step at 512^2: VAE encode with gradient, CFG UNet pass (batch 2), backward."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet = UNet2DConditionModel(**(TINY_UNET if tiny else SD21_UNET)).to(device, dtype).eval().requires_grad_(False)
    vae = AutoencoderKL(**(TINY_VAE if tiny else SD21_VAE)).to(device, dtype).eval().requires_grad_(False)
    side, text = (32, 16) if tiny else (512, 1024)
    image = torch.rand(1, 3, side, side, device=device, dtype=dtype, requires_grad=True)
    embeds = torch.randn(2, 77, text, device=device, dtype=dtype)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        latents = vae.encode(image * 2 - 1).latent_dist.sample() * 0.18215
        noise = torch.randn_like(latents)
        t = torch.tensor([500, 500], device=device)
        with torch.no_grad():
            eps = unet(torch.cat([latents + noise] * 2), t, encoder_hidden_states=embeds).sample
        grad = (eps[:1] + 7.5 * (eps[1:] - eps[:1]) - noise).detach()
        (latents * grad).sum().backward()
        sync(device)
        times.append(time.perf_counter() - start)
        image.grad = None
    return 1000 * statistics.median(times[1:] or times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny UNet/VAE, 2 presets, few steps: checks the code, times nothing")
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    from dream3d.presets import preset_names

    cpu_presets = [p for p in preset_names() if not p.endswith("-full")]
    if args.tiny:
        cpu_presets = ["fast", "gaussian"]
    steps = args.steps or (3 if args.tiny else 40)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    print(f"{time.strftime('%Y-%m-%d')}, {name}, torch {torch.__version__}; median over the last 3/4 of {steps} steps")
    print("| what | ms per step |")
    print("| --- | --- |")
    for preset in cpu_presets:
        for label, ms in preset_step_ms(preset, device, steps, 16 if args.tiny else None):
            print(f"| {label} | {ms:.1f} |", flush=True)
    label = "tiny UNet + VAE SDS step" if args.tiny else "SD 2.1-sized UNet + VAE SDS step, fp16, 512^2"
    print(f"| {label} | {sd_step_ms(device, args.tiny, 3 if args.tiny else 10):.1f} |")


if __name__ == "__main__":
    main()
