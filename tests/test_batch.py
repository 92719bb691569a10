"""Prompt files, the batch state (batch.db), resuming after a kill, and two batch processes on one folder."""
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
from dream3d.batch.manifest import read_records
from dream3d.batch.promptfile import entry_id, entry_key, parse_text, parse_yaml, read_prompt_files
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
    """The folder's entries, read from batch.db as the batch processes write it ([] before it exists)."""
    return read_records(out)


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
    key = entry_key("/p/x.txt", 0, a)
    assert key == entry_key("/p/x.txt", 0, dict(a)) and entry_id(a, key).startswith("a-red-cube-")
    assert len({key, entry_key("/p/x.txt", 0, {**a, "seed": 1}), entry_key("/p/x.txt", 1, a),
                entry_key("/p/y.txt", 0, a)}) == 4  # settings, occurrence and file each make another entry


def test_plan_resolves_like_generate_and_fails_bad_entries(tmp_path):
    entries = parse_yaml(yaml.safe_dump({"prompts": [
        {"prompt": "a red cube", "preset": "dreamfusion"},
        {"prompt": "a red cube", "preset": "dreamfusion"},  # written twice: two entries
        {"prompt": "a blue cube", "preset": "nope"},
        {"prompt": "a green cube", "set": {"train.bogus": 1}},
        {"prompt": "a pink cube", "guidance": "magic"},
        {"prompt": "a pink cube", "guidance": "csd", "steps": 7, "seed": 5},
    ]}), "p.yaml")
    planned = plan(entries, BatchOptions(out=tmp_path, model="some-model", overrides=["train.resolution=40"]))
    assert len(planned) == 6
    good, twice, preset, override, guidance, csd = planned
    assert twice.error is None and twice.id != good.id and (good.occurrence, twice.occurrence) == (0, 1)
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
        if len(manifest(out)) < 2:
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


# ---------------------------------------------------------------- every entry its own record (fake runs)


@pytest.fixture
def fake_runs(monkeypatch):
    """Entries "run" in no time: each try writes a finished run.json; returns the ids tried, in order."""
    tried = []

    def fake(job, run_dir, on_start, on_step):
        tried.append(job.id)
        (run_dir / "run.json").write_text(json.dumps({"status": "done", "prompt": job.config["prompt"]}))
        return None

    monkeypatch.setattr(job_mod, "_generate", fake)
    return tried


def run_text(tmp_path: Path, name: str, text: str, out: Path | None = None, **opts):
    path = tmp_path / name
    path.write_text(text)
    out = out or tmp_path / "out"
    result = run_batch(read_prompt_files([path]), BatchOptions(out=out, progress=False, evaluate=False, **opts))
    return result, manifest(out)


@pytest.mark.parametrize("bad_first", [True, False])
def test_a_malformed_entry_never_shadows_a_valid_one(tmp_path, fake_runs, bad_first):
    """Issue 13: a `seed: abc` entry and a valid "a red cube" were one record; now each is its own."""
    bad, good = "- {prompt: a red cube, seed: abc}\n", "- a red cube\n"
    result, records = run_text(tmp_path, "p.yaml", bad + good if bad_first else good + bad)
    assert len(records) == 2 and len(set(result.states)) == 2
    by_state = {r["state"]: r for r in records}
    assert set(by_state) == {"done", "failed"}
    assert by_state["failed"]["error"] == "'seed' must be an integer, got 'abc'"
    assert by_state["failed"]["attempts"] == 0 and by_state["failed"]["line"] == (1 if bad_first else 2)
    assert by_state["done"]["line"] == (2 if bad_first else 1) and fake_runs == [by_state["done"]["id"]]
    assert sorted(result.states.values()) == ["done", "failed"] and not result.ok


def test_nine_bad_entries_are_nine_records(tmp_path, fake_runs):
    entries = ["{prompt: a red cube, seed: abc}", "{prompt: a red cube, seed: xyz}", "{prompt: a red cube, seeds: 1}",
               "{prompt: a red cube, steps: 0}", "{prompt: a red cube, set: [1]}", "{prompt: ''}", "{prompt: 5}",
               "42", "{prompt: a red cube, preset: nope}"]
    text = "".join(f"- {e}\n" for e in entries) + "- a red cube\n- a red cube\n"
    result, records = run_text(tmp_path, "p.yaml", text)
    assert [r["line"] for r in records] == list(range(1, 12))
    assert [r["state"] for r in records] == ["failed"] * 9 + ["done", "done"]
    assert all(r["error"] and "\n" not in r["error"] for r in records[:9])
    assert len({r["id"] for r in records}) == 11 and len(fake_runs) == 2  # the line written twice ran twice
    assert len(result.states) == 11


def test_a_rerun_finds_its_entries_after_the_file_was_edited(tmp_path, fake_runs):
    run_text(tmp_path, "p.txt", "a red cube\na blue cube\na red cube\n")
    assert len(fake_runs) == 3
    before = {r["id"]: r for r in manifest(tmp_path / "out")}
    # a line added on top, two lines swapped, one edited: only the new and the edited one run
    result, records = run_text(tmp_path, "p.txt", "a pink cube\na red cube\na red cube\na blue cube!\n"
                               "a green cube\n")
    assert len(fake_runs) == 3 + 3
    assert len(records) == 3 + 3  # the record keeps the entry the file no longer has
    now = {r["id"]: r for r in records}
    assert all(now[i]["attempts"] == 1 for i in before)
    reds = [r for r in records if r["prompt"] == "a red cube"]
    assert [r["line"] for r in reds] == [2, 3] and [r["occurrence"] for r in reds] == [0, 1]  # moved, found again
    assert sorted(result.states.values()) == ["done"] * 5 and result.ok


