"""The embedded prior's vocabulary and prompt normalisation.

The embedded prior knows prompts of the form "a {colour} {object}" with an
optional view suffix (", front view"). Which colours and objects is its world
(`dream3d.priors.worlds`); every function here takes one and defaults to
tiny-shapes, the shipped prior's. Prompts are normalised before they reach
the tokenizer: Unicode NFKC with accents folded ("ａ ｒëｄ" -> "a red"), lower case,
single spaces, "an" -> "a", a comma glued to the word before it; a word in another
script is one unknown word, named as such. Words outside the vocabulary are an error unless the caller allows
them, in which case they are dropped and reported.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from dream3d.errors import UserError
from dream3d.priors.worlds import TINY_SHAPES, WORLDS, World
from dream3d.text import fold_accents

COLOURS = TINY_SHAPES.colours
"""Colour words of tiny-shapes, in label order (other worlds: `World.colours`)."""
OBJECTS = TINY_SHAPES.objects
"""Object words of tiny-shapes, in label order (other worlds: `World.objects`)."""
FRONTED_OBJECTS = TINY_SHAPES.fronted_objects
"""Fronted objects of tiny-shapes."""
VIEWS = ("front", "side", "back", "overhead")
"""View words of the optional suffix ", {view} view" (the same in every world)."""
FUNCTION_WORDS = ("a", "view", ",")
"""Words that carry no content but appear in every well-formed prompt."""

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
MAX_TOKENS = 10
"""Token sequence length (BOS + up to 8 words + EOS, padded)."""


def vocabulary(world: World = TINY_SHAPES) -> list[str]:
    """Every token of the world's prior, specials first; the index is the token id. A world that
    extends another starts with the other's vocabulary and appends its new words."""
    if world.extends is None:
        return [*SPECIAL_TOKENS, *FUNCTION_WORDS, *world.colours, *world.objects, *VIEWS]
    base = vocabulary(WORLDS[world.extends])
    known = set(base)
    return base + [w for w in (*world.colours, *world.objects) if w not in known]


def prior_meta(world: World) -> dict:
    """The prior.json fields naming a prior's world and storing its words (`worlds.world_of_meta` reads them)."""
    return {"world": world.name, "vocab": {"colours": list(world.colours), "objects": list(world.objects),
                                           "views": list(VIEWS), "fronted_objects": list(world.fronted_objects)}}


def words(text: str) -> list[str]:
    """Lower-cased words of `text` (NFKC, accents folded), commas as their own word, "an" read
    as "a". A word is a run of letters or digits of any script (with ' and -); anything else
    (spaces, punctuation, symbols, emoji) separates words."""
    text = fold_accents(unicodedata.normalize("NFKC", text)).lower()
    out = re.findall(r"(?:[^\W_]|['\-])+|,", text)
    return ["a" if w == "an" else w for w in out]


def normalize_prompt(text: str) -> str:
    """'  An  Orange CUBE ,front view' -> 'a orange cube, front view' (the tokenizer's form)."""
    return " ".join(words(text)).replace(" ,", ",")


def unknown_words(text: str, world: World = TINY_SHAPES) -> list[str]:
    """The words of `text` outside the world's vocabulary, each once, in order."""
    known = set(vocabulary(world))
    return list(dict.fromkeys(w for w in words(text) if w not in known))


def quoted_words(ws: list[str], limit: int = 40) -> str:
    """'panda', 'on' and 3 more: as many quoted words as fit in about `limit` characters."""
    shown: list[str] = []
    for w in ws:
        q = repr(w if len(w) <= 14 else w[:13] + "…")
        if shown and sum(len(s) + 2 for s in shown) + len(q) > limit:
            break
        shown.append(q)
    rest = len(ws) - len(shown)
    return ", ".join(shown) + (f" and {rest} more" if rest else "")


def check_prompt(text: str, allow_unknown: bool = False, world: World = TINY_SHAPES) -> list[str]:
    """Return the words the embedded prior ignores (each once). Raise a one-line UserError listing
    the world's vocabulary (about 300 characters for tiny-shapes, longer for larger worlds) if there
    are any and `allow_unknown` is false, and in any case when no colour or object word is left."""
    unknown = unknown_words(text, world)
    if unknown and not allow_unknown:
        raise UserError(
            f"the embedded prior does not know {quoted_words(unknown)}; it knows {' '.join(world.colours)}, "
            f"{' '.join(world.objects)}, {'/'.join(VIEWS)} view; else use --model or --allow-unknown-words"
        )
    ws = words(text)
    if not any(w in world.colours or w in world.objects for w in ws):
        raise UserError(f"the embedded prior finds no colour or object it knows in {_brief(text)} (e.g. "
                        f"\"a red cube\"); for other prompts pass --model with a real checkpoint")
    return unknown


def _brief(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def clean_prompt(text: str, world: World = TINY_SHAPES) -> str:
    """The normalised prompt with words outside the world dropped (what the embedded prior reads)."""
    known = set(vocabulary(world))
    return " ".join(w for w in words(text) if w in known).replace(" ,", ",")


def without_view(text: str, world: World = TINY_SHAPES) -> str:
    """The cleaned prompt without its view suffix: 'a red chair, back view' -> 'a red chair'."""
    return re.sub(r",? *\b(?:%s) view\b" % "|".join(VIEWS), "", clean_prompt(text, world)).strip()


def caption(colour: str, obj: str, view: str | None = None) -> str:
    """'an orange chair, back view' (English article; normalisation reads it as 'a')."""
    article = "an" if colour[0] in "aeiou" else "a"
    text = f"{article} {colour} {obj}"
    return f"{text}, {view} view" if view else text


@dataclass
class ParsedPrompt:
    colour: str | None
    object: str | None
    view: str | None


def parse_prompt(text: str, world: World = TINY_SHAPES) -> ParsedPrompt:
    """The colour, object and view words of the world a prompt names (None where absent)."""
    ws = words(text)
    pick = lambda group: next((w for w in ws if w in group), None)  # noqa: E731
    view = next((ws[i] for i in range(len(ws) - 1) if ws[i] in VIEWS and ws[i + 1] == "view"), None)
    return ParsedPrompt(pick(world.colours), pick(world.objects), view)


def build_tokenizer(world: World = TINY_SHAPES):
    """A word-level `PreTrainedTokenizerFast` over `vocabulary(world)` that adds BOS/EOS and pads
    to MAX_TOKENS; saved and loaded with the standard tokenizer files."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(world))}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()  # "an" -> "a" happens in normalize_prompt
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=MAX_TOKENS, padding_side="right",
    )
