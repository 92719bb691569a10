"""What the gallery shows of each run, read from the run folders (and batch.json when there is one).

Run folders come from shared disks and other machines, so every file is read defensively:
a run whose run.json or config.yaml is unreadable or of the wrong shape is left out with
one warning line naming the file and what is wrong (an unreadable eval.json only drops
the run's scores); a broken batch.json falls back to the run folders found on disk.
Every text a card carries is a `str` (valid Unicode), every number a finite one, every
path inside the gallery folder; page.py escapes them all.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dream3d.errors import UserError
from dream3d.run import describe, read_config_data, read_json_record

PREVIEW = re.compile(r"^(?P<stage>.+)-step-(?P<step>[0-9]{1,12})\.png$")
SCORE_KEYS = ("object_accuracy", "colour_accuracy", "r_precision", "view_accuracy", "janus_rate")

Warn = Callable[[str], None]


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
    splats: Path | None = None
    """gaussians.ply, for a run with a Gaussian stage."""
    preview: Path | None = None
    """The latest preview grid (last stage, highest step)."""
    reference: dict[str, float] = field(default_factory=dict)
    """An image-to-3D run's fit at the reference view: psnr_db, l1 (run.json's reference_view)."""
    reference_image: Path | None = None
    """The input photo's copy in the run folder (`generate --image`)."""


