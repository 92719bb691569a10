"""The Ray path end to end on a local Ray instance, including a worker killed mid-run."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from test_batch import batch_cmd, manifest, metrics_steps, prompt_file, wait_for

pytest.importorskip("ray")


def test_ray_batch_with_a_lost_worker(tmp_path, tiny_embedded_dir):
    steps = 40
    prompts = prompt_file(tmp_path / "p.yaml", ["a red cube", "a blue sphere"], steps=steps,
                          **{"train.ckpt_every": 5, "train.preview_every": 20})
    out = tmp_path / "out"
    # "--ray local" starts a Ray instance in the batch process (as ray.init() does), CPUs only.
    proc = subprocess.Popen(batch_cmd(prompts, "--out", out, "--model", tiny_embedded_dir, "--device", "cpu",
                                      "--ray", "local"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def first_worker_past_a_checkpoint():
        if not manifest(out):
            return None
        run = out / manifest(out)[0]["id"]
        latest = run / "ckpt" / "main" / "latest.json"
        if (run / "worker.json").is_file() and latest.is_file() and len(metrics_steps(run)) >= 8:
            return json.loads((run / "worker.json").read_text())["pid"]
        return None

    try:
        worker = wait_for(first_worker_past_a_checkpoint, 240, "the first Ray task's first checkpoint")
        assert worker != proc.pid  # the task runs in a Ray worker process, not in the driver
        os.kill(worker, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "lost worker" in stderr  # the retry is announced

    first, second = manifest(out)
    assert first["state"] == "done" and first["attempts"] == 2 and first["failures"] == 1
    lost, retried = first["history"]
    assert lost["outcome"] == "failed" and "lost worker" in lost["error"]
    assert retried["outcome"] == "done" and retried["resumed_from"] >= 5  # from the checkpoint, not from scratch
    assert sorted(set(metrics_steps(out / first["id"]))) == list(range(1, steps + 1))
    assert second["state"] == "done" and second["attempts"] == 1
    for rec in (first, second):
        run = out / rec["id"]
        assert json.loads((run / "run.json").read_text())["status"] == "done"
        assert (run / "mesh.glb").is_file() and (run / "turntable.mp4").is_file()
        assert rec["eval"] is not None and "object_accuracy" in rec["eval"]  # scored by the driver's worker
        assert rec["history"][-1]["pid"] == proc.pid  # the driver keeps the manifest
        assert not rec["history"][-1]["worker"].endswith(f":{proc.pid}")  # a Ray worker did the work
