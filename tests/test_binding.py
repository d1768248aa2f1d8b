import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bench.binding_quality import demo_pairs, hand_checked_pairs, red_cards
from dashboard.components import bound_noun
from db import parts as partsdir
from db import writer
from db.schema import SCHEMA_VERSION
from extractor.binding import ATTRIBUTE, OBJECT, OTHER, bound_pairs, precision_recall, tag_words
from extractor.categories import match_words
from extractor.demo.prepare import demo_is_ready, prepare
from extractor.demo.world import CATEGORY_ID, match_demo_words
from extractor.text import pre_caption

HAND_CHECKED = Path(__file__).parent / "data" / "binding_val2017.json"


def bindings(caption: str) -> dict[str, str]:
    """Attribute word -> the noun word it is bound to, for a COCO caption."""
    words = pre_caption(caption, 50).split(" ")
    return {words[a]: words[n] for a, n in bound_pairs(tag_words(words, match_words(words)))}


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("A red and white bus.", {"red": "bus", "white": "bus"}),
        ("the bus is red", {"red": "bus"}),
        ("two small dogs", {"two": "dogs", "small": "dogs"}),
        ("a bus that is red", {"red": "bus"}),
        ("a bus painted red and white", {"red": "bus", "white": "bus"}),
        ("a red-colored bus", {"red": "bus"}),
        ("the dogs are all white", {"white": "dogs"}),
        ("the dog is black and the cat is white", {"black": "dog", "white": "cat"}),
        ("a young boy eats a red hot dog", {"young": "boy", "red": "dog"}),  # a name binds at its last word
        ("a red city bus", {"red": "bus"}),
        ("a gold colored pair of scissors", {"gold": "scissors"}),
        ("an orange cat next to an orange", {"orange": "cat"}),  # the second orange is the fruit
    ],
)
def test_attributes_bind_to_the_noun_they_describe(caption, expected):
    assert bindings(caption) == expected


@pytest.mark.parametrize(
    "caption",
    [
        "a man in a blue shirt",  # shirt names no category, and the man is not blue
        "a black and white photo of a cat",  # the photo is black and white, not the cat
        "the bus is not red",
        "there are no red cars",
        "a large herd of elephants",
        "a red light",
    ],
)
def test_attributes_without_an_object_noun_or_negated_stay_unbound(caption):
    assert bindings(caption) == {}


def test_word_classes():
    words = ["two", "small", "dogs", "play", "near", "a", "red", "brick", "wall"]
    tags = tag_words(words, match_words(words))
    assert tags.word_class == [ATTRIBUTE, ATTRIBUTE, OBJECT, OTHER, OTHER, OTHER, ATTRIBUTE, ATTRIBUTE, OTHER]
    assert tags.category[:3] == [None, None, 18]  # attributes keep no category of their own
    assert tags.bound_category[:2] == [18, 18] and tags.bound_category[6:] == [None] * 3
    assert tags.scored_category[:3] == [18, 18, 18]


def test_binding_on_the_demo_world_matches_its_grammar():
    found, truth = demo_pairs(300)
    assert sum(map(len, truth)) > 1000
    precision, recall = precision_recall(found, truth)
    assert precision >= 0.95 and recall >= 0.95


def test_binding_on_hand_checked_coco_captions(shared):
    captions = shared / "coco/val2017-subset/annotations/captions_val2017_subset.json"
    found, truth = hand_checked_pairs(HAND_CHECKED, captions)
    assert len(found) == 100 and sum(map(len, truth)) > 50
    precision, recall = precision_recall(found, truth)
    # Measured: precision 0.957 (66 of 69), recall 0.846 (66 of 78); misses are mostly adjectives outside
    # the lexicon ("clear vase", "unbaked pizza").
    assert precision >= 0.95 and recall >= 0.84


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    prepare(out, n_images=60, seed=0, res=128)
    return out


