"""What the gallery shows of each run, read from the run folders (and batch.json when there is one)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PREVIEW = re.compile(r"^(?P<stage>.+)-step-(?P<step>\d+)\.png$")


@dataclass
class RunCard:
    """One run (or one batch entry that has no run yet) on the gallery page."""

    name: str
    """The run folder's name (or the entry id)."""
    prompt: str
    state: str
    """done, failed, running, queued, interrupted, ... (batch state or run.json status)."""
    folder: Path | None = None
    """The run folder, or None for a batch entry that never started (e.g. a bad line)."""
    settings: dict[str, str] = field(default_factory=dict)
    """Label -> value: preset, stages, guidance, steps, seed, model."""
    error: str | None = None
    source: str | None = None
    """`file:line` of a batch entry."""
    seconds: float | None = None
    eval: dict[str, Any] = field(default_factory=dict)
    glb: Path | None = None
    mp4: Path | None = None
    gif: Path | None = None
    preview: Path | None = None
    """The latest preview grid (last stage, highest step)."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def latest_preview(run_dir: Path, stage_names: list[str]) -> Path | None:
    """The preview of the last stage at its highest step (stages in config order)."""
    best, best_key = None, None
    for path in (run_dir / "previews").glob("*.png"):
        m = PREVIEW.match(path.name)
        if not m:
            continue
        stage = m["stage"]
        key = (stage_names.index(stage) if stage in stage_names else -1, int(m["step"]))
        if best_key is None or key > best_key:
            best, best_key = path, key
    return best


def settings_of(config: dict, spec: dict | None) -> dict[str, str]:
    stages = config.get("stages") or []
    out: dict[str, str] = {}
    if spec and spec.get("preset"):
        out["preset"] = spec["preset"]
    if stages:
        out["stages"] = " -> ".join(f"{s['name']} ({s['representation']['name']})" for s in stages)
        guidances = []
        for s in stages:
            g = s["guidance"]
            scale = g.get("guidance_scale")
            guidances.append(g["name"] + (f" x{scale:g}" if isinstance(scale, (int, float)) else ""))
        out["guidance"] = ", ".join(dict.fromkeys(guidances))
        out["steps"] = " + ".join(str(s["train"]["steps"]) for s in stages)
        out["resolution"] = ", ".join(dict.fromkeys(str(s["train"]["resolution"]) for s in stages))
    if "seed" in config:
        out["seed"] = str(config["seed"])
    if config.get("model"):
        model = str(config["model"])  # a local folder by its name; a Hugging Face id as it is
        out["model"] = Path(model).name if Path(model).is_absolute() else model
    return out


def read_run(run_dir: Path, record: dict | None = None) -> RunCard:
    """A card from a run folder; `record` is the run's batch.json entry, when it has one."""
    info = _read_json(run_dir / "run.json")
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    record = record or {}
    stage_names = [s.get("name") for s in config.get("stages") or []]
    timings = info.get("timings") or {}
    card = RunCard(
        name=run_dir.name, prompt=info.get("prompt") or config.get("prompt") or record.get("prompt", ""),
        state=record.get("state") or info.get("status", "unknown"), folder=run_dir,
        settings=settings_of(config, record.get("spec")), error=record.get("error") or info.get("error"),
        source=record.get("source"),
        seconds=record.get("seconds") or (round(sum(timings.values()), 1) if timings else None),
    )
    scores = _read_json(run_dir / "eval.json")
    card.eval = {k: scores[k] for k in ("object_accuracy", "colour_accuracy", "r_precision", "view_accuracy",
                                        "janus_rate") if scores.get(k) is not None}
    for attr, name in (("glb", "mesh.glb"), ("mp4", "turntable.mp4"), ("gif", "turntable.gif")):
        if (run_dir / name).is_file():
            setattr(card, attr, run_dir / name)
    card.preview = latest_preview(run_dir, stage_names)
    return card


def find_run_folders(root: Path) -> list[Path]:
    """Folders under `root` (or `root` itself) holding a run.json, skipping hidden folders and checkpoints."""
    found = []
    for path in sorted(root.rglob("run.json")):
        rel = path.parent.relative_to(root).parts
        if any(p.startswith(".") or p == "ckpt" for p in rel):
            continue
        found.append(path.parent)
    return found


def collect(root: Path) -> list[RunCard]:
    """Batch entries in manifest order (including those without a run), then any other runs."""
    root = Path(root)
    manifest = _read_json(root / "batch.json")
    cards, seen = [], set()
    for rec in manifest.get("entries", []):
        run_dir = root / (rec.get("run_dir") or rec["id"])
        if (run_dir / "run.json").is_file():
            cards.append(read_run(run_dir, rec))
            seen.add(run_dir.resolve())
        else:
            preset = (rec.get("spec") or {}).get("preset")
            cards.append(RunCard(name=rec["id"], prompt=rec.get("prompt", ""), state=rec.get("state", "queued"),
                                 error=rec.get("error"), source=rec.get("source"),
                                 settings={"preset": preset} if preset else {}))
    for run_dir in find_run_folders(root):
        if run_dir.resolve() not in seen:
            cards.append(read_run(run_dir))
    return cards
