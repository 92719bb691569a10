"""The embedded prior's folder: written by `save_prior`, read offline by `load_prior_components`.

    unet/  text_encoder/  tokenizer/  scheduler/  prior.json  README.md
and, for a latent prior, also
    vae/  camera_encoder/  model_index.json
so that `diffusers.StableDiffusionPipeline.from_pretrained(folder)` loads it and samples
single views from text (without a camera: the pipeline gives the UNet the text tokens
alone, which is the model's own camera-free branch).
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dream3d.errors import UserError
from dream3d.priors import vocab
from dream3d.priors.codec import LatentCodec, PixelCodec
from dream3d.priors.embedded_model import (EmbeddedDiffusionModel, EmbeddedModelConfig, build_camera_encoder,
                                           parameter_count)
from dream3d.priors.worlds import world_of_meta

PRIOR_FORMAT_VERSION = 1
"""Version of the folder layout and prior.json fields."""


def model_index(scheduler) -> dict:
    """`model_index.json` of a StableDiffusionPipeline over the folder's parts (no safety checker)."""
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "scheduler": ["diffusers", type(scheduler).__name__],
        "safety_checker": [None, None], "feature_extractor": [None, None], "image_encoder": [None, None],
        "requires_safety_checker": False,
    }


@dataclass
class PriorCard:
    """What README.md and prior.json say about a saved prior."""

    train_steps: int = 0
    """Optimisation steps the weights were trained for."""
    batch_size: int = 0
    """Images per training step."""
    notes: list[str] = field(default_factory=list)
    """Free-form lines for the model card (measurements, data)."""


