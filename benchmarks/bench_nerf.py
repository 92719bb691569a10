"""Time the hash-grid NeRF: render forward, forward + backward at 64x64 (batch 1), and
the hash encoding alone on 64*64*48 points, printed as a table of median milliseconds.

    python benchmarks/bench_nerf.py                  # CPU, all threads torch uses
    python benchmarks/bench_nerf.py --threads 1 --repeats 20

Three scenes: the initial density blob; a large soft ball (blob_density 40, radius
0.8) with much occupied space; a sharp ball (blob_density 200, radius 0.7), closer to a
trained object, where the CPU early-stop pre-pass drops the samples behind the surface. "samples" is the number of points the
field evaluates with gradients. Wall time is the median; CPU time (summed over
threads) is the minimum, the steadier number on a shared machine. The load average is
printed because wall times are only meaningful relative to it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dream3d.cameras import orbit_cameras  # noqa: E402
from dream3d.representations.hashgrid_nerf import HashGridNeRF, NeRFConfig  # noqa: E402


def timed_ms(fn, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """Median wall time and minimum process CPU time (all threads) of `fn`, in
    milliseconds, after `warmup` calls. On a shared machine the CPU time is the
    steadier measure of the work done."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), min(cpu)


def cameras(res: int, batch: int = 1):
    az = torch.linspace(30.0, 300.0, batch)
    return orbit_cameras(torch.full((batch,), 15.0), az, torch.full((batch,), 2.9), torch.full((batch,), 45.0), res, res)


def bench_render(label: str, cfg: NeRFConfig, res: int, repeats: int, shading: str) -> list[tuple]:
    torch.manual_seed(0)
    rep = HashGridNeRF(cfg)
    cams = cameras(res)
    bg = torch.full((1, 3), 0.7)
    light = torch.tensor([[0.3, 0.8, 0.5]])
    light = light / light.norm()
    counts = []

    def forward():
        with torch.no_grad():
            rep.render(cams, bg, shading=shading, light_dir=light)

    def forward_backward():
        out = rep.render(cams, bg, shading=shading, light_dir=light)
        loss = out.rgb.square().mean() + 0.01 * out.extras["orient"] + 0.001 * out.extras["opacity"]
        loss.backward()
        rep.zero_grad(set_to_none=True)

    original = rep._field

    def counting_field(x, want_albedo):
        counts.append(x.shape[1])  # points are columns
        return original(x, want_albedo)

    rep._field = counting_field
    rows = [
        (f"render fwd {res}x{res} {label}", *timed_ms(forward, repeats), ""),
        (f"render fwd+bwd {res}x{res} {label}", *timed_ms(forward_backward, repeats), f"{int(statistics.median(counts))} samples"),
    ]
    return rows


def bench_encoding(n_points: int, cfg: NeRFConfig, repeats: int) -> list[tuple]:
    torch.manual_seed(0)
    enc = cfg.build_encoding()
    # Points along rays, in ray order, as the renderer produces them (cache behaviour differs from random points).
    cams = cameras(64)
    o, d = (t.reshape(-1, 3) for t in cams.rays())
    t = torch.linspace(2.0, 3.8, n_points // o.shape[0])
    u = ((o[:, None] + t[None, :, None] * d[:, None]).reshape(-1, 3).clamp(-1, 1) * 0.5 + 0.5).t().contiguous()

    def forward():
        with torch.no_grad():
            enc(u)

    def forward_backward():
        enc(u).square().sum().backward()
        enc.table.grad = None

    def forward_backward_jacobian():
        feat, jac = enc(u, with_jacobian=True)
        (feat.square().sum() + jac.square().sum()).backward()
        enc.table.grad = None

    n = u.shape[1]
    extra = f"L={cfg.n_levels} F={cfg.n_features} T=2^{cfg.log2_table_size}"
    return [
        (f"hash encoding fwd, {n} pts", *timed_ms(forward, repeats), extra),
        (f"hash encoding fwd+bwd, {n} pts", *timed_ms(forward_backward, repeats), extra),
        (f"hash encoding fwd+bwd with Jacobian, {n} pts", *timed_ms(forward_backward_jacobian, repeats), extra),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--shading", default="diffuse")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = NeRFConfig()
    rows = []
    rows += bench_render("(initial blob)", base, args.resolution, args.repeats, args.shading)
    rows += bench_render("(soft ball r=0.8)", NeRFConfig(blob_density=40.0, blob_radius=0.8), args.resolution,
                         args.repeats, args.shading)
    rows += bench_render("(sharp ball r=0.7)", NeRFConfig(blob_density=200.0, blob_radius=0.7), args.resolution,
                         args.repeats, args.shading)
    rows += bench_encoding(64 * 64 * 48, base, max(3, args.repeats // 2))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.2f}")
    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  {'wall ms':>8}  {'cpu ms':>8}  notes")
    print(f"{'':<{width}}  {'(median)':>8}  {'(min)':>8}")
    for name, wall, cpu, note in rows:
        print(f"{name:<{width}}  {wall:>8.1f}  {cpu:>8.1f}  {note}")


if __name__ == "__main__":
    main()
