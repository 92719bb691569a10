"""Geometry of exported meshes on primitive prompts: roughness, fit, topology.

    python benchmarks/geometry.py --preset gaussian --seeds 0 1 --jobs 2      # generate, then measure
    python benchmarks/geometry.py --runs outputs/a-red-cube-*                 # measure finished runs

Per run, from its mesh.glb as trimesh reads it (vertices merged by position, as a
viewer welds them):
- roughness: the area-weighted mean dihedral angle between neighbouring faces, in
  degrees (a clean mesh of the same shape and face count has 1-3);
- IoU: volume IoU with the best-fitting upright primitive of the prompt's shape
  (centre, size and turn about +Y fitted by Adam on a soft occupancy, then scored hard
  on a 48^3 grid; the mesh's inside is its voxelised surface with the holes filled);
- components, watertight (of the whole mesh), genus of the largest component (from
  its Euler characteristic; a torus wants 1, every other primitive 0); hole: whether one
  can look down through the middle of its footprint (a torus's hole, not a pinhole handle);
- seconds: the run's training and export time from run.json;
- views right (with --eval): of 8 turntable views, how many `dream3d eval`'s classifier
  reads as the prompt's object and colour.
The bars: one watertight component, roughness <= 6 degrees, IoU >= 0.85 (cube, sphere,
cone, cylinder, pyramid), the torus's hole (genus >= 1 and open through the middle) in 4 of 5
seeds, 7 of 8 views right.
A summary table gives, per prompt over its seeds, how many runs meet each bar.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy import ndimage

from dream3d.procedural import primitives as P

PRIMITIVE_PROMPTS = ["a red cube", "an orange sphere", "a yellow cone", "a green cylinder", "a blue torus",
                     "a purple pyramid"]
SHAPES = ("cube", "sphere", "cone", "cylinder", "torus", "pyramid")
GRID = 48  # cells per side of the occupancy grid the IoU is scored on


# ---------------------------------------------------------------- primitives
def primitive_sdf(kind: str, p: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Signed distance [1, P] of an upright primitive centred at the origin, p [1, P, 3] (the
    procedural shapes' layout: one scene); size = (width, height) positive: the box's half
    sides x/z and y, radii and half heights (the torus: major and minor radius)."""
    w, h = size[0:1], size[1:2]
    if kind == "cube":  # P.box's norm has no gradient at zero (inside): the same distance, smoothed there
        q = p.abs() - torch.stack([w, h, w], -1)
        return (q.clamp(min=0.0).square().sum(-1) + 1e-12).sqrt() + q.amax(-1).clamp(max=0.0)
    if kind == "sphere":
        return P.sphere(p, w)
    if kind == "cylinder":
        return P.cylinder(p, w, h)
    if kind == "cone":
        return P.frustum(p, h, w, torch.zeros_like(w))
    if kind == "torus":
        return P.torus(p, w, h)  # major, minor radius
    if kind == "pyramid":
        return P.pyramid(P.translate(p, y=-h), w, 2 * h)  # centred on its half height
    raise ValueError(f"unknown primitive {kind!r}")


def shape_of(prompt: str) -> str | None:
    return next((s for s in SHAPES if s in prompt.lower().split()), None)


