"""Hostile input to `generate` and `export`, through the real command line: out-of-range and
oversized settings, leftovers of killed exports, a full disk, SIGTERM and SIGKILL mid-export.

Each case is what a user types (and the state the run folder is in) against the one line
and exit status they should get. Out-of-range settings must fail before anything is trained
or loaded: no run folder appears and an existing one is left exactly as it was.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dream3d.cli import app
from _disk import dead_pid, mounted_tmpfs
from test_cli import TINY

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def cli(*args, limit_memory: int | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`python -m dream3d.cli ARGS` as a user runs it; `limit_memory` caps its address space
    (ulimit -v), so a memory check reads the same on every machine."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_memory, limit_memory))

    return subprocess.run([sys.executable, "-m", "dream3d.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, preexec_fn=limit if limit_memory else None, timeout=300, **kwargs)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".commit."))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_sd_dir) -> Path:
    """A tiny run with its exports written (the 'earlier export' the cases must keep)."""
    out = tmp_path_factory.mktemp("hostile") / "outputs"
    res = CliRunner().invoke(app, ["generate", "a red cube", "--model", str(tiny_sd_dir), "--out", str(out), *TINY,
                                   "--set", "export.texture_size=0"])
    assert res.exit_code == 0, res.output
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    assert (run / "mesh.glb").is_file() and (run / "turntable.mp4").is_file()
    return run


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    """A copy of the finished run for one case to change."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


# ---------------------------------------------------------------- folder states
def stale_temporaries(run: Path) -> dict:
    """Temporary files a killed export left (a dead writer's, an older version's) and one a
    running process is writing right now (this test's own id)."""
    dead = dead_pid()
    stale = [f".mesh.{dead}-a1b2c3.tmp.glb", ".turntable.x7y8z9.tmp.mp4", f"ckpt/main/.step-000006.{dead}-q.tmp.safetensors"]
    live = f".mesh.{os.getpid()}-d4e5f6.tmp.obj"
    for name in stale + [live]:
        (run / name).write_bytes(b"half")
    return {"gone": stale, "kept": [live]}


def half_done_renames(run: Path) -> dict:
    """An export SIGKILLed between its renames: mesh.glb is new, mesh.obj's new version still
    waits under its temporary name, listed in the commit record."""
    dead = dead_pid()
    tmp = f".mesh.{dead}-r3n4m3.tmp.obj"
    (run / tmp).write_bytes(b"# the new obj of the killed export\n")
    (run / f".commit.{dead}-j0urn4l.json").write_text(json.dumps({"pid": dead, "renames": [[tmp, "mesh.obj"]]}))
    return {"gone": [tmp], "obj": b"# the new obj of the killed export\n"}


# ---------------------------------------------------------------- the table
CASES = [
    # (id, arguments ({run}: the run folder), folder state, message on stderr (None: success), exit status)
    ("seed-overflow", ["generate", "a red cube", "--seed", 2**70], None,
     "seed must be an integer between 0 and 4294967295 (2**32 - 1), got 1180591620717411303424", 2),
    ("seed-negative", ["generate", "a red cube", "--seed", -1], None, "seed must be an integer between 0", 2),
    ("video-frames-zero", ["generate", "a red cube", "--set", "export.video_frames=0"], None,
     "export.video_frames must be between 1 and 100000, got 0", 2),
    ("video-resolution-huge", ["generate", "a red cube", "--set", "export.video_resolution=100000"], None,
     "export.video_resolution must be between 16 and 4096, got 100000", 2),
    ("mesh-resolution-huge", ["generate", "a red cube", "--set", "export.mesh_resolution=100000"], None,
     "export.mesh_resolution must be between 8 and 2048, got 100000", 2),
    ("decimate-negative", ["generate", "a red cube", "--set", "export.decimate_faces=-1"], None,
     "export.decimate_faces must be 0 (keep all faces) or between 4 and 100000000, got -1", 2),
    ("texture-too-small", ["generate", "a red cube", "--set", "export.texture_size=8"], None,
     "export.texture_size must be 0 (vertex colours only) or between 16 and 16384, got 8", 2),
    ("video-too-big-for-memory", ["generate", "a red cube", "--set", "export.video_frames=20000",
                                  "--set", "export.video_resolution=1024"], None,
     "export.video_resolution 1024, export.video_frames 20000: a turntable of 20000 frames at 1024x1024 needs about", 2),
    ("export-decimate-negative", ["export", "{run}", "--decimate", -1], None,
     "--decimate must be 0 (keep all faces) or between 4 and 100000000, got -1", 2),
    ("export-resolution-petabytes", ["export", "{run}", "--resolution", 100000], None,
     "--resolution must be between 8 and 2048, got 100000", 2),
    ("export-resolution-too-big-for-memory", ["export", "{run}", "--resolution", 1024], None,
     "--resolution 1024: a 1024^3 isosurface grid needs about 48.3 GiB of memory", 2),
    ("export-texture-too-small", ["export", "{run}", "--texture", 8], None,
     "--texture must be 0 (vertex colours only) or between 16 and 16384, got 8", 2),
    ("export-texture-too-big-for-memory", ["export", "{run}", "--texture", 16384], None,
     "--texture 16384: baking a 16384x16384 texture needs about 55.0 GiB of memory", 2),
    ("export-smooth-negative", ["export", "{run}", "--smooth", -1], None,
     "--smooth must be 0 (no smoothing) or between 1 and 100000, got -1", 2),
    ("floater-fraction-above-one", ["generate", "a red cube", "--set", "export.min_component_fraction=2"], None,
     "export.min_component_fraction must be a number between 0 and 1, got 2", 2),
    ("export-after-killed-exports", ["export", "{run}", "--no-video", "--format", "ply"], stale_temporaries, None, 0),
    ("export-after-half-done-renames", ["export", "{run}", "--no-video", "--format", "ply"], half_done_renames, None, 0),
]


