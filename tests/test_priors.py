"""Diffusers-backed priors and their loader, on tiny random models saved in the real layouts."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import dream3d.priors
from dream3d.errors import UserError
from dream3d.priors.deepfloyd import DeepFloydPrior
from dream3d.priors.hub import eps_from_model_output, weights_variant
from dream3d.priors.loading import detect_family, load_prior
from dream3d.priors.stable_diffusion import StableDiffusionPrior


def _frozen(*modules) -> bool:
    return all(not p.requires_grad for m in modules for p in m.parameters()) and not any(m.training for m in modules)


# ---------------------------------------------------------------- Stable Diffusion

def test_sd_loads_frozen_fp32_on_cpu(tiny_sd_prior):
    p = tiny_sd_prior
    assert isinstance(p, StableDiffusionPrior)
    assert p.dtype == torch.float32 and p.resolution == 64 and p.num_train_timesteps == 1000
    assert _frozen(p.unet, p.vae, p.text_encoder)
    assert p.alphas_cumprod.shape == (1000,) and p.alphas_cumprod.dtype == torch.float32


def test_sd_encode_is_scaled_vae_mean_and_differentiable(tiny_sd_prior):
    p = tiny_sd_prior
    images = torch.rand(2, 64, 64, 3, requires_grad=True)
    x = p.encode(images)
    assert x.shape == (2, 4, 8, 8) and x.dtype == torch.float32
    expected = p.vae.encode(images.detach().permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean * p.vae.config.scaling_factor
    torch.testing.assert_close(x, expected)
    x.square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    # other render sizes are resized to the prior's resolution first
    assert p.encode(torch.rand(1, 32, 32, 3)).shape == (1, 4, 8, 8)
    assert p.encode(torch.rand(1, 128, 128, 3)).shape == (1, 4, 8, 8)


def test_sd_decode_shape_and_range(tiny_sd_prior):
    img = tiny_sd_prior.decode(torch.randn(2, 4, 8, 8))
    assert img.shape == (2, 64, 64, 3) and 0 <= img.min() and img.max() <= 1


def test_sd_embed_matches_text_encoder_and_caches(tiny_sd_prior):
    p = tiny_sd_prior
    e = p.embed(["a red cube", "", "a red cube"])
    assert e.shape == (3, 77, 32)
    torch.testing.assert_close(e[0], e[2])
    assert not torch.allclose(e[0], e[1])
    ids = p.tokenizer(["a red cube"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    torch.testing.assert_close(e[0], p.text_encoder(ids)[0][0])
    assert "a red cube" in p._text_cache


def test_sd_predict_eps_is_unet_output_for_epsilon(tiny_sd_prior):
    p = tiny_sd_prior
    x_t, t, emb = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), p.embed(["a", "b"])
    eps = p.predict_eps(x_t, t, emb)
    assert eps.shape == (2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(eps, p.unet(x_t, t, encoder_hidden_states=emb).sample)


def test_sd_v_prediction_is_converted_to_eps(tiny_sd_vpred_dir):
    p = load_prior(str(tiny_sd_vpred_dir), device="cpu", resolution=64)
    assert p.prediction_type == "v_prediction"
    x_t, t, emb = torch.randn(2, 4, 8, 8), torch.tensor([50, 900]), p.embed(["a", ""])
    with torch.no_grad():
        v = p.unet(x_t, t, encoder_hidden_states=emb).sample
        eps = p.predict_eps(x_t, t, emb)
    a = p.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1).float()
    torch.testing.assert_close(eps, a.sqrt() * v + (1 - a).sqrt() * x_t)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_eps_conversion_recovers_the_true_noise(prediction_type):
    """Build x_t from known x0 and eps, express the ideal model output in each
    parameterisation, and check the conversion gives eps back."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    a = torch.tensor([0.9, 0.5, 0.05]).view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    ideal = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[prediction_type]
    torch.testing.assert_close(eps_from_model_output(ideal, x_t, a, prediction_type), eps)


# ---------------------------------------------------------------- DeepFloyd IF

def test_if_loads_and_maps_pixels(tiny_if_prior):
    p = tiny_if_prior
    assert isinstance(p, DeepFloydPrior) and _frozen(p.unet, p.text_encoder)
    images = torch.rand(2, 16, 16, 3)
    x = p.encode(images)
    assert x.shape == (2, 3, 16, 16)
    torch.testing.assert_close(x, images.permute(0, 3, 1, 2) * 2 - 1)
    torch.testing.assert_close(p.decode(x), images)
    assert p.encode(torch.rand(1, 40, 40, 3)).shape == (1, 3, 16, 16)


