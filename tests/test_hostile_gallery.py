"""Hostile run folders: what `dream3d gallery`, `eval` and `export` do with files a shared disk or a
Ray worker may hand them. A table of cases (what is written into a run folder -> the expected one
warning line or one error line), and a page rendered from hostile strings in every field a run
folder can supply, checked with `html.parser` to hold no element or attribute that came from them.

Run folders are written by hand here (no training): the gallery reads files, nothing else.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable
from urllib.parse import unquote

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from dream3d.cli import app
from dream3d.errors import UserError
from dream3d.gallery import page as page_mod

RUN_JSON = {"status": "done", "prompt": "a red cube", "seed": 0, "stage": "main", "timings": {"main_seconds": 3.5}}
CONFIG = {"prompt": "a red cube", "seed": 0, "model": "/models/tiny-prior",
          "stages": [{"name": "main", "representation": {"name": "hashgrid_nerf"},
                      "guidance": {"name": "sds", "guidance_scale": 7.5},
                      "train": {"steps": 4, "resolution": 32}}]}
EVAL_JSON = {"object_accuracy": 1.0, "colour_accuracy": 0.5, "object": "cube", "colour": "red"}


def png(path: Path, colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def write_run(run_dir: Path, info: dict | None = None, config: dict | None = None, scores: dict | None = None,
              stage: str = "main") -> Path:
    """A finished-looking run folder: run.json, config.yaml, eval.json, mesh, turntable, one preview."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(RUN_JSON if info is None else info))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(CONFIG if config is None else config, allow_unicode=True))
    (run_dir / "eval.json").write_text(json.dumps(EVAL_JSON if scores is None else scores))
    for name in ("mesh.glb", "turntable.mp4"):
        (run_dir / name).write_bytes(b"not really a " + name.encode())
    (run_dir / "turntable.gif").write_bytes(b"GIF89a")
    png(run_dir / "previews" / f"{stage}-step-000004.png")
    return run_dir


def write_batch(folder: Path, entries: list) -> None:
    (folder / "batch.json").write_text(json.dumps({"version": 1, "entries": entries}))


def entry(entry_id: str, **fields) -> dict:
    return {"id": entry_id, "prompt": "a red cube", "source": "p.txt:1", "spec": {"preset": "fast"},
            "state": "done", "error": None, "run_dir": entry_id, "seconds": 4.2, **fields}


def gallery(folder: Path, *flags: str):
    """`dream3d gallery FOLDER` in-process; a UserError is what main() prints as one line."""
    res = CliRunner().invoke(app, ["gallery", str(folder), *flags])
    assert res.exception is None or isinstance(res.exception, (UserError, SystemExit)), \
        f"{type(res.exception).__name__}: {res.exception}\n{res.output}"
    return res


def warnings_of(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("warning")
            and "<model-viewer> not found" not in line]


# ---------------------------------------------------------------- the gallery: one table of cases

def _set_file(name: str, data: bytes | str) -> Callable[[Path], None]:
    def write(run_dir: Path) -> None:
        path = run_dir / name
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    return write


def _json(name: str, data) -> Callable[[Path], None]:
    return _set_file(name, json.dumps(data))


def _run_json(**fields) -> Callable[[Path], None]:
    return _json("run.json", {**RUN_JSON, **fields})


def _config(**fields) -> Callable[[Path], None]:
    return _set_file("config.yaml", yaml.safe_dump({**CONFIG, **fields}))


def _a_folder(name: str) -> Callable[[Path], None]:
    def write(run_dir: Path) -> None:
        (run_dir / name).unlink()
        (run_dir / name).mkdir()
    return write


def _preview_file(name: str | bytes, data: bytes | None = None) -> Callable[[Path], None]:
    def write(run_dir: Path) -> None:
        for p in (run_dir / "previews").iterdir():
            p.unlink()
        path = os.path.join(os.fsencode(run_dir / "previews"), os.fsencode(name))
        with open(path, "wb") as f:
            Image.new("RGB", (8, 8)).save(f, format="PNG") if data is None else f.write(data)
    return write


