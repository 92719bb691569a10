"""The `dream3d` command line."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional



def idle_thread_policy(busy: float, cores: int) -> str | None:
    """The OMP_WAIT_POLICY for this process: "PASSIVE" (idle threads sleep) when other work already
    keeps half the cores busy, else None (OpenMP's default: idle threads spin). Measured on our 2
    cores, 2026-12-02: beside other jobs a spinning second thread made `generate --image` cost 5x
    the CPU time of one thread (README, Image to 3D); on an idle machine sleeping threads made the
    default `generate "a red cube"` take 148 s instead of 93 s."""
    return "PASSIVE" if busy >= 0.5 * cores else None


def busy_cores(interval: float = 0.1) -> float:
    """Cores other processes keep busy now: the non-idle share of /proc/stat's CPU time over `interval`
    (this process sleeps meanwhile), times the cores. A load average would also count the work of a
    run that has just ended. 0 where /proc/stat is not readable."""
    import time

    def totals() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    try:
        (t0, i0), _, (t1, i1) = totals(), time.sleep(interval), totals()
    except (OSError, ValueError, IndexError):
        return 0.0
    return (1.0 - (i1 - i0) / max(1, t1 - t0)) * (os.cpu_count() or 1)


def set_wait_policy(environ, measure_busy=busy_cores) -> None:
    """Put the wait policy for this machine's load into `environ`, unless it already has one."""
    if "OMP_WAIT_POLICY" not in environ:
        policy = idle_thread_policy(measure_busy(), os.cpu_count() or 1)
        if policy:
            environ["OMP_WAIT_POLICY"] = policy


if "torch" not in sys.modules:  # OpenMP reads it once, as torch loads; `prior train`'s ThreadTuner too
    set_wait_policy(os.environ)

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich import box
from rich.table import Table

from dream3d.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Text to 3D assets by score distillation.")
console = Console(stderr=True)
STATE = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks.")) -> None:
    STATE["debug"] = debug


def step_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>6.2f} it/s"), TextColumn("ETA"), TimeRemainingColumn(),
        TextColumn("|g| {task.fields[gnorm]:.3g}"), TimeElapsedColumn(), console=console,
    )


