"""The embedded prior's networks, built from config, and its folder layout.

A pixel-space diffusers `UNet2DConditionModel` (cross-attention only on the
coarser levels: self-attention at full resolution costs ~10x per step on CPU)
conditioned on a tiny `CLIPTextModel` over a word-level tokenizer, and on the
camera through the UNet's class embedding (`class_embed_type="projection"` fed
`Cameras.pose_features()`; zeros mean "no camera"). A joint-view model
(`joint_views`) also denoises groups of N views together: its self-attention spans
the group's views (`multiview_attention`), each view keeps its own camera.

Saved folder (diffusers-like, loadable offline):
    unet/  text_encoder/  tokenizer/  scheduler/  prior.json  README.md
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from dream3d.errors import UserError
from dream3d.priors import vocab
from dream3d.priors.multiview_attention import install_multiview_attention, views
from dream3d.priors.worlds import TINY_SHAPES, World, world_of_meta

PRIOR_FORMAT_VERSION = 1
"""Version of the folder layout and prior.json fields."""
POSE_DIM = 16
"""Length of `Cameras.pose_features()`."""


@dataclass
class EmbeddedModelConfig:
    resolution: int = 32
    """Side of the square images the prior models, in pixels."""
    block_out_channels: tuple[int, ...] = (64, 128, 192)
    """UNet channels per resolution level (finest first)."""
    attention_levels: tuple[bool, ...] = (False, False, True)
    """Whether each level has attention blocks (cross-attention to the text); off at fine levels for speed."""
    self_attention_levels: tuple[bool, ...] = (False, False, True)
    """Whether those attention blocks also self-attend (costly: 256 tokens at 16x16 dominate a CPU step)."""
    pooled_text_embedding: bool = True
    """Also add an attention-pooled text embedding to the time embedding (global conditioning at every level)."""
    layers_per_block: int = 2
    """ResNet blocks per UNet level."""
    attention_head_dim: int = 32
    """Channels per attention head."""
    norm_num_groups: int = 32
    """GroupNorm groups (must divide every channel count)."""
    text_hidden_size: int = 128
    """Width of the text encoder (and the UNet's cross-attention dimension)."""
    text_layers: int = 2
    """Transformer layers of the text encoder."""
    text_heads: int = 4
    """Attention heads of the text encoder."""
    num_train_timesteps: int = 1000
    """Diffusion steps of the DDPM schedule."""
    beta_schedule: str = "squaredcos_cap_v2"
    """diffusers beta schedule name (cosine suits small images)."""
    joint_views: bool = False
    """Self-attention spans the views of a group (MVDream), trained on grouped views; False in older folders."""


def build_unet(cfg: EmbeddedModelConfig):
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    return UNet2DConditionModel(
        sample_size=cfg.resolution,
        in_channels=3,
        out_channels=3,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        cross_attention_dim=cfg.text_hidden_size,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=POSE_DIM,
        only_cross_attention=tuple(not s for s in cfg.self_attention_levels),
        addition_embed_type="text" if cfg.pooled_text_embedding else None,
        addition_embed_type_num_heads=max(1, cfg.text_hidden_size // 32),
    )


def build_text_encoder(cfg: EmbeddedModelConfig, world: World = TINY_SHAPES):
    from transformers import CLIPTextConfig, CLIPTextModel

    words = vocab.vocabulary(world)
    text_cfg = CLIPTextConfig(
        vocab_size=len(words),
        hidden_size=cfg.text_hidden_size,
        intermediate_size=2 * cfg.text_hidden_size,
        projection_dim=cfg.text_hidden_size,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=vocab.MAX_TOKENS,
        pad_token_id=words.index(vocab.PAD),
        bos_token_id=words.index(vocab.BOS),
        eos_token_id=words.index(vocab.EOS),
    )
    return CLIPTextModel(text_cfg)


def build_scheduler(cfg: EmbeddedModelConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
    )


class EmbeddedDiffusionModel(nn.Module):
    """UNet + text encoder + tokenizer trained together, on the words of one world."""

    def __init__(self, cfg: EmbeddedModelConfig, unet=None, text_encoder=None, tokenizer=None,
                 world: World = TINY_SHAPES):
        super().__init__()
        self.cfg = cfg
        self.world = world
        self.unet = unet if unet is not None else build_unet(cfg)
        self.text_encoder = text_encoder if text_encoder is not None else build_text_encoder(cfg, world)
        self.tokenizer = tokenizer if tokenizer is not None else vocab.build_tokenizer(world)
        if cfg.joint_views:  # processors are not saved with the weights: installed on every build and load
            install_multiview_attention(self.unet)

    def token_ids(self, prompts: list[str]) -> Tensor:
        """[N, MAX_TOKENS] token ids of prompts (normalised, unknown words dropped)."""
        clean = [vocab.clean_prompt(p, self.world) for p in prompts]
        enc = self.tokenizer(clean, padding="max_length", max_length=vocab.MAX_TOKENS, truncation=True,
                             return_tensors="pt")
        return enc["input_ids"].to(next(self.text_encoder.parameters()).device)

    def embed(self, prompts: list[str]) -> Tensor:
        """[N, MAX_TOKENS, text_hidden_size] text embeddings."""
        return self.text_encoder(input_ids=self.token_ids(prompts)).last_hidden_state

    def forward(self, x_t: Tensor, t: Tensor, embeds: Tensor, pose: Tensor | None = None, n_views: int = 1) -> Tensor:
        """eps [B, 3, h, w] for x_t [B, 3, h, w], timesteps t [B], embeds [B, L, D], pose [B, 16] or None;
        with `n_views` N > 1 (joint-view models) each run of N consecutive rows is one group."""
        if pose is None:
            pose = torch.zeros(x_t.shape[0], POSE_DIM, device=x_t.device, dtype=x_t.dtype)
        with views(self.unet, n_views):
            return self.unet(x_t, t, encoder_hidden_states=embeds, class_labels=pose.to(x_t.dtype)).sample


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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
               half: bool = False) -> Path:
    """Write the prior folder; `half` stores weights in float16 (loading casts back to float32)."""
    import copy

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
    meta = {
        "format_version": PRIOR_FORMAT_VERSION,
        "kind": "dream3d-embedded-pixel-prior",
        "resolution": model.cfg.resolution,
        "model_config": asdict(model.cfg),
        **vocab.prior_meta(model.world),  # "world" and its words: the token ids belong to this world
        "prompt_template": "a {colour} {object}[, {front|side|back|overhead} view]",
        "camera": {
            "conditioning": "UNet class embedding fed Cameras.pose_features(): camera-to-world 4x4 "
            "(OpenGL: looks down -Z, +Y up) flattened row-major, translation / 3.0; zeros = no camera",
            "world": "+Y up, objects face +Z, azimuth 0 on +Z",
            "elevation_range": [-10.0, 60.0], "distance_range": [2.6, 3.2], "fov_range": [40.0, 50.0],
        },
        "image_space": "pixels in [-1, 1], [B, 3, h, w]",
        "background": "solid grey, level uniform in [0.55, 0.85]",
        "train_steps": card.train_steps,
        "batch_size": card.batch_size,
        "parameters": {"unet": parameter_count(model.unet), "text_encoder": parameter_count(model.text_encoder)},
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
        f"A {meta['resolution']}x{meta['resolution']} pixel-space text-and-camera-conditioned diffusion model "
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
        f"- UNet parameters: {meta['parameters']['unet']:,}; text encoder: {meta['parameters']['text_encoder']:,}",
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
    """(EmbeddedDiffusionModel, scheduler, meta) from a saved folder, offline."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
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
    return EmbeddedDiffusionModel(cfg, unet, text, tok, world), sched, meta


# Sampling CFG scale: on the 32x32 prior, 1.5 reads right far more often than 3.0 (measured by
# `dream3d prior eval` on cube/sphere/robot/snowman: colour 100% vs 74%, object 96% vs 79%);
# 7.5 oversaturates into blobs.
SAMPLE_GUIDANCE_SCALE = 1.5
# View guidance: the prior learned views only faintly (a view suffix or camera moves eps by
# well under 1%), so the sampler amplifies that difference. On the fronted objects at CFG 1.5,
# the classifier's view reading went from 45% (w = 0) to 71% (w = 5) and 71% (w = 10) at a
# cost in object reading (98% -> 89% -> 83%); w = 20 fell back to 55%.
SAMPLE_VIEW_GUIDANCE_SCALE = 5.0


@torch.no_grad()
def ddim_sample(
    model: EmbeddedDiffusionModel,
    scheduler,
    prompts: list[str],
    pose: Tensor | None = None,  # [N, 16] camera pose features, or None for no camera
    guidance_scale: float = SAMPLE_GUIDANCE_SCALE,
    steps: int = 25,
    generator: torch.Generator | None = None,
    view_guidance_scale: float = SAMPLE_VIEW_GUIDANCE_SCALE,
    n_views: int = 1,
) -> Tensor:
    """DDIM samples, one per prompt: images [N, H, W, 3] in [0, 1]; with `n_views` > 1 (joint-view
    models) each run of that many consecutive samples is denoised as one group.

    eps = eps_u + s (eps_c - eps_u) + w (eps_c - eps_p): classifier-free guidance in the diffusers
    convention (s = 1: none), plus view guidance, where eps_p reads the prompt without its view
    suffix and without the camera. Rows with neither have eps_p = eps_c, so w changes nothing there
    (and the third pass is skipped when no row has a view)."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    n, r = len(prompts), model.cfg.resolution
    device = next(model.unet.parameters()).device
    x = torch.randn(n, 3, r, r, generator=generator).to(device)
    no_pose = torch.zeros(n, POSE_DIM, device=device)
    pose = no_pose if pose is None else pose.to(device)
    plain = [vocab.without_view(p, model.world) for p in prompts]
    has_view = pose.abs().sum() > 0 or any(vocab.clean_prompt(p, model.world) != q for p, q in zip(prompts, plain))
    embeds = [model.embed([""]).expand(n, -1, -1), model.embed(prompts)]
    poses = [pose, pose]
    if view_guidance_scale != 0 and has_view:
        embeds.append(model.embed(plain))
        poses.append(no_pose)
    passes = len(poses)  # 2, or 3 with the view-free branch
    embeds, poses = torch.cat(embeds), torch.cat(poses)
    for t in ddim.timesteps:
        tt = torch.full((passes * n,), int(t), device=device, dtype=torch.long)
        # whole copies of the batch side by side, so every group of views stays together
        eps_u, eps_c, *eps_p = model(x.repeat(passes, 1, 1, 1), tt, embeds, poses, n_views=n_views).chunk(passes)
        eps = eps_u + guidance_scale * (eps_c - eps_u)
        if eps_p:
            eps = eps + view_guidance_scale * (eps_c - eps_p[0])
        x = ddim.step(eps, int(t), x).prev_sample
    return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu()
