"""The CLI end to end on tiny settings, through the real prior-loading code."""
import json
import os
import signal
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh
import yaml
from conftest import gltf_validator
from typer.testing import CliRunner

from dream3d.cli import app

TINY = [
    "--preset", "dreamfusion", "--steps", "4", "--resolution", "32", "--seed", "0", "--device", "cpu",
    "--set", "train.preview_every=2", "--set", "train.ckpt_every=2",
    "--set", "export.mesh_resolution=32", "--set", "export.video_frames=4", "--set", "export.video_resolution=32",
    "--set", "prior_resolution=64", "--set", "export.texture_size=64", "--set", "representation.samples_per_ray=16",
]


def run_cli(*args):
    """The installed console entry point, as a user runs it (exit codes and one-line errors)."""
    return subprocess.run([sys.executable, "-m", "dream3d.cli", *map(str, args)], capture_output=True, text=True)


def only_run(out):
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_generate_writes_every_file(tmp_path, tiny_sd_dir):
    out = tmp_path / "outputs"
    res = CliRunner().invoke(app, ["generate", "a red cube", "--model", str(tiny_sd_dir), "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    run = only_run(out)
    assert run.name.startswith("a-red-cube-")
    for name in ["config.yaml", "run.json", "metrics.jsonl", "mesh.glb", "mesh.obj", "mesh.mtl", "mesh.png", "mesh.ply",
                 "turntable.mp4", "turntable.gif"]:
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "previews").iterdir())[:2] == ["main-step-000002.png", "main-step-000004.png"]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["seed"] == 0 and "torch" in info["versions"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["grad_norm"]) for r in rows)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["prompt"] == "a red cube" and cfg["train"]["steps"] == 4
    scene = trimesh.load(run / "mesh.glb")
    geom = next(iter(scene.geometry.values())) if isinstance(scene, trimesh.Scene) else scene
    assert len(geom.faces) > 0
    assert geom.visual.material.baseColorTexture.size == (64, 64)  # the baked albedo
    report = subprocess.run([*gltf_validator(), str(run / "mesh.glb")], capture_output=True, text=True, timeout=60)
    assert json.loads(report.stdout)["issues"]["numErrors"] == 0, report.stdout
    ply = trimesh.load(run / "mesh.ply")
    assert ply.visual.vertex_colors.shape[0] == len(ply.vertices)  # PLY keeps vertex colours
    frames = list(iio.imiter(run / "turntable.mp4"))
    assert len(frames) == 4


def test_export_rebuilds_from_the_folder(tmp_path, tiny_sd_dir):
    out = tmp_path / "outputs"
    res = CliRunner().invoke(app, ["generate", "a red cube", "--model", str(tiny_sd_dir), "--out", str(out), *TINY,
                                   "--set", "export.mesh=false", "--set", "export.video=false"])
    assert res.exit_code == 0, res.output
    run = only_run(out)
    assert not (run / "mesh.glb").exists()
    res = CliRunner().invoke(app, ["export", str(run), "--no-video", "--format", "ply", "--resolution", "24"])
    assert res.exit_code == 0, res.output
    assert (run / "mesh.ply").is_file() and not (run / "mesh.glb").exists() and not (run / "turntable.mp4").exists()
    done = json.loads((run / "run.json").read_text())["export_cleanup"]  # what the mesh clean-up did
    assert done["steps"][0] == "weld" and "smooth" in done["steps"] and done["steps"][-1] == "orient"
    assert done["parts"] >= 1 and done["faces_out"] == len(trimesh.load(run / "mesh.ply", process=False).faces)

    # A run folder from before the clean-up knobs existed loads with their defaults; the ones
    # its config.yaml gives, and --smooth, are honoured.
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    del cfg["export"]["smooth_iterations"], cfg["export"]["min_component_fraction"]
    cfg["export"]["max_hole_edges"] = 0
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = CliRunner().invoke(app, ["export", str(run), "--no-video", "--format", "ply", "--resolution", "24",
                                   "--smooth", "0"])
    assert res.exit_code == 0, res.output
    steps = json.loads((run / "run.json").read_text())["export_cleanup"]["steps"]
    assert "weld" in steps and not [s for s in steps if "smooth" in s or "holes" in s]