def save_prior(model: EmbeddedDiffusionModel, scheduler, out_dir: Path, card: PriorCard | None = None,
               half: bool = False, vae=None) -> Path:
    """Write the prior folder; `half` stores weights in float16 (loading casts back to float32).
    A latent model (`latent_channels` > 0) needs its `vae`."""
    if bool(model.cfg.latent_channels) != (vae is not None):
        raise ValueError("a latent prior is saved with its VAE, a pixel prior without one")
    if vae is not None and int(vae.config.latent_channels) != model.cfg.latent_channels:
        raise ValueError(f"the VAE has {vae.config.latent_channels} latent channels, the model "
                         f"{model.cfg.latent_channels}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = card or PriorCard()
    unet, text = model.unet, model.text_encoder
    if half:
        unet, text = copy.deepcopy(unet).half(), copy.deepcopy(text).half()
    unet.save_pretrained(out_dir / "unet")
    text.save_pretrained(out_dir / "text_encoder")
    model.tokenizer.save_pretrained(out_dir / "tokenizer")
    scheduler.save_pretrained(out_dir / "scheduler")
    if vae is not None:
        (copy.deepcopy(vae).half() if half else vae).save_pretrained(out_dir / "vae")
        (out_dir / "model_index.json").write_text(json.dumps(model_index(scheduler), indent=2))
    if model.camera_encoder is not None:
        (out_dir / "camera_encoder").mkdir(exist_ok=True)
        save_file({k: (v.half() if half else v).detach().contiguous()
                   for k, v in model.camera_encoder.state_dict().items()},
                  out_dir / "camera_encoder" / "model.safetensors")
    meta = {
        "format_version": PRIOR_FORMAT_VERSION,
        "kind": "dream3d-embedded-latent-prior" if vae is not None else "dream3d-embedded-pixel-prior",
        "resolution": model.cfg.resolution,
        "model_config": asdict(model.cfg),
        **vocab.prior_meta(model.world),  # "world" and its words: the token ids belong to this world
        "prompt_template": "a {colour} {object}[, {front|side|back|overhead} view]",
        "camera": {
            "conditioning": (f"{model.cfg.camera_tokens} cross-attention token(s) after the text's, from "
                             "camera_encoder/ (an MLP)" if model.cfg.camera_tokens else "UNet class embedding")
            + " fed Cameras.pose_features(): camera-to-world 4x4 (OpenGL: looks down -Z, +Y up) flattened "
            "row-major, translation / 3.0; zeros = no camera",
            "world": "+Y up, objects face +Z, azimuth 0 on +Z",
            "elevation_range": [-10.0, 60.0], "distance_range": [2.6, 3.2], "fov_range": [40.0, 50.0],
        },
        "image_space": (f"VAE latents (vae/, f = {model.cfg.latent_factor}, posterior mean x scaling_factor), "
                        f"[B, {model.cfg.latent_channels}, h, w]" if vae is not None
                        else "pixels in [-1, 1], [B, 3, h, w]"),
        "background": "solid grey, level uniform in [0.55, 0.85]",
        "train_steps": card.train_steps,
        "batch_size": card.batch_size,
        "parameters": {"unet": parameter_count(model.unet), "text_encoder": parameter_count(model.text_encoder),
                       **({"vae": parameter_count(vae)} if vae is not None else {}),
                       **({"camera_encoder": parameter_count(model.camera_encoder)}
                          if model.camera_encoder is not None else {})},
    }
    (out_dir / "prior.json").write_text(json.dumps(meta, indent=2))
    (out_dir / "README.md").write_text(_model_card(meta, card))
    return out_dir


def _model_card(meta: dict, card: PriorCard) -> str:
    v = meta["vocab"]
    fronted = v["fronted_objects"]
    lines = [
        f"# dream3d embedded prior: {meta['world']}",
        "",
        f"A {meta['resolution']}x{meta['resolution']} "
        + ("latent-space (a small VAE of its own)" if meta["model_config"].get("latent_channels") else "pixel-space")
        + " text-and-camera-conditioned diffusion model "
        "trained from scratch by `dream3d prior train` on the project's own procedural renders "
        "(`dream3d/procedural/`). It only knows:",
        "",
        f"- colours: {', '.join(v['colours'])}",
        f"- objects: {', '.join(v['objects'])} ({', '.join(fronted[:-1])} and {fronted[-1]} have a front facing +Z)",
        f"- optional view suffix: {', '.join(v['views'])} (e.g. \"a red chair, back view\")",
        "",
        "It is the CPU default for `dream3d generate`; for anything else pass `--model` with a real checkpoint.",
        "",
        "## Details",
        "- parameters: " + "; ".join(f"{k.replace('_', ' ')} {n:,}" for k, n in meta["parameters"].items()),
        f"- training: {card.train_steps} steps at batch {card.batch_size}, eps-prediction, "
        "text dropout for classifier-free guidance, camera dropout, EMA weights",
        f"- camera conditioning: {meta['camera']['conditioning']}",
        f"- background: {meta['background']}",
        "- licence: Apache-2.0, like the rest of dream3d; trained only on procedurally generated images",
    ]
    if meta["model_config"].get("joint_views"):
        lines.append("- joint views: groups of views of one object are denoised together (self-attention across "
                     "the views, a camera per view), as `--guidance mvsds` asks")
    lines += [f"- {n}" for n in card.notes]
    return "\n".join(lines) + "\n"


def load_prior_components(path: Path, dtype: torch.dtype = torch.float32):
    """(EmbeddedDiffusionModel, scheduler, meta, codec) from a saved folder, offline; the codec maps
    renders to the model's space (`PixelCodec`, or `LatentCodec` over the folder's frozen VAE)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a one-line CLI does not want per-load progress bars
    path = Path(path)
    meta = json.loads((path / "prior.json").read_text())
    cfg_dict = dict(meta["model_config"])
    for k in ("block_out_channels", "attention_levels", "self_attention_levels"):
        cfg_dict[k] = tuple(cfg_dict[k])
    cfg = EmbeddedModelConfig(**cfg_dict)
    unet = UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True, torch_dtype=dtype)
    text = CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True, dtype=dtype)
    tok = PreTrainedTokenizerFast.from_pretrained(path / "tokenizer", local_files_only=True)
    sched = DDPMScheduler.from_pretrained(path / "scheduler", local_files_only=True)
    world = world_of_meta(meta, path)  # no "world" key: tiny-shapes, as every folder saved before worlds
    if tok.get_vocab() != {w: i for i, w in enumerate(vocab.vocabulary(world))}:
        raise UserError(f"{path}: its tokenizer's vocabulary is not that of its world {world.name!r}")
    camera_encoder = None
    if cfg.camera_tokens:
        camera_encoder = build_camera_encoder(cfg)
        weights = load_file(path / "camera_encoder" / "model.safetensors")
        camera_encoder.load_state_dict({k: v.to(dtype) for k, v in weights.items()})
        camera_encoder.to(dtype)
    codec = PixelCodec(cfg.resolution)
    if cfg.latent_channels:
        vae = AutoencoderKL.from_pretrained(path / "vae", local_files_only=True, torch_dtype=dtype)
        vae.eval().requires_grad_(False)
        codec = LatentCodec(vae, cfg.resolution)
    return EmbeddedDiffusionModel(cfg, unet, text, tok, world, camera_encoder), sched, meta, codec




def copy_half(src: Path, dst: Path) -> Path:
    """Copy a prior folder with its float weights stored as float16 (half the size in the repository;
    loading casts back to float32). Written to a temporary folder, then swapped in."""
    import shutil

    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    for f in tmp.rglob("*.safetensors"):
        tensors = load_file(f)
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, f,
                  metadata={"format": "pt"})
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst
