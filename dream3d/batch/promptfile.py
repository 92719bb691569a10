"""Prompt files: many runs described in one file.

`*.txt`: one prompt per line; blank lines and `#` comments (whole lines, or after
whitespace at the end of a line) are ignored.

`*.yaml` / `*.yml`: a list of entries, or a mapping with `defaults` and `prompts`:

    defaults:              # apply to every entry; an entry's own value wins
      preset: fast
      steps: 300
      set: {export.video_frames: 36}
    prompts:
      - a red cube                 # a plain string is an entry with only a prompt
      - prompt: a blue torus
        seed: 3
        guidance: sds
        set: {guidance.guidance_scale: 30}   # dotted keys, as `--set`

A problem with one entry (an empty prompt, a wrong type, an unknown key) is kept
on that entry as its `error`, so the rest of the file still runs; a file that
cannot be read or parsed at all is a `UserError`.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dream3d.errors import UserError
from dream3d.run import slugify

ENTRY_KEYS = ("prompt", "seed", "preset", "guidance", "steps", "set")
DEFAULT_KEYS = ENTRY_KEYS[1:]


@dataclass
class PromptEntry:
    """One run of a batch, as written in its prompt file."""

    prompt: str
    """The text prompt (may be empty when `error` says so)."""
    source: str
    """Where the entry was written, `file:line`, for messages."""
    seed: int | None = None
    """Random seed (None: the preset's)."""
    preset: str | None = None
    """Preset name (None: the default preset)."""
    guidance: str | None = None
    """Guidance name (None: the preset's)."""
    steps: int | None = None
    """Optimisation steps of the whole run (None: the preset's)."""
    set: dict[str, Any] = field(default_factory=dict)
    """Config overrides, dotted key -> value, applied like `--set`."""
    error: str | None = None
    """Why this entry cannot run; it then fails with this reason and the others proceed."""

    def spec(self) -> dict[str, Any]:
        """The fields that define the run (what its folder name is derived from)."""
        return {"prompt": self.prompt, "seed": self.seed, "preset": self.preset, "guidance": self.guidance,
                "steps": self.steps, "set": dict(sorted(self.set.items()))}


def run_name(spec: dict[str, Any]) -> str:
    """Deterministic folder name of an entry: `<prompt-slug>-<8 hex of the spec>`.
    The same entry finds its folder again on a re-run (even when lines moved);
    an edited entry (other seed, steps, overrides) gets a new folder."""
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{slugify(spec.get('prompt') or '', max_len=40)}-{digest}"


# ---------------------------------------------------------------- text files


def parse_text(text: str, name: str) -> list[PromptEntry]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()
        if line:
            entries.append(PromptEntry(prompt=line, source=f"{name}:{number}"))
    return entries


# ---------------------------------------------------------------- YAML files


def _check_fields(data: dict, allowed: tuple[str, ...]) -> dict[str, Any]:
    """Typed values of an entry's (or the defaults') fields; raises ValueError naming the problem."""
    unknown = [str(k) for k in data if k not in allowed]
    if unknown:
        raise ValueError(f"unknown key '{unknown[0]}'; allowed: {', '.join(allowed)}")
    out: dict[str, Any] = {}
    for key in ("seed", "steps"):
        if data.get(key) is not None:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"'{key}' must be an integer, got {value!r}")
            if key == "steps" and value <= 0:
                raise ValueError(f"'steps' must be positive, got {value}")
            out[key] = value
    for key in ("preset", "guidance"):
        if data.get(key) is not None:
            if not isinstance(data[key], str) or not data[key].strip():
                raise ValueError(f"'{key}' must be a name, got {data[key]!r}")
            out[key] = data[key].strip()
    if data.get("set") is not None:
        overrides = data["set"]
        if not isinstance(overrides, dict):
            raise ValueError(f"'set' must be a mapping of dotted keys to values, got {overrides!r}")
        bad = [k for k in overrides if not isinstance(k, str) or not k.strip()]
        if bad:
            raise ValueError(f"'set' has a key that is not a dotted name: {bad[0]!r}")
        out["set"] = {k.strip(): v for k, v in overrides.items()}
    return out


def _entry(raw: Any, defaults: dict[str, Any], source: str) -> PromptEntry:
    if isinstance(raw, str):
        raw = {"prompt": raw}
    if not isinstance(raw, dict):
        return PromptEntry(prompt="", source=source, error=f"an entry must be a prompt or a mapping, got {raw!r}")
    prompt = raw.get("prompt")
    entry = PromptEntry(prompt=prompt.strip() if isinstance(prompt, str) else "", source=source)
    try:
        fields = _check_fields(raw, ENTRY_KEYS)
    except ValueError as e:
        entry.error = str(e)
        return entry
    if prompt is not None and not isinstance(prompt, str):
        entry.error = f"'prompt' must be text, got {prompt!r}"
        return entry
    if not entry.prompt:
        entry.error = "the prompt is empty"
        return entry
    merged = {**defaults, **fields, "set": {**defaults.get("set", {}), **fields.get("set", {})}}
    for key in DEFAULT_KEYS:
        setattr(entry, key, merged.get(key, {} if key == "set" else None))
    return entry


def _line_numbers(text: str, key: str | None) -> list[int]:
    """1-based line of each item of the entry list (the top-level list or `key`'s)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    if key is not None and isinstance(node, yaml.MappingNode):
        node = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in node.value]


def parse_yaml(text: str, name: str) -> list[PromptEntry]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    defaults: dict[str, Any] = {}
    key = None
    if data is None:
        items: list = []
    elif isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        unknown = [str(k) for k in data if k not in ("defaults", "prompts")]
        if unknown:
            raise UserError(f"{name}: unknown top-level key '{unknown[0]}'; a prompt file has 'defaults' and 'prompts'")
        items, key = data.get("prompts") or [], "prompts"
        if not isinstance(items, list):
            raise UserError(f"{name}: 'prompts' must be a list of entries")
        raw_defaults = data.get("defaults") or {}
        if not isinstance(raw_defaults, dict):
            raise UserError(f"{name}: 'defaults' must be a mapping")
        try:
            defaults = _check_fields(raw_defaults, DEFAULT_KEYS)
        except ValueError as e:
            raise UserError(f"{name}: defaults: {e}") from None
    else:
        raise UserError(f"{name}: a prompt file is a list of entries, or a mapping with 'defaults' and 'prompts'")
    lines = _line_numbers(text, key)
    return [_entry(raw, defaults, f"{name}:{lines[i] if i < len(lines) else i + 1}") for i, raw in enumerate(items)]


# ---------------------------------------------------------------- files


def read_prompt_file(path: Path) -> list[PromptEntry]:
    """The entries of one prompt file (.txt, .yaml or .yml)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the prompt file {path}: {e}") from None
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return parse_yaml(text, str(path))
    if suffix == ".txt":
        return parse_text(text, str(path))
    raise UserError(f"{path}: a prompt file ends in .txt, .yaml or .yml")


def read_prompt_files(paths: list[Path]) -> list[PromptEntry]:
    if not paths:
        raise UserError("give at least one prompt file")
    return [entry for p in paths for entry in read_prompt_file(p)]