DEEP = "[" * 100_000 + "]" * 100_000

SKIPPED, SHOWN, NO_SCORES = "skipped", "shown", "shown without scores"

# (id, what is written into the run folder "victim", outcome, the warning line's text (None: no warning))
RUN_CASES = [
    # config.yaml
    ("config-text", _set_file("config.yaml", "just some text\n"), SKIPPED, "config.yaml is not a mapping of settings"),
    ("config-empty", _set_file("config.yaml", ""), SKIPPED, "config.yaml is empty"),
    ("config-list", _set_file("config.yaml", "- 1\n- 2\n"), SKIPPED, "config.yaml is not a mapping of settings"),
    ("config-binary", _set_file("config.yaml", bytes(range(256)) * 4), SKIPPED, "config.yaml is not text"),
    ("config-bad-yaml", _set_file("config.yaml", "prompt: [a\n"), SKIPPED, "config.yaml is not valid YAML"),
    ("config-python-tag", _set_file("config.yaml", "!!python/object/apply:os.system ['touch pwned']\n"), SKIPPED,
     "config.yaml is not valid YAML"),
    ("config-stages-5", _config(stages=[5]), SKIPPED, "'stages.0' must be a mapping, got 5 (int)"),
    ("config-stages-str", _config(stages="main"), SKIPPED, "'stages' must be a list of stages"),
    ("config-representation-list", _config(representation=[1]), SKIPPED, "'representation' must be a mapping"),
    ("config-stage-guidance-int", _config(stages=[{"name": "main", "guidance": 7}]), SKIPPED,
     "'stages.0.guidance' must be a mapping, got 7 (int)"),
    ("config-a-folder", _a_folder("config.yaml"), SKIPPED, "cannot read"),
    ("config-stage-missing-keys", _config(stages=[{}, None]), SHOWN, None),
    ("config-stage-odd-types", _config(stages=[{"name": ["x"], "guidance": {"name": {}, "guidance_scale": "7"},
                                                "train": {"steps": "4", "resolution": [32]}}],
                                       seed=10 ** 400, model=["m"], prompt=5), SHOWN, None),
    ("config-huge-int", _set_file("config.yaml", "prompt: a red cube\nseed: " + "9" * 5000 + "\n"), SKIPPED,
     "config.yaml is not valid YAML"),
    ("config-missing", lambda d: (d / "config.yaml").unlink(), SHOWN, None),
    # run.json
    ("run-corrupt", _set_file("run.json", '{"status": "done"'), SKIPPED, "run.json is not valid JSON"),
    ("run-binary", _set_file("run.json", b"\xff\xfe\x00garbage"), SKIPPED, "run.json is not text"),
    ("run-list", _json("run.json", ["done"]), SKIPPED, "run.json must hold a JSON object, got ['done'] (list)"),
    ("run-string", _json("run.json", "done"), SKIPPED, "run.json must hold a JSON object, got 'done' (str)"),
    ("run-deeply-nested", _set_file("run.json", DEEP), SKIPPED, "run.json"),
    ("run-huge-int", _set_file("run.json", '{"prompt": ' + "9" * 5000 + "}"), SKIPPED, "run.json is not valid JSON"),
    ("run-prompt-number", _run_json(prompt=5), SKIPPED, "'prompt' must be a string, got 5 (int)"),
    ("run-status-list", _run_json(status=["done"]), SKIPPED, "'status' must be a string"),
    ("run-error-mapping", _run_json(status="failed", error={"why": 1}), SKIPPED, "'error' must be a string"),
    ("run-timings-list", _run_json(timings=[1, 2]), SKIPPED, "'timings' must be a mapping"),
    ("run-timings-text", _run_json(timings={"main_seconds": "3.5"}), SKIPPED, "'timings' must map names to seconds"),
    ("run-timings-nan", _set_file("run.json", '{"status": "done", "timings": {"main_seconds": NaN}}'), SKIPPED,
     "'timings' must map names to seconds"),
    ("run-a-folder", _a_folder("run.json"), SKIPPED, "cannot read"),
    ("run-missing-keys", _json("run.json", {}), SHOWN, None),
    ("run-lone-surrogate", _set_file("run.json", '{"status": "done", "prompt": "a red \\ud800 cube"}'), SHOWN, None),
    # eval.json: the run is shown, its scores are not
    ("eval-corrupt", _set_file("eval.json", "{"), NO_SCORES, "eval.json is not valid JSON"),
    ("eval-list", _json("eval.json", [0.5]), NO_SCORES, "eval.json must hold a JSON object"),
    ("eval-score-text", _json("eval.json", {"object_accuracy": "50%"}), NO_SCORES,
     "'object_accuracy' must be a finite number, got '50%' (str)"),
    ("eval-score-bool", _json("eval.json", {"colour_accuracy": True}), NO_SCORES, "'colour_accuracy' must be a finite"),
    ("eval-score-infinite", _set_file("eval.json", '{"object_accuracy": Infinity}'), NO_SCORES, "must be a finite"),
    ("eval-score-huge-int", _set_file("eval.json", '{"object_accuracy": ' + "9" * 400 + "}"), NO_SCORES,
     "must be a finite"),
    # files
    ("preview-not-a-png", _preview_file("main-step-000004.png", b"not a png"), SHOWN,
     "left the preview"),
    ("preview-many-digits", _preview_file("main-step-" + "9" * 200 + ".png"), SHOWN, None),
    ("preview-undecodable-name", _preview_file(b"\xff\xfe-step-000004.png"), SHOWN, None),
    ("preview-a-folder", lambda d: (d / "previews" / "main-step-000009.png").mkdir(), SHOWN, None),
]


