"""Which COCO category, if any, each word of a caption names.

Captions are matched after ALBEF's ``pre_caption`` (lower case, punctuation dropped, hyphens and
slashes split), so "hot-dog" arrives as ``["hot", "dog"]`` and "dog's" as ``"dogs"``. Each category has
a table of names and synonyms below (singular forms; plurals and the ``+s`` possessive are generated).
Multi-word entries are matched first, longest first, and give every word they cover the category id,
so "hot dog" names the hot dog and never the dog.

Decisions on ambiguous words (every one seen in the val2017 captions):
- Words that only name the category inside a compound stay unmatched alone: ``hot``, ``fire``,
  ``stop``, ``parking``, ``traffic``, ``cell``, ``potted``, ``wine``, ``glass``/``glasses`` (a drinking
  glass is annotated as a cup or wine glass, "glasses" is mostly eyewear, "glass" mostly the material),
  ``baseball``/``tennis``/``ski`` (the sport or a modifier: "ski slope", "tennis court"), ``computer``.
- Compounds whose head is something else block the match: "bus stop", "train station", "train tracks",
  "toilet paper", "pizza box", "tv stand", "bike rack", "apple logo", "mp3 player", "bed of (flowers)"
  ... (``_NOT_THE_CATEGORY``); a person noun that modifies an animal or vehicle gives both words the
  animal or vehicle ("baby elephant", "mother giraffe", "passenger jet", ``_MODIFIERS``).
- ``orange`` is usually a colour ("an orange cat"): it names the fruit only at the end of the caption
  or before a word that cannot be the noun it colours (``_ORANGE_FRUIT_NEXT``) and not in
  "orange and <colour>"; ``oranges`` always names the fruit.
- Role nouns name a person (skier, surfer, player, batter, catcher, umpire, rider ...), "pitcher" too
  since in COCO it is the baseball player far more often than the jug; "passengers" but not the
  singular, which mostly modifies a vehicle. Pronouns are not matched.
- COCO's own annotation conventions decide borderline synonyms: monitors are ``tv``, scooters and mopeds
  ``motorcycle``, stoves ``oven``, burgers ``sandwich``, cupcakes ``cake``, Wii controllers ``remote``,
  stuffed animals ``teddy bear``, urinals ``toilet``, trams ``train``.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple, Self


class Category(NamedTuple):
    name: str
    supercategory: str


# Data tables stay compact: one row per line would triple this file.
# fmt: off
_OFFICIAL = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
    (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"), (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"), (15, "bench", "outdoor"), (16, "bird", "animal"),
    (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"), (20, "sheep", "animal"),
    (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"), (24, "zebra", "animal"),
    (25, "giraffe", "animal"), (27, "backpack", "accessory"), (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"), (32, "tie", "accessory"), (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"), (41, "skateboard", "sports"), (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"), (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"), (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"),
    (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"),
    (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"),
    (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"),
    (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
)

COCO_CATEGORIES: MappingProxyType[int, Category] = MappingProxyType(
    {cid: Category(name, supercategory) for cid, name, supercategory in _OFFICIAL}
)
"""The 80 COCO detection categories: official id (1..90, with gaps) -> (name, supercategory)."""

# Singular names per category besides the official one; plurals and possessives are generated.
_SYNONYMS: dict[int, tuple[str, ...]] = {
    1: ("man", "woman", "boy", "girl", "child", "kid", "guy", "lady", "gentleman", "baby", "toddler",
        "infant", "teenager", "teen", "adult", "youngster", "someone", "somebody", "player", "skier",
        "surfer", "snowboarder", "skateboarder", "skater", "rider", "biker", "cyclist", "motorcyclist",
        "batter", "catcher", "pitcher", "umpire", "athlete", "pedestrian", "spectator", "tourist",
        "passengers", "driver", "crowd", "chef", "cop", "policeman", "officer", "soldier", "worker",
        "vendor", "customer", "student", "dude", "fellow", "husband", "wife", "mother", "father", "mom",
        "dad", "son", "daughter", "brother", "sister", "friend", "bride", "groom", "businessman",
        "kite surfer", "kite boarder", "kiteboarder", "windsurfer", "tennis player", "baseball player",
        "ball player", "surf boarder", "skate boarder", "snow boarder"),
    2: ("bike", "cycle", "bmx"),
    3: ("taxi", "sedan", "suv", "jeep"),
    4: ("motorbike", "motor bike", "motor cycle", "scooter", "moped", "dirt bike", "dirtbike",
        "motor scooter"),
    5: ("plane", "jet", "aircraft", "airliner", "aeroplane", "jetliner", "air plane", "jet liner",
        "jumbo jet"),
    6: ("busses", "double decker", "doubledecker"),
    7: ("locomotive", "tram", "streetcar", "trolley", "train car", "train engine", "subway train"),
    8: ("lorry", "firetruck", "pickup", "pick up truck", "semi", "semi truck"),
    9: ("ship", "sailboat", "canoe", "kayak", "yacht", "ferry", "ferryboat", "raft", "tugboat",
        "motorboat", "speedboat", "row boat", "rowboat", "gondola"),
    10: ("stoplight", "stop light", "traffic signal"),
    11: ("hydrant", "firehydrant", "fire plug"),
    13: ("stopsign",),
    14: ("meter", "parkingmeter"),
    16: ("seagull", "gull", "duck", "pigeon", "parrot", "goose", "swan", "owl", "eagle", "hawk", "hen",
         "rooster", "sparrow", "crow", "pelican", "finch", "hummingbird", "bluebird", "robin"),
    17: ("kitten", "kitty"),
    18: ("puppy", "pup", "doggy", "sheepdog", "sheep dog", "pitbull", "pit bull"),
    19: ("pony", "foal", "stallion", "mare"),
    20: ("lamb", "ewe"),
    21: ("cattle", "bull", "calf", "ox"),
    22: ("elephent",),
    23: ("grizzly", "polar bear", "grizzly bear", "black bear", "brown bear"),
    25: ("giraff",),
    27: ("back pack", "rucksack", "knapsack"),
    28: ("parasol",),
    31: ("purse", "hand bag", "pocketbook"),
    32: ("necktie", "neck tie", "bow tie", "bowtie"),
    33: ("suit case", "luggage", "briefcase"),
    34: ("frisbe", "frisby", "flying disc"),
    35: ("skiis", "snow skis"),
    36: ("snow board",),
    37: ("ball", "soccer ball", "tennis ball", "beach ball"),
    39: ("bat",),
    40: ("mitt", "baseball mitt", "catchers mitt"),
    41: ("skate board",),
    42: ("surf board",),
    43: ("racket", "racquet", "tennis racquet", "raquet"),
    44: ("water bottle", "beer bottle", "wine bottle"),
    46: ("wineglass",),
    47: ("mug", "coffee cup", "teacup", "tea cup"),
    52: ("bananna",),
    54: ("burger", "hamburger", "cheeseburger", "hoagie", "panini", "sandwhich"),
    56: ("brocolli", "broccolli", "brocoli"),
    58: ("hotdog", "frankfurter"),
    59: ("pizza pie",),
    60: ("doughnut",),
    61: ("cupcake", "cup cake", "cheesecake", "birthday cake", "wedding cake"),
    62: ("armchair", "recliner", "stool"),
    63: ("sofa", "loveseat", "love seat", "futon"),
    64: ("plant", "houseplant", "house plant", "pot plant"),
    65: ("mattress",),
    67: ("table", "kitchen table", "coffee table", "picnic table"),
    70: ("urinal", "toilet bowl", "commode"),
    72: ("television", "monitor", "tv monitor", "computer monitor", "computer screen", "flatscreen",
         "flat screen", "tv screen", "television set"),
    73: ("laptop computer", "notebook computer", "macbook"),
    74: ("computer mouse",),
    75: ("controller", "remote control", "wii remote", "wii controller", "game controller", "wiimote",
         "tv remote", "video game controller"),
    76: ("computer keyboard", "keypad"),
    77: ("phone", "cellphone", "smartphone", "smart phone", "mobile phone", "iphone", "cellular phone"),
    78: ("microwave oven",),
    79: ("stove", "stovetop", "stove top"),
    82: ("fridge", "refridgerator", "refrigerater"),
    84: ("novel", "paperback"),
    87: ("scissor",),
    88: ("teddy", "teddybear", "stuffed animal", "stuffed bear", "stuffed toy"),
    89: ("hair dryer", "hairdryer", "blow dryer", "blowdryer"),
    90: ("tooth brush",),
}

# Compounds whose head is not the category the first word names: matched to nothing.
_NOT_THE_CATEGORY = (
    "bus stop", "bus station", "bus terminal", "bus depot", "bus shelter", "bus lane",
    "train station", "train stations", "train track", "train tracks", "train platform", "train yard",
    "train depot", "train crossing", "toilet paper", "toilet tissue", "pizza box", "pizza boxes",
    "pizza place", "pizza oven", "pizza cutter", "tv stand", "table cloth", "bike rack", "bike racks",
    "bike lane", "bike path", "apple computer", "apple logo", "apple sign", "dog food", "cat food",
    "boat dock", "car window", "ball field", "ball game", "ball park", "water pitcher", "beer pitcher",
    "bed of", "mp3 player", "dvd player", "cd player", "record player", "music player",
)

# Person nouns that modify the animal or vehicle after them: "baby elephant", "passenger train".
_MODIFIERS = (("baby", "animal"), ("mother", "animal"), ("adult", "animal"), ("passenger", "vehicle"))

_IRREGULAR_PLURALS = MappingProxyType({
    "man": "men", "woman": "women", "child": "children", "person": "people", "gentleman": "gentlemen",
    "businessman": "businessmen", "policeman": "policemen", "sheep": "sheep", "ox": "oxen",
    "calf": "calves", "knife": "knives", "mouse": "mice", "goose": "geese",
})

# Words after "orange" that show it is the fruit, not the colour of the next word.
_ORANGE_FRUIT_NEXT = frozenset((
    "and", "or", "on", "in", "is", "are", "with", "sitting", "sits", "next", "that", "of", "at", "near",
    "slice", "slices", "wedge", "wedges", "peel", "peels", "half", "halves", "segments", "being", "has",
    "cut", "sliced", "to", "by", "beside", "from", "for", "inside", "lying", "laying",
))
COLOURS = frozenset((
    "white", "black", "red", "blue", "green", "yellow", "brown", "gray", "grey", "pink", "purple",
    "silver", "gold", "tan", "beige", "teal", "maroon",
))

# fmt: on


def _plural(word: str) -> str:
    """English plural of a singular noun (regular rules plus the irregular table)."""
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u"):
        return word[:-1] + "ies"
    if word.endswith("fe"):
        return word[:-2] + "ves"
    return word + "s"


def _forms(name: str) -> set[tuple[str, ...]]:
    """The word sequences of a name: singular, plural and the possessive ``+s`` (pre_caption drops ')."""
    *head, last = name.split()
    plural = _plural(last)
    lasts = {last, plural, last + "s", plural if plural.endswith("s") else plural + "s"}
    return {(*head, form) for form in lasts}


def _named_forms(names: Mapping[int, Sequence[str]]) -> list[tuple[tuple[str, ...], int]]:
    """(word sequence, category id) for every form of every name."""
    return [(form, cid) for cid, group in names.items() for name in group for form in _forms(name.lower())]


@dataclass(frozen=True)
class _PhraseTable:
    """Word sequences -> category id (None: a compound that blocks a match), matched longest first."""

    phrases: Mapping[tuple[str, ...], int | None]
    longest: int

    @classmethod
    def build(cls, entries: Iterable[tuple[tuple[str, ...], int | None]]) -> Self:
        phrases: dict[tuple[str, ...], int | None] = {}
        for form, cid in entries:
            if phrases.setdefault(form, cid) != cid:
                raise ValueError(f"{' '.join(form)!r} is listed under two categories")
        return cls(MappingProxyType(phrases), max((len(p) for p in phrases), default=1))

    def match(self, words: Sequence[str]) -> list[int | None]:
        words = [w.lower() for w in words]
        ids: list[int | None] = [None] * len(words)
        i = 0
        while i < len(words):
            for n in range(min(self.longest, len(words) - i), 0, -1):
                key = tuple(words[i : i + n])
                if key in self.phrases:
                    ids[i : i + n] = [self.phrases[key]] * n
                    i += n
                    break
            else:
                i += 1
        return ids


def _coco_table() -> _PhraseTable:
    entries: list[tuple[tuple[str, ...], int | None]] = list(
        _named_forms({cid: (category.name, *_SYNONYMS.get(cid, ())) for cid, category in COCO_CATEGORIES.items()})
    )
    entries += [
        ((modifier, *form), cid)
        for modifier, supercategory in _MODIFIERS
        for form, cid in entries
        if COCO_CATEGORIES[cid].supercategory == supercategory
    ]
    # Blocking compounds are listed with their plurals: generated ones would catch verbs ("bus stops").
    entries += [(tuple(compound.split()), None) for compound in _NOT_THE_CATEGORY]
    return _PhraseTable.build(entries)


_COCO = _coco_table()
_ORANGE = 55


def _is_fruit_orange(words: Sequence[str], i: int) -> bool:
    """Whether words[i] == 'orange' names the fruit rather than the colour of the next word."""
    nxt = words[i + 1] if i + 1 < len(words) else None
    if nxt is None:
        return True
    if nxt in ("and", "or") and i + 2 < len(words) and words[i + 2] in COLOURS:
        return False
    return nxt in _ORANGE_FRUIT_NEXT


def match_words(words: Sequence[str]) -> list[int | None]:
    """COCO category id named by each word of a cleaned caption, None where it names none.

    Args:
        words: the words of ALBEF's ``pre_caption`` text (``text.split(" ")``), lower case.

    Returns:
        One entry per word. Multi-word names are matched first, longest first, and every word of
        the name gets its id ("hot dog" -> hot dog for both words; "dog" alone -> dog).
    """
    words = [w.lower() for w in words]
    ids = _COCO.match(words)
    for i, word in enumerate(words):
        if word == "orange" and ids[i] == _ORANGE and not _is_fruit_orange(words, i):
            ids[i] = None
    return ids


def matcher_from_synonyms(names: Mapping[int, Sequence[str]]) -> Callable[[Sequence[str]], list[int | None]]:
    """A word matcher for a dataset with its own categories (e.g. the demo world's shapes).

    Args:
        names: category id -> its names and synonyms (one or more words each); plurals are added.

    Returns:
        A function like :func:`match_words`: longest names first, every word of a name gets its id.
    """
    return _PhraseTable.build(_named_forms(names)).match
