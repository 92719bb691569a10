"""Shape guidance: the loss by hand, gradients into each representation, the CLI end to end."""
import math
import subprocess
import sys

import pytest
import torch
import trimesh
import yaml
from typer.testing import CliRunner

from dream3d.cli import app
from dream3d.errors import UserError
from dream3d.guidance.shape_guide import ShapeConfig, ShapeGuide, shape_loss
from dream3d.representations.dmtet import DMTet, DMTetConfig
from dream3d.representations.gaussians import GaussianConfig, Gaussians
from dream3d.representations.hashgrid_nerf import HashGridNeRF, NeRFConfig


def sphere(path, radius=0.5, centre=(0.0, 0.0, 0.0)):
    trimesh.creation.icosphere(subdivisions=3, radius=radius).apply_translation(centre).export(path)
    return path


def test_loss_matches_a_hand_computation():
    # sphere of radius 0.5: the origin inside (d 0.5), (0.9, 0, 0) outside (d 0.4), (0.5, 0, 0) on the surface
    occ = torch.tensor([0.2, 0.7, 0.9])
    inside = torch.tensor([True, False, True])
    dist = torch.tensor([0.5, 0.4, 0.0])
    sigma = 0.2
    ce = [-(0.2 * math.log(0.99) + 0.8 * math.log(0.01)), -(0.7 * math.log(0.01) + 0.3 * math.log(0.99)), 0.0]
    w = [1 - math.exp(-0.25 / 0.08), 1 - math.exp(-0.16 / 0.08), 0.0]
    expected = sum(a * b for a, b in zip(w, ce)) / 3
    assert float(shape_loss(occ, inside, dist, sigma)) == pytest.approx(expected, rel=1e-5)
    # agreeing with the guide costs (almost) nothing; far from the surface disagreeing costs fully
    assert float(shape_loss(torch.tensor([1.0, 0.0]), torch.tensor([True, False]), torch.tensor([1.0, 1.0]), 0.1)) \
        == pytest.approx(-math.log(0.99), rel=1e-3)


def test_guide_signed_distance_of_a_sphere(tmp_path):
    guide = ShapeGuide(ShapeConfig(grid_resolution=64), sphere(tmp_path / "s.obj"))
    points = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, -0.8, 0.0], [0.0, 0.0, 0.3]])
    expected = torch.tensor([-0.5, 0.4, 0.3, -0.2])
    assert torch.allclose(guide.signed_distance(points), expected, atol=0.05)  # one or two cells (2/63)
    pts = guide.sample_points(400, torch.Generator().manual_seed(0))
    assert pts.shape == (400, 3) and pts.abs().max() <= 1.0
    near = pts[200:].norm(dim=-1)  # the second half lies around the surface
    assert (near - 0.5).abs().median() < 0.1