def test_if_embed_and_predict_eps_keeps_first_three_channels(tiny_if_prior):
    p = tiny_if_prior
    emb = p.embed(["a red cube, side view", ""])
    assert emb.shape == (2, 77, 32) and not torch.allclose(emb[0], emb[1])
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 999])
    with torch.no_grad():
        full = p.unet(x_t, t, encoder_hidden_states=emb).sample
        eps = p.predict_eps(x_t, t, emb)
    assert full.shape[1] == 6 and eps.shape == (2, 3, 16, 16)
    torch.testing.assert_close(eps, full[:, :3])


def test_if_release_text_encoder_keeps_cached_prompts(tiny_if_dir):
    p = load_prior(str(tiny_if_dir), device="cpu", resolution=16)
    before = p.embed(["a cat"])
    p.release_text_encoder()
    torch.testing.assert_close(p.embed(["a cat"]), before)
    with pytest.raises(RuntimeError):
        p.embed(["a dog"])


def test_a_run_frees_the_if_text_encoder_once_its_prompts_are_embedded(tiny_if_dir):
    from dream3d.cameras import orbit_cameras
    from dream3d.config import RunConfig
    from dream3d.pipeline import load_prior_for

    cfg = RunConfig(prompt="a red cube", negative_prompt="blurry", model=str(tiny_if_dir), prior_resolution=16,
                    device="cpu")
    prior, prompt = load_prior_for(cfg, torch.device("cpu"))
    assert isinstance(prior, DeepFloydPrior) and prior.text_encoder is None
    reference = load_prior(str(tiny_if_dir), device="cpu", resolution=16)
    cams = orbit_cameras(torch.tensor([0.0, 10.0]), torch.tensor([0.0, 180.0]), torch.full((2,), 3.0),
                         torch.full((2,), 45.0), 16, 16)
    cond, uncond = prompt(cams)
    torch.testing.assert_close(cond, reference.embed(["a red cube, front view", "a red cube, back view"]))
    torch.testing.assert_close(uncond, reference.embed(["blurry"] * 2))
    # the null prompt a guidance may ask for later (ISM, the CSD classifier) was embedded too
    torch.testing.assert_close(prior.embed([""]), reference.embed([""]))
    x_t = torch.randn(2, 3, 16, 16)
    assert torch.isfinite(prior.predict_eps(x_t, torch.tensor([10, 500]), cond)).all()
    with pytest.raises(RuntimeError, match="released"):
        prior.embed(["a blue ball"])


def test_the_base_prior_releases_nothing(tiny_sd_prior):
    tiny_sd_prior.release_text_encoder()  # documented no-op default: CLIP stays
    assert tiny_sd_prior.text_encoder is not None and tiny_sd_prior.embed(["a new prompt"]).shape == (1, 77, 32)


def test_backends_take_an_already_resolved_folder(tiny_if_dir):
    p = DeepFloydPrior(tiny_if_dir, resolution=16)
    assert p.folder == tiny_if_dir and p.embed(["a cat"]).shape == (1, 77, 32)
    with pytest.raises(TypeError):
        DeepFloydPrior(tiny_if_dir, allow_download=True)  # finding a folder is the loader's job


# ---------------------------------------------------------------- module structure

PRIORS_DIR = Path(dream3d.priors.__file__).parent


