"""`generate` and `export` as plain functions; the CLI is a thin layer over them."""
from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from dream3d import config as config_mod
from dream3d import registry
from dream3d.config import RunConfig
from dream3d.errors import UserError
from dream3d.limits import check_memory as check_export_memory
from dream3d.run import RunInfo, check_run_dir, new_run_dir, tidy_run_folder, versions
from dream3d.runfolder import run_lock, stage_dir
from dream3d.training.checkpoint import has_checkpoint, load_checkpoint, read_latest


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device '{name}'; choose auto, cpu or cuda")
    return torch.device(name)


def build_representation(component, device: torch.device):
    return registry.build("representation", component.name, component.options).to(device)


def load_prior_for(cfg: RunConfig, device: torch.device):
    """The run's prior (loaded once, shared by every stage) and its prompt processor."""
    from dream3d.guidance.prompt import PromptProcessor
    from dream3d.priors.loading import load_prior

    opts = {"resolution": cfg.prior_resolution} if cfg.prior_resolution > 0 else {}
    if cfg.allow_download:
        opts["allow_download"] = True
    prior = load_prior(cfg.model, device=device, **opts)
    ignored = prior.check_prompt(cfg.prompt, allow_unknown_words=cfg.allow_unknown_words)
    prompt = PromptProcessor(prior, cfg.prompt, negative_prompt=cfg.negative_prompt, view_dependent=cfg.view_dependent,
                             ignored_words=tuple(ignored or ()))
    prior.release_text_encoder()  # every text the run needs is embedded (IF's T5: about 9 GB)
    return prior, prompt


def stage_seed(cfg: RunConfig, index: int) -> int:
    """The global RNG seed a stage's components are built under (LoRA and field initialisations),
    so a stage built in a resumed run starts exactly as in an uninterrupted one."""
    return cfg.seed * 1000 + index


def build_stage(cfg: RunConfig, index: int, prior, prompt, run_dir: Path, device: torch.device, shape_guide=None,
                reference=None):
    """The trainer of stage `index`, with a freshly initialised representation and guidance
    (and the run's shape guide and reference view, when it has them, as regularisers; a guidance
    conditioned on the photo is given it here)."""
    from dream3d.training.trainer import Trainer

    stage = cfg.stages[index]
    torch.manual_seed(stage_seed(cfg, index))
    rep = build_representation(stage.representation, device)
    guidance = registry.build("guidance", stage.guidance.name, prior, stage.guidance.options)
    if guidance.takes_reference_image:  # reference_for refused such a run without a photo
        guidance.set_reference(reference.rgb.to(device), reference.mask.to(device), reference.camera.to(device))
    return Trainer(cfg, stage, index, run_dir, rep, guidance, prompt, device,
                   regularizers=[r for r in (shape_guide, reference) if r is not None])


def load_stage(cfg: RunConfig, index: int, run_dir: Path, device: torch.device):
    """The finished representation of stage `index`, from its checkpoint (no guidance is built)."""
    stage = cfg.stages[index]
    torch.manual_seed(stage_seed(cfg, index))
    rep = build_representation(stage.representation, device)
    load_checkpoint(stage_dir(run_dir, stage.name), {"representation": rep}, None, None)
    return rep


def stage_finished(run_dir: Path, stage) -> bool:
    latest = read_latest(stage_dir(run_dir, stage.name))
    return latest is not None and latest["step"] >= stage.train.steps


def generate(
    cfg: RunConfig | None,
    out_root: Path,
    resume: Path | None = None,
    on_start: Callable | None = None,
    on_step: Callable | None = None,
    run_dir: Path | None = None,
) -> Path:
    """Run (or resume) a whole generation, stage after stage; returns the run folder.
    `on_start(run_dir, trainer)` is called as each stage starts, `on_step(log)` after each step.
    `run_dir` names the folder of a fresh run (a batch needs a name it can find again);
    by default it is a new `<prompt-slug>-<timestamp>` folder under `out_root`.
    The run folder is locked (RUN/.lock) from the moment it is known until this returns:
    another process working on it is refused with a line naming it."""
    with contextlib.ExitStack() as held:
        return _generate(cfg, out_root, resume, on_start, on_step, run_dir, held)


