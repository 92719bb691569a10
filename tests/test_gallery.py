"""`dream3d gallery`: the page, the contact sheet, and the page in a real headless Chromium."""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_batch import TINY_SET
from typer.testing import CliRunner

from dream3d.batch.promptfile import parse_yaml
from dream3d.batch.runner import BatchOptions, run_batch
from dream3d.cli import app
from dream3d.gallery import collect, find_model_viewer, find_splat_viewer, write_gallery
from dream3d.representations.gaussian_ply import read_ply
from dream3d.representations.gaussians import SH_C0, GaussianConfig, Gaussians

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("DREAM3D_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory, tiny_embedded_dir) -> Path:
    """A batch folder with two finished runs and one entry that failed before it started."""
    out = tmp_path_factory.mktemp("gallery") / "batch"
    text = yaml.safe_dump({"defaults": {"preset": "fast", "steps": 4, "seed": 0, "set": TINY_SET}, "prompts": [
        "a red cube", {"prompt": "a blue torus", "seed": 1}, {"prompt": "a green cone", "preset": "nope"}]})
    result = run_batch(parse_yaml(text, "g.yaml"), BatchOptions(out=out, model=str(tiny_embedded_dir), device="cpu",
                                                                 progress=False))
    assert sorted(result.states.values()) == ["done", "done", "failed"]
    return out


def test_page_and_contact_sheet(batch_dir):
    files = write_gallery(batch_dir)
    page = (batch_dir / "index.html").read_text()
    cards = collect(batch_dir)
    assert [c.prompt for c in cards] == ["a red cube", "a blue torus", "a green cone"]  # manifest order
    assert [c.state for c in cards] == ["done", "done", "failed"]
    assert page.count("<article") == 3 and page.count("<video") == 2
    assert "unknown preset &#x27;nope&#x27;" in page
    assert str(batch_dir) not in page  # every path relative: the folder can be moved or published as is
    red = cards[0]
    assert red.settings["preset"] == "fast" and red.settings["steps"] == "4" and red.settings["seed"] == "0"
    assert red.preview.name == "main-step-000004.png" and red.eval  # the batch scored it
    if find_model_viewer() is not None:
        assert page.count("<model-viewer") == 2 and (batch_dir / "model-viewer.min.js").is_file()
        assert '<script type="module" src="model-viewer.min.js">' in page
    # no run has splats: no splat panel, no import map, no splat viewer copied
    assert 'class="splats"' not in page and "importmap" not in page
    assert not (batch_dir / "gaussian-splats-3d.module.js").exists()
    sheet = Image.open(files["contact sheet"])
    assert sheet.size == (3 * 384 + 4 * 8, 232 + 2 * 8)


def test_plain_run_folders_and_the_command(tmp_path, batch_dir):
    """Any folder of runs, without batch.json: runs are found by their run.json, at any depth."""
    runs = [p for p in batch_dir.iterdir() if (p / "run.json").is_file()]
    shutil.copytree(runs[0], tmp_path / "a" / runs[0].name)
    shutil.copytree(runs[1], tmp_path / "b" / "deeper" / runs[1].name)
    res = CliRunner().invoke(app, ["gallery", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "index.html").is_file() and (tmp_path / "contact-sheet.png").is_file()
    assert sorted(c.prompt for c in collect(tmp_path)) == ["a blue torus", "a red cube"]
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(app, ["gallery", str(empty)])
    assert res.exit_code != 0 and "no runs under" in str(res.exception)


def test_splat_panel_only_for_runs_with_splats(tmp_path, monkeypatch):
    """A run with gaussians.ply gets a splat panel beside its mesh (the viewer copied next to the page,
    its bare `three` import mapped); without the viewer installed, a link to the file instead."""
    import dream3d.gallery as gallery_pkg

    for name in ("with", "without"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"status": "done", "prompt": f"run {name} splats"}))
        (tmp_path / name / "mesh.glb").write_bytes(b"glTF")
    _two_clusters(4).save_splats(tmp_path / "with" / "gaussians.ply")
    installed = find_splat_viewer()
    if installed is not None:
        write_gallery(tmp_path, contact_sheet=False)
        page = (tmp_path / "index.html").read_text()
        assert page.count('class="splats"') == 1 and 'data-src="with/gaussians.ply"' in page
        assert page.index('type="importmap"') < page.index('type="module"')  # the map precedes every module
        for name, src in installed.items():
            assert (tmp_path / name).read_bytes() == src.read_bytes()
    monkeypatch.setattr(gallery_pkg, "find_splat_viewer", lambda: None)
    res = CliRunner().invoke(app, ["gallery", str(tmp_path), "--no-contact-sheet"])
    assert res.exit_code == 0 and "Gaussian splat viewer was not found" in res.output
    page = (tmp_path / "index.html").read_text()
    assert 'class="splats"' not in page and "importmap" not in page
    assert page.count('href="with/gaussians.ply"') == 1 and "without/gaussians.ply" not in page


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _skip_without_a_browser() -> str:
    node = shutil.which("node")
    if node is None or not Path(CHROMIUM).exists():
        pytest.skip("node or chromium missing (make test installs both)")
    if not (REPO / "tools" / "node" / "node_modules" / "playwright-core").is_dir() or find_model_viewer() is None:
        pytest.skip("playwright-core or @google/model-viewer missing: npm ci --prefix tools/node")
    return node


