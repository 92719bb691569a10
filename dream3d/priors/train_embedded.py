"""Training of the embedded prior on procedural renders.

`train_prior(cfg, out_dir, resume)` is seeded and resumable: every few minutes
it swaps in a complete checkpoint directory (weights, EMA, optimizer, RNG state,
step), exports the EMA weights as a loadable prior folder (`out_dir/prior/`), and
now and then writes a sample grid (`out_dir/samples/step-XXXXXX.png`).

    dream3d prior train --out DIR --steps 20000      (the one entry point: dream3d/cli.py)

With `latent` it first trains a small VAE on the renders (`autoencoder`, kept in
`out_dir/vae/`, resumable on its own) and then the diffusion model on its latents, and
exports a folder that `StableDiffusionPipeline` also loads (`prior_folder`).

With `views` N > 1 it trains the joint multi-view prior: most steps see groups of N
views of one scene 90 degrees apart (`procedural.groups`), one t per group, the UNet's
self-attention spanning each group; a `single_view_fraction` of the steps see single
views (N = 1, single rows of the grouped shards), so the prior stays a 2D prior too.
`views` = 1 (the default) is the single-view training, draw for draw.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dream3d.errors import UserError
from dream3d.priors.autoencoder import AutoencoderConfig, refine_decoder, train_autoencoder
from dream3d.priors.codec import LatentCodec
from dream3d.priors.worlds import DEFAULT_WORLD, World, get_world
from dream3d.priors.embedded_model import EmbeddedDiffusionModel, EmbeddedModelConfig, build_scheduler, parameter_count
from dream3d.priors.prior_folder import PriorCard, save_prior
from dream3d.priors.training_aids import EMA, ThreadTuner, progress_bar, write_checkpoint, write_sample_grid
from dream3d.procedural.dataset import DATA_VERSION, LabeledBatch, ShardPool, make_labeled_batch
from dream3d.procedural.groups import GroupShardPool, make_group_batch
from dream3d.training.stop import graceful_stop


def latent_model_config() -> EmbeddedModelConfig:
    """The latent prior: 64x64 renders as 8 x 16 x 16 latents (the default VAE's), attention (and joint views) at 8x8 and 4x4,
    the camera as one cross-attention token. A training step costs about what one of the 32x32 pixel
    prior did, where a 64x64 pixel UNet of like depth costs about three times as much (README, Priors)."""
    return EmbeddedModelConfig(resolution=64, block_out_channels=(64, 128, 192), attention_levels=(False, True, True),
                               self_attention_levels=(False, True, True), layers_per_block=1, norm_num_groups=16,
                               attention_head_dim=32, latent_channels=AutoencoderConfig.latent_channels,
                               latent_factor=4, camera_tokens=1)


@dataclass
class PriorTrainConfig:
    model: EmbeddedModelConfig = field(default_factory=lambda: EmbeddedModelConfig(
        block_out_channels=(32, 64, 128), layers_per_block=1, norm_num_groups=16, attention_head_dim=32))
    """Network architecture."""
    steps: int = 20000
    """Total optimisation steps."""
    batch_size: int = 32
    """Images per step."""
    lr: float = 2e-4
    """AdamW learning rate after warm-up."""
    warmup_steps: int = 250
    """Linear learning-rate warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    ema_decay: float = 0.999
    """EMA decay of the exported weights (ramped up over the first steps)."""
    text_dropout: float = 0.1
    """Probability of training a sample with the empty prompt (classifier-free guidance)."""
    camera_dropout: float = 0.15
    """Probability of training a sample without its camera (zeros)."""
    min_snr_gamma: float = 5.0
    """Min-SNR loss weighting (0 disables): weight min(SNR, gamma) / SNR."""
    seed: int = 0
    """Seed of every random draw of the run."""
    data: str = "shards"
    """'shards' (pre-rendered, see dream3d.procedural.dataset) or 'render' (on the fly, slow)."""
    data_root: str | None = None
    """Cache root holding the shards (default ~/.cache/dream3d/procedural)."""
    suffix_prob: float = 0.5
    """Fraction of captions with a view suffix."""
    world: str = DEFAULT_WORLD
    """The world (objects, colours, vocabulary) to train on: tiny-shapes or toy-world (dream3d.priors.worlds)."""
    threads: int = 0
    """torch threads; 0 = tune between 1 and 2 by measured step time (the machine is shared)."""
    device: str = "cpu"
    """Where the model trains: cpu, or cuda (the data is drawn on the CPU either way, so a run is the
    same draw for draw, up to the float arithmetic of the device)."""
    bf16: bool = False
    """bf16 autocast for the forward pass."""
    checkpoint_seconds: float = 240.0
    """Checkpoint at least this often (wall time)."""
    checkpoint_steps: int = 500
    """...and at least every this many steps."""
    sample_steps: int = 1000
    """Write a sample grid every this many steps (0 disables)."""
    log_steps: int = 25
    """Print a log line every this many steps."""
    views: int = 1
    """Views per training group: 4 trains the joint multi-view prior (views 90 degrees apart); 1 the single-view one."""
    single_view_fraction: float = 0.3
    """With views > 1: share of steps trained on single views (N = 1), so the joint prior stays a 2D prior."""
    latent: bool = False
    """Train a VAE first (`autoencoder`), then the diffusion model in its latent space (`model` must be latent)."""
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    """The VAE of a latent run (its resolution must be the model's)."""
    decoder_steps: int = 0
    """With `latent`: steps of decoder-only training after the VAE's own (sharper decodes, same latents)."""
    init_from: str | None = None
    """A prior folder to warm-start a new run from (`warm_start`); ignored when the run has a checkpoint."""

    def __post_init__(self):
        if self.latent and not self.model.latent_channels:
            self.model = latent_model_config()
        if self.latent and self.autoencoder.resolution != self.model.resolution:
            self.autoencoder = dataclasses.replace(self.autoencoder, resolution=self.model.resolution)
        if self.views > 1 and not self.model.joint_views:  # a copy: a shared model config is never changed
            self.model = dataclasses.replace(self.model, joint_views=True)


def _batch(cfg: PriorTrainConfig, pool: ShardPool | None, gen: torch.Generator,
           group_pool: ShardPool | None = None) -> tuple[LabeledBatch, int]:
    """(batch, views per group): groups of `cfg.views` on most steps of a joint-view run, else single views."""
    if cfg.views > 1 and float(torch.rand((), generator=gen)) >= cfg.single_view_fraction:
        groups = cfg.batch_size // cfg.views
        if group_pool is not None:
            return group_pool.sample(groups, gen, suffix_prob=cfg.suffix_prob), cfg.views
        return make_group_batch(groups, cfg.model.resolution, cfg.views, generator=gen,
                                suffix_prob=cfg.suffix_prob, world=get_world(cfg.world)), cfg.views
    if group_pool is not None:  # single rows of the grouped shards: the same data, no second set to render
        return group_pool.sample_views(cfg.batch_size, gen, suffix_prob=cfg.suffix_prob), 1
    if pool is not None:
        return pool.sample(cfg.batch_size, gen, suffix_prob=cfg.suffix_prob), 1
    return make_labeled_batch(cfg.batch_size, cfg.model.resolution, generator=gen, suffix_prob=cfg.suffix_prob,
                              world=get_world(cfg.world)), 1


def training_loss(model: EmbeddedDiffusionModel, alphas_cumprod: torch.Tensor, batch: LabeledBatch,
                  cfg: PriorTrainConfig, gen: torch.Generator, n_views: int = 1,
                  codec: LatentCodec | None = None) -> torch.Tensor:
    """Min-SNR-weighted eps-prediction loss on one batch, with text and camera dropout. With `n_views`
    N > 1 the batch is groups of N views (group-major): one t, text and camera dropout per group.
    A latent model learns the latents of its frozen VAE (`codec`)."""
    B = batch.images.shape[0]
    G = B // n_views
    dev = next(model.parameters()).device
    per_view = lambda v: v.repeat_interleave(n_views, 0)  # noqa: E731 - per group -> per view (N = 1: as is)
    x0 = batch.images.permute(0, 3, 1, 2).to(dev) * 2.0 - 1.0
    if codec is not None:
        with torch.no_grad():
            x0 = codec.encode_pixels(x0)
    x0 = x0.contiguous(memory_format=torch.channels_last)
    t = per_view(torch.randint(0, alphas_cumprod.shape[0], (G,), generator=gen))
    eps = torch.randn(x0.shape, generator=gen).to(dev)  # drawn on the CPU: the same noise on every device
    a = alphas_cumprod.to(dev)[t.to(dev)].view(B, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    drop_text = per_view(torch.rand(G, generator=gen) < cfg.text_dropout).tolist()
    prompts = ["" if d else c for c, d in zip(batch.captions, drop_text)]
    keep_cam = per_view((torch.rand(G, generator=gen) >= cfg.camera_dropout).float())[:, None]
    pose = (batch.cameras.pose_features() * keep_cam).to(dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        pred = model(x_t, t.to(dev), model.embed(prompts), pose, n_views=n_views)
    per_sample = ((pred.float() - eps) ** 2).mean(dim=(1, 2, 3))
    if cfg.min_snr_gamma > 0:
        snr = a.view(B) / (1 - a.view(B))
        per_sample = per_sample * torch.clamp(snr, max=cfg.min_snr_gamma) / snr
    return per_sample.mean()


# ---------------------------------------------------------------------------- checkpoints


def _save_checkpoint(out_dir: Path, step: int, model, ema: EMA, opt, gen: torch.Generator, cfg: PriorTrainConfig,
                     start_step: int = 0):
    """Write `checkpoint/` atomically: fill a temporary directory, then swap it in."""
    write_checkpoint(out_dir, "checkpoint", {"model.safetensors": model.state_dict(), "ema.safetensors": ema.shadow},
                     opt, {"step": step, "start_step": start_step, "config": asdict(cfg)}, gen)


def _load_checkpoint(out_dir: Path, model, ema: EMA, opt, gen: torch.Generator,
                     device: torch.device = torch.device("cpu")) -> tuple[int, int]:
    """Restore the newest complete checkpoint; returns its step and the step the run started at
    (not 0 for a warm-started run); (0, 0) if there is none."""
    for name in ("checkpoint", "checkpoint.old"):
        d = out_dir / name
        if (d / "state.json").exists():
            model.load_state_dict(load_file(d / "model.safetensors"))
            ema.shadow = load_file(d / "ema.safetensors", device=str(device))
            opt.load_state_dict(torch.load(d / "optimizer.pt", weights_only=True, map_location=device))
            state = json.loads((d / "state.json").read_text())
            gen.set_state(torch.tensor(state["rng"], dtype=torch.uint8))
            return int(state["step"]), int(state.get("start_step", 0))
    return 0, 0


def _check_same_architecture(out_dir: Path, cfg: PriorTrainConfig) -> None:
    for name in ("checkpoint", "checkpoint.old"):
        state = out_dir / name / "state.json"
        if state.exists():
            defaults = json.loads(json.dumps(asdict(EmbeddedModelConfig())))  # fields added since it was saved
            saved = {**defaults, **json.loads(state.read_text())["config"]["model"]}
            now = json.loads(json.dumps(asdict(cfg.model)))
            if saved != now:
                diff = {k: (saved.get(k), now.get(k)) for k in set(saved) | set(now) if saved.get(k) != now.get(k)}
                raise UserError(f"cannot resume {out_dir}: its model differs from the requested one (saved, requested): "
                                f"{diff}; use a new output folder or the saved model settings")
            saved_world = json.loads(state.read_text())["config"].get("world", DEFAULT_WORLD)
            if saved_world != cfg.world:
                raise UserError(f"cannot resume {out_dir}: it trains the {saved_world} world, not {cfg.world}; "
                                "use a new output folder")
            return


def export_ema_prior(model, ema: EMA, scheduler, out_dir: Path, step: int, cfg: PriorTrainConfig,
                     codec: LatentCodec | None = None) -> Path:
    """Save the EMA weights as a prior folder (`out_dir/prior`), swapped in atomically."""
    import copy

    ema_model = copy.deepcopy(model).cpu()
    ema.copy_to(ema_model)
    tmp, final = out_dir / "prior.tmp", out_dir / "prior"
    shutil.rmtree(tmp, ignore_errors=True)
    notes = [f"data: procedural renders of the {cfg.world} world (dream3d.procedural, data version {DATA_VERSION}), "
             + ("pre-rendered shards, mirrored left-right with their cameras" if cfg.data == "shards"
                else "rendered on the fly") + f"; {cfg.suffix_prob:.0%} of captions carry a view suffix",
             f"dropout: text {cfg.text_dropout}, camera {cfg.camera_dropout}; min-SNR gamma {cfg.min_snr_gamma}; "
             f"AdamW lr {cfg.lr}; EMA decay {cfg.ema_decay}; seed {cfg.seed}"]
    if cfg.views > 1:
        notes.append(f"joint views: {1 - cfg.single_view_fraction:.0%} of steps on groups of {cfg.views} views of one "
                     "scene 90 degrees apart at a shared random elevation and starting azimuth (one t per group), "
                     "the rest on single views")
    if codec is not None:
        notes.append(f"latent space: a VAE trained first on the same renders ({cfg.autoencoder.steps} steps at batch "
                     f"{cfg.autoencoder.batch_size}; `dream3d.priors.autoencoder`)")
    save_prior(ema_model, scheduler, tmp, PriorCard(train_steps=step, batch_size=cfg.batch_size, notes=notes),
               vae=copy.deepcopy(codec.vae).cpu() if codec is not None else None)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


# ---------------------------------------------------------------------------- loop


def train_prior(cfg: PriorTrainConfig, out_dir: Path, resume: bool = False,
                on_step: Callable[[int, dict], None] | None = None) -> Path:
    """Train (or continue training) the embedded prior; returns the exported prior folder."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if cfg.views < 1 or (cfg.views > 1 and cfg.batch_size % cfg.views):
        raise UserError(f"views must be at least 1 and divide the batch size ({cfg.batch_size}), got {cfg.views}")
    if not 0.0 <= cfg.single_view_fraction <= 1.0:
        raise UserError(f"single_view_fraction must be in [0, 1], got {cfg.single_view_fraction}")
    if cfg.latent != bool(cfg.model.latent_channels):
        raise UserError("a latent run needs a latent model (latent_channels > 0) and a pixel run a pixel model")
    if cfg.latent and cfg.model.latent_channels != cfg.autoencoder.latent_channels:
        raise UserError(f"the diffusion model has {cfg.model.latent_channels} latent channels and the VAE "
                        f"{cfg.autoencoder.latent_channels}; they must agree")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this torch sees no CUDA device (torch.cuda.is_available() is False)")
    tuner = ThreadTuner(cfg.threads)
    torch.manual_seed(cfg.seed)  # weight initialisation, on the CPU: the same start on every device
    model = EmbeddedDiffusionModel(cfg.model, world=get_world(cfg.world)).to(device, memory_format=torch.channels_last)
    scheduler = build_scheduler(cfg.model)
    alphas_cumprod = scheduler.alphas_cumprod.float()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    if resume:
        _check_same_architecture(out_dir, cfg)
    step, start_step = _load_checkpoint(out_dir, model, ema, opt, gen, device) if resume else (0, 0)
    if step == 0 and cfg.init_from:
        from dream3d.priors.warm_start import warm_start

        step = start_step = warm_start(model, Path(cfg.init_from), cfg.world, out_dir)
        ema = EMA(model, cfg.ema_decay)
        gen.manual_seed(cfg.seed + step)  # new data draws, not a replay of the first run's
    root = Path(cfg.data_root) if cfg.data_root else None
    world = get_world(cfg.world)
    pool = ShardPool(cfg.model.resolution, root, world) if cfg.data == "shards" else None
    group_pool = (GroupShardPool(cfg.model.resolution, root, cfg.views, world)
                  if pool is not None and cfg.views > 1 else None)
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    plain_log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    codec = None
    if cfg.latent:
        codec = _trained_codec(cfg, out_dir, group_pool or pool, world, resume, plain_log)
        codec.vae.to(device)
    bar = progress_bar(step, cfg.steps) if sys.stdout.isatty() else None
    log = (lambda msg: bar.console.log(msg)) if bar else plain_log  # noqa: E731
    log(f"start step {step}/{cfg.steps}; unet {parameter_count(model.unet):,} params, text encoder "
        f"{parameter_count(model.text_encoder):,}; data {'%d shard images' % len(pool) if pool else 'rendered'}"
        + (f"; groups of {cfg.views} views" + (f" ({len(group_pool)} shard images)" if group_pool else "")
           if cfg.views > 1 else ""))
    model.train()
    with graceful_stop() as stop:
        last_ckpt, t_start, step0, losses = time.time(), time.time(), step, []
        while step < cfg.steps and not stop.requested:
            t0 = time.time()
            if pool is not None and step % 200 == 0:
                pool.refresh()
                if group_pool is not None:
                    group_pool.refresh()
            batch, n_views = _batch(cfg, pool, gen, group_pool)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * min(1.0, (step - start_step + 1) / max(1, cfg.warmup_steps))
            loss = training_loss(model, alphas_cumprod, batch, cfg, gen, n_views, codec)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
            opt.step()
            ema.update(model, step)
            step += 1
            dt = time.time() - t0
            tuner.record(step, dt)
            loss_value = loss.item()
            losses.append(loss_value)
            info = {"loss": loss_value, "grad_norm": grad_norm, "seconds": dt, "threads": tuner.current}
            if on_step is not None:
                on_step(step, info)
            if bar is not None:
                bar.update(bar.task_ids[0], completed=step, loss=float(np.mean(losses[-cfg.log_steps:])))
            if bar is None and (step % cfg.log_steps == 0 or step == cfg.steps):
                rate = (time.time() - t_start) / max(1, step - step0)
                eta = (cfg.steps - step) * rate
                log(f"step {step}/{cfg.steps} loss {np.mean(losses[-cfg.log_steps:]):.4f} grad {grad_norm:.3f} "
                    f"{rate:.2f}s/step threads {tuner.current} eta {eta / 3600:.1f}h"
                    + (f" data {len(pool)}" if pool else ""))
            final = step == cfg.steps
            if final or time.time() - last_ckpt > cfg.checkpoint_seconds or step % cfg.checkpoint_steps == 0:
                _save_checkpoint(out_dir, step, model, ema, opt, gen, cfg, start_step)
                export_ema_prior(model, ema, scheduler, out_dir, step, cfg, codec)
                last_ckpt = time.time()
                log(f"checkpoint at step {step}")
            if cfg.sample_steps and (step % cfg.sample_steps == 0 or final):
                t1 = time.time()
                p = write_sample_grid(model, ema, scheduler, out_dir / "samples" / f"step-{step:06d}.png",
                                      codec=codec)
                log(f"samples {p} ({time.time() - t1:.0f}s)")
    if bar is not None:
        bar.stop()
    if stop.requested:  # Ctrl-C / SIGTERM: the step in flight finished; keep it and say how to go on
        _save_checkpoint(out_dir, step, model, ema, opt, gen, cfg, start_step)
        export_ema_prior(model, ema, scheduler, out_dir, step, cfg, codec)
        log(f"stopped by {stop.signal_name} at step {step}; checkpoint written, continue with `dream3d prior train`")
        raise KeyboardInterrupt
    return export_ema_prior(model, ema, scheduler, out_dir, step, cfg, codec)


def _trained_codec(cfg: PriorTrainConfig, out_dir: Path, pool: ShardPool | None, world: World, resume: bool,
                   log: Callable[[str], None]) -> LatentCodec:
    """The frozen VAE of a latent run: `out_dir/vae/` when it is there, else trained now (resumable),
    on single images of the shards (or fresh renders), measured on 256 renders of its own seed."""
    from diffusers import AutoencoderKL

    folder, res = out_dir / "vae", cfg.autoencoder.resolution

    def images(n: int, gen: torch.Generator) -> torch.Tensor:
        if pool is not None and len(pool):
            return pool.sample_views(n, gen).images  # mirrored half the time
        return make_labeled_batch(n, res, generator=gen, world=world).images

    def held_out() -> torch.Tensor:
        return make_labeled_batch(256, res, seed=987_654, world=world).images

    def finished(done: Path | None, stop) -> None:
        if done is None:
            log(f"stopped by {stop.signal_name}; the autoencoder's checkpoint is written, run again to continue")
            raise KeyboardInterrupt

    if not (folder / "config.json").exists():
        log(f"training the autoencoder first ({cfg.autoencoder.steps} steps; held out: 256 fresh renders)")
        with graceful_stop() as stop:
            finished(train_autoencoder(cfg.autoencoder, out_dir, images, held_out(), resume=resume, log=log,
                                       stop=stop), stop)
    if cfg.decoder_steps and json.loads((folder / "training.json").read_text()).get("decoder_steps", 0) < \
            cfg.decoder_steps:
        log(f"refining the decoder ({cfg.decoder_steps} steps; the latents stay as they are)")
        with graceful_stop() as stop:
            finished(refine_decoder(cfg.autoencoder, out_dir, cfg.decoder_steps, images, held_out(), resume=resume,
                                    log=log, stop=stop), stop)
    vae = AutoencoderKL.from_pretrained(folder, local_files_only=True)
    vae.eval().requires_grad_(False)
    return LatentCodec(vae, cfg.model.resolution)