def occupancy(mesh: trimesh.Trimesh, lo: np.ndarray, cell: float, n: int) -> np.ndarray:
    """[n]^3 bool: cells inside the mesh (its surface voxelised, holes filled)."""
    pts = mesh.sample(200_000, return_index=False)
    idx = np.floor((np.asarray(pts) - lo) / cell).astype(int).clip(0, n - 1)
    surface = np.zeros((n,) * 3, bool)
    surface[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    surface = ndimage.binary_closing(surface, iterations=1) | surface
    return ndimage.binary_fill_holes(surface)


def fit_iou(mesh: trimesh.Trimesh, kind: str, steps: int = 200, n: int = GRID) -> float:
    """Hard volume IoU, on an n^3 grid, of the mesh with the best upright `kind` found from its bounding box."""
    lo, hi = mesh.bounds
    span = float((hi - lo).max()) * 1.2
    centre = (lo + hi) / 2
    ext = torch.tensor((hi - lo) / 2).float()
    lo = centre - span / 2
    cell = span / n
    inside = torch.from_numpy(occupancy(mesh, lo, cell, n).reshape(-1)).float()
    axis = (torch.arange(n, dtype=torch.float64) + 0.5) * cell
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3) + torch.from_numpy(lo)
    grid = grid.float()
    if kind == "torus":
        start = [float(ext[[0, 2]].mean()) * 0.7, float(ext[1])]
    else:
        start = [float(ext[[0, 2]].mean()), float(ext[1])]
    size = torch.tensor(start).log().requires_grad_()
    shift = torch.tensor(centre).float().requires_grad_()
    yaw = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([size, shift, yaw], lr=0.02)

    def soft(sharp: float) -> torch.Tensor:
        q = P.rotate_y((grid - shift)[None], torch.rad2deg(yaw))
        return torch.sigmoid(-primitive_sdf(kind, q, size.exp())[0] / sharp)

    for i in range(steps):
        occ = soft(cell * (2.0 - 1.5 * i / steps))
        iou = (occ * inside).sum() / (occ + inside - occ * inside).sum()
        opt.zero_grad()
        (-iou).backward()
        for p in (size, shift, yaw):  # the cone's exact distance has a NaN gradient where it is 0: skip those
            p.grad.nan_to_num_(0.0)
        opt.step()
    with torch.no_grad():
        q = P.rotate_y((grid - shift)[None], torch.rad2deg(yaw))
        occ = (primitive_sdf(kind, q, size.exp())[0] < 0).float()
    return float((occ * inside).sum() / ((occ + inside) > 0).float().sum())


# ---------------------------------------------------------------- mesh measures
def roughness(mesh: trimesh.Trimesh) -> float:
    """Area-weighted mean dihedral angle between neighbouring faces, degrees."""
    angles = mesh.face_adjacency_angles
    areas = mesh.area_faces[mesh.face_adjacency].mean(1)
    return float(np.degrees((angles * areas).sum() / areas.sum()))


def hole_through_centre(mesh: trimesh.Trimesh, n: int = GRID) -> bool:
    """True when the vertical line through the middle of the mesh's footprint (its bounding
    box's x-z centre, 2 x 2 columns of an n^3 occupancy grid) crosses no occupied cell: a hole
    one can look through from above, not a pinhole handle somewhere in the surface."""
    lo, hi = mesh.bounds
    span = float((hi - lo).max()) * 1.2
    centre = (lo + hi) / 2
    inside = occupancy(mesh, centre - span / 2, span / n, n)
    mid = n // 2
    return not inside[mid - 1:mid + 1, :, mid - 1:mid + 1].any()


def genus(mesh: trimesh.Trimesh) -> int:
    """Genus from the Euler characteristic V - E + F = 2 - 2g of a closed surface."""
    return int(round((2 - mesh.euler_number) / 2))


def measure(run: Path, prompt: str | None = None) -> dict:
    geom = trimesh.load(run / "mesh.glb", force="mesh", process=False)
    geom = trimesh.Trimesh(geom.vertices, geom.faces, process=True)  # weld UV-seam duplicates, as viewers do
    parts = geom.split(only_watertight=False)
    main = max(parts, key=lambda m: m.area)
    info = json.loads((run / "run.json").read_text())
    prompt = prompt or info.get("prompt", "")
    kind = shape_of(prompt)
    seconds = sum(v for k, v in info.get("timings", {}).items() if k.endswith("_seconds"))
    return {"prompt": prompt, "seed": info.get("seed"), "faces": len(geom.faces), "roughness": roughness(geom),
            "iou": fit_iou(geom, kind) if kind else float("nan"), "components": len(parts),
            "watertight": bool(geom.is_watertight), "genus": genus(main), "hole": hole_through_centre(geom),
            "seconds": seconds}