def _check_in_chromium(node: str, folder: Path, shot: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """tools/check_gallery.mjs on `folder`'s index.html: (the process, its JSON report)."""
    # Module scripts are not run from file:// pages, so the folder is served as a web server would.
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        res = subprocess.run([node, str(REPO / "tools" / "check_gallery.mjs"), url, str(shot)], capture_output=True,
                             text=True, timeout=240)
    finally:
        server.shutdown()
        server.server_close()
    assert res.returncode in (0, 1), res.stderr
    return res, json.loads(res.stdout)


def test_page_in_headless_chromium(batch_dir):
    node = _skip_without_a_browser()
    write_gallery(batch_dir)
    shot = ARTIFACTS / "gallery.png"
    res, report = _check_in_chromium(node, batch_dir, shot)
    shutil.copy(batch_dir / "contact-sheet.png", ARTIFACTS / "contact-sheet.png")
    assert report["consoleErrors"] == [] and report["failedRequests"] == []
    assert report["runs"] == 3 and report["modelViewerDefined"]
    assert len(report["videos"]) == 2 and report["gifFallbacks"] == 0
    for video in report["videos"]:  # the H.264 MP4 itself decodes in Debian's chromium
        assert video["src"].endswith("turntable.mp4") and video["error"] is None
        assert video["readyState"] >= 1 and video["width"] > 0
    assert len(report["viewers"]) == 2 and all(v["loaded"] and v["error"] is None for v in report["viewers"])
    assert report["splats"] == []  # no run of this batch has a Gaussian stage
    assert all(img["complete"] and img["width"] > 0 for img in report["images"])
    assert report["ok"] and res.returncode == 0
    assert Image.open(shot).size[0] == 1280


RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)


def _two_clusters(n: int = 150) -> Gaussians:
    """Red splats right of the centre (+X), blue ones above it (+Y): where they land in the view
    shows the file's positions, colours and axes were read."""
    torch.manual_seed(0)
    rep = Gaussians(GaussianConfig(n_init=2 * n))
    with torch.no_grad():
        points = 0.1 * torch.randn(2 * n, 3)
        points[:n, 0] += 0.6
        points[n:, 1] += 0.6
        rep.means.copy_(points)
        rep.log_scales.fill_(math.log(0.04))
        rep.opacity_logits.fill_(5.0)
        rep.quats.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        rep.sh0[:n, 0] = (torch.tensor(RED) - 0.5) / SH_C0
        rep.sh0[n:, 0] = (torch.tensor(BLUE) - 0.5) / SH_C0
    return rep


def _where(pixels: np.ndarray, colour: tuple[float, float, float]) -> tuple[int, float, float]:
    """How many pixels are near `colour`, and their mean (x, y) as fractions of the width and height."""
    near = (np.abs(pixels / 255.0 - np.array(colour)) < 0.2).all(-1)
    ys, xs = np.nonzero(near)
    return int(near.sum()), float(xs.mean() / pixels.shape[1]) if xs.size else -1, \
        float(ys.mean() / pixels.shape[0]) if ys.size else -1


def test_splats_in_headless_chromium(tmp_path, batch_dir):
    """A run's gaussians.ply is drawn beside its mesh by the splat viewer, from the file itself;
    a broken file is a line in its own panel; a run without splats has no panel."""
    node = _skip_without_a_browser()
    if find_splat_viewer() is None:
        pytest.skip("@mkkellogg/gaussian-splats-3d or three missing: npm ci --prefix tools/node")
    runs = sorted(p for p in batch_dir.iterdir() if (p / "run.json").is_file())
    root = tmp_path / "gallery"
    for name, run in (("a-splats", runs[0]), ("b-broken", runs[1]), ("c-no-splats", runs[0])):
        shutil.copytree(run, root / name, ignore=shutil.ignore_patterns("ckpt"))
    good = _two_clusters().save_splats(root / "a-splats" / "gaussians.ply")
    (root / "b-broken" / "gaussians.ply").write_bytes(good.read_bytes()[:-1000])  # truncated
    write_gallery(root, contact_sheet=False)
    res, report = _check_in_chromium(node, root, ARTIFACTS / "gallery-splats.png")

    assert report["consoleErrors"] == [] and report["failedRequests"] == []
    assert len(report["viewers"]) == 3 and all(v["loaded"] for v in report["viewers"])  # the meshes still show
    shown, broken = report["splats"]
    assert shown["src"] == "a-splats/gaussians.ply" and shown["state"] == "shown"
    assert shown["splats"] == shown["vertices"] == len(read_ply(good)) == 300  # every splat of the file
    assert shown["label"] == "300 splats"
    assert broken["src"] == "b-broken/gaussians.ply" and broken["state"] == "error"
    assert broken["label"] == "splats not shown: truncated: 300 splats announced"
    assert not report["ok"] and res.returncode == 1  # only the broken file fails the check

    pixels = np.asarray(Image.open(shown["shot"]).convert("RGB"), dtype=np.float64)
    red, blue = _where(pixels, RED), _where(pixels, BLUE)
    background = _where(pixels, (0xB3 / 255,) * 3)
    assert red[0] > 300 and blue[0] > 300 and background[0] > pixels.shape[0] * pixels.shape[1] // 2
    assert red[1] > 0.55 and 0.35 < red[2] < 0.65  # right of the centre, at its height
    assert blue[2] < 0.45 and 0.4 < blue[1] < 0.6  # above the centre (+Y up), not to a side