@pytest.mark.parametrize("args, setup, message, status", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input(args, setup, message, status, run, tmp_path):
    state = setup(run) if setup else {}
    before = files_of(run)
    out = tmp_path / "new-runs"
    argv = [str(run) if a == "{run}" else a for a in args]
    if argv[0] == "generate":
        argv += ["--out", out]
    res = cli(*argv, limit_memory=16 * GIB)  # every machine then has at most 16 GiB to offer
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == status, res.stderr
    if message is not None:
        (line,) = lines(res.stderr)  # one line
        assert line.startswith("error: ") and message in line, line
        assert files_of(run) == before  # refused before anything was loaded or written
        assert not out.exists() or not any(out.iterdir())  # no run folder: nothing was trained
    for name in state.get("gone", []):
        assert not (run / name).exists(), name
    for name in state.get("kept", []):
        assert (run / name).exists(), name
    if "obj" in state:
        assert (run / "mesh.obj").read_bytes() == state["obj"]  # the killed export's renames were finished


# ---------------------------------------------------------------- a real full disk
def copy_run(src: Path, dst: Path) -> Path:
    """The run's config, record, exports and newest checkpoint (what an export needs)."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file() and p.name != ".lock":
            shutil.copy2(p, dst / p.name)
    latest = json.loads((src / "ckpt" / "main" / "latest.json").read_text())
    (dst / "ckpt" / "main").mkdir(parents=True)
    for name in ("latest.json", latest["weights"], latest["state"]):
        shutil.copy2(src / "ckpt" / "main" / name, dst / "ckpt" / "main" / name)
    return dst


def fill(disk: Path, leave: int) -> None:
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(free - leave, 0))


def test_export_on_a_full_disk(finished_run, tmp_path):
    with mounted_tmpfs(tmp_path / "disk", "12m") as disk:
        run = copy_run(finished_run, disk / "run")
        fill(disk, leave=64 * 1024)
        before = {k: v for k, v in files_of(run).items() if k != "run.json"}
        res = cli("export", run, "--resolution", 48)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        (line,) = lines(res.stderr)
        assert line.startswith(f"error: the disk is full: the export in {run} needs about "), line
        assert line.endswith("is free; the files of the earlier export were kept"), line
        assert {k: v for k, v in files_of(run).items() if k != "run.json"} == before and not leftovers(run)
        info = json.loads((run / "run.json").read_text())
        assert info["status"] == "done" and "the disk is full" in info["export_error"]  # its files are intact


def test_generate_on_a_full_disk(tmp_path, tiny_sd_dir):
    with mounted_tmpfs(tmp_path / "disk", "3m") as disk:  # room for everything but a 9 MiB checkpoint
        res = cli("generate", "a red cube", "--model", tiny_sd_dir, "--out", disk / "o", *TINY)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        error = [ln for ln in lines(res.stderr) if ln.startswith("error:")]
        assert len(error) == 1 and "the disk is full: a checkpoint of step 2 in " in error[0], res.stderr
        assert "ckpt/main needs about 9." in error[0] and error[0].endswith("no checkpoint was written"), error[0]
        (run,) = (disk / "o").iterdir()
        info = json.loads((run / "run.json").read_text())
        assert info["status"] == "failed" and "the disk is full" in info["error"]
        assert not leftovers(run)


# ---------------------------------------------------------------- signals during an export
def slow_export(run: Path) -> None:
    """Make the run's export slow (thousands of tiny turntable frames), so a signal lands mid-way."""
    cfg_path = run / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["export"].update(video_frames=3000, video_resolution=16, mesh_resolution=24, texture_size=0)
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def start_export_and_wait_for_staged_mesh(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "dream3d.cli", "export", str(run)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(run.glob(".mesh.*.tmp.glb")):  # the new mesh files are staged: the video renders now
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the export did not get to its video: {proc.communicate()}")
        time.sleep(0.05)
    return proc


def test_sigterm_during_export_is_one_line_and_keeps_the_earlier_files(run):
    slow_export(run)
    before = {k: v for k, v in files_of(run).items() if k not in ("run.json", "config.yaml")}
    proc = start_export_and_wait_for_staged_mesh(run)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert lines(err) == [f"interrupted by SIGTERM: the export stopped and the files of the earlier export were "
                          f"kept; run `dream3d export {run}` again"], err
    assert {k: v for k, v in files_of(run).items() if k not in ("run.json", "config.yaml")} == before
    assert not leftovers(run)
    assert "interrupted by SIGTERM" in json.loads((run / "run.json").read_text())["export_error"]


def test_sigkill_during_export_leaves_old_files_and_the_next_export_tidies(run):
    slow_export(run)
    before = {k: v for k, v in files_of(run).items() if k not in ("run.json", "config.yaml")}
    proc = start_export_and_wait_for_staged_mesh(run)
    proc.kill()
    proc.communicate(timeout=60)
    staged = leftovers(run)
    assert any(n.endswith(".tmp.glb") for n in staged), staged  # nothing could clean up
    assert {k: v for k, v in files_of(run).items() if k not in ("run.json", "config.yaml") and ".tmp" not in k} == before
    res = cli("export", run, "--no-video", "--format", "ply")
    assert res.returncode == 0, res.stderr
    assert not leftovers(run)
    assert (run / "mesh.glb").read_bytes() == before["mesh.glb"]  # only the PLY was asked for
