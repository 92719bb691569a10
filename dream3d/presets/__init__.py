"""Presets (YAML recipes in this folder) and how flags and `--set` apply on top of them."""
from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from dream3d.config import RunConfig, build
from dream3d.errors import UserError

DEFAULT_PRESET = "gaussian"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def _read(name: str) -> dict:
    if name not in preset_names():
        raise UserError(f"unknown preset '{name}'; choose one of: {', '.join(preset_names())}")
    return yaml.safe_load(resources.files(__name__).joinpath(f"{name}.yaml").read_text()) or {}


def load_preset(name: str) -> dict:
    data = _read(name)
    data.pop("description", None)
    return data


def preset_description(name: str) -> str:
    return str(_read(name).get("description", ""))


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """data["a"]["b"] = value for "a.b"; a number indexes a list ("stages.1.train.steps")."""
    keys = dotted.split(".")
    node: Any = data
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise UserError(f"config key '{dotted}': '{k}' is not an index below {len(node)}")
            if last:
                node[int(k)] = value
            else:
                node[int(k)] = node[int(k)] if node[int(k)] is not None else {}
                node = node[int(k)]
            continue
        if not isinstance(node, dict):
            raise UserError(f"config key '{dotted}': '{keys[i - 1]}' is not a section")
        if last:
            node[k] = value
        else:
            if node.get(k) is None:
                node[k] = {}
            node = node[k]


def parse_set(items: list[str]) -> list[tuple[str, Any]]:
    """`key=value` strings; values are read as YAML (so 1e-3, true, [1, 2] work)."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got '{item}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        out.append((key.strip(), value))
    return out


def _stage_list(data: dict) -> list[dict]:
    stages = data.get("stages") or []
    return [s if isinstance(s, dict) else {} for s in stages]


def _apply_total_steps(data: dict, total: int) -> None:
    """--steps is the whole run: with several stages each keeps its share of the preset's steps."""
    stages = _stage_list(data)
    default = (data.get("train") or {}).get("steps", 600)
    counts = [(s.get("train") or {}).get("steps", default) for s in stages]
    if len(stages) <= 1:
        set_dotted(data, "train.steps", total)
        for s in stages:
            (s.setdefault("train", {}) or {}).pop("steps", None)
        return
    for s, n in zip(stages, split_steps(total, counts)):
        s["train"] = {**(s.get("train") or {}), "steps": n}


def split_steps(total: int, weights: list[int]) -> list[int]:
    """`total` shared in proportion to `weights` (largest remainders), each stage at least 1."""
    if total < len(weights):
        return [total if total <= 0 else 1] * len(weights)  # too few to share: validation names the problem
    spare = total - len(weights)
    whole = sum(weights)
    exact = [spare * w / whole for w in weights]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[: spare - sum(shares)]:
        shares[i] += 1
    return [1 + n for n in shares]


def run_flags(prompt: str, model: str | None = None, seed: int | None = None, device: str | None = None,
              negative_prompt: str | None = None, representation: str | None = None, guidance: str | None = None,
              steps: int | None = None, resolution: int | None = None,
              allow_unknown_words: bool | None = None) -> dict[str, Any]:
    """The flags of `generate` (and of each batch entry) as `resolve` takes them; None = not given."""
    flags: dict[str, Any] = {
        "prompt": prompt, "model": model, "seed": seed, "device": device, "negative_prompt": negative_prompt,
        "train.steps": steps, "train.resolution": resolution, "allow_unknown_words": allow_unknown_words or None,
    }
    # A newly named component does not inherit the preset's options (they belong to another class).
    if representation is not None:
        flags = {"representation": {"name": representation}, **flags}
    if guidance is not None:
        flags = {"guidance": {"name": guidance}, **flags}
    return flags


def resolve(preset: str | None, flags: dict[str, Any], overrides: list[str]) -> RunConfig:
    """Preset < CLI flags (dotted keys, None = not given) < --set overrides.
    `train.steps` and `train.resolution` flags apply to every stage."""
    data = load_preset(preset or DEFAULT_PRESET)
    for key, value in flags.items():
        if value is None:
            continue
        if key in ("representation", "guidance") and value == {"name": (data.get(key) or {}).get("name")}:
            continue  # the preset's own component, named again: keep its options
        if key == "train.steps":
            _apply_total_steps(data, value)
        elif key == "train.resolution":
            set_dotted(data, key, value)
            for s in _stage_list(data):
                (s.get("train") or {}).pop("resolution", None)
        else:
            set_dotted(data, key, value)
    for key, value in parse_set(overrides):
        set_dotted(data, key, value)
    return build(data)
