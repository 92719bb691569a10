"""How well an exported textured mesh shows the run's own albedo field.

For each run folder: points spread uniformly over the surface of mesh.glb (as trimesh
reads it), their colour read from the baked texture through the file's UVs, compared
with the run's last-stage albedo field at the same points (when it has one). Also the
texture's detail: the mean absolute difference between neighbouring texels inside the
UV charts, in 8-bit levels.

    python benchmarks/texture_agreement.py outputs/a-red-cube-*
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import trimesh

from dream3d.export.mesh import sample_texture
from dream3d.pipeline import load_run


def surface_samples(geom: trimesh.Trimesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n points [n, 3] uniform over the surface and their UVs [n, 2] (barycentric interpolation)."""
    rng = np.random.default_rng(seed)
    faces = np.asarray(geom.faces)
    tri = np.asarray(geom.vertices, np.float64)[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    pick = rng.choice(len(faces), n, p=area / area.sum())
    u, v = rng.random((2, n, 1))
    flip = (u + v) > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    w = np.concatenate([1 - u - v, u, v], 1)  # [n, 3]
    points = (w[:, :, None] * tri[pick]).sum(1)
    uv = (w[:, :, None] * np.asarray(geom.visual.uv, np.float64)[faces[pick]]).sum(1)
    return points, uv


def texture_detail(image: np.ndarray) -> float:
    """Mean |neighbouring texel difference| in 8-bit levels over texel pairs that both hold colour."""
    img = image.astype(np.float64) * 255.0
    filled = img.sum(-1) > 0
    dx = np.abs(img[:, 1:] - img[:, :-1]).mean(-1)[filled[:, 1:] & filled[:, :-1]]
    dy = np.abs(img[1:] - img[:-1]).mean(-1)[filled[1:] & filled[:-1]]
    return float(np.concatenate([dx, dy]).mean())


def measure(run: Path, n: int) -> dict:
    geom = trimesh.load(run / "mesh.glb", force="mesh", process=False)
    image = np.asarray(geom.visual.material.baseColorTexture.convert("RGB"), np.float64) / 255.0
    points, uv = surface_samples(geom, n)
    seen = sample_texture(uv, image)
    row = {"run": run.name, "faces": len(geom.faces), "texture": f"{image.shape[1]}x{image.shape[0]}",
           "detail": texture_detail(image), "error": float("nan"), "error_p95": float("nan")}
    _, rep = load_run(run, torch.device("cpu"))
    if rep.has("albedo"):
        with torch.no_grad():
            field = rep.albedo(torch.from_numpy(points).float()).double().numpy()
        err = np.abs(seen - field).mean(1) * 255.0
        row.update(error=float(err.mean()), error_p95=float(np.percentile(err, 95)))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--points", type=int, default=20000)
    args = ap.parse_args()
    print("| run | faces | texture | texture vs field, mean (8-bit) | p95 | texel detail (8-bit) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        r = measure(run, args.points)
        print(f"| {r['run']} | {r['faces']} | {r['texture']} | {r['error']:.2f} | {r['error_p95']:.2f} | {r['detail']:.2f} |")


if __name__ == "__main__":
    main()
