"""Image-to-3D (`generate --image`): the reference view's loss, the CLI end to end, refusals, resume."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from dream3d import config as config_mod
from dream3d import pipeline, presets
from dream3d.cli import app
from dream3d.errors import UserError
from dream3d.guidance.reference_image import ImageConfig, ReferenceView, reference_for
from dream3d.guidance.sds import SDSGuidance
from dream3d.procedural.front_view import write_front_view
from dream3d.representations.gaussians import GaussianConfig, Gaussians

TINY = ["--steps", "6", "--resolution", "32", "--seed", "0", "--device", "cpu", "--set", "train.preview_every=0",
        "--set", "export.mesh_resolution=24", "--set", "export.video=false",
        "--set", "export.texture_size=0", "--set", "export.formats=[glb]",
        "--set", "stages.0.representation.n_init=200", "--set", "stages.1.representation.grid_resolution=16",
        "--set", "image.resolution=32"]


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    return write_front_view(tmp_path_factory.mktemp("photo") / "front.png", "cube", "red", 64)


def small_gaussians(seed=0):
    torch.manual_seed(seed)
    return Gaussians(GaussianConfig(n_init=300))


def test_reference_loss_against_hand_computation(front):
    cfg = ImageConfig(path=str(front), resolution=32, rgb_weight=3.0, mask_weight=2.0, ramp_start=0.2, ramp_end=0.6)
    ref = ReferenceView(cfg, front)
    rep = small_gaussians()
    with torch.no_grad():
        rgb, alpha = ref.render(rep)
        t, m = ref.image.rgb, ref.image.mask[..., None]  # [32, 32, 3], [32, 32, 1]
        colour = ((rgb[0] - t) ** 2).mean(-1, keepdim=True).mul(m).sum() / m.sum()
        silhouette = ((alpha[0] - m) ** 2).mean()
        at_half = 0.75 * (3.0 * colour + 2.0 * silhouette)  # progress 0.5: (0.5 - 0.2) / (0.6 - 0.2) of the weight
        assert float(ref(rep, None, step=5, progress=0.5)) == pytest.approx(float(at_half), rel=1e-5)
        assert float(ref(rep, None, step=5, progress=0.9)) == pytest.approx(float(at_half / 0.75), rel=1e-5)
    assert ref(rep, None, step=5, progress=0.1) is None  # before the ramp: not even rendered
    assert ReferenceView(ImageConfig(path=str(front), resolution=32, every=4), front)(rep, None, 6, 0.5) is None
    assert ref.rgb.shape == (1, 32, 32, 3) and ref.mask.shape == (1, 32, 32, 1)
    assert ref.image.source == "alpha" and 0.1 < float(ref.image.mask.mean()) < 0.4


def test_fitting_the_reference_view_alone_raises_its_psnr(front):
    ref = ReferenceView(ImageConfig(path=str(front), resolution=32), front)
    rep = small_gaussians()
    before = ref.measure(rep)
    opt = torch.optim.Adam([p for ps in rep.param_groups().values() for p in ps], lr=0.02)
    for step in range(60):
        loss = ref(rep, None, step, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = ref.measure(rep)
    assert after["psnr_db"] > before["psnr_db"] + 5, (before, after)
    assert after["l1"] < before["l1"]


def only_run(out):
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def test_cli_generate_with_an_image(tmp_path, tiny_embedded_dir):
    photo = tmp_path / "photo.png"
    shutil.copy(write_front_view(tmp_path / "f.png", "cube", "red", 64), photo)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["generate", "--image", str(photo), "a red cube", "--model", str(tiny_embedded_dir),
                                   "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    run = only_run(out)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["image"]["path"] == "reference-image.png"
    assert [s["representation"]["name"] for s in cfg["stages"]] == ["gaussians", "dmtet"]  # the image preset
    assert (run / "reference-image.png").read_bytes() == photo.read_bytes()
    view = json.loads((run / "run.json").read_text())["reference_view"]
    assert set(view) == {"psnr_db", "l1", "resolution"} and view["resolution"] == 32
    assert np.isfinite(view["psnr_db"]) and 0 <= view["l1"] <= 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("reference_loss", 0) > 0 for r in rows)
    assert (run / "mesh.glb").is_file()

    from dream3d.gallery import write_gallery

    html = write_gallery(out, contact_sheet=False)["page"].read_text()
    assert "reference view" in html and "dB" in html and "reference-image.png" in html


def photo_cfg(photo, model, steps=8):
    return presets.resolve("image", {"prompt": "a red cube", "model": str(model), "device": "cpu",
                                     "train.steps": steps, "train.resolution": 32, "image.path": str(photo)},
                           ["export.mesh=false", "export.video=false", "train.preview_every=0", "train.ckpt_every=0",
                            "stages.0.representation.n_init=200", "stages.1.representation.grid_resolution=16",
                            "image.resolution=32"])


def test_resume_of_an_image_run_after_the_photo_moved(tmp_path, tiny_embedded_dir, front):
    full = pipeline.generate(photo_cfg(front, tiny_embedded_dir), tmp_path / "a")
    photo = tmp_path / "photo.png"
    shutil.copy(front, photo)

    def on_step(log):
        if log.step + 1 == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        pipeline.generate(photo_cfg(photo, tiny_embedded_dir), tmp_path / "b", on_step=on_step)
    run = only_run(tmp_path / "b")
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    photo.unlink()  # the run folder holds its copy
    pipeline.generate(None, tmp_path / "b", resume=run)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and "psnr_db" in info["reference_view"]

    def weights(r):
        return {k: v.clone() for k, v in pipeline.load_run(r)[1].state_dict().items()}

    wa, wb = weights(full), weights(run)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    assert info["reference_view"] == json.loads((full / "run.json").read_text())["reference_view"]


def bad_photo(tmp_path, kind):
    path = tmp_path / "photo.png"
    if kind == "missing":
        return path
    if kind == "not an image":
        path.write_text("a red cube, honestly")
    elif kind == "too small":
        Image.fromarray(np.zeros((16, 16, 4), np.uint8), mode="RGBA").save(path)
    elif kind == "transparent":
        Image.fromarray(np.zeros((64, 64, 4), np.uint8), mode="RGBA").save(path)
    elif kind == "busy":
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise, mode="RGB").save(path)
    return path


@pytest.mark.parametrize("kind, message", [
    ("missing", "no such file"),
    ("not an image", "not a readable"),
    ("too small", "too small"),
    ("transparent", "fully transparent"),
    ("busy", "no plain background"),
])
def test_bad_photos_are_one_line_and_touch_nothing(tmp_path, kind, message):
    out = tmp_path / "out"
    earlier = out / "an-earlier-run"
    earlier.mkdir(parents=True)
    (earlier / "run.json").write_text("{}")
    path = bad_photo(tmp_path, kind)
    res = subprocess.run([sys.executable, "-m", "dream3d.cli", "generate", "--image", str(path), "a red cube",
                          "--out", str(out), "--device", "cpu"], capture_output=True, text=True)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.strip()]) == 1, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["an-earlier-run"]
    assert (earlier / "run.json").read_text() == "{}"


def test_a_representation_with_the_users_mesh_is_refused(tmp_path, front):
    res = subprocess.run([sys.executable, "-m", "dream3d.cli", "generate", "--image", str(front), "a red cube",
                          "--representation", "fixed_mesh", "--preset", "fast", "--out", str(tmp_path / "out"),
                          "--device", "cpu"], capture_output=True, text=True)
    assert res.returncode != 0
    assert "cannot follow the photo's silhouette" in res.stderr, res.stderr
    assert len([line for line in res.stderr.splitlines() if line.strip()]) == 1, res.stderr
    assert not (tmp_path / "out").exists()


def test_prompt_rules(tmp_path, front, monkeypatch):
    def cfg(prompt, image=str(front)):
        return config_mod.build({"prompt": prompt, "representation": {"name": "gaussians"},
                                 "image": {"path": image}})

    with pytest.raises(UserError, match="--image without a prompt"):
        reference_for(cfg(""), None)
    with pytest.raises(UserError, match="the prompt is empty"):
        cfg("", image="")
    assert reference_for(cfg("a red cube"), None) is not None
    assert reference_for(cfg("a red cube", image=""), None) is None
    # a guidance conditioned on the photo needs no prompt, and refuses a run without a photo
    monkeypatch.setattr(SDSGuidance, "takes_reference_image", True)
    assert reference_for(cfg(""), None) is not None
    with pytest.raises(UserError, match="conditioned on an input image: give one with --image"):
        reference_for(cfg("a red cube", image=""), None)


def test_cli_without_a_prompt_says_why(tmp_path, front):
    res = subprocess.run([sys.executable, "-m", "dream3d.cli", "generate", "--image", str(front),
                          "--out", str(tmp_path / "out"), "--device", "cpu"], capture_output=True, text=True)
    assert res.returncode != 0
    assert "--image without a prompt" in res.stderr and "text-guided" in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


def test_bad_settings():
    with pytest.raises(UserError, match="image.resolution"):
        ImageConfig(resolution=8)
    with pytest.raises(UserError, match="image.every must be positive"):
        ImageConfig(every=0)
    with pytest.raises(UserError, match="image.fill"):
        ImageConfig(fill=1.5)


def test_an_image_conditioned_guidance_needs_no_prompt(tmp_path, front):
    from test_zero123 import RES, build_tiny_zero123

    model = build_tiny_zero123(tmp_path / "zero123")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["generate", "--image", str(front), "--guidance", "zero123", "--model", str(model),
                                   "--preset", "dreamfusion", "--steps", "2", "--resolution", "32", "--device", "cpu",
                                   "--out", str(out), "--set", "export.mesh=false", "--set", "export.video=false",
                                   "--set", "train.preview_every=0", "--set", "representation.samples_per_ray=16",
                                   "--set", f"prior_resolution={RES}", "--set", "image.resolution=32"])
    assert res.exit_code == 0, res.output
    run = only_run(out)
    assert run.name.startswith("front-")  # named after the photo
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and "psnr_db" in info["reference_view"]