# ---------------------------------------------------------------- running
def views_right(run: Path) -> int:
    """Turntable views (of 8) that the evaluation classifier reads as the prompt's object and colour."""
    from dream3d.evaluation.evaluate import evaluate_run

    r = evaluate_run(run)
    return sum(v["object"] == r["object"] and v["colour"] == r["colour"] for v in r["views"])


def bars(r: dict) -> dict[str, bool]:
    """Which of the clean-geometry bars one measured run meets."""
    kind = shape_of(r["prompt"])
    shape_ok = (r["genus"] >= 1 and r["hole"]) if kind == "torus" else r["iou"] >= 0.85
    out = {"one watertight component": r["components"] == 1 and r["watertight"], "roughness <= 6": r["roughness"] <= 6.0,
           "IoU >= 0.85 / torus hole": shape_ok}
    if r.get("views") is not None:
        out["views >= 7/8"] = r["views"] >= 7
    return out


def summary(rows: list[dict]) -> list[str]:
    """Markdown lines: per prompt, runs meeting each bar out of its runs."""
    names = list(bars(rows[0]))
    lines = ["| prompt | runs | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(names)]
    for prompt in dict.fromkeys(r["prompt"] for r in rows):
        mine = [bars(r) for r in rows if r["prompt"] == prompt]
        lines.append(f"| {prompt} | {len(mine)} | " + " | ".join(f"{sum(b[n] for b in mine)}/{len(mine)}" for n in names) + " |")
    return lines


def generate(prompt: str, preset: str, seed: int, out: Path, extra: list[str]) -> Path:
    folder = out / f"{prompt.replace(' ', '-')}-s{seed}"
    cmd = [str(Path(sys.executable).parent / "dream3d"), "generate", prompt, "--preset", preset, "--seed", str(seed),
           "--device", "cpu", "--out", str(folder), *extra]
    with open(out / f"{folder.name}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return max(folder.iterdir(), key=lambda p: p.stat().st_mtime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", type=Path, help="measure these finished runs instead of generating")
    ap.add_argument("--preset", default="gaussian")
    ap.add_argument("--prompts", nargs="*", default=PRIMITIVE_PROMPTS)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--jobs", type=int, default=1, help="generates at once, one torch thread each")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--eval", action="store_true", help="also read 8 turntable views with `dream3d eval`")
    ap.add_argument("extra", nargs="*", help="more generate flags, after --")
    args = ap.parse_args()
    if args.runs:
        runs = args.runs
    else:
        out = args.out or Path(tempfile.mkdtemp(prefix=f"dream3d-geometry-{args.preset}-"))
        out.mkdir(parents=True, exist_ok=True)
        todo = [(p, s) for p in args.prompts for s in args.seeds]
        start = time.time()
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(lambda ps: generate(ps[0], args.preset, ps[1], out, args.extra), todo))
        print(f"generated {len(runs)} runs in {time.time() - start:.0f} s under {out}")
    print("| prompt | seed | faces | roughness (deg) | IoU | components | watertight | genus | hole | views right | "
          "seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for run in runs:
        r = measure(run)
        r["views"] = views_right(run) if args.eval else None
        rows.append(r)
        views = "-" if r["views"] is None else f"{r['views']}/8"
        print(f"| {r['prompt']} | {r['seed']} | {r['faces']} | {r['roughness']:.1f} | {r['iou']:.2f} | "
              f"{r['components']} | {'yes' if r['watertight'] else 'no'} | {r['genus']} | {'yes' if r['hole'] else 'no'} | "
              f"{views} | {r['seconds']:.0f} |",
              flush=True)
    print()
    print("\n".join(summary(rows)))


if __name__ == "__main__":
    main()
