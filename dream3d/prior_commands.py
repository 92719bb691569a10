"""`dream3d prior`: train, sample and measure the embedded prior."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dream3d.errors import UserError
from dream3d.priors.paths import DEFAULT_EMBEDDED

console = Console(stderr=True)

prior_app = typer.Typer(no_args_is_help=True, help="Train and sample the embedded prior.")


@prior_app.command("train")
def prior_train(
    out: Path = typer.Option(Path.home() / ".cache" / "dream3d" / "prior-train", help="Training folder (checkpoints, samples, prior/)."),
    steps: int = typer.Option(20000, help="Total optimisation steps."),
    batch_size: int = typer.Option(32, help="Images per step."),
    seed: int = typer.Option(0, help="Random seed."),
    resume: bool = typer.Option(True, "--resume/--restart", help="Continue from the folder's checkpoint if present."),
    shards: int = typer.Option(24, help="Pre-rendered data shards (2,048 images each) to make first; existing ones are kept."),
    suffix_prob: float = typer.Option(0.5, help="Share of captions that carry their view suffix (', back view')."),
    views: int = typer.Option(1, help="Views per group: 4 trains the joint multi-view prior (groups 90 degrees "
                              "apart, for --guidance mvsds); 1 the single-view one."),
    single_view_fraction: float = typer.Option(0.3, help="With --views above 1: share of steps on single views."),
    world: str = typer.Option("tiny-shapes", help="Objects, colours and vocabulary to train on: tiny-shapes "
                              "(10 colours x 12 objects) or toy-world (14 x 41)."),
    latent: bool = typer.Option(False, "--latent", help="Train a small VAE first, then a 64x64 prior in its latent "
                                "space (a StableDiffusionPipeline folder); off: the 32x32 pixel prior."),
    decoder_steps: int = typer.Option(0, help="With --latent: decoder-only VAE steps (sharper decodes, the same "
                                      "latents), run before the diffusion model goes on."),
    lr: float = typer.Option(2e-4, help="AdamW learning rate after warm-up."),
    device: str = typer.Option("cpu", help="cpu, or cuda: the model trains there, the data is drawn on the CPU."),
    init_from: Optional[Path] = typer.Option(None, help="A prior folder (e.g. an exported prior/) to warm-start a new "
                                             "run from: its weights, EMA and step count, a fresh optimizer."),
) -> None:
    """Train the embedded prior on procedural renders (resumable: Ctrl-C and run again)."""
    if "torch" not in sys.modules:
        # OpenMP reads this once, as torch loads: idle threads then sleep instead of spinning (on a
        # shared CPU spinning makes 2 threads slower than 1); the trainer's ThreadTuner reads it too.
        import os

        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from functools import partial

    from dream3d.priors.train_embedded import PriorTrainConfig, train_prior
    from dream3d.priors.worlds import get_world
    from dream3d.procedural.dataset import shard_path, world_root, write_shard

    if steps <= 0 or batch_size <= 0 or shards <= 0 or decoder_steps < 0 or lr <= 0:
        raise UserError("--steps, --batch-size, --shards and --lr must be positive, --decoder-steps at least 0")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if init_from is not None and not (init_from / "prior.json").is_file():
        raise UserError(f"--init-from {init_from}: not a prior folder (it has no prior.json)")
    if not 0.0 <= suffix_prob <= 1.0:
        raise UserError(f"--suffix-prob must be in [0, 1], got {suffix_prob}")
    if views < 1 or batch_size % views or not 0.0 <= single_view_fraction <= 1.0:
        raise UserError(f"--views must be at least 1 and divide --batch-size ({batch_size}), and "
                        f"--single-view-fraction must be in [0, 1]; got {views} and {single_view_fraction}")
    the_world = get_world(world)
    cfg = PriorTrainConfig(steps=steps, batch_size=batch_size, seed=seed, suffix_prob=suffix_prob, views=views,
                           single_view_fraction=single_view_fraction, world=world, latent=latent,
                           decoder_steps=decoder_steps, lr=lr, device=device,
                           init_from=str(init_from) if init_from is not None else None)
    res, root = cfg.model.resolution, world_root(None, the_world)
    todo = [partial(write_shard, i, 2048, res, world=the_world) for i in range(shards)
            if views == 1 and not shard_path(i, res, root).exists()]
    if views > 1:  # grouped shards of 2,048 images each; single-view steps read their rows one by one
        from dream3d.procedural.groups import group_shard_path, write_group_shard

        todo += [partial(write_group_shard, i, 2048 // views, res, views, world=the_world)
                 for i in range(shards) if not group_shard_path(i, res, views, root).exists()]
    if todo:  # each shard is rendered from its own index, so the data set is the same everywhere
        with Progress(TextColumn("[bold]data shards"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
                      TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("shards", total=len(todo))
            for write in todo:
                write()
                bar.advance(task)
    try:
        folder = train_prior(cfg, out, resume=resume)  # draws its own progress bar with loss and ETA
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: a checkpoint is in {out}; run the same command to continue")
        raise typer.Exit(130)
    console.print(f"[green]done[/]: prior written to {folder}")


@prior_app.command("sample")
def prior_sample(
    prompt: str = typer.Argument(..., help="e.g. \"a red cube\" or \"a blue chair, back view\"."),
    n: int = typer.Option(8, "--n", help="Samples."),
    guidance_scale: float = typer.Option(1.5, help="Classifier-free guidance scale (diffusers convention; the sampler's measured best)."),
    steps: int = typer.Option(25, help="DDIM steps."),
    seed: int = typer.Option(0, help="Random seed."),
    view_guidance_scale: float = typer.Option(5.0, help="Extra weight on what the view suffix changes (0: none)."),
    model: Optional[Path] = typer.Option(None, help="A prior folder (default: the embedded one)."),
    out: Path = typer.Option(Path("prior-samples.png"), help="Grid PNG to write."),
) -> None:
    """Sample the embedded prior and write a grid PNG."""
    import numpy as np
    from PIL import Image

    from dream3d.priors.loading import load_prior

    if n <= 0 or steps <= 0:
        raise UserError("--n and --steps must be positive")
    prior = load_prior(str(model) if model else DEFAULT_EMBEDDED, device="cpu")
    if not hasattr(prior, "sample"):
        raise UserError(f"{model} is not an embedded prior; `prior sample` samples dream3d's own priors")
    images = prior.sample([prompt], n=n, guidance_scale=guidance_scale, steps=steps, seed=seed,
                          view_guidance_scale=view_guidance_scale)
    grid = torch_grid(images, cols=min(n, 8))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid * 255).round().astype(np.uint8)).save(out)
    console.print(f"wrote {out}")


@prior_app.command("eval")
def prior_eval(
    model: Optional[Path] = typer.Option(None, help="A prior folder (default: the embedded one)."),
    n: int = typer.Option(8, "--n", help="Samples per prompt."),
    guidance_scale: float = typer.Option(1.5, help="Classifier-free guidance scale (the sampler's default)."),
    view_guidance_scale: float = typer.Option(5.0, help="View guidance scale (the sampler's default)."),
    out: Optional[Path] = typer.Option(None, help="Also write the result as JSON here."),
) -> None:
    """Sample every colour-object pair and read the samples with the shipped classifier."""
    import json

    from dream3d.evaluation.prior_quality import format_table, measure_prior
    from dream3d.priors.loading import load_prior

    if n <= 0:
        raise UserError(f"--n must be positive, got {n}")
    prior = load_prior(str(model) if model else DEFAULT_EMBEDDED, device="cpu")
    if not hasattr(prior, "sample"):
        raise UserError(f"{model} is not an embedded prior; `prior eval` measures dream3d's own priors")
    result = measure_prior(prior, n=n, guidance_scale=guidance_scale, view_guidance_scale=view_guidance_scale)
    Console().print(format_table(result))
    if out:
        out.write_text(json.dumps(result, indent=2))


def torch_grid(images, cols: int):
    """[N, H, W, 3] tensor in [0, 1] -> numpy grid image."""
    import numpy as np

    imgs = images.clamp(0, 1).cpu().numpy()
    n, h, w, _ = imgs.shape
    rows = -(-n // cols)
    grid = np.ones((rows * h, cols * w, 3), dtype=np.float32)
    for i, im in enumerate(imgs):
        grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = im
    return grid
