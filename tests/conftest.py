"""Shared fixtures: tiny random diffusers models saved in the real folder layouts.

Nothing is downloaded: every model is built from a config with random weights and
written with `save_pretrained`, so the real loading code (`load_prior`) runs on it.
The builders are plain functions so benchmarks can reuse them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TEXT_DIM = 32  # hidden size of both tiny text encoders


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2 / CLIP convention)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _write_clip_tokenizer(folder: Path) -> int:
    """A character-level CLIP BPE tokenizer in the layout SD repos ship
    (vocab.json, merges.txt, tokenizer_config.json); returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["re</w>", "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\nr e</w>\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, **special}))
    return len(tokens)


def _model_index(folder: Path, class_name: str, parts: dict[str, list[str]]) -> None:
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": class_name, "_diffusers_version": "0.42.1", **parts}, indent=2))


def build_tiny_sd(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    with torch.random.fork_rng():  # leave the global RNG of other tests untouched
        return _build_tiny_sd(folder, prediction_type, seed)


def build_tiny_if(folder: Path, seed: int = 0) -> Path:
    with torch.random.fork_rng():
        return _build_tiny_if(folder, seed)


def _build_tiny_sd(folder: Path, prediction_type: str, seed: int) -> Path:
    """A Stable-Diffusion-shaped folder: 4-channel latents at 1/8 resolution, CLIP text."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _write_clip_tokenizer(folder / "tokenizer")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=TEXT_DIM, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
    )).save_pretrained(folder / "text_encoder")
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_DIM, attention_head_dim=8,
    ).save_pretrained(folder / "unet")
    AutoencoderKL(  # three downsamplings: 64x64 renders -> 8x8 latents, as SD's VAE
        in_channels=3, out_channels=3, block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, sample_size=64,
    ).save_pretrained(folder / "vae")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    _model_index(folder, "StableDiffusionPipeline", {
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    })
    return folder


def _build_tiny_if(folder: Path, seed: int) -> Path:
    """A DeepFloyd-IF-stage-I-shaped folder: pixel UNet with 6 output channels, T5 text."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in letters + ",.0123456789"] + [("\u2581" + c, -2.5) for c in letters]
    T5Tokenizer(vocab=pieces, extra_ids=0).save_pretrained(folder / "tokenizer")
    T5EncoderModel(T5Config(
        vocab_size=len(pieces), d_model=TEXT_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8,
    )).save_pretrained(folder / "text_encoder")
    UNet2DConditionModel(  # the IF block types: text projected into the UNet, scale-shift time conditioning
        sample_size=16, in_channels=3, out_channels=6, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", encoder_hid_dim=TEXT_DIM, encoder_hid_dim_type="text_proj",
        cross_attention_dim=16, attention_head_dim=8, addition_embed_type="text", addition_embed_type_num_heads=2,
        resnet_time_scale_shift="scale_shift", act_fn="gelu",
    ).save_pretrained(folder / "unet")
    DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range").save_pretrained(folder / "scheduler")
    _model_index(folder, "IFPipeline", {
        "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"], "scheduler": ["diffusers", "DDPMScheduler"],
    })
    return folder


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sd_vpred_dir(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-v", prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_if_dir(tmp_path_factory) -> Path:
    return build_tiny_if(tmp_path_factory.mktemp("models") / "tiny-if")


@pytest.fixture(scope="session")
def tiny_sd_prior(tiny_sd_dir):
    """The tiny SD folder opened at 64x64 renders (8x8 latents), on the CPU in float32."""
    from dream3d.priors.loading import load_prior

    return load_prior(str(tiny_sd_dir), device="cpu", resolution=64)


@pytest.fixture(scope="session")
def tiny_if_prior(tiny_if_dir):
    """The tiny IF folder opened at 16x16 (IF itself runs at 64x64; smaller keeps tests fast)."""
    from dream3d.priors.loading import load_prior

    return load_prior(str(tiny_if_dir), device="cpu", resolution=16)


def build_tiny_embedded(folder: Path, seed: int = 0, joint_views: bool = False) -> Path:
    """A tiny random embedded prior (16x16, camera-conditioned) saved in the shipped layout;
    `joint_views` makes it a joint multi-view prior (self-attention across a group's views)."""
    from dream3d.priors.embedded_model import EmbeddedDiffusionModel, EmbeddedModelConfig, build_scheduler
    from dream3d.priors.prior_folder import save_prior

    cfg = EmbeddedModelConfig(resolution=16, block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
                              attention_head_dim=8, text_hidden_size=16, text_heads=2, text_layers=1,
                              joint_views=joint_views)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = EmbeddedDiffusionModel(cfg)
        # a trained prior's zero-camera and camera predictions differ; make this random one's differ too
        for p in model.unet.class_embedding.parameters():
            p.data.normal_(0, 0.5)
        return save_prior(model, build_scheduler(cfg), folder)


@pytest.fixture(scope="session")
def tiny_embedded_dir(tmp_path_factory) -> Path:
    return build_tiny_embedded(tmp_path_factory.mktemp("models") / "tiny-embedded")


@pytest.fixture(scope="session")
def tiny_joint_embedded_dir(tmp_path_factory) -> Path:
    """The tiny embedded prior with joint views (what `dream3d prior train --views 4` saves)."""
    return build_tiny_embedded(tmp_path_factory.mktemp("models") / "tiny-joint", joint_views=True)


def gltf_validator() -> list[str]:
    """The command that runs the Khronos glTF validator on a file (skips the test without node)."""
    import shutil

    repo = Path(__file__).resolve().parents[1]
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (repo / "tools" / "node" / "node_modules" / "gltf-validator").exists():
        pytest.skip("gltf-validator missing: npm ci --prefix tools/node")
    return [node, str(repo / "tools" / "validate_gltf.mjs")]
