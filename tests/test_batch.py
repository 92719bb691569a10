"""Prompt files, the batch manifest, resuming after a kill, and two batch processes on one folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dream3d.batch import job as job_mod
from dream3d.batch.promptfile import parse_text, parse_yaml, read_prompt_files, run_name
from dream3d.batch.runner import BatchOptions, plan, run_batch
from dream3d.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# Tiny runs: a 16x16 random prior, 32x32 renders, a 32^3 mesh, a 4-frame video.
TINY_SET = {"train.resolution": 32, "train.preview_every": 2, "train.ckpt_every": 2, "export.mesh_resolution": 32,
            "export.video_frames": 4, "export.video_resolution": 32, "representation.samples_per_ray": 16}


def prompt_file(path: Path, prompts: list, steps: int = 4, **overrides) -> Path:
    defaults = {"preset": "fast", "steps": steps, "seed": 0, "set": {**TINY_SET, **overrides}}
    path.write_text(yaml.safe_dump({"defaults": defaults, "prompts": prompts}, sort_keys=False))
    return path


def manifest(out: Path) -> list[dict]:
    return json.loads((out / "batch.json").read_text())["entries"]


def metrics_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def batch_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "dream3d.cli", "batch", *map(str, args)]


# ---------------------------------------------------------------- prompt files


def test_text_file_skips_comments_and_blank_lines():
    text = "# a header\n\na red cube\n   \n  a blue sphere   # trailing note\n#a comment\na #1 robot\n"
    entries = parse_text(text, "p.txt")
    assert [e.prompt for e in entries] == ["a red cube", "a blue sphere", "a"]
    assert [e.source for e in entries] == ["p.txt:3", "p.txt:5", "p.txt:7"]
    assert all(e.error is None and e.set == {} for e in entries)


def test_yaml_defaults_entries_and_bad_entries():
    text = """
defaults:
  preset: fast
  steps: 10
  set: {train.resolution: 32, export.video_frames: 8}
prompts:
  - a red cube
  - prompt: a blue torus
    seed: 3
    steps: 20
    set: {train.resolution: 48}
  - prompt: ""
  - prompt: a green cone
    seeds: 3
  - prompt: a pink robot
    seed: three
  - prompt: a white chair
    set: [train.steps=3]
  - 42