def test_the_same_file_twice_is_refused(tmp_path):
    (tmp_path / "p.txt").write_text("a red cube\n")
    with pytest.raises(UserError, match="given twice"):
        read_prompt_files([tmp_path / "p.txt", tmp_path / "." / "p.txt"])


# ---------------------------------------------------------------- the state in SQLite


def test_state_lives_in_sqlite_and_batch_json_is_its_export(tmp_path, fake_runs):
    import sqlite3

    from typer.testing import CliRunner

    from dream3d.cli import app

    result, records = run_text(tmp_path, "p.txt", "a red cube\na blue cube\n")
    out = tmp_path / "out"
    db = sqlite3.connect(out / "batch.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM entries").fetchone()[0] == 2  # one row per entry
    db.close()
    exported = json.loads((out / "batch.json").read_text())
    assert exported["version"] == 2 and [e["id"] for e in exported["entries"]] == [r["id"] for r in records]
    (out / "batch.json").unlink()
    res = CliRunner().invoke(app, ["batch", "status", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 entries: 2 done" in res.output and "p.txt:2" in res.output
    assert (out / "batch.json").is_file()  # written on demand
    res = CliRunner().invoke(app, ["batch", "status", str(out), "--json"])
    assert res.exit_code == 0 and [e["state"] for e in json.loads(res.stdout)["entries"]] == ["done", "done"]


def test_a_folder_with_only_an_old_batch_json_is_imported(tmp_path, fake_runs):
    """The state of an earlier dream3d (batch.json version 1) is taken over: its done entry is not run again."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue cube\n")
    entries = read_prompt_files([prompts])
    out = tmp_path / "out"
    (out / "a-red-cube-0badc0de").mkdir(parents=True)
    (out / "a-red-cube-0badc0de" / "run.json").write_text(json.dumps({"status": "done"}))
    old = {"version": 1, "entries": [{"id": "a-red-cube-0badc0de", "prompt": "a red cube", "source": f"{prompts}:1",
                                      "spec": entries[0].spec(), "state": "done", "run_dir": "a-red-cube-0badc0de",
                                      "attempts": 1, "history": [{"attempt": 1, "outcome": "done"}]}]}
    (out / "batch.json").write_text(json.dumps(old))
    result = run_batch(entries, BatchOptions(out=out, progress=False, evaluate=False))
    assert result.ok and len(fake_runs) == 1  # only the blue one ran
    red, blue = manifest(out)
    assert (red["id"], red["attempts"], red["line"]) == ("a-red-cube-0badc0de", 1, 1) and blue["attempts"] == 1


CLAIMER = """
import sys, time
from dream3d.batch.store import BatchStore
store = BatchStore(sys.argv[1], claims=True)
print(store.claim(sys.argv[2], 0, "0"), flush=True)
time.sleep(600)
"""


def test_a_claim_is_held_while_its_process_lives_and_taken_over_after_sigkill(tmp_path):
    from dream3d.batch.store import BatchStore

    out = tmp_path / "out"
    planned = plan(parse_text("a red cube\n", str(tmp_path / "p.txt")), BatchOptions(out=out), resolve=False)
    out.mkdir()
    with BatchStore(out, claims=True) as store:
        store.register(planned)
        entry = planned[0].id
        other = subprocess.Popen([sys.executable, "-c", CLAIMER, str(out), entry], stdout=subprocess.PIPE, text=True)
        try:
            assert other.stdout.readline().strip() == "run"
            assert store.claim(entry, 0, "0") == "busy"  # its claimant lives
            rec = store.get(entry)
            assert rec.state == "running" and rec.claim["pid"] == other.pid and rec.claim["alive"]
        finally:
            other.send_signal(signal.SIGKILL)
            other.wait()
        assert store.get(entry).claim["alive"] is False
        assert store.claim(entry, 0, "0") == "run"  # a dead claimant's entry is taken over
        rec = store.get(entry)
        assert [h["outcome"] for h in rec.history] == ["lost", None] and rec.history[1]["pid"] == os.getpid()
        assert rec.attempts == 2


def test_ten_thousand_entries_queue_fast_and_a_state_change_stays_cheap(tmp_path):
    """Issue 13's bars (< 5 s to queue, < 10 ms a change) with room for a busy shared machine."""
    from dream3d.batch.job import Outcome
    from dream3d.batch.store import BatchStore

    out = tmp_path / "out"
    out.mkdir()
    path = tmp_path / "p.txt"
    path.write_text("".join(f"a red cube number {i}\n" for i in range(10_000)))
    t0 = time.perf_counter()
    planned = plan(read_prompt_files([path]), BatchOptions(out=out), resolve=False)
    with BatchStore(out, claims=True) as store:
        store.register(planned)
        queued = time.perf_counter() - t0
        t0 = time.perf_counter()
        for p in planned[:50]:
            assert store.claim(p.id, 0, "0") == "run"
            store.record(p.id, Outcome(p.id, ok=True, seconds=1.0))
        per_change = (time.perf_counter() - t0) / 100
    assert len(read_records(out)) == 10_000
    assert queued < 15.0, queued
    assert per_change < 0.05, per_change
