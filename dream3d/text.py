"""Unicode normalisation of the texts a user hands us (prompts, negative prompts).

`normalize_text` runs once, where a config is built, so every reader of the prompt
(the prior, the run folder's name, run.json) sees the same text: NFKC (full-width
letters, ligatures and other compatibility forms become their plain letters),
control and invisible format characters removed, whitespace runs made one space.
Accents are kept for real text encoders; `fold_accents` ("rëd" -> "red") is for
readers that know ASCII words only (the embedded prior's vocabulary, folder names).
"""
from __future__ import annotations

import re
import unicodedata


def normalize_text(text: str) -> str:
    """NFKC, without control or format characters, whitespace collapsed and stripped."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(" " if ch.isspace() else ch for ch in text
                   if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    return re.sub(r" +", " ", text).strip()


def fold_accents(text: str) -> str:
    """'a rëd crème' -> 'a red creme': NFKD with the combining marks dropped, then NFC."""
    decomposed = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize("NFC", "".join(ch for ch in decomposed if not unicodedata.combining(ch)))


def has_letters(text: str) -> bool:
    """Whether `text` holds a letter or a digit of any script (not only punctuation, symbols, emoji)."""
    return any(ch.isalnum() for ch in text)


def short_repr(text: str, limit: int = 40) -> str:
    """repr(text), cut to about `limit` characters for a one-line message."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."
