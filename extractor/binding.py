"""Which noun each attribute word of a caption describes: rules over the words and their categories.

A word is an *object* word when it names a category (``extractor.categories.match_words`` or a
dataset's own matcher), an *attribute* when it is in the lexicon below (colour, size, age, material,
pattern, count, state) and names no category, and *other* otherwise. An attribute is bound to the object
word it describes, and its object metrics are scored against that noun's category; it stays unbound
when the rules find no object noun, and when it is negated.

Rules, tried in this order (a multi-word name binds at its last word: "a red hot dog" -> "dog"):
- prenominal: the attribute starts or joins a chain of attributes, "and"/"or" and intensifiers ("very",
  "mostly") that stands right before an object word ("a red and white bus", "two small dogs"), or before
  "pair of" or at most two other modifiers and then an object word ("a gold pair of scissors", "a red city
  bus"). A chain that ends anywhere else ("a red shirt", "a black and white photo of a cat") binds
  nothing: the nearest object is not what it describes.
- predicative: a chain after a copula or a colouring participle that follows an object word, perhaps
  through "that"/"which" ("the bus is red", "a bus that is red", "a bus painted red", "dogs are all
  white").
- negation: "not", "no", "without" or "never" right before the chain leaves it unbound ("the bus is not
  red", "no red cars").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from extractor.categories import COLOURS

OBJECT, ATTRIBUTE, OTHER = "object", "attribute", "other"  # the word_class column's values

# fmt: off
_COLOUR_WORDS = COLOURS | frozenset((
    "orange", "colorful", "colourful", "multicolored", "multicoloured", "multi", "golden", "blonde", "blond",
    "dark", "light", "bright", "pale", "navy", "violet", "cream", "ivory", "khaki", "turquoise", "brunette",
))
_SIZE_WORDS = frozenset((
    "small", "large", "big", "little", "tiny", "huge", "giant", "tall", "short", "long", "wide", "narrow",
    "enormous", "massive", "miniature", "mini", "medium", "oversized", "thin", "fat", "skinny", "chubby",
    "high", "low",
))
_AGE_WORDS = frozenset(("young", "old", "older", "elderly", "new", "vintage", "antique", "modern"))
_MATERIAL_WORDS = frozenset((
    "wooden", "wood", "metal", "metallic", "plastic", "glass", "leather", "stone", "brick", "ceramic",
    "steel", "stainless", "paper", "cardboard", "concrete", "marble", "wicker", "cloth", "porcelain",
    "stuffed", "chrome", "iron", "rubber", "fur", "furry", "fluffy", "woolly", "hairy",
))
_PATTERN_WORDS = frozenset((
    "striped", "stripped", "spotted", "checkered", "checked", "plaid", "floral", "polka", "dotted",
    "patterned", "speckled", "shaded", "decorated", "frosted", "tiled", "tabby",
))
_COUNT_WORDS = frozenset((
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "dozen", "several", "many", "few", "multiple", "numerous", "both", "various",
))
_STATE_WORDS = frozenset((
    "empty", "full", "dirty", "clean", "cute", "adorable", "beautiful", "pretty", "wet", "dry", "shiny",
    "open", "closed", "broken", "round", "fresh", "hot", "cold", "sliced", "half", "whole", "lone", "busy",
    "crowded", "fancy", "messy", "cluttered", "toy",
    "grassy", "sandy", "snowy", "rusty", "shaggy", "spotty", "wild", "baked", "fried", "cooked", "healthy",
))
# fmt: on
LEXICON = _COLOUR_WORDS | _SIZE_WORDS | _AGE_WORDS | _MATERIAL_WORDS | _PATTERN_WORDS | _COUNT_WORDS | _STATE_WORDS

_JOINERS = frozenset((
    "and", "or", "very", "really", "mostly", "all", "completely", "entirely", "partly", "mainly", "other",
))  # fmt: skip
# Colouring participles join a chain before its noun ("a red colored bus") and predicate after it
# ("a bus painted red"); the copulas only predicate.
_PARTICIPLES = frozenset(("painted", "colored", "coloured", "dyed", "toned"))
_COPULAS = _PARTICIPLES | frozenset((
    "is", "are", "was", "were", "be", "being", "looks", "look", "appears", "appear", "seems", "seem", "stays",
))  # fmt: skip
_RELATIVES = frozenset(("that", "which", "who"))
_MAX_MODIFIERS = 2
_FUNCTION_WORDS = _COPULAS | _RELATIVES | _JOINERS | frozenset((
    "a", "an", "the", "this", "that", "these", "those", "some", "his", "her", "their", "its", "my", "our", "your",
    "it", "he", "she", "they", "there", "in", "on", "of", "with", "at", "by", "for", "from", "to", "near", "next",
    "over", "under", "behind", "beside", "inside", "into", "onto", "across", "through", "around", "above", "below",
    "between", "while", "as", "but", "like", "has", "have", "off", "up", "down", "out", "other", "another",
))  # fmt: skip
_NEGATIONS = frozenset(("not", "no", "without", "never", "isnt", "arent", "nor"))


class WordTags(NamedTuple):
    """Per word of a caption: the category it names, its class, and for a bound attribute its noun's word
    index and category."""

    category: list[int | None]
    word_class: list[str]
    bound_index: list[int | None]
    bound_category: list[int | None]

    @property
    def scored_category(self) -> list[int | None]:
        """The category each word's object metrics are scored against: its own, or its noun's."""
        return [own if noun is None else noun for own, noun in zip(self.category, self.bound_category, strict=True)]


def tag_words(words: Sequence[str], categories: Sequence[int | None]) -> WordTags:
    """Classes and bindings of a cleaned caption's words, given the category each names."""
    classes = [_word_class(w, c) for w, c in zip(words, categories, strict=True)]
    bound = [_bound_noun(words, categories, classes, i) if c == ATTRIBUTE else None for i, c in enumerate(classes)]
    return WordTags(list(categories), classes, bound, [None if b is None else categories[b] for b in bound])