def _priors_import_graph() -> dict[str, set[str]]:
    """priors module -> the priors modules it imports anywhere (top level or inside functions)."""
    names = {f.stem for f in PRIORS_DIR.glob("*.py") if f.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in names:
        deps = set()
        for node in ast.walk(ast.parse((PRIORS_DIR / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    base = node.module or ""
                else:  # relative: only one level up stays inside dream3d.priors
                    base = ("dream3d.priors" + (f".{node.module}" if node.module else "")) if node.level == 1 else ""
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {t.split(".")[2] for t in targets if t.startswith("dream3d.priors.") and t.split(".")[2] in names}
        graph[name] = deps - {name}
    return graph


def test_priors_import_graph_has_no_cycle():
    graph = _priors_import_graph()
    assert {"stable_diffusion", "deepfloyd", "loading", "hub"} <= set(graph)
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycle = path[path.index(dep):] + [dep]
                pytest.fail("import cycle in dream3d/priors: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # the backends never reach back to the dispatcher
    assert "loading" not in graph["stable_diffusion"] | graph["deepfloyd"]


def test_each_priors_module_imports_on_its_own():
    modules = sorted(f"dream3d.priors.{f.stem}" for f in PRIORS_DIR.glob("*.py") if f.stem != "__init__")
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    for m in [m for m in sys.modules if m.startswith('dream3d')]:\n"
            "        del sys.modules[m]\n"
            "    importlib.import_module(name)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------- loading and errors

def test_family_detection(tiny_sd_dir, tiny_if_dir, tmp_path):
    assert detect_family(tiny_sd_dir) == "sd" and detect_family(tiny_if_dir) == "if"
    bare = shutil.copytree(tiny_if_dir, tmp_path / "if-no-index")
    (bare / "model_index.json").unlink()
    assert detect_family(bare) == "if"  # from the UNet's 3-in / 6-out channels
    assert detect_family(tmp_path) is None


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist") as e:
        load_prior(str(tmp_path / "nowhere" / "sd"))
    assert str(tmp_path / "nowhere") in str(e.value) and "\n" not in str(e.value)


def test_hf_id_missing_from_cache_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="hf download someone/not-cached") as e:
        load_prior("someone/not-cached", cache_dir=tmp_path)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_hf_id_resolves_from_local_cache(tiny_sd_dir, tmp_path):
    repo = tmp_path / "models--someone--tiny-sd"
    shutil.copytree(tiny_sd_dir, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    p = load_prior("someone/tiny-sd", device="cpu", cache_dir=tmp_path, resolution=64)
    assert isinstance(p, StableDiffusionPrior) and p.folder == repo / "snapshots" / "0123abc"


def test_incomplete_folder_names_missing_parts(tiny_sd_dir, tmp_path):
    broken = shutil.copytree(tiny_sd_dir, tmp_path / "sd")
    shutil.rmtree(broken / "vae")
    with pytest.raises(UserError, match=r"missing vae/config\.json"):
        load_prior(str(broken))


def test_corrupt_weights_are_a_user_error(tiny_sd_dir, tmp_path):
    broken = shutil.copytree(tiny_sd_dir, tmp_path / "sd")
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="could not load unet/") as e:
        load_prior(str(broken))
    assert "\n" not in str(e.value)


def test_corrupt_model_index_is_a_user_error(tiny_sd_dir, tmp_path):
    broken = shutil.copytree(tiny_sd_dir, tmp_path / "sd")
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        load_prior(str(broken))


def test_unsupported_pipeline_is_a_user_error(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    with pytest.raises(UserError, match="StableDiffusionXLPipeline"):
        load_prior(str(tmp_path))


def test_fp16_only_weights_are_found(tmp_path):
    (tmp_path / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    assert weights_variant(tmp_path) == "fp16"
    assert weights_variant(tmp_path, prefer_fp16=True) == "fp16"
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert weights_variant(tmp_path) is None
    assert weights_variant(tmp_path, prefer_fp16=True) == "fp16"
    (tmp_path / "diffusion_pytorch_model.fp16.safetensors").unlink()
    assert weights_variant(tmp_path, prefer_fp16=True) is None


def test_embedded_name_opens_embedded_prior_lazily(tmp_path, monkeypatch):
    opened = []
    fake = types.ModuleType("dream3d.priors.embedded")
    fake.EmbeddedPrior = lambda path, device: opened.append((path, device)) or "embedded-prior"
    monkeypatch.setitem(sys.modules, "dream3d.priors.embedded", fake)
    monkeypatch.setenv("DREAM3D_PRIOR_DIR", str(tmp_path))
    assert load_prior("tiny-shapes", device="cpu") == "embedded-prior"
    assert opened == [(tmp_path, torch.device("cpu"))]
    monkeypatch.setenv("DREAM3D_PRIOR_DIR", str(tmp_path / "absent"))
    with pytest.raises(UserError, match="embedded prior embedded is missing"):
        load_prior("embedded")


def test_each_embedded_prior_name_is_its_own_assets_folder(monkeypatch):
    from dream3d.priors.paths import EMBEDDED_PRIORS, embedded_prior_dir

    monkeypatch.delenv("DREAM3D_PRIOR_DIR", raising=False)
    assert embedded_prior_dir("embedded") == embedded_prior_dir("tiny-shapes")
    for name in EMBEDDED_PRIORS:
        assert embedded_prior_dir(name).parts[-3:] == ("assets", "priors", name)
    with pytest.raises(ValueError, match="no embedded prior"):
        embedded_prior_dir("nonsense")


def test_folder_with_only_fp16_variant_files_loads(tiny_sd_dir, tmp_path):
    folder = shutil.copytree(tiny_sd_dir, tmp_path / "sd")
    for part in ("unet", "vae", "text_encoder"):
        for f in (folder / part).glob("*.safetensors"):
            f.rename(f.with_name(f.name.replace(".safetensors", ".fp16.safetensors")))
    p = load_prior(str(folder), device="cpu", resolution=64)
    reference = load_prior(str(tiny_sd_dir), device="cpu", resolution=64)
    torch.testing.assert_close(p.unet.conv_in.weight, reference.unet.conv_in.weight)
