"""The demo world's language: caption templates, a parser that reads them back, truth, and swaps.

Captions name objects with noun phrases ("a small red circle") and relate two of them by a spatial
word ("left of", "above"). Because a scene never repeats a colour or a shape, every phrase a caption
generates names exactly one object. The parser turns any caption of this grammar back into phrases and
relations, so truth against a scene is checked by evaluation rather than trusted from the generator,
and hard negatives (`swap_caption`) are verified false.

Word indices count the alphabetic words of a caption, which is what ALBEF's `pre_caption` keeps: the
templates use no hyphens, apostrophes or digits, so index i here is word i of the cleaned caption.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import numpy as np

from extractor.demo.scene import (
    COLOURS,
    OPPOSITE,
    SHAPES,
    Obj,
    Scene,
    clear_relation,
    relation_holds,
)

# Category name -> the nouns captions use for it (first = preferred). All start with a consonant.
SHAPE_NOUNS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus"),
    "hexagon": ("hexagon",),
    "heart": ("heart",),
}
PLURAL_EXCEPTIONS = {"box": "boxes", "cross": "crosses", "plus": "pluses", "rhombus": "rhombuses"}
GENERIC_NOUNS = ("shape", "object")
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
RELATION_WORDS = {
    "left": ("left",),
    "right": ("right",),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
RELATION_PHRASES = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
BACKGROUND_WORDS = {
    "noise": ("noisy", "speckled"),
    "stripes": ("striped",),
    "gradient": ("shaded",),
    "checker": ("checkered",),
    "clutter": ("cluttered", "busy"),
}
NUMBERS = ("zero", "one", "two", "three", "four")
PREFIXES = (
    "",
    "",
    "",
    "a picture of ",
    "an image showing ",
    "a photo of ",
    "an image of ",
    "there is ",
    "this image contains ",
    "we can see ",
    "in this picture there is ",
)


def plural(noun: str) -> str:
    """English plural of a shape noun."""
    return PLURAL_EXCEPTIONS.get(noun, noun + "s")


_WORD_TO = {
    "colour": {c: c for c in COLOURS},
    "size": {w: size for size, words in SIZE_WORDS.items() for w in words},
    "shape": {w: shape for shape, words in SHAPE_NOUNS.items() for w in words},
    "relation": {w: rel for rel, words in RELATION_WORDS.items() for w in words},
    "background": {w: kind for kind, words in BACKGROUND_WORDS.items() for w in words},
}
_WORD_RE = re.compile(r"[a-z]+")


@dataclass
class Phrase:
    """A noun phrase: the attributes it states and the index of the word stating each."""

    size: str | None = None
    colour: str | None = None
    shape: str | None = None  # None for "shape" / "object"
    words: dict[str, int] = field(default_factory=dict)  # role ('size'|'colour'|'shape') -> word index

    def matches(self, obj: Obj) -> bool:
        return all(
            v is None or v == getattr(obj, k)
            for k, v in (("size", self.size), ("colour", self.colour), ("shape", self.shape))
        )


@dataclass
class Parsed:
    """What a caption claims: phrases, relations (phrase i, relation, phrase j), count, background."""

    words: list[str]
    phrases: list[Phrase] = field(default_factory=list)
    relations: list[tuple[int, str, int, int]] = field(default_factory=list)  # (i, rel, j, word index)
    count: int | None = None
    background: str | None = None


def caption_words(caption: str) -> list[tuple[int, int, str]]:
    """(start, end, lower-case word) of every alphabetic word, in order."""
    return [(m.start(), m.end(), m.group()) for m in _WORD_RE.finditer(caption.lower())]


def parse_caption(caption: str) -> Parsed:
    """Read a caption of the demo grammar back into what it claims."""
    words = [w for _, _, w in caption_words(caption)]
    parsed = Parsed(words)
    pending = Phrase()
    relation: tuple[str, int] | None = None
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else ""
        if word in NUMBERS and following.rstrip("s") in GENERIC_NOUNS:
            parsed.count = NUMBERS.index(word)
        elif word in _WORD_TO["background"] and following == "background":
            parsed.background = _WORD_TO["background"][word]
        elif word in _WORD_TO["size"] or word in _WORD_TO["colour"]:
            role = "size" if word in _WORD_TO["size"] else "colour"
            setattr(pending, role, _WORD_TO[role][word])
            pending.words[role] = i
        elif word in _WORD_TO["shape"] or (word in GENERIC_NOUNS and pending.words):
            if word in _WORD_TO["shape"]:
                pending.shape = _WORD_TO["shape"][word]
                pending.words["shape"] = i
            parsed.phrases.append(pending)
            if relation is not None and len(parsed.phrases) >= 2:
                n = len(parsed.phrases)
                parsed.relations.append((n - 2, relation[0], n - 1, relation[1]))
            pending, relation = Phrase(), None
        elif word in _WORD_TO["relation"]:
            relation = (_WORD_TO["relation"][word], i)
    return parsed


def assignments(parsed: Parsed, scene: Scene) -> list[tuple[int, ...]]:
    """Every injective map phrase -> object index under which the caption is true of the scene."""
    if parsed.count is not None and parsed.count != len(scene.objects):
        return []
    if parsed.background is not None and parsed.background != scene.background:
        return []
    found = []
    for chosen in itertools.permutations(range(len(scene.objects)), len(parsed.phrases)):
        objs = [scene.objects[k] for k in chosen]
        if all(p.matches(o) for p, o in zip(parsed.phrases, objs, strict=True)) and all(
            relation_holds(objs[i], objs[j], rel, scene.res) for i, rel, j, _ in parsed.relations
        ):
            found.append(chosen)
    return found


def caption_is_true(caption: str, scene: Scene) -> bool:
    """Whether the scene satisfies everything the caption claims."""
    return bool(assignments(parse_caption(caption), scene))


def ground_caption(caption: str, scene: Scene) -> dict[int, int]:
    """Word index -> index of the object it describes, for size, colour and shape words.

    Empty when the caption is false or its phrases could name more than one object each.
    """
    parsed = parse_caption(caption)
    found = assignments(parsed, scene)
    if len(found) != 1:
        return {}
    return {i: k for phrase, k in zip(parsed.phrases, found[0], strict=True) for i in phrase.words.values()}


def attribute_bindings(caption: str) -> set[tuple[int, int]]:
    """(word index, word index) of every size and colour word with the shape noun of its phrase: the truth
    of `extractor.binding` on the demo. A phrase with a generic noun ("a red shape") names no category,
    so its words bind to nothing."""
    return {
        (i, phrase.words["shape"])
        for phrase in parse_caption(caption).phrases
        if "shape" in phrase.words
        for role, i in phrase.words.items()
        if role != "shape"
    }


# ---------------------------------------------------------------- generation


def _phrase(obj: Obj, rng: np.random.Generator, article: str | None = None) -> str:
    """A noun phrase naming `obj`; colour and shape together in most of them."""
    form = rng.choice(
        ["size colour shape", "colour shape", "shape", "size shape", "colour generic"], p=[0.2, 0.55, 0.1, 0.05, 0.1]
    )
    nouns = SHAPE_NOUNS[obj.shape]
    noun = nouns[0] if len(nouns) == 1 or rng.random() < 0.75 else str(rng.choice(nouns[1:]))
    slot = {
        "size": str(rng.choice(SIZE_WORDS[obj.size])),
        "colour": obj.colour,
        "shape": noun,
        "generic": str(rng.choice(GENERIC_NOUNS)),
    }
    if article is None:
        article = "the" if rng.random() < 0.15 else "a"
    return " ".join([article] + [slot[s] for s in str(form).split()])


def _relation_pair(scene: Scene, rng: np.random.Generator) -> tuple[Obj, str, Obj] | None:
    pairs = [(a, b) for a, b in itertools.permutations(scene.objects, 2)]
    for k in rng.permutation(len(pairs)):
        a, b = pairs[k]
        rel = clear_relation(a, b, scene.res)
        if rel is not None:
            return a, rel, b
    return None


def _background_suffix(scene: Scene, rng: np.random.Generator) -> str:
    if rng.random() >= 0.2:
        return ""
    return f" on a {rng.choice(BACKGROUND_WORDS[scene.background])} background"


def _one_caption(scene: Scene, rng: np.random.Generator) -> str:
    objs = [scene.objects[k] for k in rng.permutation(len(scene.objects))]
    prefix = str(rng.choice(PREFIXES))
    bg = _background_suffix(scene, rng)
    kind = (
        "single"
        if len(objs) == 1
        else str(rng.choice(["relation", "pair", "single", "count", "triple"], p=[0.45, 0.2, 0.15, 0.1, 0.1]))
    )
    if kind == "relation":
        found = _relation_pair(scene, rng)
        if found is not None:
            a, rel, b = found
            phrase = str(rng.choice(RELATION_PHRASES[rel]))
            if not prefix and rng.random() < 0.4:
                return f"{_phrase(a, rng)} is {phrase} {_phrase(b, rng)}{bg}"
            return f"{prefix}{_phrase(a, rng)} {phrase} {_phrase(b, rng)}{bg}"
        kind = "pair"
    if kind == "triple" and len(objs) >= 3:
        a, b, c = (_phrase(o, rng) for o in objs[:3])
        return f"{prefix}{a}, {b} and {c}{bg}"
    if kind in ("pair", "triple"):
        return f"{prefix}{_phrase(objs[0], rng)} and {_phrase(objs[1], rng)}{bg}"
    if kind == "count":
        noun = str(rng.choice(GENERIC_NOUNS)) + "s"
        if rng.random() < 0.5:
            return f"{NUMBERS[len(objs)]} {noun}{bg}"
        return f"{prefix}{NUMBERS[len(objs)]} {noun} including {_phrase(objs[0], rng)}"
    if len(objs) == 1 and rng.random() < 0.2:
        return f"{prefix}{_phrase(objs[0], rng, article='a single')}{bg}"
    return f"{prefix}{_phrase(objs[0], rng)}{bg}"


def _finish(caption: str, rng: np.random.Generator) -> str:
    """COCO-like surface variation: sometimes capitalised, sometimes a final period."""
    if rng.random() < 0.5:
        caption = caption[0].upper() + caption[1:]
    return caption + "." if rng.random() < 0.4 else caption


def make_captions(scene: Scene, rng: np.random.Generator, n: int = 5) -> list[str]:
    """`n` distinct true captions of a scene (fewer only if the templates run out)."""
    captions: list[str] = []
    for _ in range(20 * n):
        caption = _finish(_one_caption(scene, rng), rng)
        if caption.lower().rstrip(".") not in {c.lower().rstrip(".") for c in captions}:
            captions.append(caption)
        if len(captions) == n:
            break
    return captions


# ---------------------------------------------------------------- hard negatives

SWAP_KINDS = ("colour", "shape", "relation")


@dataclass(frozen=True)
class Swap:
    """A caption with one word replaced: the new text, and which word changed from what to what."""

    text: str
    kind: str
    word_index: int
    old: str
    new: str


def _replacements(kind: str, word: str, rng: np.random.Generator, scene: Scene | None) -> list[str]:
    """Candidate words for a swap, in the order to try them."""
    if kind == "relation":
        return list(rng.permutation(RELATION_WORDS[OPPOSITE[_WORD_TO["relation"][word]]]))
    if kind == "colour":
        options = [c for c in COLOURS if c != word]
    else:
        options = [
            SHAPE_NOUNS[s][0] if rng.random() < 0.75 else str(rng.choice(SHAPE_NOUNS[s]))
            for s in SHAPES
            if s != _WORD_TO["shape"][word]
        ]
    options = [options[k] for k in rng.permutation(len(options))]
    # Half the time try attributes seen elsewhere in the scene first: the harder negatives.
    if scene is not None and rng.random() < 0.5:
        present = {getattr(o, kind) for o in scene.objects}
        options.sort(key=lambda w: _WORD_TO[kind][w] not in present)
    return options


def swap_caption(caption: str, kind: str, rng: np.random.Generator, scene: Scene | None = None) -> Swap | None:
    """Replace one colour word, shape noun or relation word so that the caption becomes false.

    Args:
        caption: a caption of the demo grammar.
        kind: 'colour' (another colour), 'shape' (a noun of another shape) or 'relation'
            (left <-> right, above <-> below).
        rng: chooses the word and its replacement.
        scene: when given, only replacements that make the caption false for this scene are returned.
    Returns:
        The swap, or None when the caption has no word of that kind (or no false replacement exists).
    """
    if kind not in SWAP_KINDS:
        raise ValueError(f"kind must be one of {SWAP_KINDS}, got {kind!r}")
    parsed = parse_caption(caption)
    if kind == "relation":
        positions = [w for *_, w in parsed.relations]
    else:
        positions = [p.words[kind] for p in parsed.phrases if kind in p.words]
    spans = caption_words(caption)
    for index in rng.permutation(positions) if positions else []:
        start, end, old = spans[index]
        for new in _replacements(kind, old, rng, scene):
            text = caption[:start] + (new.capitalize() if caption[start].isupper() else new) + caption[end:]
            if scene is None or not caption_is_true(text, scene):
                return Swap(text, kind, int(index), old, new)
    return None
