"""Atomic file groups, the recovery of killed writes, and full disks (simulated and on a real tiny tmpfs)."""
from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from _disk import dead_pid, mounted_tmpfs
from dream3d import atomic
from dream3d.atomic import write_bytes_atomic
from dream3d.errors import UserError
from dream3d.export import video as video_mod
from dream3d.training import checkpoint as ckpt_mod
from dream3d.training import stop as stop_mod
from dream3d.training.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def temp_names(folder: Path) -> set[str]:
    return {n for n in names(folder) if ".tmp" in n or n.startswith(".commit.")}


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB file system."""
    with mounted_tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


# ---------------------------------------------------------------- groups and full disks (simulated)
def test_a_full_disk_in_a_group_is_one_line_and_keeps_the_earlier_files(tmp_path, monkeypatch):
    write_bytes_atomic({tmp_path / "a.txt": b"old a", tmp_path / "b.txt": b"old b"})
    before = contents(tmp_path)
    real = atomic._write_file
    monkeypatch.setattr(atomic, "_write_file", lambda p, d: no_space() if p.name.startswith(".b.") else real(p, d))
    with pytest.raises(atomic.DiskFull) as info:
        write_bytes_atomic({tmp_path / "a.txt": b"new a" * 100, tmp_path / "b.txt": b"new b" * 100})
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert str(tmp_path) in message and "needs about 1000 bytes" in message, message  # both files' bytes
    assert contents(tmp_path) == before and not temp_names(tmp_path)


def test_a_short_disk_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 10)
    with pytest.raises(atomic.DiskFull, match=r"needs about 2\.0 KiB and 10 bytes is free"):
        write_bytes_atomic({tmp_path / "x.bin": b"\0" * 2048})
    assert names(tmp_path) == set()


def test_checkpoint_on_a_full_disk_keeps_the_last_one(tmp_path, monkeypatch):
    net = nn.Linear(64, 64)
    opt = torch.optim.Adam(net.parameters())
    gen = torch.Generator().manual_seed(0)
    save_checkpoint(tmp_path, 2, {"net": net}, opt, gen)
    before = contents(tmp_path)

    def half_then_full(tensors, path):
        Path(path).write_bytes(b"\0" * 100)  # a partial file, as a disk filling mid-write leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "save_file", half_then_full)
    with pytest.raises(atomic.DiskFull, match=r"a checkpoint of step 4 in .* needs about .*; the checkpoint of step 2 is kept"):
        save_checkpoint(tmp_path, 4, {"net": net}, opt, gen)
    assert contents(tmp_path) == before and not temp_names(tmp_path)
    assert load_checkpoint(tmp_path, {"net": nn.Linear(64, 64)}, None, None)["step"] == 2


def test_ffmpeg_failing_is_an_error_not_a_truncated_mp4(tmp_path, monkeypatch):
    """imageio ignored ffmpeg's exit status: a full disk left a truncated MP4 in place."""
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho 'Error writing trailer: No space left on device' >&2\nexit 228\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    import imageio_ffmpeg

    out = tmp_path / "out"
    out.mkdir()
    frames = np.full((3, 16, 16, 3), 0.5, np.float32)
    video_mod.write_mp4(frames, out / "t.mp4")
    before = contents(out)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(fake))
    with pytest.raises(atomic.DiskFull, match="writing t.mp4 in .* needs more than"):
        video_mod.write_mp4(frames, out / "t.mp4")
    assert contents(out) == before and not temp_names(out)


# ---------------------------------------------------------------- kills
KILL_MID_RENAME = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from dream3d import atomic
    folder = Path(sys.argv[1])
    real, calls = os.replace, []
    def replace_then_die(src, dst):
        if Path(dst).name in ("mesh.glb", "mesh.obj", "mesh.ply") and calls:
            os._exit(9)  # as SIGKILL: nothing runs after this
        real(src, dst)
        if Path(dst).name.startswith("mesh."):
            calls.append(dst)
    atomic.os.replace = replace_then_die
    with atomic.FileGroup(folder) as group:
        for name in ("mesh.glb", "mesh.obj", "mesh.ply"):
            group.write(folder / name, b"new " + name.encode())
        group.commit()