def test_red_is_scored_against_its_bound_shape_and_ranks_its_heat_first(demo):
    with duckdb.connect(str(demo / "demo.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT w.mask_mass, w.pointing_hit, w.bound_category_id, w.category_id, "
            "split_part(c.text, ' ', w.bound_index + 1) AS noun "
            "FROM words AS w JOIN captions AS c USING (caption_id) "
            "WHERE w.word = 'red' AND w.method = 'attention' AND w.layer = 3 "
            "ORDER BY w.mask_mass DESC NULLS LAST, w.image_id, w.caption_id, w.word_index"
        ).fetchall()
        cards = con.execute(  # what a word card reads: the search row and its caption
            "SELECT w.bound_index, c.text AS caption FROM word_search AS w JOIN captions AS c USING (caption_id) "
            "WHERE w.word = 'red' AND w.method = 'attention' AND w.layer = 3 "
            "ORDER BY w.mask_mass DESC NULLS LAST, w.image_id, w.caption_id, w.word_index"
        ).df()
        classes = con.execute("SELECT DISTINCT word_class FROM word_search WHERE word = 'red'").fetchall()
        category_words = con.execute(
            "SELECT DISTINCT word_class FROM word_search WHERE category_id = ?", [CATEGORY_ID["circle"]]
        ).fetchall()
    bound = [r for r in rows if r[2] is not None]
    assert len(bound) >= 20 and classes == [(ATTRIBUTE,)] and category_words == [(OBJECT,)]
    assert all(mass is not None and hit is not None and cid is None for mass, hit, _, cid, _ in bound)
    assert all(mass is None and hit is None for mass, hit, noun_cid, _, _ in rows if noun_cid is None)
    assert all(match_demo_words([noun]) == [noun_cid] for _, _, noun_cid, _, noun in bound)
    assert [bound_noun(card) for card in cards.to_dict("records")] == [noun or None for *_, noun in rows]
    n, by_mass, in_image_order = red_cards(demo / "demo.duckdb", demo / "world")
    assert n == len(bound) and by_mass >= 9 and by_mass > in_image_order  # measured: 10 and 8


def test_a_demo_database_of_an_older_schema_is_rebuilt(tmp_path):
    db = prepare(tmp_path, n_images=4, seed=0, res=128)
    with duckdb.connect(str(db)) as con:  # as if an older commit's schema had made it
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION - 1)])
    assert not demo_is_ready(db)
    assert prepare(tmp_path, n_images=4, seed=0, res=128) == db
    assert demo_is_ready(db)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert con.execute("SELECT count(*) FROM words WHERE bound_index IS NOT NULL").fetchone()[0] > 0


def test_parts_written_before_the_binding_columns_still_build(demo, tmp_path):
    """A run resumed across the schema change: its older chunks lack the new columns and read as NULL."""
    parts = tmp_path / "x.parts"
    shutil.copytree(demo / "demo.parts", parts)
    (run,) = partsdir.run_ids(parts)
    folder = partsdir.run_dir(parts, run)
    (status,) = (folder / partsdir.DONE_TABLE).glob("*.parquet")
    first = sorted(pq.read_table(status).column("image_id").to_pylist())[:10]
    for table in (*partsdir.RESULT_TABLES, partsdir.DONE_TABLE):
        for path in (folder / table).glob("*.parquet"):
            rows = pq.read_table(path)
            old = pc.is_in(rows.column("image_id"), pa.array(first, rows.schema.field("image_id").type))
            if table == "words":  # as the code before the binding wrote it
                rows = rows.drop_columns(["word_class", "bound_index", "bound_category_id"])
            pq.write_table(rows.filter(old), path.with_name("0-old.parquet"))
            pq.write_table(pq.read_table(path).filter(pc.invert(old)), path)
    writer.build(tmp_path / "x.duckdb")
    with duckdb.connect(str(tmp_path / "x.duckdb"), read_only=True) as con:
        counts = con.execute(
            "SELECT image_id IN (SELECT unnest(?)) AS old, count(*), count(word_class) FROM words GROUP BY old "
            "ORDER BY old",
            [first],
        ).fetchall()
    assert counts[0][1] == counts[0][2] > 0 and counts[1][1] > 0 and counts[1][2] == 0
