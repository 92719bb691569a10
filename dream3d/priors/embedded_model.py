"""The embedded prior's networks, built from config, and its DDIM sampler.

A diffusers `UNet2DConditionModel` (cross-attention only on the coarser levels:
self-attention at full resolution costs ~10x per step on CPU) conditioned on a
tiny `CLIPTextModel` over a word-level tokenizer, and on the camera
(`Cameras.pose_features()`). It works in pixels (`latent_channels` = 0: the
32x32 tiny-shapes prior) or in the latents of a small VAE (`dream3d.priors.autoencoder`).

The camera enters one of two ways:
- `camera_tokens` = 0: through the UNet's class embedding (`class_embed_type="projection"`;
  zeros mean "no camera");
- `camera_tokens` = K > 0: as K extra cross-attention tokens after the text's, from a
  small MLP (`camera_encoder`). Rows without a camera get no tokens at all, so the
  UNet called with the text alone (as `StableDiffusionPipeline` calls it) is exactly
  the camera-free model.
A joint-view model (`joint_views`) also denoises groups of N views together: its
self-attention spans the group's views (`multiview_attention`), each view keeps its
own camera. Folders are written and read by `dream3d.priors.prior_folder`.
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
    latent_channels: int = 0
    """0: the model works in pixels; C > 0: in C-channel VAE latents of the `resolution`-pixel images."""
    latent_factor: int = 1
    """Pixels per latent cell along a side (the VAE's downscaling; 1 in pixel space)."""
    camera_tokens: int = 0
    """0: camera through the class embedding; K > 0: as K cross-attention tokens (see the module docstring)."""

    @property
    def channels(self) -> int:
        """Channels of the space the UNet denoises."""
        return self.latent_channels or 3

    @property
    def sample_size(self) -> int:
        """Side of the UNet's input (pixels, or latent cells)."""
        return self.resolution // self.latent_factor


def build_unet(cfg: EmbeddedModelConfig):
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    class_embedding = {} if cfg.camera_tokens else {
        "class_embed_type": "projection", "projection_class_embeddings_input_dim": POSE_DIM}
    return UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.channels,
        out_channels=cfg.channels,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        cross_attention_dim=cfg.text_hidden_size,
        **class_embedding,
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
        clip_sample=not cfg.latent_channels,  # pixels live in [-1, 1]; unit-variance latents do not
        clip_sample_range=1.0,
    )


class EmbeddedDiffusionModel(nn.Module):
    """UNet + text encoder + tokenizer trained together, on the words of one world."""

    def __init__(self, cfg: EmbeddedModelConfig, unet=None, text_encoder=None, tokenizer=None,
                 world: World = TINY_SHAPES, camera_encoder: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.world = world
        self.unet = unet if unet is not None else build_unet(cfg)
        self.text_encoder = text_encoder if text_encoder is not None else build_text_encoder(cfg, world)
        self.tokenizer = tokenizer if tokenizer is not None else vocab.build_tokenizer(world)
        self.camera_encoder = (camera_encoder if camera_encoder is not None else build_camera_encoder(cfg)
                               if cfg.camera_tokens else None)
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
        """eps [B, C, h, w] for x_t [B, C, h, w], timesteps t [B], embeds [B, L, D], pose [B, 16] or None
        (zeros: no camera); with `n_views` N > 1 (joint-view models) each run of N consecutive rows is one group."""
        if self.camera_encoder is None:
            if pose is None:
                pose = torch.zeros(x_t.shape[0], POSE_DIM, device=x_t.device, dtype=x_t.dtype)
            with views(self.unet, n_views):
                return self.unet(x_t, t, encoder_hidden_states=embeds, class_labels=pose.to(x_t.dtype)).sample
        has = (torch.zeros(x_t.shape[0], dtype=torch.bool, device=x_t.device) if pose is None
               else pose.abs().sum(dim=1) > 0)
        groups = has.reshape(-1, n_views)
        if (groups.any(dim=1) != groups.all(dim=1)).any():
            raise ValueError("every view of a group needs a camera, or none does")
        if bool(has.all()) or not bool(has.any()):
            return self._denoise(x_t, t, embeds, pose if bool(has.all()) else None, n_views)
        out = torch.empty_like(x_t)  # rows with and without cameras: two passes, whole groups each
        for rows in (has, ~has):
            out[rows] = self._denoise(x_t[rows], t[rows], embeds[rows], pose[rows] if rows is has else None,
                                      n_views)
        return out

    def _denoise(self, x_t: Tensor, t: Tensor, embeds: Tensor, pose: Tensor | None, n_views: int) -> Tensor:
        """The UNet on rows that all have a camera (pose [B, 16]) or none (None: the text tokens alone)."""
        if pose is not None:
            tokens = self.camera_encoder(pose.to(embeds.dtype)).reshape(pose.shape[0], self.cfg.camera_tokens, -1)
            embeds = torch.cat([embeds, tokens], dim=1)
        with views(self.unet, n_views):
            return self.unet(x_t, t, encoder_hidden_states=embeds).sample


def build_camera_encoder(cfg: EmbeddedModelConfig) -> nn.Module:
    """Pose features [B, 16] -> camera tokens [B, K * D] (D the text width)."""
    d = cfg.text_hidden_size
    return nn.Sequential(nn.Linear(POSE_DIM, d), nn.SiLU(), nn.Linear(d, cfg.camera_tokens * d))


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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
    decode=None,
) -> Tensor:
    """DDIM samples, one per prompt: images [N, H, W, 3] in [0, 1]; with `n_views` > 1 (joint-view
    models) each run of that many consecutive samples is denoised as one group. `decode` maps the
    model's space to images (a codec's `decode`; needed for latent models, pixels by default).

    eps = eps_u + s (eps_c - eps_u) + w (eps_c - eps_p): classifier-free guidance in the diffusers
    convention (s = 1: none), plus view guidance, where eps_p reads the prompt without its view
    suffix and without the camera. Rows with neither have eps_p = eps_c, so w changes nothing there
    (and the third pass is skipped when no row has a view)."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    n, c, r = len(prompts), model.cfg.channels, model.cfg.sample_size
    if decode is None and model.cfg.latent_channels:
        raise ValueError("sampling a latent model needs its VAE's decode")
    device = next(model.unet.parameters()).device
    x = torch.randn(n, c, r, r, generator=generator).to(device)
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
    if decode is not None:
        return decode(x).cpu()
    return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu()