@pytest.mark.parametrize("make, params", [
    (lambda: Gaussians(GaussianConfig(n_init=300)), ("opacities", "means")),
    (lambda: HashGridNeRF(NeRFConfig()), ("encoding", "mlp")),
    (lambda: DMTet(DMTetConfig(grid_resolution=16)), ("sdf",)),
], ids=["gaussians", "nerf", "dmtet"])
def test_gradient_reaches_the_density(tmp_path, make, params):
    torch.manual_seed(0)
    rep = make()
    guide = ShapeGuide(ShapeConfig(points=256), sphere(tmp_path / "s.obj", radius=0.3, centre=(0.3, 0.0, 0.0)))
    loss = guide(rep, torch.Generator().manual_seed(0))
    loss.backward()
    groups = rep.param_groups()
    for name in params:
        grads = [p.grad for p in groups[name] if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, name


def test_gaussian_occupancy_matches_the_dense_sum():
    from dream3d.guidance.shape_guide import occupancy_from_density
    from dream3d.render.gaussian_math import quat_scale_to_covar_preci

    torch.manual_seed(0)
    rep = Gaussians(GaussianConfig(n_init=500))
    points = torch.rand(200, 3) * 2 - 1
    _, precis = quat_scale_to_covar_preci(rep.quats, rep.log_scales.exp(), compute_covar=False)
    d = points[:, None] - rep.means[None]
    dense = (torch.sigmoid(rep.opacity_logits) * torch.exp(-0.5 * torch.einsum("ngi,gij,ngj->ng", d, precis, d))).sum(-1)
    expected = occupancy_from_density(dense, rep.cfg.mesh_threshold)
    assert torch.allclose(rep.occupancy_at(points), expected, atol=0.03)  # Gaussians cut at 3 sigma, as at export


def test_frozen_geometry_takes_no_loss(tmp_path):
    guide = ShapeGuide(ShapeConfig(points=64), sphere(tmp_path / "s.obj"))
    assert guide(DMTet(DMTetConfig(grid_resolution=8, freeze_geometry=True)), torch.Generator().manual_seed(0)) is None


def test_descending_the_loss_moves_occupancy_towards_the_guide(tmp_path):
    torch.manual_seed(0)
    rep = DMTet(DMTetConfig(grid_resolution=16))  # starts as a sphere of radius 0.5 at the origin
    box = tmp_path / "box.obj"
    trimesh.creation.box(extents=(0.5, 0.5, 0.5)).apply_translation((0.3, 0.2, 0.0)).export(box)
    guide = ShapeGuide(ShapeConfig(points=512, sigma=0.05), box)
    probe = torch.tensor([[-0.35, 0.0, 0.0], [0.45, 0.35, 0.15]])  # outside the box; inside it, outside the sphere
    before = rep.occupancy_at(probe).detach()
    opt = torch.optim.Adam([rep.sdf], lr=0.02)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        opt.zero_grad()
        guide(rep, gen).backward()
        opt.step()
    after = rep.occupancy_at(probe).detach()
    assert after[0] < before[0] - 0.2 and after[1] > before[1] + 0.2


TINY = ["--steps", "3", "--resolution", "32", "--seed", "0", "--device", "cpu", "--set", "train.preview_every=0",
        "--set", "export.mesh_resolution=24", "--set", "export.video=false",
        "--set", "export.texture_size=0", "--set", "export.formats=[glb]",
        "--set", "stages.0.representation.n_init=200", "--set", "stages.1.representation.grid_resolution=16",
        "--set", "shape.grid_resolution=24", "--set", "shape.points=128"]


def test_cli_generate_with_a_shape_and_resume_from_the_folder(tmp_path, tiny_embedded_dir):
    box = tmp_path / "box.obj"
    trimesh.creation.box(extents=(0.6, 0.8, 0.6)).export(box)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["generate", "a green cylinder", "--shape", str(box), "--model", str(tiny_embedded_dir),
                                   "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    run = next(p for p in out.iterdir() if p.is_dir())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["shape"]["mesh"] == "shape-guide.ply"
    saved = trimesh.load(run / "shape-guide.ply", force="mesh")
    assert abs(saved.bounds[1][1] - 0.4) < 1e-6  # kept in world coordinates as given
    assert (run / "mesh.glb").is_file()
    metrics = (run / "metrics.jsonl").read_text()
    assert "shape_loss" in metrics
    box.unlink()  # resume needs the run folder alone
    from dream3d.guidance.shape_guide import guide_for
    from dream3d import config as config_mod

    assert guide_for(config_mod.load(run / "config.yaml"), run) is not None


@pytest.mark.parametrize("make, message", [
    (None, "no such mesh file"),
    ("empty", "holds no triangles"),
    ("far", "outside the scene"),
    ("open", "encloses no volume"),
])
def test_bad_guides_are_one_line_and_create_nothing(tmp_path, make, message):
    path = tmp_path / "guide.obj"
    if make == "empty":
        path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    elif make == "far":
        trimesh.creation.box(extents=(0.5, 0.5, 0.5)).apply_translation((2.0, 0.0, 0.0)).export(path)
    elif make == "open":
        path.write_text("v -0.5 0 -0.5\nv 0.5 0 -0.5\nv 0 0 0.5\nf 1 2 3\n")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "dream3d.cli", "generate", "a green cylinder", "--shape", str(path),
                          "--out", str(out), "--device", "cpu"], capture_output=True, text=True)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.strip()]) <= 2, res.stderr
    assert not out.exists() or not any(out.iterdir())


def test_a_representation_without_occupancy_is_refused(tmp_path, monkeypatch):
    from dream3d import config as config_mod
    from dream3d.guidance.shape_guide import guide_for

    cfg = config_mod.build({"prompt": "a red cube", "representation": {"name": "hashgrid_nerf"},
                            "shape": {"mesh": str(sphere(tmp_path / "s.obj"))}})
    monkeypatch.setattr(HashGridNeRF, "has", classmethod(lambda cls, capability: False))
    with pytest.raises(UserError, match="has no occupancy field"):
        guide_for(cfg, None)


def test_bad_settings(tmp_path):
    with pytest.raises(UserError, match="shape.sigma must be positive"):
        ShapeConfig(sigma=0)
    with pytest.raises(UserError, match="shape.weight"):
        ShapeConfig(weight=-1)


@pytest.mark.parametrize("representation", ["gaussians", "hashgrid_nerf"])
def test_a_shape_run_resumed_after_a_stop_matches_the_uninterrupted_one(tmp_path, tiny_embedded_dir, representation):
    import json
    import os
    import signal

    from dream3d import pipeline, presets

    box = trimesh.creation.box(extents=(0.6, 0.8, 0.6))
    box.export(tmp_path / "box.obj")
    extra = {"gaussians": {"representation.n_init": 300}, "hashgrid_nerf": {"representation.samples_per_ray": 16}}

    def cfg():
        return presets.resolve("fast", {"prompt": "a green cylinder", "model": str(tiny_embedded_dir), "device": "cpu",
                                      "representation.name": representation, "train.steps": 6,
                                      "train.resolution": 32, "shape.mesh": str(tmp_path / "box.obj"),
                                      "shape.grid_resolution": 24, "shape.points": 128, **extra[representation]},
                               ["export.mesh=false", "export.video=false", "train.preview_every=0",
                                "train.ckpt_every=0"])

    full = pipeline.generate(cfg(), tmp_path / "a")

    def on_step(log):
        if log.step + 1 == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        pipeline.generate(cfg(), tmp_path / "b", on_step=on_step)
    run_b = next(p for p in (tmp_path / "b").iterdir() if p.is_dir())
    assert json.loads((run_b / "run.json").read_text())["status"] == "interrupted"
    (tmp_path / "box.obj").unlink()  # the run folder's own copy of the guide is what resume reads
    pipeline.generate(None, tmp_path / "b", resume=run_b)
    wa, wb = (pipeline.load_run(r)[1].state_dict() for r in (full, run_b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    losses = [json.loads(line).get("shape_loss") for line in (run_b / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(v is not None for v in losses)
