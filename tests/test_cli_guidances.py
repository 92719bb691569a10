"""Every guidance runs a few steps end to end through the CLI (tiny random embedded prior)."""
import json

import pytest
from typer.testing import CliRunner

from dream3d import registry
from dream3d.cli import app

FAST = ["--preset", "dreamfusion", "--steps", "2", "--resolution", "32", "--device", "cpu", "--set", "export.mesh=false",
        "--set", "export.video=false", "--set", "train.preview_every=0"]
SMALL = {"hashgrid_nerf": ["--set", "representation.samples_per_ray=16"],
         "gaussians": ["--set", "representation.n_init=500"],
         "dmtet": ["--set", "representation.grid_resolution=24"]}


# fixed_mesh needs the user's mesh, which only `dream3d texture` gives it (tests/test_texture_command.py)
GENERATED = [name for name in registry.names("representation") if name != "fixed_mesh"]


# rules scoring renders against an input photo need --image and an image prior: tests/test_zero123.py
TEXT_GUIDANCES = [name for name in registry.names("guidance")
                  if not getattr(registry.lookup("guidance", name).cls(), "takes_reference_image", False)]


@pytest.mark.parametrize("representation", GENERATED)
@pytest.mark.parametrize("guidance", TEXT_GUIDANCES)
def test_guidance_runs_through_the_cli(request, tmp_path, guidance, representation):
    # multi-view SDS needs a prior with joint views; every other rule runs on the plain one
    model = request.getfixturevalue("tiny_joint_embedded_dir" if guidance == "mvsds" else "tiny_embedded_dir")
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["generate", "a red cube", "--model", str(model), "--guidance", guidance,
                                   "--representation", representation, "--out", str(out), *FAST, *SMALL[representation]])
    assert res.exit_code == 0, res.output
    run = next(out.iterdir())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and not any(r["skipped"] for r in rows)
    assert json.loads((run / "run.json").read_text())["status"] == "done"


CPU_PRESETS = [p for p in __import__("dream3d.presets", fromlist=["x"]).preset_names()
               if not p.endswith("-full") and p != "texture"]  # texture needs a mesh: tests/test_texture_command.py


@pytest.mark.parametrize("preset", CPU_PRESETS)
def test_every_cpu_preset_runs_all_its_stages(tmp_path, tiny_embedded_dir, preset):
    from dream3d import presets

    n_stages = len(presets.load_preset(preset).get("stages") or [None])
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["generate", "a red cube", "--preset", preset, "--model", str(tiny_embedded_dir),
                                   "--out", str(out), "--steps", str(2 * n_stages), "--resolution", "32",
                                   "--device", "cpu", "--set", "export.video=false", "--set", "export.texture_size=0",
                                   "--set", "export.mesh_resolution=32", "--set", "train.preview_every=0"])
    assert res.exit_code == 0, res.output
    run = next(out.iterdir())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    cfg = presets.resolve(preset, {"prompt": "x", "train.steps": 2 * n_stages}, [])
    assert sum(s.train.steps for s in cfg.stages) == 2 * n_stages
    assert [r["stage"] for r in rows] == [s.name for s in cfg.stages for _ in range(s.train.steps)]
    assert (run / "mesh.glb").is_file()
    for s in cfg.stages:
        assert (run / "ckpt" / s.name / "latest.json").is_file()
    # a run with a Gaussian stage writes its splats, whatever its last stage is; other runs claim none
    splat_stages = [i for i, s in enumerate(cfg.stages) if s.representation.name == "gaussians"]
    assert (run / "gaussians.ply").is_file() == bool(splat_stages)
    assert ("gaussians.ply" in json.loads((run / "run.json").read_text())["exports"]) == bool(splat_stages)
    if splat_stages:
        from dream3d.pipeline import load_stage
        from dream3d.representations.gaussian_ply import read_ply

        saved = load_stage(presets.resolve(preset, {"prompt": "a red cube"}, []), splat_stages[-1], run, "cpu")
        assert len(read_ply(run / "gaussians.ply")) == saved.num_gaussians


def test_splat_stage_rep_without_a_gaussian_stage_or_its_checkpoint(tmp_path):
    """Splats are exported from the last stage that has them, and only from a stage that trained."""
    from dream3d import presets
    from dream3d.pipeline import splat_stage_rep
    from dream3d.representations.dmtet import DMTet, DMTetConfig
    from dream3d.representations.gaussians import GaussianConfig, Gaussians
    from dream3d.representations.hashgrid_nerf import HashGridNeRF

    nerf, gaussians = HashGridNeRF(), Gaussians(GaussianConfig(n_init=10))
    dmtet = DMTet(DMTetConfig(grid_resolution=16))
    assert splat_stage_rep(tmp_path, presets.resolve("fast", {"prompt": "x"}, []), nerf) is None
    assert splat_stage_rep(tmp_path, presets.resolve("magic3d", {"prompt": "x"}, []), dmtet) is None
    two_stage = presets.resolve("gaussian", {"prompt": "x"}, [])
    assert splat_stage_rep(tmp_path, two_stage, gaussians) is gaussians
    assert splat_stage_rep(tmp_path, two_stage, dmtet) is None  # no checkpoint of its Gaussian stage here


def test_a_chain_that_cannot_convert_is_refused_before_work(tmp_path, tiny_embedded_dir):
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["generate", "a red cube", "--preset", "magic3d", "--model", str(tiny_embedded_dir),
                                   "--out", str(out), "--set", "stages.0.representation={name: dmtet}",
                                   "--set", "stages.1.representation={name: hashgrid_nerf}"])
    assert res.exit_code != 0
    assert "stage 'refine'" in str(res.exception) and "dmtet cannot be converted to hashgrid_nerf" in str(res.exception)
    assert not out.exists() or not any(out.iterdir())
