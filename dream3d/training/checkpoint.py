"""Atomic checkpoints: safetensors for tensors, JSON for everything else.

`ckpt/step-NNNNNN.safetensors` + `.json` are written under temporary names and
renamed into place; `ckpt/latest.json` is replaced last, so a crash at any
moment leaves the previous checkpoint readable. Clean-up deletes only files of the
`step-NNNNNN.*` pattern this module writes, and `latest.json` may only name such
files in its own folder: a stage folder that holds anything else loses nothing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dream3d.atomic import FileGroup, ensure_space, write_text_atomic
from dream3d.errors import UserError
from dream3d.runfolder import CHECKPOINT_FILE, run_path

KEEP = 2  # checkpoints kept besides the newest


def _split_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, state_meta = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                state_meta.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": state_meta}


def _join_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for idx, scalars in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(scalars)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    extra: dict | None = None,
) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"model.{name}.{k}"] = v.detach().cpu().contiguous()
    opt_tensors, opt_meta = _split_optimizer(optimizer)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    stem = f"step-{step:06d}"
    weights, state = ckpt_dir / f"{stem}.safetensors", ckpt_dir / f"{stem}.json"
    needed = sum(t.numel() * t.element_size() for t in tensors.values()) + 128 * len(tensors) + 4096
    kept = _latest_step(ckpt_dir)
    note = f"; the checkpoint of step {kept} is kept" if kept is not None else "; no checkpoint was written"
    what = f"a checkpoint of step {step}"
    ensure_space(ckpt_dir, needed, what, note)
    with FileGroup(ckpt_dir, what, note) as group:
        group.stage(weights, lambda tmp: save_file(tensors, str(tmp)), expected=needed)
        group.write(state, json.dumps({"step": step, "optimizer": opt_meta, **(extra or {})}).encode())
        group.commit()
    write_text_atomic(ckpt_dir / "latest.json", json.dumps({"step": step, "weights": weights.name, "state": state.name}))
    _remove_old(ckpt_dir, keep=KEEP + 1)
    return weights


def _remove_old(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints: only plain files named as `save_checkpoint`
    names them (step-NNNNNN.safetensors / .json), never a link, a folder or any other file."""
    steps: dict[int, list[Path]] = {}
    for path in ckpt_dir.iterdir():
        m = CHECKPOINT_FILE.fullmatch(path.name)
        if m and path.is_file() and not path.is_symlink():
            steps.setdefault(int(m.group(1)), []).append(path)
    for step in sorted(steps)[:-keep]:
        for path in steps[step]:
            path.unlink(missing_ok=True)


def read_latest(ckpt_dir: Path) -> dict | None:
    """latest.json of a stage folder ({step, weights, state}), None when there is none; a
    UserError when it is not what `save_checkpoint` writes (garbage, other files named)."""
    path = ckpt_dir / "latest.json"
    if not path.is_file():
        return None
    try:
        latest = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"the checkpoint in {ckpt_dir} is corrupt (latest.json: {type(e).__name__})") from None
    ok = (isinstance(latest, dict) and type(latest.get("step")) is int and latest["step"] >= 0
          and all(isinstance(latest.get(k), str) and CHECKPOINT_FILE.fullmatch(latest[k]) for k in ("weights", "state")))
    if not ok:
        raise UserError(f"the checkpoint in {ckpt_dir} is corrupt (latest.json is not a checkpoint record)")
    return latest


def _latest_step(ckpt_dir: Path) -> int | None:
    try:
        return int(json.loads((ckpt_dir / "latest.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def has_checkpoint(ckpt_dir: Path) -> bool:
    return (ckpt_dir / "latest.json").is_file()


def load_checkpoint(
    ckpt_dir: Path,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer | None,
    generator: torch.Generator | None,
) -> dict:
    """Restore everything in place; returns the JSON state (with 'step'). Raises
    UserError for a missing, corrupt or mismatched checkpoint."""
    latest = read_latest(ckpt_dir)
    if latest is None:
        raise UserError(f"no checkpoint in {ckpt_dir}")
    try:
        tensors = load_file(str(run_path(ckpt_dir, latest["weights"])))
        state = json.loads(run_path(ckpt_dir, latest["state"]).read_text())
        if not isinstance(state, dict) or not isinstance(state.get("optimizer", {}), dict):
            raise ValueError("its state is not a checkpoint record")
    except FileNotFoundError:
        raise UserError(f"no checkpoint in {ckpt_dir}") from None
    except (OSError, KeyError, ValueError, SafetensorError) as e:
        raise UserError(f"the checkpoint in {ckpt_dir} is corrupt ({type(e).__name__}: {e})") from None
    for name, module in modules.items():
        prefix = f"model.{name}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise UserError(f"the checkpoint in {ckpt_dir} does not match this run's {name} ({first})") from None
    try:
        if optimizer is not None:
            _join_optimizer(optimizer, tensors, state["optimizer"])
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"the checkpoint in {ckpt_dir} does not match this run's optimiser ({e})") from None
    try:
        torch.set_rng_state(tensors["rng.torch"])
        if generator is not None:
            generator.set_state(tensors["rng.generator"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"the checkpoint in {ckpt_dir} is corrupt (random state: {type(e).__name__})") from None
    state["step"] = latest["step"]  # checked above; the state file of a step names the same step
    return state
