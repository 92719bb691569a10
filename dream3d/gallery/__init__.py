"""`dream3d gallery DIR`: a static page (and a contact-sheet PNG) of every run under a folder."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from dream3d.atomic import atomic_paths, write_text_atomic
from dream3d.errors import UserError
from dream3d.gallery.collect import RunCard, collect
from dream3d.gallery.page import render_page
from dream3d.gallery.sheet import write_contact_sheet
from dream3d.gallery.splats import find_splat_viewer

VIEWER_FILE = "model-viewer.min.js"
# Where the project's set-up (`npm ci --prefix tools/node`) puts Google's <model-viewer>.
REPO_VIEWER = Path(__file__).resolve().parents[2] / "tools" / "node" / "node_modules" / "@google" / "model-viewer" / \
    "dist" / VIEWER_FILE

__all__ = ["RunCard", "collect", "find_model_viewer", "find_splat_viewer", "write_gallery"]


def find_model_viewer() -> Path | None:
    """The self-contained model-viewer build: $DREAM3D_MODEL_VIEWER, else the repository's npm install."""
    env = os.environ.get("DREAM3D_MODEL_VIEWER")
    for candidate in ([Path(env)] if env else []) + [REPO_VIEWER]:
        if candidate.is_file():
            return candidate
    return None


def _copy(src: Path, dst: Path) -> None:
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.stat().st_mtime >= src.stat().st_mtime:
        return
    with atomic_paths([dst]) as (tmp,):
        tmp.write_bytes(src.read_bytes())


def printable(text: str) -> str:
    """One terminal line: control characters (newlines, escape sequences) shown as escapes."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _warner(console):
    """Where the gallery's warnings go: one line each on `console` (markup in them shown as text)."""
    if console is None:
        return lambda message: warnings.warn(printable(message), stacklevel=2)
    from rich.markup import escape

    return lambda message: console.print(f"[yellow]warning[/]: {escape(printable(message))}", highlight=False,
                                         soft_wrap=True)


def write_gallery(folder: Path, contact_sheet: bool = True, console=None) -> dict[str, Path]:
    """Write `index.html` (and `contact-sheet.png`) into `folder`; returns what was written.
    Runs that cannot be read are left out with a warning line each (on `console`, else `warnings`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    warn = _warner(console)
    cards = collect(folder, warn)
    if not cards:
        raise UserError(f"no runs under {folder} (a run folder has a run.json; a batch folder a batch.json)")
    try:
        return _write_files(folder, cards, contact_sheet, console, warn)
    except OSError as e:  # the folder is not writable, the disk is full, ...
        raise UserError(f"cannot write the gallery into {folder}: {e.strerror or e}") from None


def _write_files(folder: Path, cards: list[RunCard], contact_sheet: bool, console, warn) -> dict[str, Path]:
    files: dict[str, Path] = {}
    viewer = find_model_viewer()
    if viewer is not None:
        _copy(viewer, folder / VIEWER_FILE)  # next to the page: no CDN, works offline
        files["model-viewer"] = folder / VIEWER_FILE
    elif console is not None:
        console.print("[yellow]warning[/]: <model-viewer> not found (npm ci --prefix tools/node, or set "
                      "DREAM3D_MODEL_VIEWER); the page links the meshes instead of showing them", soft_wrap=True)
    splat_files = find_splat_viewer() if any(c.splats is not None for c in cards) else None
    for name, src in (splat_files or {}).items():  # the splat viewer and the three.js it imports
        _copy(src, folder / name)
    if splat_files is not None:
        files["splat viewer"] = folder / next(iter(splat_files))
    if splat_files is None and console is not None and any(c.splats is not None for c in cards):
        console.print("[yellow]warning[/]: the Gaussian splat viewer was not found (npm ci --prefix tools/node, or "
                      "set DREAM3D_NODE_MODULES); the page links gaussians.ply instead of showing it", soft_wrap=True)
    page = render_page(cards, folder, f"dream3d: {folder.resolve().name}", VIEWER_FILE if viewer else None,
                       splat_viewer=splat_files is not None)
    files["page"] = write_text_atomic(folder / "index.html", page)
    if contact_sheet:
        files["contact sheet"] = write_contact_sheet(cards, folder / "contact-sheet.png", warn)
    return files
