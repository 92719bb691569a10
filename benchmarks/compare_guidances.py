"""Every guidance on the same prompts and seeds, scored by `dream3d eval`.

    python benchmarks/compare_guidances.py --steps 500 --stage gaussians --jobs 2 --out runs/compare

Prints, per guidance: prompt fidelity (R-precision over the vocabulary), object
and colour accuracy, the Janus rate on fronted objects, diversity across seeds
(mean pairwise RMS difference of the turntable renders), and ms per step.
A guidance is named as on the command line, optionally with options:
`sds:guidance_scale=100`. Without options it keeps the preset's options when
the preset already uses that guidance, and takes its own defaults otherwise
(as `dream3d generate --guidance` does). --stage keeps one stage of the preset.
Finished runs under --out are reused, so an interrupted comparison resumes.
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from dream3d import pipeline, presets, registry
from dream3d.evaluation.evaluate import evaluate_run, render_turntable

DEFAULT_PROMPTS = ["a red chair", "a blue robot", "a green house", "a yellow snowman"]


def guidance_flags(spec: str) -> dict:
    """`name` or `name:key=value,key=value` as the `guidance` flag of `presets.resolve`."""
    name, _, options = spec.partition(":")
    flag = {"name": name}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        flag[key] = presets.parse_set([f"x={value}"])[0][1]
    return flag


def run_one(job: tuple) -> dict:
    """Train one (guidance, prompt, seed) at one thread and evaluate it; reuses a finished run."""
    spec, prompt, seed, args = job
    torch.set_num_threads(1)
    run = args.out / re.sub(r"[^\w.=-]+", "_", spec) / f"{prompt.replace(' ', '-')}-s{seed}"
    done = run / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(run, ignore_errors=True)
    cfg = presets.resolve(args.preset, {"prompt": prompt, "model": args.model, "seed": seed, "device": "cpu",
                                        "guidance": guidance_flags(spec),
                                        "train.steps": None if args.stage else args.steps},
                          ["export.mesh=false", "export.video=false", "train.preview_every=0"])
    if args.stage:
        kept = [s for s in cfg.stages if s.name == args.stage]
        if not kept:
            raise SystemExit(f"--stage {args.stage}: the preset's stages are {', '.join(s.name for s in cfg.stages)}")
        cfg.stages = kept
        cfg.stages[0].train.steps = args.steps
    pipeline.generate(cfg, run.parent, run_dir=run)
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    result = {**evaluate_run(run), "ms_per_step": 1000 * statistics.median(m["seconds"] for m in metrics),
              "prompt": prompt, "seed": seed, "spec": spec}
    done.write_text(json.dumps(result))
    return result


def diversity(run_dirs: list[Path]) -> float | None:
    """Mean pairwise RMS difference between the turntable renders of runs of one prompt."""
    if len(run_dirs) < 2:
        return None
    renders = []
    for run in run_dirs:
        cfg, rep = pipeline.load_run(run)
        renders.append(render_turntable(cfg, rep, 8)[0])
    return statistics.mean(float((a - b).pow(2).mean().sqrt()) for a, b in itertools.combinations(renders, 2))


def mean_of(results: list[dict], key: str) -> float | None:
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.mean(values) if values else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--guidances", nargs="*", default=registry.names("guidance"))
    ap.add_argument("--prompts", nargs="*", default=DEFAULT_PROMPTS)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--preset", default=None, help="default: the default preset")
    ap.add_argument("--stage", default=None, help="keep only this stage of the preset")
    ap.add_argument("--model", default="tiny-shapes")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, one torch thread each")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="dream3d-compare-"))).resolve()
    jobs = [(g, p, s, args) for g in args.guidances for p in args.prompts for s in args.seeds]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(run_one, jobs))
    rows = []
    for spec in args.guidances:
        mine = [r for r in results if r["spec"] == spec]
        divs = [diversity([Path(r["run_dir"]) for r in mine if r["prompt"] == p]) for p in args.prompts]
        divs = [d for d in divs if d is not None]
        rows.append((spec, mean_of(mine, "r_precision"), mean_of(mine, "object_accuracy"),
                     mean_of(mine, "colour_accuracy"), mean_of(mine, "janus_rate"),
                     statistics.mean(divs) if divs else None, statistics.median(r["ms_per_step"] for r in mine)))
    fmt = lambda v, pct=True: "-" if v is None else (f"{100 * v:.0f}%" if pct else f"{v:.3f}")  # noqa: E731
    print(f"\n{len(args.prompts)} prompts x {len(args.seeds)} seeds, {args.steps} steps, preset "
          f"{args.preset or presets.DEFAULT_PRESET}{f' (stage {args.stage})' if args.stage else ''}, model "
          f"{args.model}, {args.jobs} job(s) at 1 thread, {time.strftime('%Y-%m-%d')}, runs in {args.out}")
    print("| guidance | R-precision | object | colour | Janus rate | diversity | ms/step |\n|---|---|---|---|---|---|---|")
    for g, rp, obj, col, janus, div, ms in rows:
        print(f"| {g} | {fmt(rp)} | {fmt(obj)} | {fmt(col)} | {fmt(janus)} | {fmt(div, False)} | {ms:.0f} |")


if __name__ == "__main__":
    main()
