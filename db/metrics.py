"""Every per-word metric column, declared once: name, SQL type, dashboard label and definition.

Derived from WORD_METRICS: the metric columns of `words`, `word_lookup` and `word_summary` and the
statements that fill them (db/schema.py), the metric allow-list of searches (db/filters.py), the
dashboard's badges and help texts, and the README's "What is measured per word" table, which a test
checks against `markdown_table()` (`python -m db.metrics` prints it). How each value is computed is
defined in extractor/metrics.py (and its batched twin, extractor/device_metrics.py).

A new metric is one entry here, the next `words_position`, a new SCHEMA_VERSION (db/schema.py: its tables
gain a column), its formula in the extractor, and the table printed here pasted into the README.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One per-word metric column.

    Args:
        name: the column in `words`, `word_lookup` and `word_search`.
        sql_type: its DuckDB type; a BOOLEAN metric is a flag (summarised by its rate, compared as 0/1),
            the FLOAT ones are fractions in [0, 1] with means and medians.
        label: the short name of the dashboard's badges.
        definition: one line, the dashboard's help text and the README's meaning.
        words_position: its place among the metric columns of `words`: that table keeps the column order
            of the files already written (shard merges copy rows by position); a new metric takes the next.
        needs_object: NULL unless the word names a category labelled in the image, or is an attribute bound
            to a noun that does (extractor.binding: "red" in "a red bus" is scored against the buses).
        ranked: searches filter and rank by it (a position on the grid is not ranked).
    """

    name: str
    sql_type: str
    label: str
    definition: str
    words_position: int
    needs_object: bool = False
    ranked: bool = True

    @property
    def is_flag(self) -> bool:
        return self.sql_type == "BOOLEAN"


# In the order the dashboard shows them, which is also the order of word_lookup's and word_summary's columns.
WORD_METRICS = (
    Metric("peak_row", "SMALLINT", "row", "row of the map's strongest patch (its argmax)", 0, ranked=False),
    Metric("peak_col", "SMALLINT", "col", "column of the map's strongest patch", 1, ranked=False),
    Metric("mask_mass", "FLOAT", "mask", "share of the map's mass on the masks of the category the word names "
           "(an attribute: its noun's; higher = grounded)", 4, needs_object=True),
    Metric("box_mass", "FLOAT", "box", "share of the map's mass inside the boxes of the category the word names "
           "(an attribute: its noun's)", 5, needs_object=True),
    Metric("background_mass", "FLOAT", "bg", "share of the map's mass outside every labelled object of the image "
           "(higher = background)", 6),
    Metric("entropy", "FLOAT", "H", "normalised entropy of the map: 0 = one patch, 1 = uniform (higher = noisier)",
           3),
    Metric("peak_value", "FLOAT", "peak", "share of the map's mass in its strongest patch", 2),
    Metric("iou_top60", "FLOAT", "IoU", "IoU of the object's patches and the fewest patches holding 60% of the mass "
           "(DINO)", 8, needs_object=True),
    Metric("itm_score", "FLOAT", "ITM", "ALBEF's image-text matching probability for the whole caption", 9),
    Metric("pointing_hit", "BOOLEAN", "hit", "whether the strongest patch touches the named object "
           "(an attribute: its noun's)", 7, needs_object=True),
    Metric("specificity_cls", "FLOAT", "spec·enc", "Jensen-Shannon divergence (bits) from the image encoder's own "
           "[CLS] attention: 0 = the word's map is the image's generic saliency (higher = about the word)", 10),
    Metric("specificity_row", "FLOAT", "spec·row", "Jensen-Shannon divergence (bits) from the caption's [CLS] row "
           "of the same map: 0 = the word's map is the caption's (higher = about the word)", 11),
    Metric("specificity_others", "FLOAT", "spec·obj", "Jensen-Shannon divergence (bits) from the mean map of the "
           "caption's words naming other categories: 0 = the word's map sits where theirs do (higher = about its "
           "own object)", 12),
)  # fmt: skip
BY_NAME = {m.name: m for m in WORD_METRICS}
# The metrics searches filter and rank by: the allow-list of metric names spliced into SQL text.
METRICS = tuple(m.name for m in WORD_METRICS if m.ranked)
# The ranked fractions in [0, 1], with means and medians (the flags have a rate instead).
SCORES = tuple(name for name in METRICS if not BY_NAME[name].is_flag)


def words_order() -> tuple[Metric, ...]:
    """The metrics in the column order of the `words` table."""
    ordered = tuple(sorted(WORD_METRICS, key=lambda m: m.words_position))
    if [m.words_position for m in ordered] != list(range(len(ordered))):
        raise ValueError("words_position must number the metrics 0, 1, 2, ... without gaps or repeats")
    return ordered


def markdown_table() -> str:
    """The README's table of the metrics."""
    rows = [f"| `{m.name}` | {m.label} | {'yes' if m.needs_object else ''} | {m.definition} |" for m in WORD_METRICS]
    return "\n".join(["| metric | badge | needs the object | meaning |", "|---|---|---|---|", *rows])


if __name__ == "__main__":
    print(markdown_table())
