"""The `dream3d texture MESH PROMPT` command (registered on the app in dream3d.cli)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from dream3d.errors import UserError

PRESET = "texture"


def texture(
    ctx: typer.Context,
    mesh: Optional[Path] = typer.Argument(None, help="The mesh to texture: OBJ, GLB or PLY."),
    prompt: Optional[str] = typer.Argument(None, help="What it should look like, e.g. \"a red cube\"."),
    preset: str = typer.Option(PRESET, help="Recipe to start from (its stages use the fixed_mesh representation)."),
    model: Optional[str] = typer.Option(None, help="Prior: tiny-shapes (embedded), a Hugging Face id or a local folder."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    resolution: Optional[int] = typer.Option(None, help="Training render resolution in pixels."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda."),
    allow_unknown_words: bool = typer.Option(False, help="Proceed when the embedded prior does not know a word."),
    out: Path = typer.Option(Path("outputs"), help="Folder that receives the run folder."),
    resume: Optional[Path] = typer.Option(None, help="Continue an interrupted run from its folder, with the settings "
                                          "(and the copy of the mesh) saved in it; no other option applies."),
    set_: List[str] = typer.Option([], "--set", help="Override any config field: key=value (repeatable)."),
) -> None:
    """Texture a mesh of your own: its geometry is kept exactly, only its colours are trained.
    Writes the run folder, textured mesh (GLB, OBJ + MTL + PNG, PLY) and turntable as `generate`."""
    from dream3d import pipeline, presets, texturing
    from dream3d.cli import _given_options, console, print_finished, step_progress

    cfg = None
    if resume is not None:
        from dream3d.run import check_run_dir

        check_run_dir(resume)
        given = _given_options(ctx, but=("resume",))
        if given:
            raise UserError(f"--resume continues {resume} with the settings saved in its config.yaml, so "
                            f"{', '.join(given)} cannot apply; drop {'it' if len(given) == 1 else 'them'}")
    else:
        if mesh is None:
            raise UserError("give the mesh to texture: dream3d texture MESH PROMPT")
        if prompt is None or not prompt.strip():
            raise UserError("the prompt is empty: give a text such as \"a red cube\"")
        flags = presets.run_flags(prompt, model=model, seed=seed, device=device, steps=steps, resolution=resolution,
                                  allow_unknown_words=allow_unknown_words)
        cfg = presets.resolve(preset, flags, set_)  # texturing.texture checks the mesh before the prior loads
    progress = step_progress()
    task: dict = {}

    def on_start(run_dir, trainer):
        console.print(f"run folder: [bold]{run_dir}[/]")
        task["id"] = progress.add_task(trainer.stage.name, total=trainer.train.steps, completed=trainer.start_step,
                                       rate=0.0, gnorm=0.0)

    def on_step(log):
        progress.update(task["id"], advance=1, rate=0.0, gnorm=log.grad_norm)

    def on_note(text):
        console.print(f"[yellow]note[/]: {text}", highlight=False, soft_wrap=True)

    try:
        with progress:
            if resume is not None:
                run_dir = pipeline.generate(None, out, resume=resume, on_start=on_start, on_step=on_step)
            else:
                run_dir = texturing.texture(mesh, cfg, out, on_start=on_start, on_step=on_step, on_note=on_note)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: a checkpoint was written; continue with "
                      "`dream3d texture --resume RUN_FOLDER`")
        raise typer.Exit(130)
    print_finished(run_dir)
