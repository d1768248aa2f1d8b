"""View state in the URL, so a pasted link restores the same view.

Most widgets keep their value in the URL themselves (``bind="query-params"``, key = parameter name);
Streamlit then seeds them from a pasted link. Some state cannot be bound that way and is kept in
``st.query_params`` here:

- selectboxes whose labels are not their values (counts, "dog · 1,204"; names in words, "background
  mass"; run labels): a bound selectbox stores its *label* in the URL, so :func:`counted_choice` and
  :func:`url_choice` store the value instead;
- the sidebar's run, method and layer (:func:`url_choice`), whose defaults depend on the page's word,
  and which the code, not only the user, changes (a link to a layer the method lacks);
- pages that new criteria reset (:func:`url_page`);
- state set by clicks rather than by a widget (the selected image, caption and word).

The page itself is the URL path (``/search``, ``/image``, ``/statistics``, ``/runs``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import streamlit as st

from dashboard.markup import literal

logger = logging.getLogger(__name__)

BIND = "query-params"
# The shared sidebar's parameters: links carry them explicitly so a link (or one opened in a new tab)
# shows the same run, method and layer.
SHARED = ("run", "method", "layer")


def query_int(name: str) -> int | None:
    """An integer query parameter, or None when absent or not a number (a bad link)."""
    raw = st.query_params.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        logger.warning("ignoring query parameter %s=%r: not an integer", name, raw)
        return None


def set_query(**params: Any) -> None:
    """Write (or, for None, remove) plain query parameters."""
    for name, value in params.items():
        if value is None:
            st.query_params.pop(name, None)
        else:
            st.query_params[name] = str(value)


def counted_choice(
    label: str,
    options: Sequence[str],
    counts: Mapping[str, int],
    *,
    param: str,
    accept_new_options: bool = False,
    on_change: Callable[[], None] | None = None,
    **kwargs: Any,
) -> str | None:
    """A selectbox labelled "value · count" whose *value* is kept in query parameter ``param``.

    The URL decides when the widget is first drawn on the page (a pasted link or a page link) and when it
    names another value than the widget last wrote (a link to this same page); otherwise the widget does,
    and writes its value back.
    """
    key, shown = f"{param}_choice", f"{param}_shown"
    wanted = st.query_params.get(param)
    # A link to this same page keeps the widget's state: a URL value it did not write itself wins.
    if key not in st.session_state or wanted != st.session_state.get(shown):
        if wanted is not None and not accept_new_options and wanted not in options:
            st.warning(f"{label} “{literal(wanted)}” from the link is not in this database.")
            wanted = None
        st.session_state[key] = wanted

    def label_of(value: str) -> str:
        return f"{value} · {counts[value]:,}" if value in counts else value

    value = st.selectbox(
        label,
        options,
        index=None,
        key=key,
        format_func=label_of,
        accept_new_options=accept_new_options,
        on_change=on_change,
        **kwargs,
    )
    set_query(**{param: value or None})
    st.session_state[shown] = value or None
    return value or None


def link_params(**params: Any) -> dict[str, str]:
    """Query parameters for a page link or ``st.switch_page``: the shared sidebar's plus ``params`` (None
    dropped)."""
    shared = {name: st.session_state.get(name) for name in SHARED}
    return {name: str(value) for name, value in (shared | params).items() if value is not None}


def url_choice(
    label: str,
    options: Sequence[Any],
    *,
    param: str,
    default: Any = None,
    widget: Callable[..., Any] = st.selectbox,
    on_change: Callable[[], None] | None = None,
    notes: list[str] | None = None,
    **kwargs: Any,
) -> Any:
    """A selectbox (or radio) whose *value* lives in query parameter ``param`` (also its key), whatever its
    labels say (``format_func``): the URL decides on every run, the widget writes it back when changed.

    Without a usable value in the URL the last choice of this session is kept, else ``default`` (or the
    first option). A value in the URL that is not an option is replaced with a note, appended to ``notes``
    (for the page to show) or drawn here.
    """
    by_text = {str(option): option for option in options}
    wanted = st.query_params.get(param)
    value = by_text.get(wanted, st.session_state.get(param))
    if value not in options:
        value = default if default in options else options[0]
    if wanted is not None and wanted not in by_text:
        shown = kwargs.get("format_func", str)(value)
        note = f"{label} “{literal(wanted)}” from the link is not available here; showing {literal(str(shown))}."
        if notes is None:
            st.warning(note)
        else:
            notes.append(note)
    st.session_state[param] = value  # before the widget is drawn, which then shows it

    def changed() -> None:
        set_query(**{param: st.session_state[param]})
        if on_change is not None:
            on_change()

    widget(label, options, key=param, on_change=changed, **kwargs)
    set_query(**{param: value})
    return value


def forget(*params: str) -> None:
    """Drop parameters from the URL and the session, so the page chooses them afresh (a callback)."""
    for param in params:
        st.query_params.pop(param, None)
        st.session_state.pop(param, None)


def url_page(n_pages: int, param: str) -> int:
    """Pagination whose page lives in query parameter ``param``; :func:`first_page` starts it again.

    Not a bound widget: going back to page 1 would then mean setting the widget's value through the
    Session State API, which Streamlit warns about for a widget with a default. A reset makes a new
    widget (a new key) instead, drawn at the URL's page.
    """
    generation = st.session_state.get(f"{param}_generation", 0)
    page = min(max(query_int(param) or 1, 1), n_pages)
    key = f"{param}_{generation}"

    def changed() -> None:
        set_query(**{param: None if st.session_state[key] == 1 else st.session_state[key]})

    return st.pagination(n_pages, default=page, key=key, on_change=changed)


def first_page(param: str) -> None:
    """Start a :func:`url_page` pagination again at page 1 (a callback)."""
    st.session_state[f"{param}_generation"] = st.session_state.get(f"{param}_generation", 0) + 1
    set_query(**{param: None})