"""
    entries = parse_yaml(text, "p.yaml")
    cube, torus, empty, typo, bad_seed, bad_set, number = entries
    assert cube.error is None and cube.preset == "fast" and cube.steps == 10 and cube.seed is None
    assert cube.set == {"train.resolution": 32, "export.video_frames": 8}
    assert torus.error is None and (torus.seed, torus.steps) == (3, 20)
    assert torus.set == {"train.resolution": 48, "export.video_frames": 8}  # the entry's own value wins
    assert empty.error == "the prompt is empty"
    assert "unknown key 'seeds'" in typo.error
    assert "'seed' must be an integer" in bad_seed.error
    assert "'set' must be a mapping" in bad_set.error
    assert "must be a prompt or a mapping" in number.error
    assert [e.source for e in entries] == [f"p.yaml:{n}" for n in (7, 8, 12, 13, 15, 17, 19)]


def test_yaml_list_form_and_whole_file_errors(tmp_path):
    assert [e.prompt for e in parse_yaml("- a red cube\n- prompt: a blue cube\n", "l.yaml")] == ["a red cube",
                                                                                               "a blue cube"]
    with pytest.raises(UserError, match=r"p.yaml:\d+: not valid YAML"):
        parse_yaml("prompts:\n  - [unclosed\n", "p.yaml")
    with pytest.raises(UserError, match="unknown top-level key 'prompt'"):
        parse_yaml("prompt: a red cube\n", "p.yaml")
    with pytest.raises(UserError, match="defaults: 'steps' must be positive"):
        parse_yaml("defaults: {steps: 0}\nprompts: [a red cube]\n", "p.yaml")
    with pytest.raises(UserError, match="prompt file not found"):
        read_prompt_files([tmp_path / "missing.yaml"])
    (tmp_path / "p.csv").write_text("a red cube\n")
    with pytest.raises(UserError, match="ends in .txt, .yaml or .yml"):
        read_prompt_files([tmp_path / "p.csv"])


def test_entry_names_are_deterministic():
    a = parse_text("a red cube\n", "x.txt")[0].spec()
    assert run_name(a) == run_name(dict(a)) and run_name(a).startswith("a-red-cube-")
    assert run_name({**a, "seed": 1}) != run_name(a)


def test_plan_resolves_like_generate_and_fails_bad_entries(tmp_path):
    entries = parse_yaml(yaml.safe_dump({"prompts": [
        {"prompt": "a red cube", "preset": "dreamfusion"},
        {"prompt": "a red cube", "preset": "dreamfusion"},  # written twice: one run
        {"prompt": "a blue cube", "preset": "nope"},
        {"prompt": "a green cube", "set": {"train.bogus": 1}},
        {"prompt": "a pink cube", "guidance": "magic"},
        {"prompt": "a pink cube", "guidance": "csd", "steps": 7, "seed": 5},
    ]}), "p.yaml")
    planned = plan(entries, BatchOptions(out=tmp_path, model="some-model", overrides=["train.resolution=40"]))
    assert len(planned) == 5
    good, preset, override, guidance, csd = planned
    assert good.error is None and good.job.config["model"] == "some-model"
    assert good.job.config["stages"][0]["train"]["resolution"] == 40
    assert "unknown preset 'nope'" in preset.error and preset.job is None
    assert "unknown config key 'train.bogus'" in override.error
    assert "unknown guidance 'magic'" in guidance.error
    assert csd.error is None and csd.job.config["seed"] == 5 and csd.job.total_steps == 7
    assert csd.job.config["stages"][0]["guidance"]["name"] == "csd"


def test_shipped_prompt_files_resolve(tmp_path):
    files = sorted((REPO / "prompts").glob("*.yaml")) + sorted((REPO / "prompts").glob("*.txt"))
    assert {f.name for f in files} >= {"ci-smoke.yaml", "showcase.yaml"}
    for f in files:
        planned = plan(read_prompt_files([f]), BatchOptions(out=tmp_path))
        assert planned and all(p.error is None for p in planned), [(p.entry.source, p.error) for p in planned]


# ---------------------------------------------------------------- in-process runs


def test_retry_after_an_unexpected_error_and_fail_fast(tmp_path, tiny_embedded_dir, monkeypatch):
    real, calls = job_mod._generate, []

    def flaky(job, run_dir, on_start, on_step):
        calls.append(job.id)
        if len(calls) == 1:
            raise RuntimeError("a flaky disk")
        return real(job, run_dir, on_start, on_step)

    monkeypatch.setattr(job_mod, "_generate", flaky)
    entries = parse_yaml(yaml.safe_dump({"defaults": {"preset": "fast", "steps": 2, "set": TINY_SET},
                                         "prompts": ["a red cube"]}), "p.yaml")
    opts = BatchOptions(out=tmp_path / "b", model=str(tiny_embedded_dir), device="cpu", retries=1, progress=False,
                        evaluate=False)
    result = run_batch(entries, opts)
    assert result.ok
    (rec,) = manifest(tmp_path / "b")
    assert (rec["state"], rec["attempts"], rec["failures"]) == ("done", 2, 1)
    assert [h["outcome"] for h in rec["history"]] == ["failed", "done"]
    assert "a flaky disk" in rec["history"][0]["error"]

    # --fail-fast: a bad entry stops the batch before the next one starts
    entries = parse_yaml(yaml.safe_dump({"prompts": [{"prompt": "a red cube", "preset": "nope"}, "a blue cube"]}),
                         "p.yaml")
    result = run_batch(entries, BatchOptions(out=tmp_path / "c", fail_fast=True, progress=False))
    assert not result.ok and sorted(result.states.values()) == ["failed", "queued"]
    bad, untouched = manifest(tmp_path / "c")
    assert bad["state"] == "failed" and "unknown preset" in bad["error"]
    assert untouched["state"] == "queued" and untouched["attempts"] == 0


# ---------------------------------------------------------------- the command, killed and re-run


def wait_for(condition, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_midway_then_rerun_loses_nothing_and_runs_nothing_twice(tmp_path, tiny_embedded_dir):
    steps = 40
    prompts = prompt_file(tmp_path / "p.yaml", ["a red cube", "a blue sphere", "a green cone", {"prompt": ""}],
                          steps=steps, **{"train.ckpt_every": 5, "train.preview_every": 20})
    out = tmp_path / "out"
    cmd = batch_cmd(prompts, "--out", out, "--model", tiny_embedded_dir, "--device", "cpu", "--no-eval")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def second_entry_past_a_checkpoint():
        if not (out / "batch.json").is_file():
            return None
        first, second = manifest(out)[:2]
        metrics = out / second["id"] / "metrics.jsonl"
        return first["state"] == "done" and metrics.is_file() and len(metrics.read_text().splitlines()) >= 8

    try:
        wait_for(second_entry_past_a_checkpoint, 120, "the second entry's first checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first, second, third, empty = manifest(out)
    assert (first["state"], second["state"], third["state"]) == ("done", "running", "queued")
    done_stamp = (out / first["id"] / "run.json").stat().st_mtime_ns
    at_kill = json.loads((out / second["id"] / "ckpt" / "main" / "latest.json").read_text())["step"]
    assert 5 <= at_kill < steps

    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr  # the empty prompt fails; everything else is done
    assert "the prompt is empty" in res.stderr
    first, second, third, empty = manifest(out)
    assert [e["state"] for e in (first, second, third, empty)] == ["done", "done", "done", "failed"]
    # the finished entry was not touched again
    assert first["attempts"] == 1 and len(first["history"]) == 1
    assert (out / first["id"] / "run.json").stat().st_mtime_ns == done_stamp
    assert metrics_steps(out / first["id"]) == list(range(1, steps + 1))
    # the killed one resumed from its checkpoint instead of starting again
    assert second["attempts"] == 2 and [h["outcome"] for h in second["history"]] == ["lost", "done"]
    assert second["history"][1]["resumed_from"] == at_kill
    assert sorted(set(metrics_steps(out / second["id"]))) == list(range(1, steps + 1))
    assert metrics_steps(out / second["id"])[-(steps - at_kill):] == list(range(at_kill + 1, steps + 1))
    for rec in (first, second, third):
        run = out / rec["id"]
        assert json.loads((run / "run.json").read_text())["status"] == "done"
        assert (run / "mesh.glb").is_file() and (run / "turntable.mp4").is_file()
    assert third["attempts"] == 1 and empty["attempts"] == 0

    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # nothing left but the bad line
    assert res.returncode == 1
    assert [e["attempts"] for e in manifest(out)] == [1, 2, 1, 0]


def test_two_batch_processes_share_one_folder(tmp_path, tiny_embedded_dir):
    """One plain process and one with two local workers on the same folder: each entry runs exactly once."""
    steps = 10
    prompts = prompt_file(tmp_path / "p.yaml", ["a red cube", "a blue cube", "a green cube", "a pink cube",
                                                "a white cube"], steps=steps)
    out = tmp_path / "out"
    common = [prompts, "--out", out, "--model", tiny_embedded_dir, "--device", "cpu", "--no-eval"]
    procs = [subprocess.Popen(batch_cmd(*common), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
             subprocess.Popen(batch_cmd(*common, "--workers", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    entries = manifest(out)
    assert len(entries) == 5 and all(e["state"] == "done" for e in entries)
    assert all(e["attempts"] == 1 and len(e["history"]) == 1 for e in entries)
    drivers = {e["history"][0]["pid"] for e in entries}
    assert drivers <= {p.pid for p in procs}
    for e in entries:
        assert metrics_steps(out / e["id"]) == list(range(1, steps + 1))  # trained once, not twice
    # the workers of the --workers 2 process are its children, not the process itself
    pooled = [e for e in entries if e["history"][0]["pid"] == procs[1].pid]
    assert all(e["history"][0]["worker"] != f"{e['history'][0]['host']}:{procs[1].pid}" for e in pooled)
    assert not any(os.path.exists(out / e["id"] / "error.log") for e in entries)
