"""Perp-Neg (`guidance.perp_neg`): perp() by hand, threestudio's azimuth weights by hand, the full
eps_hat against a slow per-prompt reference on tiny random priors, and the CLI end to end."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from dream3d.cameras import orbit_cameras
from dream3d.errors import UserError
from dream3d.guidance.cfd import CFDConfig, CFDGuidance
from dream3d.guidance.gsd import GSDConfig, GSDGuidance
from dream3d.guidance.perp_neg import PerpNegWeights, perp, view_weights
from dream3d.guidance.prompt import PromptProcessor
from dream3d.guidance.sds import SDSConfig, SDSGuidance
from dream3d.types import RenderOutput


class FixedTimesteps:
    def __init__(self, t):
        self.t = torch.tensor(t)

    def sample(self, batch, progress, generator=None):
        return self.t[:batch].clone()


def cams_at(azimuth, elevation, size):
    n = len(azimuth)
    full = lambda v: torch.full((n,), v)  # noqa: E731
    return orbit_cameras(torch.tensor(elevation), torch.tensor(azimuth), full(3.0), full(45.0), size, size)


def render(images):
    B, H, W, _ = images.shape
    return RenderOutput(rgb=images, alpha=torch.ones(B, H, W, 1), depth=torch.ones(B, H, W, 1))


# ---------------------------------------------------------------- perp()

def test_perp_is_the_hand_projection_and_orthogonal():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 5, 6, generator=gen), torch.randn(3, 4, 5, 6, generator=gen)
    expected = torch.empty_like(a)
    for i in range(3):  # per sample: a_i - (<a_i, b_i> / <b_i, b_i>) b_i, in float64 over flattened tensors
        ai, bi = a[i].double().flatten(), b[i].double().flatten()
        expected[i] = (ai - (ai @ bi) / (bi @ bi) * bi).view(4, 5, 6).float()
    p = perp(a, b)
    torch.testing.assert_close(p, expected, rtol=1e-5, atol=1e-5)
    dots = (p.double() * b.double()).flatten(1).sum(1)
    assert dots.abs().max() < 1e-4 * a.norm() * b.norm()
    torch.testing.assert_close(perp(b, b), torch.zeros_like(b), rtol=0, atol=1e-5)
    torch.testing.assert_close(perp(-2.5 * b, b), torch.zeros_like(b), rtol=0, atol=1e-5)
    # per sample, not over the batch: a sample's projection ignores the others' b
    torch.testing.assert_close(perp(a[:1], b[:1]), p[:1])
    # b = 0 leaves a (no 0/0); a NaN stays NaN
    torch.testing.assert_close(perp(a, torch.zeros_like(b)), a)
    assert perp(a, b.clone().fill_(float("nan"))).isnan().all()


# ---------------------------------------------------------------- threestudio's weighting rule

def f(p, r):
    return p[0] * math.exp(-p[1] * r) + p[2]


# (azimuth, elevation) -> mix over (front, side, back, overhead), (w_front, w_side), from threestudio's
# get_text_embeddings_perp_neg worked out by hand with its defaults:
#   |az| < 90:  r = 1 - |az|/90, positive r front + (1-r) side, w = (f_fs(r), f_sf(1-r))
#   |az| >= 90: r = 2 - |az|/90, positive r side + (1-r) back, w = (f_fsb(r), f_sb(r))
FS, SB, FSB = (4, 0.5, -2.426), (1, 0.5, -0.606), (1, 0.5, 0.967)
CASES = [
    (0.0, 0.0, (1, 0, 0, 0), (4 * math.exp(-0.5) - 2.426, 4 - 2.426)),  # front: side pushed away by 1.574
    (45.0, 0.0, (0.5, 0.5, 0, 0), (4 * math.exp(-0.25) - 2.426, 4 * math.exp(-0.25) - 2.426)),
    (-60.0, 10.0, (1 / 3, 2 / 3, 0, 0), (f(FS, 1 / 3), f(FS, 2 / 3))),
    (90.0, 0.0, (0, 1, 0, 0), (math.exp(-0.5) + 0.967, math.exp(-0.5) - 0.606)),  # side: the side-back branch
    (135.0, 0.0, (0, 0.5, 0.5, 0), (math.exp(-0.25) + 0.967, math.exp(-0.25) - 0.606)),
    (180.0, 0.0, (0, 0, 1, 0), (1 + 0.967, 1 - 0.606)),  # back: the front pushed away by 1.967
    (270.0, 0.0, (0, 1, 0, 0), (f(FSB, 1.0), f(SB, 1.0))),  # = -90
    (-150.0, 20.0, (0, 1 / 3, 2 / 3, 0), (f(FSB, 1 / 3), f(SB, 1 / 3))),
    (30.0, 60.0, (0, 0, 0, 1), (0.0, 0.0)),  # overhead (elevation >= 45): its own prompt, no negatives
]


def test_view_weights_follow_threestudios_rule():
    az, el = torch.tensor([c[0] for c in CASES]), torch.tensor([c[1] for c in CASES])
    mix, neg = view_weights(az, el >= 45.0, PerpNegWeights())
    torch.testing.assert_close(mix, torch.tensor([c[2] for c in CASES], dtype=torch.float32))
    torch.testing.assert_close(neg, torch.tensor([c[3] for c in CASES], dtype=torch.float32))
    assert (neg >= 0).all()  # each decay is about 0 at its own view and positive elsewhere
    # the two branches nearly meet at the side (threestudio's constants are rounded)
    _, near = view_weights(torch.tensor([89.999, 90.0]), torch.tensor([False, False]), PerpNegWeights())
    torch.testing.assert_close(near[0], near[1], atol=2e-3, rtol=0)


def test_weights_come_from_the_config():
    w = PerpNegWeights(f_fs=(1.0, 0.0, 0.5), f_sf=(0.0, 0.0, 3.0), f_sb=(2.0, 1.0, 0.0), f_fsb=(0.0, 0.0, 7.0))
    _, neg = view_weights(torch.tensor([0.0, 180.0]), torch.tensor([False, False]), w)
    torch.testing.assert_close(neg, torch.tensor([[1.5, 3.0], [7.0, 2.0]]))


def test_positive_prompt_interpolates_the_view_embeddings(tiny_sd_prior):
    prior = tiny_sd_prior
    prompt = PromptProcessor(prior, "a red chair", negative_prompt="ugly")
    cams = cams_at([c[0] for c in CASES], [c[1] for c in CASES], 64)
    pos, uncond, negs, neg = prompt.perp_neg(cams, PerpNegWeights())
    views = prior.embed([f"a red chair, {v} view" for v in ("front", "side", "back", "overhead")])
    for i, c in enumerate(CASES):
        torch.testing.assert_close(pos[i], sum(m * views[k] for k, m in enumerate(c[2])))
    torch.testing.assert_close(negs[0], views[0].expand_as(pos))
    torch.testing.assert_close(negs[1], views[1].expand_as(pos))
    torch.testing.assert_close(uncond, prior.embed(["ugly"]).expand_as(pos))
    assert neg.shape == (len(CASES), 2)
    with pytest.raises(UserError, match="view_dependent"):
        PromptProcessor(prior, "a red chair", view_dependent=False).perp_neg(cams, PerpNegWeights())


# ---------------------------------------------------------------- the full eps_hat against a slow reference

def reference_g(prior, x, t, noise, text, negative, cams, scale, w: PerpNegWeights, view_scale=0.0):
    """w(t) (eps_hat - eps) with 'sds' weighting, straight from the formula: a separate UNet call per prompt,
    the positive embedding mixed by hand, perp() as a per-sample loop in float64."""
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x + (1 - a).sqrt() * noise
    emb = dict(zip(("front", "side", "back", "overhead", "uncond", "plain"),
                   prior.embed([f"{text}, {v} view" for v in ("front", "side", "back", "overhead")]
                               + [negative, text])))
    pose = cams.pose_features() if prior.takes_camera else None
    eps_hat = []
    for i, (az, el) in enumerate(zip(cams.azimuth.tolist(), cams.elevation.tolist())):
        a_ = abs((az + 180) % 360 - 180)
        if el >= 45:
            pos, wf, ws = emb["overhead"], 0.0, 0.0
        elif a_ < 90:
            r = 1 - a_ / 90
            pos, wf, ws = r * emb["front"] + (1 - r) * emb["side"], f(w.f_fs, r), f(w.f_sf, 1 - r)
        else:
            r = 2 - a_ / 90
            pos, wf, ws = r * emb["side"] + (1 - r) * emb["back"], f(w.f_fsb, r), f(w.f_sb, r)

        def eps_of(e, cam=None if pose is None else pose[i:i + 1]):
            with torch.no_grad():
                return prior.predict_eps(x_t[i:i + 1], t[i:i + 1], e[None], cam).double()[0]

        e_u, e_pos = eps_of(emb["uncond"]), eps_of(pos)
        d_pos = (e_pos - e_u).flatten()
        total = d_pos.clone()
        for wk, name in ((wf, "front"), (ws, "side")):
            d_k = (eps_of(emb[name]) - e_u).flatten()
            total -= wk * (d_k - (d_k @ d_pos) / (d_pos @ d_pos) * d_pos)
        e_hat = e_u + scale * total.view_as(e_u)
        if view_scale:
            e_hat = e_hat + view_scale * (e_pos - eps_of(emb["plain"], None))
        eps_hat.append(e_hat.float())
    return (1 - a) * (torch.stack(eps_hat) - noise)


def assert_close_to(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item())


AZ, EL = [30.0, 135.0, -160.0, 80.0], [0.0, 10.0, 0.0, 60.0]  # front-side, side-back, back-ish, overhead


@pytest.mark.parametrize("kind,scale,view_scale", [("if", 20.0, 0.0), ("sd", 50.0, 0.0), ("embedded", 10.0, 0.0),
                                                   ("embedded", 10.0, 3.0)])
def test_sds_perp_neg_is_the_formula(kind, scale, view_scale, request, monkeypatch):
    from dream3d.priors.loading import load_prior

    if kind == "embedded":
        prior = load_prior(str(request.getfixturevalue("tiny_embedded_dir")), torch.device("cpu"))
    else:
        prior = request.getfixturevalue({"if": "tiny_if_prior", "sd": "tiny_sd_prior"}[kind])
    size, B = (64 if kind == "sd" else prior.resolution), len(AZ)
    images = torch.rand(B, size, size, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    cams = cams_at(AZ, EL, size)
    seen, calls = {}, []
    original_encode, original_predict = prior.encode, prior.predict_eps

    def encode_and_keep(imgs):
        seen["x"] = x = original_encode(imgs)
        x.retain_grad()
        return x

    def count(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original_predict(*args, **kwargs)

    monkeypatch.setattr(prior, "encode", encode_and_keep)
    monkeypatch.setattr(prior, "predict_eps", count)
    x_shape = original_encode(images.detach()).shape
    noise = torch.randn(x_shape, generator=torch.Generator().manual_seed(2))
    t = [100, 400, 700, 900]
    weights = PerpNegWeights()
    prompt = PromptProcessor(prior, "a red chair", negative_prompt="blurry")
    cfg = SDSConfig(guidance_scale=scale, perp_neg=True, view_guidance_scale=view_scale)
    SDSGuidance(prior, cfg, FixedTimesteps(t))(render(images), cams, prompt, 0.3, noise=noise).loss.backward()
    assert calls == [B * (5 if view_scale else 4)]  # one batched UNet call for every prompt of every view

    monkeypatch.setattr(prior, "predict_eps", original_predict)
    x = original_encode(images.detach()).detach()
    g = reference_g(prior, x, torch.tensor(t), noise, "a red chair", "blurry", cams, scale, weights, view_scale)
    assert_close_to(seen["x"].grad, g / B)
    # the negative term is not vacuous: without it (all weights 0) g differs
    none = PerpNegWeights(*[(0.0, 0.0, 0.0)] * 4)
    g0 = reference_g(prior, x, torch.tensor(t), noise, "a red chair", "blurry", cams, scale, none, view_scale)
    assert (g - g0)[:3].abs().max() > 1e-3 * g.abs().max()
    torch.testing.assert_close(g[3], g0[3])  # overhead: no negatives


@pytest.mark.parametrize("rule", ["cfd", "gsd"])
def test_rules_sharing_the_score_function_take_perp_neg(rule, tiny_if_prior):
    prior, B = tiny_if_prior, 2
    images = torch.rand(B, 16, 16, 3, generator=torch.Generator().manual_seed(3)).requires_grad_()
    noise = torch.randn(B, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    cams, t = cams_at([60.0, 170.0], [0.0, 0.0], 16), [300, 600]
    prompt = PromptProcessor(prior, "a red chair")
    if rule == "cfd":
        guidance = CFDGuidance(prior, CFDConfig(guidance_scale=7.5, weighting="sds", perp_neg=True), FixedTimesteps(t))
    else:
        guidance = GSDGuidance(prior, GSDConfig(guidance_scale=7.5, views=1, perp_neg=True), FixedTimesteps(t))
    guidance(render(images), cams, prompt, 0.3, noise=noise).loss.backward()
    x = images.detach().permute(0, 3, 1, 2) * 2 - 1
    g = reference_g(prior, x, torch.tensor(t), noise, "a red chair", "", cams, 7.5, PerpNegWeights())
    assert_close_to(images.grad, (2 * g / B).permute(0, 2, 3, 1))


# ---------------------------------------------------------------- the CLI

FAST = ["--preset", "dreamfusion", "--steps", "2", "--resolution", "32", "--device", "cpu",
        "--set", "export.mesh=false", "--set", "export.video=false", "--set", "train.preview_every=0",
        "--set", "representation.samples_per_ray=16"]


def test_generate_with_perp_neg_runs_end_to_end(tmp_path, tiny_embedded_dir, monkeypatch):
    from dream3d.cli import app
    from dream3d.guidance import common

    used = []
    original = common.perp_neg_eps
    monkeypatch.setattr(common, "perp_neg_eps", lambda *a, **k: used.append(a[7]) or original(*a, **k))
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["generate", "a red chair", "--model", str(tiny_embedded_dir), "--out", str(out),
                                   *FAST, "--set", "guidance.perp_neg=true",
                                   "--set", "guidance.perp_neg_weights.f_fsb=[1.0, 0.5, 1.5]"])
    assert res.exit_code == 0, res.output
    run = next(out.iterdir())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and not any(r["skipped"] for r in rows)
    assert used == [PerpNegWeights(f_fsb=(1.0, 0.5, 1.5))] * 2  # every step took Perp-Neg, with the weights set
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())["stages"][0]["guidance"]
    assert saved["perp_neg"] is True and saved["perp_neg_weights"]["f_fsb"] == [1.0, 0.5, 1.5]


def run_cli(*args):
    """The console entry point as a user runs it (exit code, one-line errors on stderr)."""
    return subprocess.run([sys.executable, "-m", "dream3d.cli", *map(str, args)], capture_output=True, text=True)


def test_perp_neg_on_a_rule_without_it_is_one_clear_line(tmp_path, tiny_embedded_dir):
    res = run_cli("generate", "a red chair", "--model", tiny_embedded_dir, "--guidance", "vsd",
                  "--out", tmp_path / "o", *FAST, "--set", "guidance.perp_neg=true")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "guidance.perp_neg" in lines[0] and "'vsd' cannot use it" in lines[0] and "sds" in lines[0]
    assert not (tmp_path / "o").exists()  # refused with the config, before any run folder
