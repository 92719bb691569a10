"""`dream3d gallery`: the page, the contact sheet, and the page in a real headless Chromium."""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from PIL import Image
from test_batch import TINY_SET
from typer.testing import CliRunner

from dream3d.batch.promptfile import parse_yaml
from dream3d.batch.runner import BatchOptions, run_batch
from dream3d.cli import app
from dream3d.gallery import collect, find_model_viewer, write_gallery

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


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_page_in_headless_chromium(batch_dir):
    node = shutil.which("node")
    if node is None or not Path(CHROMIUM).exists():
        pytest.skip("node or chromium missing (make test installs both)")
    if not (REPO / "tools" / "node" / "node_modules" / "playwright-core").is_dir() or find_model_viewer() is None:
        pytest.skip("playwright-core or @google/model-viewer missing: npm ci --prefix tools/node")
    write_gallery(batch_dir)
    # Module scripts are not run from file:// pages, so the folder is served as a web server would.
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(batch_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "gallery.png"
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        res = subprocess.run([node, str(REPO / "tools" / "check_gallery.mjs"), url, str(shot)], capture_output=True,
                             text=True, timeout=240)
    finally:
        server.shutdown()
        server.server_close()
    shutil.copy(batch_dir / "contact-sheet.png", ARTIFACTS / "contact-sheet.png")
    assert res.returncode in (0, 1), res.stderr
    report = json.loads(res.stdout)
    assert report["consoleErrors"] == [] and report["failedRequests"] == []
    assert report["runs"] == 3 and report["modelViewerDefined"]
    assert len(report["videos"]) == 2 and report["gifFallbacks"] == 0
    for video in report["videos"]:  # the H.264 MP4 itself decodes in Debian's chromium
        assert video["src"].endswith("turntable.mp4") and video["error"] is None
        assert video["readyState"] >= 1 and video["width"] > 0
    assert len(report["viewers"]) == 2 and all(v["loaded"] and v["error"] is None for v in report["viewers"])
    assert all(img["complete"] and img["width"] > 0 for img in report["images"])
    assert report["ok"] and res.returncode == 0
    assert Image.open(shot).size[0] == 1280