def _generate(cfg, out_root, resume, on_start, on_step, run_dir, held: contextlib.ExitStack) -> Path:
    from dream3d.representations.convert import check_chain, convert
    from dream3d.guidance.reference_image import reference_for
    from dream3d.guidance.shape_guide import guide_for

    if resume is not None:
        run_dir = check_run_dir(resume)
        held.enter_context(run_lock(run_dir))
        cfg = config_mod.load(run_dir / "config.yaml")
        # every stage's latest.json is read here: a garbage one is refused before anything changes
        if not [latest for s in cfg.stages if (latest := read_latest(stage_dir(run_dir, s.name)))]:
            raise UserError(f"{run_dir} has no checkpoint to resume from")
    assert cfg is not None
    check_chain(cfg)
    check_export_memory(cfg.export)  # the export's grid, texture and video must fit: known before training
    shape_guide = guide_for(cfg, run_dir if resume is not None else None)  # a bad guide: refused before anything
    reference = reference_for(cfg, run_dir if resume is not None else None)  # a bad photo too
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    prior, prompt = load_prior_for(cfg, device)
    for stage in cfg.stages:  # a rule that cannot use this prior says so before any stage trains
        registry.lookup("guidance", stage.guidance.name).cls().check_prior(prior, stage.guidance.options)
    if resume is None:
        if run_dir is None:
            run_dir = new_run_dir(out_root, cfg.prompt or Path(cfg.image.path).stem)
        else:
            run_dir = fixed_run_dir(Path(run_dir))
        held.enter_context(run_lock(run_dir))
        if shape_guide is not None:  # the run folder keeps its own copy, so resume needs nothing else
            cfg.shape.mesh = shape_guide.save(run_dir)
        if reference is not None:
            cfg.image.path = reference.save(run_dir)
        config_mod.save(cfg, run_dir / "config.yaml")
    tidy_run_folder(run_dir)  # temporary files and half-done renames a killed process left
    info = RunInfo(run_dir)
    info.update(status="running", prompt=cfg.prompt, seed=cfg.seed, device=str(device), versions=versions(),
                started=info.data.get("started", time.strftime("%Y-%m-%dT%H:%M:%S")))
    timings = dict(info.data.get("timings", {}))
    previous = None
    for index, stage in enumerate(cfg.stages):
        if stage_finished(run_dir, stage):
            previous = load_stage(cfg, index, run_dir, device)
            continue
        trainer = build_stage(cfg, index, prior, prompt, run_dir, device, shape_guide, reference)
        t0 = time.perf_counter()
        try:
            if has_checkpoint(trainer.ckpt_dir):
                trainer.resume()
            elif stage.init == "previous":
                convert(previous, trainer.rep)
            if on_start:
                on_start(run_dir, trainer)
            trainer.fit(on_step)
        except KeyboardInterrupt:
            info.update(status="interrupted", stage=stage.name)
            raise
        except Exception as e:
            info.update(status="failed", stage=stage.name, error=str(e))
            raise
        finally:
            trainer.guidance.close()  # nothing a stage's guidance put on the shared prior outlives the stage
        timings[f"{stage.name}_seconds"] = round(timings.get(f"{stage.name}_seconds", 0.0) + time.perf_counter() - t0, 2)
        info.update(status="trained", stage=stage.name, timings=timings)
        previous = trainer.rep
    if cfg.export.mesh or cfg.export.video:
        export_run(run_dir, rep=previous, cfg=cfg)
    if reference is not None:  # the finished asset (the exported mesh, for a surface) against the photo
        info.update(reference_view=reference.measure(load_asset(run_dir, device)[1]))
    info.update(status="done")
    return run_dir


def fixed_run_dir(path: Path) -> Path:
    """A named fresh run folder: created if missing, refused if it already holds a run."""
    if (path / "config.yaml").exists():
        raise UserError(f"{path} already holds a run; continue it with --resume")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder {path}: {e.strerror}") from None
    return path


def load_run(run_dir: Path, device: torch.device | None = None):
    """The finished representation of a run (its last stage), from its folder alone."""
    run_dir = check_run_dir(run_dir)
    cfg = config_mod.load(run_dir / "config.yaml")
    device = device or resolve_device(cfg.device)
    last = cfg.stages[-1]
    rep = build_representation(last.representation, device)
    ckpt = stage_dir(run_dir, last.name)
    if not has_checkpoint(ckpt):
        raise UserError(f"{run_dir} has no checkpoint of its last stage '{last.name}' to export from")
    load_checkpoint(ckpt, {"representation": rep}, None, None)
    rep.eval()
    return cfg, rep


def load_asset(run_dir: Path, device: torch.device | None = None):
    """(config, what the run gives the user to look at): for a run ending in an explicit surface
    (DMTet) its exported mesh.glb as written (cleaned, smoothed, textured), rendered like a
    representation; otherwise, or while no readable mesh.glb exists, the last stage itself."""
    from dream3d.export.read_mesh import read_mesh
    from dream3d.export.run_export import _lighting
    from dream3d.render.textured_mesh import MeshAsset

    cfg, rep = load_run(run_dir, device)
    glb = Path(run_dir) / "mesh.glb"
    if getattr(rep, "is_explicit_surface", False) and glb.is_file():
        try:
            mesh = read_mesh(glb)
        except UserError:
            return cfg, rep
        device = next(iter(rep.parameters()), torch.zeros(())).device
        if rep.has("source_mesh"):  # a user's mesh is written in its own coordinates: back to the render frame
            with torch.no_grad():
                mesh.vertices = rep.source_mesh()[1](mesh.vertices.to(device)).cpu()
        return cfg, MeshAsset(mesh, *_lighting(rep), device=device)
    return cfg, rep


