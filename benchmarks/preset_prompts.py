"""A preset end to end over one prompt per object, read by `dream3d eval`.

    python benchmarks/preset_prompts.py --preset gaussian --jobs 2

Runs `dream3d generate` (the real command: training, mesh, video) for each prompt,
then `evaluate_run` on 8 turntable views, and prints a table: views read as the
right object and colour, Janus views on the fronted objects, and wall time. The
embedded prior's bar: at least 80% of all views right. --jobs runs that many
generates at once with one torch thread each.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dream3d.evaluation.evaluate import evaluate_run
from dream3d.presets import DEFAULT_PRESET

ONE_PER_OBJECT = ["a red cube", "an orange sphere", "a yellow cone", "a green cylinder", "a blue torus",
                  "a purple pyramid", "a pink mushroom", "a green tree", "a brown house", "a blue chair",
                  "a white robot", "a white snowman"]


def run_one(prompt: str, preset: str, out: Path, extra: list[str]) -> tuple[Path, float]:
    folder = out / prompt.replace(" ", "-")
    cmd = [str(Path(sys.executable).parent / "dream3d"), "generate", prompt, "--preset", preset,
           "--device", "cpu", "--out", str(folder), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.time()
    with open(out / f"{folder.name}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    seconds = time.time() - start
    return max(folder.iterdir(), key=lambda p: p.stat().st_mtime), seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--prompts", nargs="*", default=ONE_PER_OBJECT)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="more generate flags, after --")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix=f"dream3d-{args.preset}-"))
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda p: run_one(p, args.preset, out, args.extra), args.prompts))
    total = right = 0
    lines = []
    for prompt, (run, seconds) in zip(args.prompts, runs):
        r = evaluate_run(run)
        ok = sum(v["object"] == r["object"] and v["colour"] == r["colour"] for v in r["views"])
        total, right = total + len(r["views"]), right + ok
        janus = f"{len(r['janus_views'])}/{r['janus_candidates']}" if r.get("fronted") else "-"
        lines.append(f"| {prompt} | {ok}/{len(r['views'])} | {janus} | {seconds:.0f} s |")
    print(f"\npreset {args.preset}, {time.strftime('%Y-%m-%d')}, {args.jobs} job(s) at 1 thread, runs in {out}")
    print("| prompt | views right (object and colour) | Janus views | wall time |\n| --- | --- | --- | --- |")
    print("\n".join(lines))
    print(f"\nall: {right}/{total} = {100 * right / total:.0f}% of views right")


if __name__ == "__main__":
    main()