def test_resume_after_interrupt_matches_uninterrupted(tmp_path, tiny_sd_dir):
    from dream3d import pipeline, presets
    import torch

    def cfg():
        return presets.resolve("dreamfusion", {"prompt": "a red cube", "model": str(tiny_sd_dir), "device": "cpu",
                                     "train.steps": 6, "train.resolution": 32, "prior_resolution": 64,
                                     "representation.samples_per_ray": 16},
                              ["export.mesh=false", "export.video=false", "train.preview_every=0", "train.ckpt_every=0"])

    full = pipeline.generate(cfg(), tmp_path / "a")

    state = {}

    def on_start(run_dir, trainer):
        state["trainer"] = trainer

    def on_step(log):
        if log.step + 1 == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler stopping the job does (Ctrl-C: SIGINT)

    with pytest.raises(KeyboardInterrupt):
        pipeline.generate(cfg(), tmp_path / "b", on_start=on_start, on_step=on_step)
    run_b = only_run(tmp_path / "b")
    assert json.loads((run_b / "run.json").read_text())["status"] == "interrupted"
    assert json.loads((run_b / "ckpt" / "main" / "latest.json").read_text())["step"] == 3
    pipeline.generate(None, tmp_path / "b", resume=run_b)

    def weights(run):
        _, rep = pipeline.load_run(run)
        return {k: v.clone() for k, v in rep.state_dict().items()}

    wa, wb = weights(full), weights(run_b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


class Killed(Exception):
    """Stands for a SIGKILL between two stages: the process ends with nothing cleaned up."""


def test_prolificdreamer_resumed_at_each_stage_boundary_matches_uninterrupted(tmp_path, tiny_sd_dir):
    """VSD's LoRA and camera hook live on the shared prior only during their stage: a run killed
    after any stage and resumed ends with the very tensors of an uninterrupted run."""
    from safetensors.torch import load_file

    from dream3d import pipeline, presets

    def cfg():
        return presets.resolve("prolificdreamer", {"prompt": "a red cube", "model": str(tiny_sd_dir), "device": "cpu",
                                                   "prior_resolution": 64}, [
            "export.mesh=false", "export.video=false", "train.preview_every=0", "train.ckpt_every=0",
            "stages.0.train.steps=3", "stages.1.train.steps=2", "stages.2.train.steps=2", "train.resolution=32",
            "stages.0.representation.samples_per_ray=16", "stages.1.train.resolution=32", "stages.2.train.resolution=32",
            "stages.1.representation.grid_resolution=16", "stages.2.representation.grid_resolution=16"])

    def final_tensors(run):
        out = {}
        for ckpt in sorted((run / "ckpt").iterdir()):
            latest = json.loads((ckpt / "latest.json").read_text())
            out.update({f"{ckpt.name}/{k}": v for k, v in load_file(ckpt / latest["weights"]).items()})
        return out

    reference = final_tensors(pipeline.generate(cfg(), tmp_path / "full"))
    assert any(".vsd." in k for k in reference) and any(k.startswith("texture/") for k in reference)
    names = [s.name for s in cfg().stages]
    for boundary in names[1:]:
        def kill(run_dir, trainer, boundary=boundary):
            if trainer.stage.name == boundary:
                raise Killed

        with pytest.raises(Killed):
            pipeline.generate(cfg(), tmp_path / boundary, on_start=kill)
        run = only_run(tmp_path / boundary)
        assert not (run / "ckpt" / boundary).exists()
        pipeline.generate(None, tmp_path / boundary, resume=run)
        resumed = final_tensors(run)
        assert resumed.keys() == reference.keys()
        for k in reference:
            assert torch.equal(resumed[k], reference[k]), f"resumed after '{boundary}': {k} differs"


@pytest.mark.parametrize("args, message", [
    (["generate", "   "], "prompt is empty"),
    (["generate", "a red cube", "--preset", "nope"], "unknown preset 'nope'"),
    (["generate", "a red cube", "--representation", "voxels"], "unknown representation 'voxels'"),
    (["generate", "a red cube", "--guidance", "magic"], "unknown guidance 'magic'"),
    (["generate", "a red cube", "--steps", "0"], "train.steps must be positive"),
    (["generate", "a red cube", "--resolution", "3"], "resolution"),
    (["generate", "a red cube", "--set", "train.bogus=1"], "unknown config key 'train.bogus'"),
    (["generate", "a red cube", "--model", "/nonexistent/model-folder"], "/nonexistent/model-folder"),
    (["export", "/nonexistent/run"], "not a dream3d run folder"),
    (["generate", "--resume", "/nonexistent/run"], "not a dream3d run folder"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    res = run_cli(*args, "--out", str(tmp_path / "o")) if args[0] == "generate" else run_cli(*args)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.strip()]) <= 2, res.stderr


def test_unwritable_output_folder(tmp_path, tiny_sd_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = run_cli("generate", "a red cube", "--model", tiny_sd_dir, "--out", blocker / "sub", *TINY)
    assert res.returncode != 0 and "output folder" in res.stderr and "Traceback" not in res.stderr


def test_corrupt_checkpoint_on_resume(tmp_path, tiny_sd_dir):
    out = tmp_path / "outputs"
    res = CliRunner().invoke(app, ["generate", "a red cube", "--model", str(tiny_sd_dir), "--out", str(out), *TINY,
                                   "--set", "export.mesh=false", "--set", "export.video=false"])
    assert res.exit_code == 0, res.output
    run = only_run(out)
    glb_before = sorted(p.name for p in run.iterdir())
    for f in (run / "ckpt" / "main").glob("step-*.safetensors"):
        f.write_bytes(b"\0" * 10)
    res = run_cli("generate", "--resume", run)
    assert res.returncode != 0 and "corrupt" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in run.iterdir()) == glb_before  # nothing destroyed
    res = run_cli("--debug", "generate", "--resume", run)
    assert "Traceback" in res.stderr


def test_list_and_doctor():
    res = run_cli("list")
    assert res.returncode == 0
    for word in ("dreamfusion", "fast", "hashgrid_nerf", "sds", "tiny-shapes"):
        assert word in res.stdout
    res = run_cli("doctor")
    assert res.returncode == 0 and "torch" in res.stdout and "nerfacc" in res.stdout


def test_repeated_nans_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, tiny_embedded_dir):
    from dream3d import pipeline, presets
    from dream3d.errors import UserError

    cfg = presets.resolve("dreamfusion", {"prompt": "a red cube", "model": str(tiny_embedded_dir), "device": "cpu",
                                 "train.steps": 10, "train.resolution": 32},
                          ["export.mesh=false", "export.video=false", "train.preview_every=0", "train.ckpt_every=2",
                           "train.max_nan_steps=3", "representation.samples_per_ray=16"])
    state = {}

    def on_start(run_dir, trainer):
        prior = trainer.guidance.prior
        original = prior.predict_eps

        def poisoned(*args, **kwargs):
            eps = original(*args, **kwargs)
            return eps * float("nan") if state.get("poison") else eps

        prior.predict_eps = poisoned
        state["run"] = run_dir

    def on_step(log):
        if log.step + 1 == 4:
            state["poison"] = True

    with pytest.raises(UserError, match="3 non-finite steps.*last good checkpoint"):
        pipeline.generate(cfg, tmp_path / "o", on_start=on_start, on_step=on_step)
    run = state["run"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [False] * 4 + [True] * 3
    assert json.loads((run / "ckpt" / "main" / "latest.json").read_text())["step"] == 4
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
