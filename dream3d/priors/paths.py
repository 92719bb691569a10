"""Where the embedded priors live: `assets/priors/<name>/` in the source tree."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_EMBEDDED = "tiny-shapes"
"""The embedded prior `--model embedded` (and DREAM3D_PRIOR_DIR) stands for."""
EMBEDDED_PRIORS = ("tiny-shapes", "toy-world")
"""Names of the embedded priors, each a folder in assets/priors/."""
EMBEDDED_NAMES = (*EMBEDDED_PRIORS, "embedded")


def embedded_prior_dir(name: str = "embedded") -> Path:
    """assets/priors/<name> in the source tree; the default one ("embedded") is DREAM3D_PRIOR_DIR when set."""
    if name not in EMBEDDED_NAMES:
        raise ValueError(f"no embedded prior is named {name!r}; the names are {', '.join(EMBEDDED_NAMES)}")
    env = os.environ.get("DREAM3D_PRIOR_DIR")
    if env and name in ("embedded", DEFAULT_EMBEDDED):
        return Path(env)
    folder = DEFAULT_EMBEDDED if name == "embedded" else name
    return Path(__file__).resolve().parents[2] / "assets" / "priors" / folder