@app.command()
def generate(
    ctx: typer.Context,
    prompt: Optional[str] = typer.Argument(None, help="What to make, e.g. \"a red cube\"."),
    preset: Optional[str] = typer.Option(None, help="Recipe to start from (see `dream3d list`); with --image the "
                                         "default is `image`."),
    representation: Optional[str] = typer.Option(None, help="3D representation name."),
    guidance: Optional[str] = typer.Option(None, help="Guidance name."),
    model: Optional[str] = typer.Option(None, help="Prior: tiny-shapes (embedded), a Hugging Face id or a local folder."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    resolution: Optional[int] = typer.Option(None, help="Training render resolution in pixels."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda."),
    negative: Optional[str] = typer.Option(None, "--negative", help="Negative prompt."),
    allow_unknown_words: bool = typer.Option(False, help="Proceed when the embedded prior does not know a word."),
    out: Path = typer.Option(Path("outputs"), help="Folder that receives the run folder."),
    resume: Optional[Path] = typer.Option(None, help="Continue an interrupted run from its folder, with the settings "
                                          "saved in it: no other option applies to a resumed run, and one given "
                                          "with --resume (a prompt, --seed, --set, --out, ...) is refused."),
    shape: Optional[Path] = typer.Option(None, "--shape", help="A coarse guide mesh that steers the geometry, "
                                         "used as given in the scene cube [-1, 1]^3 (+Y up, front +Z)."),
    image: Optional[Path] = typer.Option(None, "--image", help="A photo of the object (alpha channel or plain "
                                         "background) that fixes its front view; the prompt says what it shows "
                                         "and guides the other sides (image.* settings: the camera, the weights)."),
    set_: List[str] = typer.Option([], "--set", help="Override any config field: key=value (repeatable)."),
) -> None:
    """Turn a prompt (or a photo and a prompt) into a 3D asset: train, then export a mesh and a turntable video."""
    from dream3d import pipeline, presets

    cfg = None
    if resume is not None:
        from dream3d.run import check_run_dir

        check_run_dir(resume)  # a folder that is no run is the first thing to say
        given = _given_options(ctx, but=("resume",))
        if given:
            raise UserError(f"--resume continues {resume} with the settings saved in its config.yaml, so "
                            f"{', '.join(given)} cannot apply; drop {'it' if len(given) == 1 else 'them'} "
                            f"(a new run takes {'it' if len(given) == 1 else 'them'})")
    if resume is None:
        if image is None and (prompt is None or not prompt.strip()):
            raise UserError("the prompt is empty: give a text such as \"a red cube\"")
        if image is not None and preset is None:
            preset = "image"  # Gaussians -> mesh -> texture, as DreamGaussian makes a photo 3D
        flags = presets.run_flags(prompt or "", model=model, seed=seed, device=device, negative_prompt=negative,
                                  representation=representation, guidance=guidance, steps=steps,
                                  resolution=resolution, allow_unknown_words=allow_unknown_words)
        flags["shape.mesh"] = str(shape) if shape is not None else None
        flags["image.path"] = str(image) if image is not None else None
        cfg = presets.resolve(preset, flags, set_)  # a bad photo: refused by generate before any folder exists
    progress = step_progress()
    task = {}

    def on_start(run_dir, trainer):
        console.print(f"run folder: [bold]{run_dir}[/]")
        ignored = trainer.prompt.ignored_words
        if ignored:
            from dream3d.priors.vocab import quoted_words

            console.print(f"[yellow]warning[/]: the prior does not know and ignores: {escape(quoted_words(list(ignored)))}")
        task["id"] = progress.add_task(trainer.stage.name, total=trainer.train.steps, completed=trainer.start_step,
                                       rate=0.0, gnorm=0.0)
        task["t"] = None

    def on_step(log):
        import time
        now = time.perf_counter()
        rate = 0.0 if task["t"] is None else 1.0 / max(now - task["t"], 1e-9)
        task["t"] = now
        progress.update(task["id"], advance=1, rate=rate, gnorm=log.grad_norm)

    try:
        with progress:
            run_dir = pipeline.generate(cfg, out, resume=resume, on_start=on_start, on_step=on_step)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: a checkpoint was written; continue with "
                      "`dream3d generate --resume RUN_FOLDER`")
        raise typer.Exit(130)
    print_finished(run_dir)


def print_finished(run_dir: Path) -> None:
    """The run folder and the asset files in it, after a finished run."""
    console.print(f"[green]done[/]: {run_dir}")
    for f in sorted(run_dir.iterdir()):
        if f.is_file() and f.suffix in (".glb", ".obj", ".ply", ".mp4", ".gif"):
            console.print(f"  {f.name}")


def _given_options(ctx: typer.Context, but: tuple[str, ...] = ()) -> list[str]:
    """The options and arguments of this command the user gave (not left at their defaults)."""
    given = []
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name)  # an enum of the click that typer ships
        if p.name in but or source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        given.append(f"the {p.name}" if p.param_type_name == "argument" else p.opts[0])
    return given


