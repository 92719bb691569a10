"""Runs and exports that fail, are killed or resumed: what is left in the run folder."""
from __future__ import annotations

import errno
import json

import pytest

from dream3d import atomic, pipeline, presets
from dream3d.errors import UserError
from dream3d.export import mesh as mesh_mod
from dream3d.export import video as video_mod
from test_export import FakeSphere, run_export


class Killed(Exception):
    """Stands for a SIGKILL: the process ends with nothing cleaned up."""


def tiny(model, *extra):
    return presets.resolve("dreamfusion", {"prompt": "a red cube", "model": str(model), "device": "cpu",
                                           "train.steps": 6, "train.resolution": 32, "prior_resolution": 64,
                                           "representation.samples_per_ray": 16},
                           ["train.preview_every=0", "train.ckpt_every=2", *extra])


def only_run(out):
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def files_of(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_metrics_after_a_kill_and_resume_repeat_no_step(tmp_path, tiny_sd_dir):
    def kill(log):
        if log.step + 1 == 3:  # step 3 is logged, the checkpoint holds step 2
            raise Killed

    with pytest.raises(Killed):
        pipeline.generate(tiny(tiny_sd_dir, "export.mesh=false", "export.video=false"), tmp_path, on_step=kill)
    run = only_run(tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"stage": "main", "st')  # a line the kill cut short
    pipeline.generate(None, tmp_path, resume=run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_a_full_disk_during_the_export_of_a_run_marks_it_failed(tmp_path, tiny_sd_dir, monkeypatch):
    real = atomic._write_file

    def full_on_ply(path, data):
        if path.suffix == ".ply":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(atomic, "_write_file", full_on_ply)
    with pytest.raises(UserError, match="the disk is full: the export in .* needs about"):
        pipeline.generate(tiny(tiny_sd_dir, "export.texture_size=0", "export.mesh_resolution=32",
                               "export.video_frames=2", "export.video_resolution=32"), tmp_path)
    run = only_run(tmp_path)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and info["stage"] == "export" and "disk is full" in info["error"]
    left = {p.name for p in run.iterdir()}
    assert not [n for n in left if n.startswith(("mesh.", "turntable.")) or ".tmp" in n], left
    # Space again: the export alone finishes the run.
    monkeypatch.setattr(atomic, "_write_file", real)
    pipeline.export_run(run)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and not info.get("error") and "mesh.ply" in info["exports"]


def test_one_export_replaces_all_its_files_or_none(tmp_path, monkeypatch):
    """A failure while writing the PLY (or the video) keeps every file of the earlier export:
    never a new mesh.glb beside an old mesh.obj or an old turntable."""
    run_export(FakeSphere(), tmp_path, decimate_faces=400)
    before = files_of(tmp_path)
    real = mesh_mod.export_ply
    monkeypatch.setattr(mesh_mod, "export_ply", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("encoder died")))
    with pytest.raises(RuntimeError, match="encoder died"):
        run_export(FakeSphere(radius=0.5), tmp_path, decimate_faces=400)
    assert files_of(tmp_path) == before
    monkeypatch.setattr(mesh_mod, "export_ply", real)
    monkeypatch.setattr(video_mod._FFmpeg, "append", lambda self, frame: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(UserError, match="the disk is full: the export in .* needs more than .*the files of the "
                                        "earlier export were kept"):
        run_export(FakeSphere(radius=0.5), tmp_path, decimate_faces=400)
    assert files_of(tmp_path) == before


@pytest.mark.parametrize("key, value, message", [
    ("export.video_frames", 0, "export.video_frames must be between 1 and"),
    ("export.video_resolution", 100000, "export.video_resolution must be between 16 and"),
    ("export.mesh_resolution", 4, "export.mesh_resolution must be between 8 and"),
    ("export.decimate_faces", -1, "export.decimate_faces must be 0 (keep all faces) or between 4 and"),
    ("export.texture_size", 8, "export.texture_size must be 0 (vertex colours only) or between 16 and"),
    ("seed", 2**70, "seed must be an integer between 0 and 4294967295"),
    ("seed", -1, "seed must be an integer between 0 and 4294967295"),
])
def test_bad_settings_fail_when_the_config_is_built(key, value, message):
    with pytest.raises(UserError) as info:
        presets.resolve("dreamfusion", {"prompt": "a red cube", key: value}, [])
    assert message in str(info.value)
