"""The `dream3d` command line."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

from dream3d.threads import set_wait_policy

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


from dream3d.prior_commands import prior_app  # noqa: E402  (its own module: training and measuring the prior)

app.add_typer(prior_app, name="prior")


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