def _gallery_of_two(tmp_path: Path, mutate: Callable[[Path], None]) -> tuple[Path, Path]:
    root = tmp_path / "runs"
    write_run(root / "good", info={**RUN_JSON, "prompt": "a green cone"})
    victim = write_run(root / "victim")
    mutate(victim)
    return root, victim


@pytest.mark.parametrize("mutate,outcome,message", [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_gallery_case(tmp_path, mutate, outcome, message):
    root, victim = _gallery_of_two(tmp_path, mutate)
    res = gallery(root)
    assert res.exit_code == 0, res.output
    page = (root / "index.html").read_text(encoding="utf-8")  # valid UTF-8 whatever the files held
    assert (root / "contact-sheet.png").is_file()
    assert "a green cone" in page  # the rest of the gallery is there
    shown = 'id="victim"' in page
    assert shown == (outcome != SKIPPED), page
    lines = warnings_of(res)
    if message is None:
        assert lines == [], res.stderr
    else:
        assert len(lines) == 1 and message in lines[0], res.stderr
        assert ("victim" in lines[0]) and len(lines[0]) < 400, lines[0]
    if outcome == NO_SCORES:
        assert page.count("<dt>object</dt>") == 1  # the good run's only
    assert "Traceback" not in res.output
    assert not (Path.cwd() / "pwned").exists()


def test_undecodable_run_folder_name(tmp_path):
    """A folder whose name is not UTF-8 (a shared disk's other locale): shown, its URL the same bytes quoted."""
    root = tmp_path / "runs"
    write_run(root / "good")
    write_run(Path(os.fsdecode(os.path.join(os.fsencode(root), b"caf\xe9-run"))))
    res = gallery(root)
    assert res.exit_code == 0, res.output
    page = (root / "index.html").read_text(encoding="utf-8")
    assert page.count("<article") == 2 and 'href="caf%E9-run/"' in page


def test_a_very_long_prompt_is_quick(tmp_path):
    """A 1 MB prompt: the page shows it (escaped), the contact sheet cuts it once; seconds, not hours."""
    root = tmp_path / "runs"
    write_run(root / "victim", info={**RUN_JSON, "prompt": "<b>" + "x" * 1_000_000})
    res = subprocess.run([sys.executable, "-m", "dream3d.cli", "gallery", str(root)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "&lt;b&gt;" + "x" * 1_000_000 in (root / "index.html").read_text()


BATCH_CASES = [
    # (id, batch.json text, outcome of run "victim" (listed in the batch), the warning line's text)
    ("batch-corrupt", '{"entries": [', SHOWN, "ignored the batch record"),
    ("batch-list", json.dumps([{"id": "victim"}]), SHOWN, "batch.json must hold a JSON object"),
    ("batch-entries-mapping", json.dumps({"entries": {"victim": {}}}), SHOWN, "'entries' must be a list"),
    ("entry-not-an-object", json.dumps({"entries": ["victim"]}), SHOWN, "entry 1 must be a JSON object"),
    ("entry-no-id", json.dumps({"entries": [{"prompt": "x"}]}), SHOWN, "entry 1 has no 'id'"),
    ("entry-id-number", json.dumps({"entries": [{"id": 5}]}), SHOWN, "'id' must be a string, got 5 (int)"),
    ("entry-state-list", json.dumps({"entries": [entry("victim", state=["done"])]}), SHOWN, "'state' must be a string"),
    ("entry-error-number", json.dumps({"entries": [entry("victim", error=7)]}), SHOWN, "'error' must be a string"),
    ("entry-seconds-text", json.dumps({"entries": [entry("victim", seconds="4 s")]}), SHOWN, "'seconds' must be a"),
    ("entry-spec-list", json.dumps({"entries": [entry("victim", spec=["fast"])]}), SHOWN, "'spec' must be a mapping"),
    ("entry-preset-number", json.dumps({"entries": [entry("victim", spec={"preset": 3})]}), SHOWN,
     "'spec.preset' must be a string"),
    ("entry-run-dir-outside", json.dumps({"entries": [entry("victim", run_dir="../outside")]}), SHOWN,
     "is outside"),
    ("entry-run-dir-absolute", None, SHOWN, "is outside"),  # filled in with the outside folder's absolute path
    ("entry-id-escapes", json.dumps({"entries": [entry("../outside", run_dir=None)]}), SHOWN, "is outside"),
    ("entry-run-dir-nul", json.dumps({"entries": [entry("victim", run_dir="a\u0000b")]}), SHOWN, "skipped a batch"),
    ("entry-fine", json.dumps({"entries": [entry("victim"), entry("never-ran", state="failed", run_dir=None)]}),
     SHOWN, None),
]


@pytest.mark.parametrize("text,outcome,message", [c[1:] for c in BATCH_CASES], ids=[c[0] for c in BATCH_CASES])
def test_gallery_batch_case(tmp_path, text, outcome, message):
    root = tmp_path / "batch"
    write_run(root / "good", info={**RUN_JSON, "prompt": "a green cone"})
    write_run(root / "victim")
    write_run(tmp_path / "outside", info={**RUN_JSON, "prompt": "a secret outside the batch"})
    if text is None:
        text = json.dumps({"entries": [entry("victim", run_dir=str(tmp_path / "outside"))]})
    (root / "batch.json").write_text(text)
    res = gallery(root)
    assert res.exit_code == 0, res.output
    page = (root / "index.html").read_text()
    assert "a green cone" in page and ('id="victim"' in page) == (outcome == SHOWN)
    assert "a secret outside the batch" not in page and "outside/" not in page
    lines = warnings_of(res)
    if message is None:
        assert lines == [] and page.count("<article") == 3, res.stderr
    else:
        assert len(lines) == 1 and message in lines[0] and "batch.json" in lines[0], res.stderr


def test_every_run_broken_is_one_error_line(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "a")
    (root / "a" / "run.json").write_text("[]")
    res = subprocess.run([sys.executable, "-m", "dream3d.cli", "gallery", str(root)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if "<model-viewer>" not in line]
    assert lines[0].startswith("warning: skipped a run:") and "a/run.json" in lines[0]
    assert lines[1].startswith("error: no runs under") and len(lines) == 2, res.stderr


def test_warnings_are_one_terminal_line(tmp_path):
    """A folder name with a newline, an escape sequence and rich markup stays one plain warning line."""
    root = tmp_path / "runs"
    write_run(root / "good")
    bad = write_run(root / "bad\n[bold red]x[/]\x1b[31m")
    (bad / "run.json").write_text("{")
    res = gallery(root)
    assert res.exit_code == 0, res.output
    lines = warnings_of(res)
    assert len(lines) == 1 and "\\n[bold red]x[/]\\x1b[31m" in lines[0] and "\x1b" not in res.stderr, res.stderr


# ---------------------------------------------------------------- eval and export on a broken config.yaml

BROKEN_CONFIGS = [
    ("text", "just some text\n", "config.yaml is not a mapping of settings"),
    ("empty", "", "config.yaml is empty"),
    ("list", "- 1\n- 2\n", "config.yaml is not a mapping of settings"),
    ("binary", bytes(range(256)) * 4, "config.yaml is not text"),
    ("bad-yaml", "prompt: [a\n", "config.yaml is not valid YAML"),
    ("stages-5", "prompt: a red cube\nstages: [5]\n", "'stages.0' must be a mapping"),
    ("stages-str", "prompt: a red cube\nstages: main\n", "'stages' must be a list"),
    ("train-int", "prompt: a red cube\ntrain: 3\n", "'train' must be a mapping"),
    ("guidance-str", "prompt: a red cube\nguidance: sds\n", "'guidance' must be a mapping"),
    ("stage-representation-list", "prompt: a red cube\nstages:\n- name: main\n  representation: [nerf]\n",
     "'stages.0.representation' must be a mapping"),
]


@pytest.mark.parametrize("command", ["eval", "export"])
@pytest.mark.parametrize("data,message", [c[1:] for c in BROKEN_CONFIGS], ids=[c[0] for c in BROKEN_CONFIGS])
def test_eval_and_export_of_a_broken_config(tmp_path, command, data, message):
    run = write_run(tmp_path / "run")
    _set_file("config.yaml", data)(run)
    res = CliRunner().invoke(app, [command, str(run)])
    assert isinstance(res.exception, UserError), f"{type(res.exception).__name__}: {res.exception}"
    line = str(res.exception)
    assert message in line and "\n" not in line and len(line) < 300, line


@pytest.mark.parametrize("command", ["eval", "export"])
def test_eval_and_export_print_one_line(tmp_path, command):
    """Through the console entry point: exit code 2 and one `error:` line, no traceback."""
    run = write_run(tmp_path / "run")
    (run / "config.yaml").write_text("prompt: a red cube\nstages: [5]\n")
    res = subprocess.run([sys.executable, "-m", "dream3d.cli", command, str(run)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [f"error: {run / 'config.yaml'}: 'stages.0' must be a mapping, "
                                               "got 5 (int)"], res.stderr


def test_export_with_a_broken_run_json_is_one_line(tmp_path):
    from dream3d.run import RunInfo

    for text, message in (("{", "is not valid JSON"), ("[]", "must hold a JSON object"),
                          ('{"timings": [1]}', "'timings' must be a mapping")):
        (tmp_path / "run.json").write_text(text)
        with pytest.raises(UserError, match=message):
            RunInfo(tmp_path)


# ---------------------------------------------------------------- hostile strings in every field

HOSTILE = [
    '<script>alert("x")</script>',
    '"><img src=x onerror=alert(1)>',
    "' onmouseover='alert(1)' x='",
    "javascript:alert(document.cookie)",
    "</article></main><iframe src=//evil.example>",
    "<!-- <style>body{display:none}</style> -->",
    "&lt;b&gt; &amp;amp; &#x3C;script&#x3E;",
    "红色的立方体 🧊 r\u0308ed \u202eevil\u202c \u200b",
    "<svg/onload=alert(1)>" * 2000,  # 42,000 characters
]
# Folder and file names cannot hold '/' or NUL and are at most 255 bytes.
HOSTILE_NAMES = [h.replace("/", "\u2215")[:60] for h in HOSTILE]


def _fields(strings: list[str], names: list[str]) -> dict:
    """Every field a run folder can supply, from `strings` (texts) and `names` (file and folder names)."""
    s = lambda i: strings[i % len(strings)]  # noqa: E731
    return {
        "run": {"status": s(0), "prompt": s(1), "stage": s(2), "error": s(3), "seed": s(4),
                "device": s(5), "timings": {s(6): 1.0}, "versions": {s(7): s(8)}},
        "config": {"prompt": s(2), "seed": s(3), "model": s(4),
                   "stages": [{"name": names[0], "representation": {"name": s(5)},
                               "guidance": {"name": s(6), "guidance_scale": 7.5},
                               "train": {"steps": s(7), "resolution": s(8)}},
                              {"name": s(1), "representation": {"name": s(2)}, "guidance": {"name": s(3)},
                               "train": {"steps": 1, "resolution": 2}}]},
        "eval": {"object_accuracy": 0.5, "colour_accuracy": 1.0, "object": s(0), "colour": s(1), s(2): s(3),
                 "labels": [s(4)], "per_view": [{"label": s(5)}]},
        "entries": [
            {"id": names[1], "prompt": s(4), "state": s(5), "error": s(6), "source": s(7), "run_dir": names[1],
             "spec": {"preset": s(8), "seed": s(0)}, "seconds": 1.5},
            {"id": names[2], "prompt": s(6), "state": s(7), "error": s(8), "source": s(0), "run_dir": None,
             "spec": {"preset": s(1)}},
            {"id": names[3], "prompt": s(2), "state": s(3), "error": s(4), "source": s(5), "run_dir": names[3],
             "spec": {"preset": s(6)}},
        ],
        "plain_run": names[4],
        "batch_dir": names[5],
    }


def _write_gallery_folder(root: Path, f: dict) -> Path:
    batch = root / f["batch_dir"]
    stage = f["config"]["stages"][0]["name"]
    write_run(batch / f["entries"][0]["run_dir"], info=f["run"], config=f["config"], scores=f["eval"], stage=stage)
    info3 = {**f["run"], "status": f["entries"][2]["state"]}
    write_run(batch / f["entries"][2]["run_dir"], info=info3, config=f["config"], scores=f["eval"], stage=stage)
    (batch / f["entries"][2]["run_dir"] / "mesh.glb").unlink()  # the second run has the GIF only
    (batch / f["entries"][2]["run_dir"] / "turntable.mp4").unlink()
    (batch / f["entries"][0]["run_dir"] / "gaussians.ply").write_bytes(b"ply\n")  # the first run has splats
    write_run(batch / "sub" / f["plain_run"], info=f["run"], config=f["config"], scores=f["eval"], stage=stage)
    write_batch(batch, f["entries"])
    return batch


class Page(HTMLParser):
    """Start tags with their attributes, and the text, of a page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []
        self.comments: list[str] = []
        self.scripts: list[str] = []
        self._in = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        self._in = tag

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        (self.scripts if self._in in ("script", "style") else self.text).append(data)

    def handle_comment(self, data):
        self.comments.append(data)

    def shape(self) -> Counter:
        """Which elements with which attribute names: what run data must not change."""
        return Counter((tag, tuple(sorted(name for name, _ in attrs))) for tag, attrs in self.tags)


TEXT_ATTRS = {"id", "alt", "title", "aria-label"}
"""Attributes whose values may carry a run's texts (as text)."""
URL_ATTRS = {"src", "href", "data-fallback", "data-src"}


def _render(tmp_path: Path, monkeypatch, strings: list[str], names: list[str], tag: str,
            viewer: bool) -> tuple[str, Path]:
    import dream3d.gallery as gallery_pkg

    batch = _write_gallery_folder(tmp_path / tag, _fields(strings, names))
    stand_in = tmp_path / "model-viewer.min.js"
    stand_in.write_text("// a stand-in for the real build")
    monkeypatch.setattr(gallery_pkg, "find_model_viewer", lambda: stand_in if viewer else None)
    splat_stand_ins = {name: stand_in for name in gallery_pkg.splats.FILES}
    monkeypatch.setattr(gallery_pkg, "find_splat_viewer", lambda: splat_stand_ins if viewer else None)
    res = gallery(batch, "--no-contact-sheet")  # the sheet's long texts: test_a_very_long_prompt_is_quick
    assert res.exit_code == 0, res.output
    return (batch / "index.html").read_text(encoding="utf-8"), batch


@pytest.mark.parametrize("viewer", [True, False], ids=["model-viewer", "no-viewer"])
def test_hostile_strings_are_only_text(tmp_path, monkeypatch, viewer):
    benign = [f"plain text {i}" for i in range(len(HOSTILE))]
    benign_names = [f"plain-name-{i}" for i in range(len(HOSTILE_NAMES))]
    good_html, _ = _render(tmp_path, monkeypatch, benign, benign_names, "benign", viewer)
    bad_html, batch = _render(tmp_path, monkeypatch, HOSTILE, HOSTILE_NAMES, "hostile", viewer)
    good, bad = Page(good_html), Page(bad_html)

    # The same elements with the same attributes as a benign gallery of the same shape.
    assert good.shape() == bad.shape()
    assert bad.shape()[("article", ("class", "id"))] == 4 and ("iframe", ()) not in bad.shape()
    assert bad.shape()[("div", ("aria-label", "class", "data-src", "role"))] == (1 if viewer else 0)
    assert bad.scripts == good.scripts and bad.comments == good.comments == []
    assert any(page_mod.SCRIPT.strip() in s for s in bad.scripts)
    for (tag, attrs), (tag0, attrs0) in zip(bad.tags, good.tags):
        assert tag == tag0
        for (name, value), (_, value0) in zip(attrs, attrs0):
            if name in TEXT_ATTRS:
                continue
            if name in URL_ATTRS:  # a relative path, percent-quoted: no scheme, no markup, no quotes
                assert value == value0 or (
                    ":" not in value and all(c.isalnum() or c in "%._~/-" for c in value)), (tag, name, value)
                assert value.startswith(("data:", "model-viewer.min.js")) or ":" not in value
            else:  # class, type, lang, ...: fixed by the page, never from run data
                assert value == value0, (tag, name, value, value0)

    # Every hostile text reaches the reader as text, whole (the heading and the definition lists).
    text = "".join(bad.text)
    for h in HOSTILE:
        assert h in text, h[:40]
        if any(c in h for c in "<>\"'&"):
            assert h not in bad_html  # never verbatim in the markup
    for name in HOSTILE_NAMES[:4]:
        assert name in text or name in "".join(v or "" for _, attrs in bad.tags for _, v in attrs)
    # No URL leaves the gallery folder.
    for tag, attrs in bad.tags:
        for name, value in attrs:
            if name in URL_ATTRS and not value.startswith("data:"):
                target = (batch / unquote(value)).resolve()
                assert target == batch.resolve() or target.is_relative_to(batch.resolve()), value


def test_state_classes_are_fixed(tmp_path):
    """Only known states become CSS classes; another state is shown as text only."""
    root = tmp_path / "runs"
    write_run(root / "a", info={**RUN_JSON, "status": "done failed running"})
    write_run(root / "b", info={**RUN_JSON, "status": "failed"})
    gallery(root)
    classes = [dict(attrs).get("class") for tag, attrs in Page((root / "index.html").read_text()).tags
               if tag == "span"]
    assert sorted(classes) == ["state", "state failed"]
