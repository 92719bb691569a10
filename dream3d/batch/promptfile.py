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
on that entry as its `error` (one line), so the rest of the file still runs; a
file that cannot be read or parsed at all is a `UserError`.

Every line of a text file, every item of a YAML list, is its own entry, named by
its file, its settings and which occurrence of those settings in that file it is
(`entry_key`): a re-run finds each entry again even when lines moved or others
were added, an edited entry is a new one, and a line written twice is two
entries. A malformed entry's settings hold its error, so it never shares a name
with a valid entry of the same prompt.
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
    """Why this entry cannot run (one line); it then fails with this reason and the others proceed."""
    file: str = ""
    """The prompt file's resolved path (part of the entry's identity); `source`'s file part when empty."""
    line: int = 0
    """1-based line of the entry in its file."""

    def __post_init__(self) -> None:
        if not self.file:
            self.file = self.source.rsplit(":", 1)[0]
        if self.error is not None:
            self.error = one_line(self.error)

    def spec(self) -> dict[str, Any]:
        """The fields that define the run (what its identity and folder name are made from).
        A malformed entry's are its prompt and its error: never those of a valid entry."""
        if self.error is not None:
            return {"prompt": self.prompt, "error": self.error}
        return {"prompt": self.prompt, "seed": self.seed, "preset": self.preset, "guidance": self.guidance,
                "steps": self.steps, "set": dict(sorted(self.set.items()))}


def one_line(text: str, limit: int = 300) -> str:
    """A message as one line of at most `limit` characters (whitespace runs become one space)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def canonical(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, default=str, ensure_ascii=False)


def entry_key(file: str, occurrence: int, spec: dict[str, Any]) -> str:
    """The identity of an entry across invocations: its file, its settings, and which
    occurrence of those settings in that file it is (0 for the first)."""
    return hashlib.sha1(json.dumps([file, occurrence, canonical(spec)]).encode()).hexdigest()


def entry_id(spec: dict[str, Any], key: str, digits: int = 8) -> str:
    """Folder name of an entry: `<prompt-slug>-<hex digits of its key>` (the store
    takes more digits in the rare case two keys share the first eight)."""
    return f"{slugify(spec.get('prompt') or '', max_len=40)}-{key[:digits]}"


# ---------------------------------------------------------------- text files


def parse_text(text: str, name: str, file: str | None = None) -> list[PromptEntry]:
    """`name` is how messages show the file, `file` its identity (default: `name`)."""
    entries = []
    # Lines as editors count them: split on newlines only (splitlines also splits on
    # form feeds, vertical tabs and U+2028, which would shift every later line number).
    for number, line in enumerate(text.split("\n"), start=1):
        line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()
        if line:
            entries.append(PromptEntry(prompt=line, source=f"{name}:{number}", file=file or name, line=number))
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


def _entry(raw: Any, defaults: dict[str, Any], source: str, file: str, line: int) -> PromptEntry:
    if isinstance(raw, str):
        raw = {"prompt": raw}
    if not isinstance(raw, dict):
        return PromptEntry(prompt="", source=source, file=file, line=line,
                           error=f"an entry must be a prompt or a mapping, got {raw!r}")
    prompt = raw.get("prompt")
    entry = PromptEntry(prompt=prompt.strip() if isinstance(prompt, str) else "", source=source, file=file, line=line)
    try:
        fields = _check_fields(raw, ENTRY_KEYS)
    except ValueError as e:
        entry.error = one_line(str(e))
        return entry
    if prompt is not None and not isinstance(prompt, str):
        entry.error = one_line(f"'prompt' must be text, got {prompt!r}")
        return entry
    if not entry.prompt:
        entry.error = "the prompt is empty"
        return entry
    merged = {**defaults, **fields, "set": {**defaults.get("set", {}), **fields.get("set", {})}}
    for key in DEFAULT_KEYS:
        setattr(entry, key, merged.get(key, {} if key == "set" else None))
    return entry


# libyaml's safe loader when PyYAML was built with it (5x faster on a 10,000-entry file); both
# build plain data only, no tag is ever executed.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load(text: str, name: str) -> tuple[Any, Any]:
    """The data and the node tree of a YAML text, parsed once."""
    loader = SAFE_LOADER(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        raise UserError(one_line(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})")) from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a timestamp no calendar has
        raise UserError(one_line(f"{name}: not valid YAML ({e})")) from None
    finally:
        loader.dispose()


def _line_numbers(node: Any, key: str | None) -> list[int]:
    """1-based line of each item of the entry list (the top-level list or `key`'s)."""
    if key is not None and isinstance(node, yaml.MappingNode):
        node = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in node.value]


def parse_yaml(text: str, name: str, file: str | None = None) -> list[PromptEntry]:
    """`name` is how messages show the file, `file` its identity (default: `name`)."""
    data, node = _load(text, name)
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
            raise UserError(one_line(f"{name}: defaults: {e}")) from None
    else:
        raise UserError(f"{name}: a prompt file is a list of entries, or a mapping with 'defaults' and 'prompts'")
    lines = _line_numbers(node, key)
    entries = []
    for i, raw in enumerate(items):
        line = lines[i] if i < len(lines) else i + 1
        entries.append(_entry(raw, defaults, f"{name}:{line}", file or name, line))
    return entries


# ---------------------------------------------------------------- files


def read_prompt_file(path: Path) -> list[PromptEntry]:
    """The entries of one prompt file (.txt, .yaml or .yml)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first prompt
    except FileNotFoundError:
        raise UserError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the prompt file {path}: {e}") from None
    suffix = path.suffix.lower()
    file = str(path.resolve())  # the entry's identity: the same file from another working folder
    if suffix in (".yaml", ".yml"):
        return parse_yaml(text, str(path), file)
    if suffix == ".txt":
        return parse_text(text, str(path), file)
    raise UserError(f"{path}: a prompt file ends in .txt, .yaml or .yml")


def read_prompt_files(paths: list[Path]) -> list[PromptEntry]:
    if not paths:
        raise UserError("give at least one prompt file")
    seen: dict[Path, Path] = {}
    for p in map(Path, paths):
        if p.resolve() in seen:
            raise UserError(f"{p} is given twice (as {seen[p.resolve()]}); each prompt file once")
        seen[p.resolve()] = p
    return [entry for p in paths for entry in read_prompt_file(p)]