EXPORT_FLAGS = {"mesh_resolution": "--resolution", "texture_size": "--texture", "decimate_faces": "--decimate",
                "smooth_iterations": "--smooth", "video_resolution": "--video-resolution"}


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run folder."),
    mesh: bool = typer.Option(True, "--mesh/--no-mesh", help="Write mesh files."),
    video: bool = typer.Option(True, "--video/--no-video", help="Write the turntable video."),
    format: Optional[List[str]] = typer.Option(None, "--format", help="glb, obj or ply (repeatable; default all)."),
    resolution: Optional[int] = typer.Option(None, help="Isosurface grid resolution."),
    texture: Optional[int] = typer.Option(None, help="Baked texture size (0 = vertex colours only)."),
    panels: Optional[List[str]] = typer.Option(None, "--panel", help="Video panel: rgb, normal, depth (repeatable)."),
    decimate: Optional[int] = typer.Option(None, help="Decimate the mesh to about this many faces."),
    smooth: Optional[int] = typer.Option(None, help="Taubin smoothing passes of the mesh clean-up (0 = none)."),
    video_resolution: Optional[int] = typer.Option(None, "--video-resolution",
                                                   help="Side of each turntable panel in pixels."),
) -> None:
    """Rebuild the mesh and video from a run folder alone. All files of the export are replaced
    together; a failed, interrupted or killed export keeps the earlier ones."""
    from dream3d import pipeline
    from dream3d.limits import check_export_values

    formats = list(format) if format else None
    settings = {"mesh_resolution": resolution, "texture_size": texture, "decimate_faces": decimate,
                "smooth_iterations": smooth, "video_resolution": video_resolution}
    check_export_values(settings, EXPORT_FLAGS)  # the checks config.validate runs, before the run is loaded
    try:
        files = pipeline.export_run(run_dir, names=EXPORT_FLAGS, mesh=mesh, video=video, formats=formats,
                                    video_panels=list(panels) if panels else None, **settings)
    except KeyboardInterrupt as e:
        console.print(f"[yellow]interrupted[/] by {getattr(e, 'signal_name', 'SIGINT')}: the export stopped and the "
                      f"files of the earlier export were kept; run `dream3d export {escape(str(run_dir))}` again",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    for name, path in files.items():
        console.print(f"{name}: {path}")


class _BatchGroup(typer.core.TyperGroup):
    """`dream3d batch FILES...` runs prompt files (as `batch run`); `dream3d batch status DIR` shows a folder."""

    def parse_args(self, ctx, args):
        # A prompt file ends in .txt/.yaml/.yml, so it can never be taken for the name `run` or `status`.
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


batch_app = typer.Typer(cls=_BatchGroup, no_args_is_help=True,
                        help="Run prompt files (`dream3d batch FILES... [OPTIONS]`, the same as `batch run`), "
                             "or show a batch folder's record (`dream3d batch status DIR`).")
app.add_typer(batch_app, name="batch")


@batch_app.command("run")
def batch(
    files: List[Path] = typer.Argument(..., help="Prompt files: .txt (one prompt a line) or .yaml (entries with settings)."),
    out: Optional[Path] = typer.Option(None, help="Batch folder (default: outputs/<first file's name>)."),
    workers: int = typer.Option(1, help="Local worker processes (each on its own GPU when there are several)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run entries as Ray tasks: auto, ray://HOST:10001, or local."),
    retries: int = typer.Option(1, help="Further tries of an entry that failed unexpectedly or lost its worker."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Start no new entry after one has failed."),
    model: Optional[str] = typer.Option(None, help="Prior for every entry (overrides the files)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda for every entry."),
    set_: List[str] = typer.Option([], "--set", help="Override a config field of every entry: key=value (repeatable)."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Score each finished run with the shipped classifier."),
) -> None:
    """Run every entry of some prompt files, one run folder each; re-run to resume. State in batch.db."""
    from dream3d.batch.promptfile import read_prompt_files
    from dream3d.batch.runner import BatchOptions, run_batch, summary_rows

    entries = read_prompt_files(list(files))
    if not entries:
        raise UserError(f"no prompts in {', '.join(map(str, files))}")
    opts = BatchOptions(out=out or Path("outputs") / files[0].stem, workers=workers, ray=ray, retries=retries,
                        fail_fast=fail_fast, model=model, device=device, overrides=list(set_), evaluate=evaluate)
    result = run_batch(entries, opts, console)
    table = Table(title=f"batch: {opts.out / 'batch.json'}", title_justify="left", box=box.SIMPLE_HEAD)
    # Errors are printed in full as entries fail, and kept in batch.json.
    table.add_column("entry", no_wrap=True)
    for name, width in (("state", 6), ("tries", 5), ("seconds", 7), ("object/colour", 13)):
        table.add_column(name, no_wrap=True, width=width)
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    for rec in summary_rows(opts.out, list(result.states)):
        scores = rec["eval"] or {}
        colour = {"done": "green", "failed": "red"}.get(rec["state"], "yellow")
        table.add_row(rec["id"], f"[{colour}]{rec['state']}[/]", str(rec["attempts"]),
                      "" if rec["seconds"] is None else f"{rec['seconds']:.1f}",
                      f"{pct(scores.get('object_accuracy'))}/{pct(scores.get('colour_accuracy'))}" if scores else "")
    console.print(table)
    counts = {s: list(result.states.values()).count(s) for s in ("done", "failed", "queued")}
    console.print(f"{counts['done']} done, {counts['failed']} failed, {counts['queued']} not run")
    if result.interrupted:
        console.print("[yellow]interrupted[/]: run the same command again to continue")
        raise typer.Exit(130)
    if not result.ok:
        raise typer.Exit(1)


@batch_app.command("status")
def batch_status(
    folder: Path = typer.Argument(..., help="A batch folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON (what batch.json holds)."),
) -> None:
    """Every entry of a batch folder: state, source line, tries, error; also writes batch.json."""
    from dream3d.batch.status import show

    show(folder, as_json, Console(), console)


@app.command()
def gallery(
    folder: Path = typer.Argument(..., help="A batch folder, or any folder holding run folders."),
    contact_sheet: bool = typer.Option(True, "--contact-sheet/--no-contact-sheet", help="Also write contact-sheet.png."),
) -> None:
    """Write index.html (videos, previews, scores, interactive 3D view) for every run under a folder."""
    from dream3d.gallery import write_gallery

    files = write_gallery(folder, contact_sheet=contact_sheet, console=console)
    for name, path in files.items():
        console.print(f"{name}: {path}")


prior_app = typer.Typer(no_args_is_help=True, help="Train and sample the embedded prior.")
app.add_typer(prior_app, name="prior")


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

    if steps <= 0 or batch_size <= 0 or shards <= 0 or decoder_steps < 0:
        raise UserError("--steps, --batch-size and --shards must be positive, --decoder-steps at least 0")
    if not 0.0 <= suffix_prob <= 1.0:
        raise UserError(f"--suffix-prob must be in [0, 1], got {suffix_prob}")
    if views < 1 or batch_size % views or not 0.0 <= single_view_fraction <= 1.0:
        raise UserError(f"--views must be at least 1 and divide --batch-size ({batch_size}), and "
                        f"--single-view-fraction must be in [0, 1]; got {views} and {single_view_fraction}")
    the_world = get_world(world)
    cfg = PriorTrainConfig(steps=steps, batch_size=batch_size, seed=seed, suffix_prob=suffix_prob, views=views,
                           single_view_fraction=single_view_fraction, world=world, latent=latent,
                           decoder_steps=decoder_steps)
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
    prior = load_prior(str(model) if model else "tiny-shapes", device="cpu")
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
    prior = load_prior(str(model) if model else "tiny-shapes", device="cpu")
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


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="A finished run folder."),
    views: int = typer.Option(8, help="Turntable views to score."),
) -> None:
    """Score a finished asset with the shipped classifier: object, colour, view, Janus; writes eval.json."""
    from dream3d.evaluation.evaluate import eval_command

    if views < 1:
        raise UserError(f"--views must be at least 1, got {views}")
    eval_command(run_dir, n_views=views, console=Console())


@app.command("list")
def list_() -> None:
    """Presets, representations, guidances and priors."""
    from dream3d import presets, registry

    out = Console()
    sections = [
        ("presets", [(n, presets.preset_description(n)) for n in presets.preset_names()]),
        ("representations", [(e.name, e.description) for e in registry.entries("representation")]),
        ("guidances", [(e.name, e.description) for e in registry.entries("guidance")]),
        ("priors", list(registry.PRIORS.items())),
    ]
    for title, rows in sections:
        table = Table(title=title, title_justify="left", show_header=False, box=None)
        for name, desc in rows:
            table.add_row(f"[bold]{name}[/]", desc)
        out.print(table)


@app.command()
def doctor() -> None:
    """Device, versions, optional accelerators and locally found models."""
    from dream3d.doctor import report

    report(Console())


from dream3d.texture_command import texture  # noqa: E402  (its own module: the mesh input's command)

app.command()(texture)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def main() -> None:
    import warnings

    warnings.showwarning = _show_warning
    try:
        app()
    except UserError as e:
        if STATE["debug"]:
            raise
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:  # a full disk outside the writers that say where and how much (config.yaml, ...)
        from dream3d.atomic import is_disk_full

        if STATE["debug"] or not is_disk_full(e):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        console.print(f"[red]error:[/] the disk is full{escape(where)} ({escape(e.strerror or str(e))})",
                      highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
