"""Train the evaluation classifier on freshly rendered procedural scenes.

    python -m dream3d.evaluation.train_classifier --out assets/classifier --steps 3000

Sphere-traced renders cost far more than a classifier step (about 6 s versus 0.3 s
for 64 images on one core), so the images come from a pool: `pool_size` renders
made at the start, of which `refresh_images` are replaced by new renders every
`refresh_every` steps. Every draw from the pool is augmented so that the classifier
also reads renders of generated 3D assets, which are blurrier, noisier and framed
differently than the procedural scenes: random zoom / shift / small roll, mirror,
blur or a low-resolution round trip, brightness and slight per-channel gain, noise.

With `--pool-source shards` the pool is filled (and refreshed) from the world's
pre-rendered grouped shards instead (`python -m dream3d.procedural.dataset --world W
--resolution 64 --views 4`; single views drawn from them, mirrored half the time),
which is what makes a slow-to-render world such as toy-world affordable on CPU. The
augmentations are the same either way.

A held-out set rendered from a separate seed measures accuracy at the end (always
fresh renders, never the shards, so it is not in the training data); the numbers
are written next to the weights (training.json: `render_seconds` counts every pool
and refresh render or shard draw, `holdout_seconds` the held-out renders,
`train_seconds` is the step loop's wall time, refreshes included).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dream3d.cameras.views import view_names
from dream3d.errors import UserError
from dream3d.evaluation.classifier import VIEW_LABELS, ClassifierConfig, ShapeClassifier, n_parameters
from dream3d.priors.worlds import DEFAULT_WORLD, World, get_world
from dream3d.procedural.dataset import make_labeled_batch

HOLDOUT_SEED_OFFSET = 1_000_003
"""Added to the training seed for the held-out set, so the two never share renders."""


@dataclass
class TrainConfig:
    steps: int = 3000
    """Optimiser steps."""
    batch_size: int = 64
    """Images per step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (one-cycle schedule)."""
    weight_decay: float = 5e-4
    """AdamW weight decay."""
    label_smoothing: float = 0.05
    """Cross-entropy label smoothing of every head."""
    view_weight: float = 1.0
    """Weight of the view loss (fronted objects only) against the object and colour losses."""
    pool_size: int = 8192
    """Procedural renders held in memory at once."""
    refresh_every: int = 40
    """Replace `refresh_images` of the pool every this many steps (0: never)."""
    refresh_images: int = 64
    """Renders replaced at each refresh."""
    holdout_size: int = 1200
    """Held-out renders (separate seed) for the final accuracy."""
    resolution: int = 64
    """Render and input resolution."""
    seed: int = 0
    """Seed of renders, augmentation and initialisation."""
    threads: int = 1
    """torch CPU threads (the renders and the steps share the machine with other jobs)."""
    world: str = DEFAULT_WORLD
    """The world whose objects and colours the classifier learns (dream3d.priors.worlds)."""
    pool_source: str = "renders"
    """Where pool images come from: "renders" (fresh, seeded) or "shards" (the world's grouped shards)."""
    shard_root: str = ""
    """Cache root of the shards ("" = the default, ~/.cache/dream3d/procedural)."""
    shard_views: int = 4
    """Views per group of the grouped shards read (their folder is r{resolution}-v2-groups{views})."""
    channels: str = "24,32,48,64,96"
    """Widths of the stem and conv blocks (ClassifierConfig.channels), comma-separated."""
    hidden: int = 128
    """Width of the shared layer before the heads."""


# ---------------------------------------------------------------- labels


def view_labels(azimuth: Tensor) -> Tensor:
    """[N] view class index (front / side / back) from camera azimuth [N] degrees, ignoring
    elevation: an overhead camera gets the name of the side it is above."""
    names = view_names(torch.zeros_like(azimuth), azimuth)
    return torch.tensor([VIEW_LABELS.index(n) for n in names], dtype=torch.long)


def render_set(n: int, gen: torch.Generator, cfg: TrainConfig, labels_cfg: ClassifierConfig,
               chunk: int = 64) -> tuple[Tensor, dict[str, Tensor]]:
    """n procedural renders as uint8 [n, H, W, 3] (4x smaller in memory) and their labels:
    object, colour and view indices [n] and the mask [n] of samples whose view counts."""
    world = get_world(cfg.world)
    if tuple(labels_cfg.objects) != world.objects or tuple(labels_cfg.colours) != world.colours:
        raise ValueError(f"the classifier's label lists must follow the {world.name} world's order")
    fronted = torch.tensor([o in labels_cfg.fronted_objects for o in world.objects])
    images, labels = [], []
    for start in range(0, n, chunk):
        b = make_labeled_batch(min(chunk, n - start), cfg.resolution, generator=gen, world=world)
        images.append((b.images.clamp(0, 1) * 255.0).round().to(torch.uint8))
        labels.append({"object": b.objects, "colour": b.colours, "view": view_labels(b.cameras.azimuth),
                       "view_mask": fronted[b.objects]})
    return torch.cat(images), {k: torch.cat([lab[k] for lab in labels]) for k in labels[0]}


def shard_pool(cfg: TrainConfig):
    """The world's grouped shards at the training resolution, loaded into memory."""
    from dream3d.procedural.groups import GroupShardPool

    world = get_world(cfg.world)
    pool = GroupShardPool(cfg.resolution, Path(cfg.shard_root) if cfg.shard_root else None, cfg.shard_views, world)
    if len(pool) == 0:
        raise UserError(f"no {world.name} shards in {pool.directory()}; write them with `python -m "
                        f"dream3d.procedural.dataset --world {world.name} --resolution {cfg.resolution} "
                        f"--views {cfg.shard_views}`")
    return pool


def shard_set(n: int, gen: torch.Generator, pool, labels_cfg: ClassifierConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """n single views drawn from grouped shards (mirrored half the time, with their cameras), in
    `render_set`'s format."""
    if tuple(labels_cfg.objects) != pool.world.objects or tuple(labels_cfg.colours) != pool.world.colours:
        raise ValueError(f"the classifier's label lists must follow the {pool.world.name} world's order")
    fronted = torch.tensor([o in labels_cfg.fronted_objects for o in pool.world.objects])
    b = pool.sample_views(n, gen)
    images = (b.images * 255.0).round().to(torch.uint8)
    return images, {"object": b.objects, "colour": b.colours, "view": view_labels(b.cameras.azimuth),
                    "view_mask": fronted[b.objects]}


def holdout_set(cfg: TrainConfig, labels_cfg: ClassifierConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """The held-out set: fresh renders from a seed of its own, whatever the pool's source."""
    hold_gen = torch.Generator().manual_seed(cfg.seed + HOLDOUT_SEED_OFFSET)
    return render_set(cfg.holdout_size, hold_gen, cfg, labels_cfg)


# ---------------------------------------------------------------- augmentation


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable blur of x [B, C, H, W] with a per-image sigma [B] in pixels (5-tap kernel)."""
    offsets = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-0.5 * (offsets[None] / sigma.clamp(min=1e-3)[:, None]) ** 2)  # [B, 5]
    k = k / k.sum(-1, keepdim=True)
    B, C, H, W = x.shape
    y = F.pad(x, (2, 2, 2, 2), mode="replicate")
    # Grouped convolution: one kernel per image, shared by its channels.
    kx = k.repeat_interleave(C, 0)[:, None, None, :]  # [B*C, 1, 1, 5]
    ky = k.repeat_interleave(C, 0)[:, None, :, None]  # [B*C, 1, 5, 1]
    y = F.conv2d(y.reshape(1, B * C, H + 4, W + 4), kx, groups=B * C)
    y = F.conv2d(y, ky, groups=B * C)
    return y.reshape(B, C, H, W)


def augment(images: Tensor, gen: torch.Generator) -> Tensor:
    """images [B, H, W, 3] uint8 or float in [0, 1] -> augmented [B, H, W, 3] float in [0, 1]."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    x = x.permute(0, 3, 1, 2)  # [B, 3, H, W]
    B, _, H, W = x.shape
    r = torch.rand(B, 12, generator=gen)
    # Zoom, shift and a small roll; the border is background, so replicate it.
    scale = 0.82 + 0.36 * r[:, 0]  # < 1 zooms in
    angle = torch.deg2rad(10.0 * (r[:, 1] - 0.5))
    flip = torch.where(r[:, 2] < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = scale * torch.cos(angle) * flip
    theta[:, 0, 1] = -scale * torch.sin(angle)
    theta[:, 1, 0] = scale * torch.sin(angle) * flip
    theta[:, 1, 1] = scale * torch.cos(angle)
    theta[:, :, 2] = 0.16 * (r[:, 3:5] - 0.5)
    grid = F.affine_grid(theta, [B, 3, H, W], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Softness: a blur, or a round trip through a lower resolution (renders made at 32 or 48 px).
    blur = r[:, 5] < 0.5
    if blur.any():
        x[blur] = gaussian_blur(x[blur], 0.3 + 0.9 * r[blur, 6])
    low = (r[:, 5] >= 0.5) & (r[:, 5] < 0.75)
    if low.any():
        size = 32 if bool(r[0, 7] < 0.5) else 48
        small = F.interpolate(x[low], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x[low] = F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)
    # Exposure and white balance, kept small: colour words are the labels.
    brightness = 0.88 + 0.24 * r[:, 8]
    gain = 1.0 + 0.06 * (torch.rand(B, 3, generator=gen) - 0.5)
    x = x * (brightness[:, None] * gain)[:, :, None, None]
    noise_sigma = 0.03 * r[:, 9]
    x = x + noise_sigma[:, None, None, None] * torch.randn(x.shape, generator=gen)
    return x.clamp(0.0, 1.0).permute(0, 2, 3, 1)


# ---------------------------------------------------------------- training


def losses(out, lab: dict[str, Tensor], cfg: TrainConfig) -> tuple[Tensor, dict[str, float]]:
    ce = lambda logits, y: F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)  # noqa: E731
    loss = ce(out.object_logits, lab["object"]) + ce(out.colour_logits, lab["colour"])
    mask = lab["view_mask"]
    if mask.any():
        loss = loss + cfg.view_weight * ce(out.view_logits[mask], lab["view"][mask])
    return loss, {"loss": float(loss.detach())}


@torch.no_grad()
def accuracy(model: ShapeClassifier, images: Tensor, lab: dict[str, Tensor]) -> dict[str, float]:
    """Top-1 accuracy of each head on images [N, H, W, 3] (uint8 or float); view on fronted objects only."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images
    out = model.predict(x)
    mask = lab["view_mask"]
    return {
        "object": float((out.object_logits.argmax(-1) == lab["object"]).float().mean()),
        "colour": float((out.colour_logits.argmax(-1) == lab["colour"]).float().mean()),
        "view": float((out.view_logits[mask].argmax(-1) == lab["view"][mask]).float().mean()) if mask.any() else math.nan,
        "n": int(images.shape[0]),
        "n_view": int(mask.sum()),
    }


def label_config(world: World | None = None) -> ClassifierConfig:
    """The label lists of a classifier for `world` (default tiny-shapes)."""
    world = world or get_world(DEFAULT_WORLD)
    return ClassifierConfig(objects=list(world.objects), colours=list(world.colours),
                            fronted_objects=list(world.fronted_objects))


def train(cfg: TrainConfig, out_dir: Path | None = None, log=print) -> tuple[ShapeClassifier, dict]:
    """Train a classifier; save it to `out_dir` when given. Returns the model and its metrics."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model_cfg = label_config(get_world(cfg.world))
    model_cfg.resolution = cfg.resolution
    model_cfg.channels = [int(c) for c in cfg.channels.split(",")]
    model_cfg.hidden = cfg.hidden
    model = ShapeClassifier(model_cfg).to(memory_format=torch.channels_last)
    log(f"classifier: {n_parameters(model):,} parameters ({4 * n_parameters(model) / 1e6:.2f} MB float32)")

    t0 = time.perf_counter()
    if cfg.pool_source == "shards":
        shards = shard_pool(cfg)
        draw = lambda n: shard_set(n, gen, shards, model_cfg)  # noqa: E731
        log(f"{len(shards)} shard images in {shards.directory()}")
    elif cfg.pool_source == "renders":
        draw = lambda n: render_set(n, gen, cfg, model_cfg)  # noqa: E731
    else:
        raise UserError(f"unknown pool source {cfg.pool_source!r}; use renders or shards")
    pool, pool_lab = draw(cfg.pool_size)
    render_seconds = time.perf_counter() - t0
    log(f"filled a pool of {cfg.pool_size} images from {cfg.pool_source} in {render_seconds:.0f} s")

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.15)
    refresh_at = 0
    t1 = time.perf_counter()
    running = None
    for step in range(cfg.steps):
        if cfg.refresh_every and step and step % cfg.refresh_every == 0:
            t_r = time.perf_counter()
            new, new_lab = draw(cfg.refresh_images)
            idx = (torch.arange(cfg.refresh_images) + refresh_at) % cfg.pool_size
            refresh_at = int(idx[-1]) + 1
            pool[idx] = new
            for k in pool_lab:
                pool_lab[k][idx] = new_lab[k]
            render_seconds += time.perf_counter() - t_r
        pick = torch.randint(0, cfg.pool_size, (cfg.batch_size,), generator=gen)
        lab = {k: v[pick] for k, v in pool_lab.items()}
        x = model.to_input(augment(pool[pick], gen)).contiguous(memory_format=torch.channels_last)
        model.train()
        loss, logs = losses(model(x), lab, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = logs["loss"] if running is None else 0.98 * running + 0.02 * logs["loss"]
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            log(f"step {step + 1:5d}/{cfg.steps}  loss {running:.3f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{time.perf_counter() - t1:.0f} s")
    train_seconds = time.perf_counter() - t1

    t_h = time.perf_counter()
    hold, hold_lab = holdout_set(cfg, model_cfg)
    holdout_seconds = time.perf_counter() - t_h
    model.eval()
    clean = accuracy(model, hold, hold_lab)
    aug = accuracy(model, augment(hold, torch.Generator().manual_seed(cfg.seed + 7)), hold_lab)
    metrics = {
        "holdout_clean": clean, "holdout_augmented": aug, "parameters": n_parameters(model),
        "render_seconds": round(render_seconds, 1), "train_seconds": round(train_seconds, 1),
        "holdout_seconds": round(holdout_seconds, 1),
        "config": asdict(cfg),
    }
    log(f"held-out ({clean['n']} renders, seed {cfg.seed + HOLDOUT_SEED_OFFSET}): object {clean['object']:.3f}  "
        f"colour {clean['colour']:.3f}  view {clean['view']:.3f} (fronted, n={clean['n_view']})")
    log(f"held-out augmented: object {aug['object']:.3f}  colour {aug['colour']:.3f}  view {aug['view']:.3f}")
    if out_dir is not None:
        model = model.to(memory_format=torch.contiguous_format)
        model.save_pretrained(out_dir)
        (Path(out_dir) / "training.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log(f"saved to {out_dir}")
    return model, metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("assets/classifier"), help="Folder for the weights.")
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    train(TrainConfig(**args), out)


if __name__ == "__main__":
    main()