def bound_pairs(tags: WordTags) -> set[tuple[int, int]]:
    """(attribute word index, noun word index) of every binding of a caption."""
    return {(i, noun) for i, noun in enumerate(tags.bound_index) if noun is not None}


def precision_recall(found: Sequence[set], truth: Sequence[set]) -> tuple[float, float]:
    """Binding precision and recall over captions: per caption the pairs found and the true pairs."""
    hits = sum(len(f & t) for f, t in zip(found, truth, strict=True))
    n_found, n_true = sum(map(len, found)), sum(map(len, truth))
    return hits / max(n_found, 1), hits / max(n_true, 1)


def _word_class(word: str, category: int | None) -> str:
    if category is not None:
        return OBJECT
    return ATTRIBUTE if word in LEXICON or word.isdigit() else OTHER


def _is_chain(word: str, word_class: str, rightward: bool = False) -> bool:
    return word_class == ATTRIBUTE or word in _JOINERS or (rightward and word in _PARTICIPLES)


def _noun_head(categories: Sequence[int | None], j: int) -> int:
    """The last word of the multi-word name (a run of one category) that word j starts."""
    while j + 1 < len(categories) and categories[j + 1] == categories[j]:
        j += 1
    return j


def _bound_noun(words: Sequence[str], categories: Sequence[int | None], classes: Sequence[str], i: int) -> int | None:
    """The object word attribute i describes, None when the rules find none or it is negated."""
    start = i
    while start > 0 and _is_chain(words[start - 1], classes[start - 1]):
        start -= 1
    if start > 0 and words[start - 1] in _NEGATIONS:
        return None
    end = i
    while end + 1 < len(words) and _is_chain(words[end + 1], classes[end + 1], rightward=True):
        end += 1
    noun = _noun_after(words, categories, classes, end) if words[end] not in ("and", "or") else None
    if noun is not None:
        return noun
    return _predicated_noun(words, classes, start)


def _noun_after(words: Sequence[str], categories: Sequence[int | None], classes: Sequence[str], end: int) -> int | None:
    """The object word a chain ending at word `end` stands before: right after it, after "pair of", or after
    at most two modifiers that are neither function words nor -ing forms ("a red city bus")."""
    j = end + 1
    if words[j : j + 2] == ["pair", "of"]:
        j += 2
    for _ in range(_MAX_MODIFIERS):
        if j >= len(words) or classes[j] != OTHER or words[j] in _FUNCTION_WORDS or words[j].endswith("ing"):
            break
        j += 1
    return _noun_head(categories, j) if j < len(words) and classes[j] == OBJECT else None


def _predicated_noun(words: Sequence[str], classes: Sequence[str], start: int) -> int | None:
    """The object word before `copula [that|which] ...` that ends right before word `start`."""
    j = start - 1
    copulas = 0
    while j >= 0 and words[j] in _COPULAS:
        j, copulas = j - 1, copulas + 1
    if not copulas:
        return None
    if j >= 0 and words[j] in _RELATIVES:
        j -= 1
    return j if j >= 0 and classes[j] == OBJECT else None