""")


def test_a_kill_between_the_renames_is_finished_at_the_next_recovery(tmp_path):
    for name in ("mesh.glb", "mesh.obj", "mesh.ply"):
        (tmp_path / name).write_bytes(b"old " + name.encode())
    res = subprocess.run([sys.executable, "-c", KILL_MID_RENAME, str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 9, res.stderr
    mixed = contents(tmp_path)
    assert mixed["mesh.glb"] == b"new mesh.glb" and mixed["mesh.obj"] == b"old mesh.obj"  # killed half way
    assert [n for n in names(tmp_path) if n.startswith(".commit.")]  # the list of renames survived
    done = atomic.recover_folder(tmp_path)
    assert sorted(done["finished"]) == ["mesh.obj", "mesh.ply"]
    assert contents(tmp_path) == {n: b"new " + n.encode() for n in ("mesh.glb", "mesh.obj", "mesh.ply")}
    assert not temp_names(tmp_path)


def test_recovery_removes_temporary_files_of_dead_writers_only(tmp_path):
    dead = dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [f".mesh.{dead}-abc123.tmp.glb", ".mesh.k2j1x0ab.tmp.obj", ".step-000002.safetensors.tmp"]
        live = f".turntable.{sleeper.pid}-zz9.tmp.mp4"
        for n in stale + [live, "mesh.glb", ".notes"]:
            (tmp_path / n).write_bytes(b"x")
        # a rename list naming a file outside the folder is not followed
        (tmp_path / f".commit.{dead}-q1.json").write_text(json.dumps({"renames": [[stale[0], "../escaped.glb"]]}))
        done = atomic.recover_folder(tmp_path)
        assert sorted(done["removed"]) == sorted(stale)
        assert names(tmp_path) == {live, "mesh.glb", ".notes"}
        assert not (tmp_path.parent / "escaped.glb").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sigterm_waits_for_the_renames_of_a_group(tmp_path, monkeypatch):
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(b"old")
    real = os.replace

    def replace_and_signal(src, dst):
        if Path(dst).name == "a":
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the group is being renamed
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_and_signal)
    with pytest.raises(stop_mod.Interrupted) as info, stop_mod.interrupt_on_signal():
        with atomic.FileGroup(tmp_path) as group:
            for name in ("a", "b", "c"):
                group.write(tmp_path / name, b"new")
            group.commit()
    assert info.value.signal_name == "SIGTERM"
    assert contents(tmp_path) == {"a": b"new", "b": b"new", "c": b"new"} and not temp_names(tmp_path)


# ---------------------------------------------------------------- a real full disk
def test_checkpoint_on_a_real_full_disk(tiny_disk, monkeypatch):
    folder = tiny_disk / "ckpt"
    small, big = nn.Linear(8, 8), nn.Linear(512, 512)  # ~1 KiB and ~3 MiB with Adam's moments
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(small.parameters())
    save_checkpoint(folder, 1, {"net": small}, opt, gen)
    before = contents(folder)
    big_opt = torch.optim.Adam(big.parameters())
    big(torch.zeros(1, 512)).sum().backward()
    big_opt.step()
    # Refused before writing: the free space is known to be short.
    with pytest.raises(atomic.DiskFull, match=r"a checkpoint of step 2 in .*ckpt needs about 3\.\d MiB and .* is free; "
                                       r"the checkpoint of step 1 is kept"):
        save_checkpoint(folder, 2, {"net": big}, big_opt, gen)
    assert contents(folder) == before
    # The same without the check: the disk really fills up during safetensors' write.
    monkeypatch.setattr(ckpt_mod, "ensure_space", lambda *a, **k: None)
    monkeypatch.setattr(atomic.FileGroup, "ensure", lambda self, more: None)
    with pytest.raises(atomic.DiskFull, match="the checkpoint of step 1 is kept"):
        save_checkpoint(folder, 2, {"net": big}, big_opt, gen)
    assert contents(folder) == before and not temp_names(folder)
    assert load_checkpoint(folder, {"net": nn.Linear(8, 8)}, None, None)["step"] == 1


def test_mp4_on_a_real_full_disk(tiny_disk):
    frames = np.random.default_rng(0).random((30, 256, 256, 3)).astype(np.float32)  # noise: megabytes of H.264
    with pytest.raises(atomic.DiskFull, match="writing t.mp4 in .* needs more than"):
        video_mod.write_mp4(frames, tiny_disk / "t.mp4")
    assert names(tiny_disk) == set()
