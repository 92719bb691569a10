"""A preset end to end over one prompt per object, read by `dream3d eval`.

    python benchmarks/preset_prompts.py --preset gaussian --jobs 2

Runs `dream3d generate` (the real command: training, mesh, video) for each prompt,
then `evaluate_run` on 8 turntable views, and prints a table: views read as the
right object and colour, Janus views on the fronted objects, and wall time. The
embedded prior's bar: at least 80% of all views right. --jobs runs that many
generates at once with one torch thread each.

    python benchmarks/preset_prompts.py --world toy-world --jobs 2 -- --model toy-world

takes one prompt per object of a world instead, the colours in turn, and checks
the bars of the second-generation prior: at least 90% of views right, Janus in
at most 5% of the back views of the fronted objects.
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
from dream3d.priors.vocab import caption
from dream3d.priors.worlds import get_world

ONE_PER_OBJECT = ["a red cube", "an orange sphere", "a yellow cone", "a green cylinder", "a blue torus",
                  "a purple pyramid", "a pink mushroom", "a green tree", "a brown house", "a blue chair",
                  "a white robot", "a white snowman"]


def world_prompts(name: str) -> list[str]:
    """One prompt per object of the world, its colours in turn ("a red cube", "an orange sphere", ...)."""
    world = get_world(name)
    return [caption(world.colours[i % len(world.colours)], obj) for i, obj in enumerate(world.objects)]


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
    ap.add_argument("--prompts", nargs="*", default=None, help="default: one per tiny-shapes object")
    ap.add_argument("--world", default=None, help="one prompt per object of this world instead (e.g. toy-world)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="more generate flags, after --")
    args = ap.parse_args()
    args.prompts = args.prompts or (world_prompts(args.world) if args.world else ONE_PER_OBJECT)
    out = args.out or Path(tempfile.mkdtemp(prefix=f"dream3d-{args.preset}-"))
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda p: run_one(p, args.preset, out, args.extra), args.prompts))
    total = right = janus_views = back_views = 0
    lines = []
    for prompt, (run, seconds) in zip(args.prompts, runs):
        r = evaluate_run(run)
        ok = sum(v["object"] == r["object"] and v["colour"] == r["colour"] for v in r["views"])
        total, right = total + len(r["views"]), right + ok
        janus = f"{len(r['janus_views'])}/{r['janus_candidates']}" if r.get("fronted") else "-"
        if r.get("fronted"):
            janus_views, back_views = janus_views + len(r["janus_views"]), back_views + r["janus_candidates"]
        lines.append(f"| {prompt} | {ok}/{len(r['views'])} | {janus} | {seconds:.0f} s |")
    print(f"\npreset {args.preset}, {time.strftime('%Y-%m-%d')}, {args.jobs} job(s) at 1 thread, runs in {out}")
    print("| prompt | views right (object and colour) | Janus views | wall time |\n| --- | --- | --- | --- |")
    print("\n".join(lines))
    print(f"\nall: {right}/{total} = {100 * right / total:.0f}% of views right")
    if back_views:
        print(f"Janus: {janus_views}/{back_views} = {100 * janus_views / back_views:.0f}% of the fronted objects' "
              "back views")
    if args.world:
        met = right >= 0.9 * total and janus_views <= 0.05 * max(1, back_views)
        print(f"bars (views right >= 90%, Janus <= 5%): {'met' if met else 'not met'}")


if __name__ == "__main__":
    main()
