"""Densification and pruning of 3D Gaussians as a strategy object (3DGS's adaptive
density control, organised as gsplat's `strategy/default.py` and `strategy/ops.py`).

`DensifyStrategy` holds only its settings. Whatever changes during training lives in
a state dict of tensors that the caller owns and keeps (`new_state`): per Gaussian,
the summed norms of its projected-centre gradient and the number of views it was
drawn in, and the state of the generator split offsets are drawn from. `Gaussians`
keeps that state in buffers, so its `state_dict` (and every checkpoint) carries it and
a resumed run densifies exactly as an uninterrupted one. What a render contributes
arrives in its `RenderOutput.info` (`render_info`), never through attributes of the
representation.

Parameters are a dict name -> nn.Parameter with the names `Gaussians` uses (means,
log_scales, quats, opacity_logits, sh0, sh_rest). An operation that changes the number
of Gaussians replaces every entry by a new Parameter (resizing one in place would
break autograd graphs still holding it) and swaps it into the optimiser, whose Adam
moments follow: kept rows keep theirs, new rows start at zero.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from dream3d.render.gaussian_math import quat_to_rotmat

Params = dict[str, nn.Parameter]
State = dict[str, Tensor]
STATE_KEYS = ("grad_sum", "grad_count", "rng_state")


def new_state(n: int, seed: int, device: torch.device | str = "cpu") -> State:
    """Zero statistics for n Gaussians and a generator seeded with `seed` (its state as a uint8 tensor)."""
    stats = {"grad_sum": torch.zeros(n, device=device), "grad_count": torch.zeros(n, device=device)}
    return {**stats, "rng_state": torch.Generator().manual_seed(seed).get_state()}


def render_info(means2d: Tensor, drawn: Tensor, width: int, height: int) -> dict:
    """What a render hands the strategy: means2d [C, N, 2] projected centres in pixels
    (their gradient retained), drawn [C, N] bool, the image size and the number of cameras."""
    return {"means2d": means2d, "drawn": drawn, "width": width, "height": height, "n_cameras": means2d.shape[0]}


# ------------------------------------------------------------ operations on parameters
def _swap_in_optimizer(optimizer: torch.optim.Optimizer | None, old: nn.Parameter, new: nn.Parameter,
                       resize) -> None:
    """Put `new` wherever `optimizer` holds `old`; its per-row state tensors become resize(v)."""
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        group["params"] = [new if q is old else q for q in group["params"]]
    state = optimizer.state.pop(old, None)
    if state is not None:
        optimizer.state[new] = {k: resize(v) if torch.is_tensor(v) and v.shape == old.shape else v
                                for k, v in state.items()}


@torch.no_grad()
def keep_and_append(params: Params, optimizer: torch.optim.Optimizer | None, keep: Tensor,
                    extra: dict[str, Tensor]) -> None:
    """Keep the Gaussians `keep` [M] (indices) and append the rows `extra` (name -> [K, ...];
    every name or none), replacing the entries of `params` and the optimiser's references."""
    for name, old in list(params.items()):
        add = extra.get(name, old.data[:0])
        new = nn.Parameter(torch.cat([old.data[keep], add]), requires_grad=old.requires_grad)
        _swap_in_optimizer(optimizer, old, new,
                           lambda v: torch.cat([v[keep], v.new_zeros((add.shape[0],) + v.shape[1:])]))
        params[name] = new


@torch.no_grad()
def reset_opacity(params: Params, optimizer: torch.optim.Optimizer | None, value: float) -> None:
    """Lower every opacity to at most `value` (in place) and zero its Adam moments."""
    p = params["opacity_logits"]
    p.data.clamp_(max=math.log(value / (1.0 - value)))
    for v in (optimizer.state.get(p, {}) if optimizer is not None else {}).values():
        if torch.is_tensor(v) and v.shape == p.shape:
            v.zero_()


def draw_normal(state: State, shape: tuple[int, ...]) -> Tensor:
    """Standard normal samples of `shape` from the state's generator, which advances.
    They are drawn on the CPU, so every device sees the same numbers."""
    gen = torch.Generator()
    gen.set_state(state["rng_state"].cpu())
    sample = torch.randn(shape, generator=gen)
    state["rng_state"] = gen.get_state().to(state["rng_state"].device)
    return sample


@torch.no_grad()
def split_children(params: Params, idx: Tensor, noise: Tensor) -> dict[str, Tensor]:
    """Two children per Gaussian idx [S] (3DGS): centres at mean + M noise, M = R diag(s),
    i.e. drawn from the parent's N(mu, Sigma) given standard normal noise [2, S, 3];
    scales 1.6 times smaller; everything else copied. Rows: all first children, then all second."""
    scales = params["log_scales"].data[idx].exp()  # [S, 3]
    offsets = (quat_to_rotmat(params["quats"].data[idx]) * scales[:, None, :] @ noise[..., None])[..., 0]
    children = {name: p.data[idx].repeat(2, *[1] * (p.dim() - 1)) for name, p in params.items()}
    children["means"] = (params["means"].data[idx][None] + offsets).reshape(-1, 3)
    children["log_scales"] = (scales / 1.6).log().repeat(2, 1)
    return children


