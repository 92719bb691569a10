"""The run folder: outputs/<prompt-slug>-<YYYYmmdd-HHMMSS>/ and its bookkeeping files."""
from __future__ import annotations

import json
import os
import platform
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from dream3d import __version__
from dream3d.errors import UserError
from dream3d.atomic import DiskFull, free_bytes, is_disk_full, recover_folder, write_text_atomic


def slugify(prompt: str, max_len: int = 48) -> str:
    from dream3d.text import fold_accents  # "a rëd cube" -> a-red-cube, "ａ ｒｅｄ" -> a-red

    slug = re.sub(r"[^a-z0-9]+", "-", fold_accents(prompt).lower()).strip("-")
    return slug[:max_len].rstrip("-") or "run"


def new_run_dir(out_root: Path, prompt: str) -> Path:
    """A fresh folder; never reuses (so never overwrites) an existing one."""
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {out_root}: {e.strerror}") from None
    if not os.access(out_root, os.W_OK):
        raise UserError(f"the output folder {out_root} is not writable")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = out_root / f"{slugify(prompt)}-{stamp}"
    path, n = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        except OSError as e:
            raise UserError(f"cannot create the run folder {path}: {e.strerror}") from None


def versions() -> dict[str, str]:
    import diffusers
    import torch  # here, not at the top: the gallery reads run folders without loading torch

    return {
        "dream3d": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


class RunInfo:
    """run.json: status, timings, versions and seed, rewritten atomically on each update."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.json"
        self.data: dict = read_json_record(self.path) if self.path.is_file() else {}
        if not isinstance(self.data.get("timings", {}), dict):
            raise UserError(f"{self.path}: 'timings' must be a mapping, got {describe(self.data['timings'])}")

    def update(self, **fields) -> None:
        """Merge `fields` into run.json as it is on disk now: another RunInfo of the same run
        (the export's, inside `generate`) may have written fields since this one read it."""
        if self.path.is_file():
            try:
                self.data = {**self.data, **read_json_record(self.path)}
            except UserError:
                pass  # unreadable now: rewrite it from what this process knows
        self.data.update(fields)
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_text_atomic(self.path, json.dumps(self.data, indent=2))


def append_metrics(run_dir: Path, row: dict) -> None:
    line = json.dumps(row) + "\n"
    try:
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(line)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull(run_dir, len(line), free_bytes(run_dir), "writing metrics.jsonl") from None
        raise


def trim_metrics(run_dir: Path, stage: str, step: int) -> int:
    """Drop the rows of `stage` after `step` from metrics.jsonl, and lines a kill cut short,
    so a stage resumed from its checkpoint at `step` logs no step twice. Returns the number of
    lines dropped (the file is rewritten atomically, and only when there is any)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or (row.get("stage") == stage and not _step_at_most(row.get("step"), step)):
            dropped += 1
        else:
            keep.append(line + "\n")
    if dropped:
        write_text_atomic(path, "".join(keep))
    return dropped


def _step_at_most(value: Any, step: int) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value <= step


def tidy_run_folder(run_dir: Path) -> dict[str, list[str]]:
    """Before a run or an export works on a folder: finish the file renames a killed export
    (or checkpoint) left half done and remove the temporary files of killed writers, in the
    run folder, its checkpoint folders and previews/. Returns what was done."""
    done: dict[str, list[str]] = {"finished": [], "removed": []}
    folders = [run_dir, run_dir / "previews"]
    ckpt = run_dir / "ckpt"
    if ckpt.is_dir() and not ckpt.is_symlink():
        folders += sorted(p for p in ckpt.iterdir() if p.is_dir() and not p.is_symlink())
    for folder in folders:
        for key, names in recover_folder(folder).items():
            done[key] += names
    return done


def check_run_dir(path: Path) -> Path:
    """A run folder whose config.yaml is a mapping of sections (what `config.build` can take)."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise UserError(f"{path} is not a dream3d run folder (no config.yaml)")
    read_config_data(path / "config.yaml")
    return path


# ---------------------------------------------------------------- reading files a run folder holds
# Run folders come from shared disks and other machines: whatever is in them, reading one gives
# the data or one UserError line naming the file and what is wrong, never a traceback.

def describe(value: Any, limit: int = 60) -> str:
    """A short, printable, one-line picture of a value from a file, with its type."""
    text = repr(value)
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return f"{text} ({type(value).__name__})"


def read_text_file(path: Path) -> str:
    """A file's text (UTF-8), or one UserError line."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not text (not UTF-8)") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def read_json_record(path: Path) -> dict:
    """A JSON file that must hold an object (run.json, eval.json, batch.json)."""
    text = read_text_file(path)
    try:
        data = json.loads(text)
    except ValueError as e:  # JSONDecodeError; also the too-long integers Python refuses to parse
        raise UserError(f"{path} is not valid JSON ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to read") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object, got {describe(data)}")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} at line {mark.line + 1}" if mark is not None else problem


SECTIONS = ("representation", "guidance", "train")
"""The config sections that are mappings, at the top and in each stage."""


def read_config_data(path: Path) -> dict:
    """A run's config.yaml as plain data, checked to have the shape `config.build` takes: a mapping,
    its sections mappings, `stages` a list of mappings. Field names and values are `config.build`'s to check."""
    text = read_text_file(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({_yaml_problem(e)})") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0][:100]})") from None
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to read") from None
    if not isinstance(data, dict):
        what = "empty" if data is None else f"not a mapping of settings: it holds {describe(data)}"
        raise UserError(f"{path} is {what}")
    stages = data.get("stages")
    if stages is not None and not isinstance(stages, list):
        raise UserError(f"{path}: 'stages' must be a list of stages, got {describe(stages)}")
    places = [("", data)]
    for i, stage in enumerate(stages or []):
        if stage is not None and not isinstance(stage, dict):
            raise UserError(f"{path}: 'stages.{i}' must be a mapping, got {describe(stage)}")
        places.append((f"stages.{i}.", stage or {}))
    for prefix, section in places:
        for key in SECTIONS:
            value = section.get(key)
            if value is not None and not isinstance(value, dict):
                raise UserError(f"{path}: '{prefix}{key}' must be a mapping, got {describe(value)}")
    return data