def clean_text(text: str) -> str:
    """`text` as valid Unicode: lone surrogates (from JSON escapes or undecodable file names) become U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _number(value: Any) -> float | None:
    """A finite real number from a file, else None (bools, strings, NaN, infinities and huge ints)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _scalar_text(value: Any) -> str | None:
    """A string, number or bool from a file as text; None for anything else (lists, mappings, null)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool) or _number(value) is not None:  # not a 10,000-digit integer
        return str(value)
    return None


class _Fields:
    """Typed access to a JSON object read from `where` (a file, or an entry of one): a present,
    non-null value of the wrong type is a UserError naming the place and the key."""

    def __init__(self, data: dict, where: str):
        self.data, self.where = data, where

    def _bad(self, key: str, what: str) -> UserError:
        return UserError(f"{self.where}: '{key}' must be {what}, got {describe(self.data[key])}")

    def text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return clean_text(value)

    def number(self, key: str) -> float | None:
        if self.data.get(key) is None:
            return None
        value = _number(self.data[key])
        if value is None:
            raise self._bad(key, "a finite number")
        return value

    def mapping(self, key: str) -> dict:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._bad(key, "a mapping")
        return value


def _default_warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def latest_preview(run_dir: Path, stage_names: list[str]) -> Path | None:
    """The preview of the last stage at its highest step (stages in config order)."""
    best, best_key = None, None
    for path in (run_dir / "previews").glob("*.png"):
        m = PREVIEW.match(path.name)
        if not m or not path.is_file():
            continue
        stage = m["stage"]
        key = (stage_names.index(stage) if stage in stage_names else -1, int(m["step"]))
        if best_key is None or key > best_key:
            best, best_key = path, key
    return best


def _name_of(section: Any) -> str | None:
    return _scalar_text(section.get("name")) if isinstance(section, dict) else None


def settings_of(config: dict, spec: dict | None) -> dict[str, str]:
    """Label -> text of a run's settings; `config` has `read_config_data`'s shape, but any field
    may be missing or of any type (an older or edited config): what cannot be shown is left out."""
    stages = [s or {} for s in config.get("stages") or []]
    out: dict[str, str] = {}
    preset = (spec or {}).get("preset") if isinstance(spec, dict) else None
    if isinstance(preset, str) and preset:
        out["preset"] = clean_text(preset)
    if stages:
        parts = []
        for s in stages:
            name, rep = _scalar_text(s.get("name")) or "?", _name_of(s.get("representation"))
            parts.append(f"{name} ({rep})" if rep else name)
        out["stages"] = " -> ".join(parts)
        guidances = []
        for s in stages:
            g = s.get("guidance") or {}
            scale = _number(g.get("guidance_scale"))
            guidances.append((_name_of(g) or "?") + (f" x{scale:g}" if scale is not None else ""))
        out["guidance"] = ", ".join(dict.fromkeys(guidances))
        trains = [s.get("train") if isinstance(s.get("train"), dict) else {} for s in stages]
        steps = [_scalar_text(t.get("steps")) for t in trains]
        if all(steps):
            out["steps"] = " + ".join(steps)
        resolutions = [_scalar_text(t.get("resolution")) for t in trains]
        if all(resolutions):
            out["resolution"] = ", ".join(dict.fromkeys(resolutions))
    seed = _scalar_text(config.get("seed"))
    if seed is not None:
        out["seed"] = seed
    model = _scalar_text(config.get("model"))
    if model:  # a local folder by its name; a Hugging Face id as it is
        out["model"] = Path(model).name if Path(model).is_absolute() else model
    return out


def read_run(run_dir: Path, record: dict | None = None, warn: Warn | None = None) -> RunCard:
    """A card from a run folder; `record` is the run's batch.json entry, when it has one (already checked
    by `_entry_fields`). A run.json or config.yaml that cannot be shown is a UserError naming the file;
    an unreadable eval.json only drops the scores (a warning through `warn`)."""
    warn = warn or _default_warn
    info = _Fields(read_json_record(run_dir / "run.json"), str(run_dir / "run.json"))
    config = read_config_data(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else {}
    record = record or {}
    stage_names = [_scalar_text(s.get("name")) for s in config.get("stages") or [] if s]
    timings = info.mapping("timings")
    seconds = [_number(v) for v in timings.values()]
    if None in seconds:
        bad = next(v for v in timings.values() if _number(v) is None)
        raise UserError(f"{run_dir / 'run.json'}: 'timings' must map names to seconds, got {describe(bad)}")
    prompt = info.text("prompt")
    config_prompt = config.get("prompt") if isinstance(config.get("prompt"), str) else None
    card = RunCard(
        name=clean_text(run_dir.name), prompt=prompt or clean_text(config_prompt or "") or record.get("prompt") or "",
        state=record.get("state") or info.text("status") or "unknown", folder=run_dir,
        settings=settings_of(config, record.get("spec")), error=record.get("error") or info.text("error"),
        source=record.get("source"),
        seconds=record.get("seconds") or (round(sum(seconds), 1) if seconds else None),
    )
    try:
        scores = _Fields(read_json_record(run_dir / "eval.json"), str(run_dir / "eval.json")) \
            if (run_dir / "eval.json").exists() else None
        card.eval = {k: v for k in SCORE_KEYS if (v := scores.number(k)) is not None} if scores else {}
    except UserError as e:
        warn(f"left out the scores of a run: {e}")
    for attr, name in (("glb", "mesh.glb"), ("mp4", "turntable.mp4"), ("gif", "turntable.gif"),
                       ("splats", "gaussians.ply")):
        if (run_dir / name).is_file():
            setattr(card, attr, run_dir / name)
    card.preview = latest_preview(run_dir, stage_names)
    view = info.mapping("reference_view")
    card.reference = {k: v for k in ("psnr_db", "l1") if (v := _number(view.get(k))) is not None}
    photo = config.get("image", {}).get("path") if isinstance(config.get("image"), dict) else None
    if isinstance(photo, str) and photo and not Path(photo).is_absolute() and (run_dir / photo).is_file():
        card.reference_image = run_dir / photo
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


def _entry_fields(rec: Any, where: str) -> dict:
    """A batch.json entry with the types the gallery shows (UserError naming the entry otherwise)."""
    if not isinstance(rec, dict):
        raise UserError(f"{where} must be a JSON object, got {describe(rec)}")
    f = _Fields(rec, where)
    entry_id = f.text("id")
    if not entry_id:
        raise UserError(f"{where} has no 'id'")
    spec = f.mapping("spec")
    if spec.get("preset") is not None and not isinstance(spec["preset"], str):
        raise UserError(f"{where}: 'spec.preset' must be a string, got {describe(spec['preset'])}")
    return {"id": entry_id, "prompt": f.text("prompt"), "state": f.text("state"), "error": f.text("error"),
            "source": f.text("source"), "seconds": f.number("seconds"), "run_dir": f.text("run_dir"), "spec": spec}


def _inside(path: Path, root: Path) -> bool:
    resolved, top = path.resolve(), root.resolve()
    return resolved == top or resolved.is_relative_to(top)


def read_batch_entries(root: Path, warn: Warn) -> list[Any]:
    """The raw entries of the batch state in `root`, in manifest order ([] without a batch)."""
    from dream3d.batch.store import DB_NAME, read_db

    if (root / DB_NAME).is_file():  # the state itself; batch.json is its export, written at the end
        try:
            return [r.to_dict() for r in read_db(root)]
        except UserError as e:
            warn(f"ignored the batch database: {e}; reading batch.json instead")
    path = root / "batch.json"
    if not path.exists():
        return []
    try:
        entries = read_json_record(path).get("entries", [])
        if not isinstance(entries, list):
            raise UserError(f"{path}: 'entries' must be a list, got {describe(entries)}")
    except UserError as e:
        warn(f"ignored the batch record: {e}; showing the run folders found under {root}")
        return []
    return entries


def collect(root: Path, warn: Warn | None = None) -> list[RunCard]:
    """Batch entries in manifest order (including those without a run), then any other runs.
    What cannot be shown is left out with one line through `warn` (default: `warnings.warn`)."""
    root = Path(root)
    warn = warn or _default_warn
    cards, seen = [], set()
    for i, raw in enumerate(read_batch_entries(root, warn)):
        where = f"{root / 'batch.json'} entry {i + 1}"
        try:
            rec = _entry_fields(raw, where)
            name = rec["run_dir"] or rec["id"]
            run_dir = root / name
            try:
                inside = _inside(run_dir, root)
            except (OSError, ValueError) as e:  # a NUL byte, a symlink loop, ...
                raise UserError(f"{where}: its run folder {describe(name)} is not a usable path ({e})") from None
            if not inside:
                raise UserError(f"{where}: its run folder {describe(name)} is outside {root}")
        except UserError as e:
            warn(f"skipped a batch entry: {e}")
            continue
        if (run_dir / "run.json").is_file():
            seen.add(run_dir.resolve())
            try:
                cards.append(read_run(run_dir, rec, warn))
            except UserError as e:
                warn(f"skipped a run: {e}")
        else:
            preset = rec["spec"].get("preset")
            cards.append(RunCard(name=rec["id"], prompt=rec["prompt"] or "", state=rec["state"] or "queued",
                                 error=rec["error"], source=rec["source"],
                                 settings={"preset": clean_text(preset)} if preset else {}))
    for run_dir in find_run_folders(root):
        if run_dir.resolve() not in seen:
            try:
                cards.append(read_run(run_dir, warn=warn))
            except UserError as e:
                warn(f"skipped a run: {e}")
    return cards
