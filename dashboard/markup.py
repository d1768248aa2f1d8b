"""Dataset and user text, shown as itself where Streamlit or plotly would read markup in it.

Captions, words, file names, category names, paths, comments, tags, notes and user names are data. Streamlit
reads Markdown (with its colour, icon and emoji directives) in st.markdown, st.caption, titles, alerts,
toasts, progress texts, widget labels and help; plotly reads a subset of HTML in titles, axis labels, text
and hover labels. A caption holding ``![x](http://host/beacon.png)`` must not make a reader's browser fetch
that URL. Plain-text places (st.text, dataframe cells, selectbox options, input values) need nothing here.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

# Every ASCII punctuation character: CommonMark lets a backslash escape each one, and each one else may
# start markup (emphasis, links, images, HTML, entities, Streamlit's :directives[], maths, tables).
_MARKDOWN_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")
_BACKTICKS = re.compile(r"`+")


def one_line(text: str) -> str:
    """`text` with its line breaks as spaces: in Markdown a blank line ends the paragraph or code span."""
    return " ".join(str(text).splitlines())


def literal(text: str) -> str:
    """Markdown that shows `text` as itself, on one line: no emphasis, link, image, HTML or directive."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", one_line(text))


def code(text: str) -> str:
    """Markdown inline code that shows `text` as itself (a path, an id): code spans read no markup, and
    their backtick fence is made longer than any run of backticks inside."""
    text = one_line(text)
    fence = "`" * (max(map(len, _BACKTICKS.findall(text)), default=0) + 1)
    return f"{fence} {text} {fence}"  # CommonMark strips one space on each side


def marked_caption(text: str, word_index: int | None) -> str:
    """Markdown of a cleaned caption, literal, with word `word_index` (0-based, split on spaces) highlighted."""
    words = [literal(word) for word in text.split(" ")]
    if word_index is not None and 0 <= word_index < len(words):
        words[word_index] = f":yellow-background[{words[word_index]}]"
    return " ".join(words)


def plotly_literal(text: str) -> str:
    """`text` for a plotly label: plotly shows the entities &amp;, &lt; and &gt; as characters, so no tag
    can be read into it. `html.unescape` gives the text back (a clicked point's customdata)."""
    return html.escape(str(text), quote=False)


def plotly_labels(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """`frame` with the text `columns` (words, category names) made plotly labels by `plotly_literal`."""
    return frame.assign(**{c: frame[c].map(plotly_literal) for c in columns})