# ------------------------------------------------------------ the strategy
@dataclass
class DensifyStrategy:
    """3DGS densification; every field means what the `GaussianConfig` field of that name does."""

    densify_from: float
    densify_until: float
    densify_every: int
    grad_threshold: float
    split_scale: float
    prune_opacity: float
    prune_scale: float
    max_gaussians: int
    reset_opacity_every: int
    reset_opacity_value: float

    @classmethod
    def from_config(cls, cfg) -> DensifyStrategy:
        """The strategy of any config carrying these fields (e.g. `GaussianConfig`)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    def step_post_backward(self, params: Params, optimizer: torch.optim.Optimizer | None, state: State,
                           step: int, progress: float, info: dict) -> dict[str, int] | None:
        """After the optimiser step: add the render's gradients to the statistics, then
        densify / prune and reset opacities on schedule inside [densify_from, densify_until).
        Outside the window the statistics are cleared (so a finished stage leaves none
        behind). Returns the densify pass's counts when one ran. `optimizer` must hold
        `params`: without it, passes that change their number are skipped with a warning."""
        if progress >= self.densify_until:
            state["grad_sum"].zero_()
            state["grad_count"].zero_()
            return None
        self.accumulate(state, info, params["means"].shape[0])
        if progress < self.densify_from or step <= 0:
            return None
        counts = None
        if self.densify_every and step % self.densify_every == 0:
            if optimizer is None:  # the caller's optimiser would keep stepping the old parameters
                warnings.warn("densification needs the optimizer holding the Gaussians; it is skipped",
                              stacklevel=3)
            else:
                counts = self.densify_and_prune(params, optimizer, state)
        if self.reset_opacity_every and step % self.reset_opacity_every == 0:
            reset_opacity(params, optimizer, self.reset_opacity_value)
        return counts

    @torch.no_grad()
    def accumulate(self, state: State, info: dict, n: int) -> None:
        """Add a render's projected-centre gradient norms (gsplat's normalisation: pixels to
        NDC, times the number of cameras the loss averaged over) and view counts for its
        drawn Gaussians. A render without gradients, or of another number of Gaussians, adds nothing."""
        means2d = info.get("means2d")
        if means2d is None or means2d.grad is None or means2d.shape[1] != n:
            return
        C, drawn = info["n_cameras"], info["drawn"]
        scale = means2d.new_tensor([0.5 * info["width"] * C, 0.5 * info["height"] * C])
        norms = (means2d.grad * scale).norm(dim=-1) * drawn  # [C, N]
        if state["grad_sum"].shape[0] != n:
            state["grad_sum"], state["grad_count"] = norms.new_zeros(n), norms.new_zeros(n)
        state["grad_sum"] += norms.sum(0).to(state["grad_sum"].device)
        state["grad_count"] += drawn.sum(0).to(state["grad_count"].device)

    @torch.no_grad()
    def densify_and_prune(self, params: Params, optimizer: torch.optim.Optimizer | None,
                          state: State) -> dict[str, int]:
        """Clone small / split large Gaussians whose average gradient exceeds the threshold
        (the largest first when max_gaussians leaves less room), then drop faint or huge
        ones and clear the statistics. Rows afterwards: the kept originals, the clones,
        the split children. Returns the counts of each and the new total."""
        grads = state["grad_sum"] / state["grad_count"].clamp(min=1)
        size = params["log_scales"].data.exp().max(-1).values
        grow = grads > self.grad_threshold
        room = max(0, self.max_gaussians - size.shape[0])  # each clone or split adds one Gaussian
        if int(grow.sum()) > room:
            top = grads.masked_fill(~grow, -1.0).topk(room).indices
            grow = torch.zeros_like(grow).index_fill_(0, top, True)
        clone, split = grow & (size <= self.split_scale), grow & (size > self.split_scale)
        idx = split.nonzero().squeeze(1)
        noise = draw_normal(state, (2, len(idx), 3)).to(size.device, size.dtype)
        children = split_children(params, idx, noise)
        extra = {name: torch.cat([p.data[clone], children[name]]) for name, p in params.items()}
        keep_and_append(params, optimizer, (~split).nonzero().squeeze(1), extra)
        too_big = params["log_scales"].data.exp().max(-1).values > self.prune_scale
        prune = (torch.sigmoid(params["opacity_logits"].data) < self.prune_opacity) | too_big
        if prune.any():
            keep_and_append(params, optimizer, (~prune).nonzero().squeeze(1), {})
        n = params["means"].shape[0]
        state["grad_sum"], state["grad_count"] = grads.new_zeros(n), grads.new_zeros(n)
        return {"cloned": int(clone.sum()), "split": len(idx), "pruned": int(prune.sum()), "total": n}