def export_run(run_dir: Path, rep=None, cfg: RunConfig | None = None, names: dict[str, str] | None = None,
               **overrides) -> dict[str, Path]:
    """Write the mesh files and turntable video of a run; `overrides` replace export.* fields
    (`names`: what the user called them, for messages, e.g. {"mesh_resolution": "--resolution"}).

    Before anything is allocated the settings are range-checked and the memory the grid,
    texture and turntable need is compared with the memory available; temporary files a
    killed export left are removed first. All files of the export are replaced together.
    SIGINT / SIGTERM stop it at once (`Interrupted`, a KeyboardInterrupt), leaving the earlier
    files. A failure is recorded in run.json: status `failed` (or `interrupted`) with stage
    `export` and the error, unless the run was already `done` (its earlier files are intact):
    then only `export_error` is set."""
    from dream3d.export.cleanup import CleanupSettings
    from dream3d.export.run_export import export_representation
    from dream3d.limits import check_export, check_memory
    from dream3d.training.stop import interrupt_on_signal

    # one process per run: an export waits for no training run (nor one for it); reentrant from generate
    with interrupt_on_signal(), run_lock(check_run_dir(run_dir)):
        if rep is None or cfg is None:
            cfg, rep = load_run(run_dir)
        ex = cfg.export
        for k, v in overrides.items():
            if v is not None:
                setattr(ex, k, v)
        _warn_geometry_settings_unused(rep, overrides, names)
        check_export(ex, names)
        check_memory(ex, names)
        tidy_run_folder(run_dir)
        t0 = time.perf_counter()
        cleanup_record: dict = {}
        cleanup = CleanupSettings(smooth_iterations=ex.smooth_iterations, max_hole_edges=ex.max_hole_edges,
                                  min_component_fraction=ex.min_component_fraction)
        try:
            files = export_representation(
                rep, run_dir, mesh=ex.mesh, video=ex.video, formats=ex.formats, mesh_resolution=ex.mesh_resolution,
                video_resolution=ex.video_resolution, n_frames=ex.video_frames, background=ex.background,
                camera_cfg=cfg.camera, decimate_faces=ex.decimate_faces or None, texture_size=ex.texture_size,
                video_panels=ex.video_panels, cleanup=cleanup, cleanup_record=cleanup_record,
            )
            splats = splat_stage_rep(run_dir, cfg, rep) if ex.mesh else None
            if splats is not None:  # the splats themselves, for 3DGS viewers, whatever the last stage is
                files["gaussians"] = splats.save_splats(run_dir / "gaussians.ply")
        except (Exception, KeyboardInterrupt) as e:
            _record_export_failure(run_dir, e)
            raise
        info = RunInfo(run_dir)
        timings = dict(info.data.get("timings", {}))
        timings["export_seconds"] = round(time.perf_counter() - t0, 2)
        fixed = {"status": "done", "error": None} if info.data.get("stage") == "export" else {}  # it failed before
        if cleanup_record:  # what the mesh clean-up did; a video-only export keeps the mesh's record
            fixed["export_cleanup"] = cleanup_record
        info.update(timings=timings, exports=sorted(p.name for p in files.values()), export_error=None, **fixed)
        return files


GEOMETRY_SETTINGS = ("mesh_resolution", "decimate_faces", "smooth_iterations", "min_component_fraction",
                     "max_hole_edges")


def _warn_geometry_settings_unused(rep, overrides: dict, names: dict[str, str] | None) -> None:
    """A mesh the user gave is written exactly as given: say so when a geometry setting was asked for."""
    given = [k for k in GEOMETRY_SETTINGS if overrides.get(k) is not None]
    if given and rep.has("source_mesh"):
        said = ", ".join((names or {}).get(k, k) for k in given)
        warnings.warn(f"{said}: not used, the mesh you gave is written exactly as given", RuntimeWarning, stacklevel=3)


def splat_stage_rep(run_dir: Path, cfg: RunConfig, rep):
    """The representation whose splats the run exports: `rep` (the last stage's) when it has
    them, else the last earlier stage whose representation has them, loaded from its
    checkpoint; None for a run without such a stage."""
    if rep.has("save_splats"):
        return rep
    for index in reversed(range(len(cfg.stages))):
        stage = cfg.stages[index]
        if registry.lookup("representation", stage.representation.name).cls().has("save_splats") and \
                has_checkpoint(stage_dir(run_dir, stage.name)):
            device = next(iter(rep.parameters()), torch.zeros(())).device
            return load_stage(cfg, index, run_dir, device)
    return None


def _record_export_failure(run_dir: Path, error: BaseException) -> None:
    """run.json after a failed export; never hides the export's own error (the disk may be full)."""
    interrupted = isinstance(error, KeyboardInterrupt)
    reason = f"interrupted by {getattr(error, 'signal_name', 'SIGINT')}" if interrupted else str(error)
    try:
        info = RunInfo(run_dir)
        if info.data.get("status") == "done":
            info.update(export_error=reason)
        else:
            info.update(status="interrupted" if interrupted else "failed", stage="export", error=reason)
    except (OSError, UserError):
        pass
