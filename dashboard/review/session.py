"""Team review in a dashboard session: the review store, who is signed in, and the Review pages.

The entry point calls, in order, :func:`start` (opens the store, reads the ``[auth]`` secrets, says who
this session is), builds its navigation with :func:`pages`, then :func:`gate` (the sign-in form and
nothing else until someone signs in; afterwards the account box in the sidebar). Pages then ask
:func:`connection`, :func:`actor` and :func:`config`.

Access, from the secrets (format in dashboard/auth.py and .streamlit/secrets.example.toml):

- password accounts or OpenID Connect configured, ``public_read = false``: nothing but the sign-in
  form is shown before sign-in;
- ``public_read = true``: visitors read as ``anonymous`` (no writes) and may sign in from the sidebar;
- no sign-in method configured at all (no ``[auth]`` secrets): the dashboard is open, read-only for
  everyone, since nobody could sign in to write.

The review store connection is kept per session in ``st.session_state``, not in ``st.cache_resource``:
a SQLite write transaction belongs to its connection, so sessions running at once must not share one.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import streamlit as st

from dashboard import auth
from dashboard.markup import code, literal
from db import review
from db.review import Actor

logger = logging.getLogger(__name__)

DEFAULT_STORE = Path(__file__).resolve().parents[2] / "data" / "review.sqlite"
VIEWS = Path(__file__).resolve().parent / "views"
_STORE_KEY = "_review_store"  # (path, connection) of this session
_ACTOR_KEY = "_review_actor"
_CONFIG_KEY = "_review_config"
_SIGN_IN_KEY = "_review_sign_in_requested"  # a public_read visitor asked for the sign-in form


def open_store(path: str | Path) -> sqlite3.Connection:
    """This session's connection to the review store at `path` (opened, and created, on first use)."""
    path = str(Path(path).expanduser().resolve())
    held = st.session_state.get(_STORE_KEY)
    if held is None or held[0] != path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        st.session_state[_STORE_KEY] = (path, review.connect(path))
    return st.session_state[_STORE_KEY][1]


def sign_in_configured(config: auth.AuthConfig) -> bool:
    """Whether anyone can sign in: password accounts or an OpenID Connect provider."""
    return bool(config.accounts or config.oidc_providers)


def start(store_path: str | Path) -> Actor | None:
    """Open the review store and read the auth settings; the session's actor, None before sign-in.

    Shows an error and stops the script when the store cannot be opened or the secrets are invalid:
    a broken configuration must not open the dashboard.
    """
    try:
        open_store(store_path)
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        logger.exception("cannot open review store %s", store_path)
        st.error(f"The review store {code(str(store_path))} cannot be opened: {literal(str(exc))}")
        st.stop()
    try:
        config = auth.load_config()
    except ValueError as exc:
        st.error(f"The `[auth]` settings in `.streamlit/secrets.toml` are invalid: {literal(str(exc))}")
        st.stop()
    # Nobody could sign in without accounts or OIDC: the dashboard is then open, read-only for all.
    actor = auth.current_actor(config) if sign_in_configured(config) else Actor(None, "anonymous")
    st.session_state[_CONFIG_KEY] = config
    st.session_state[_ACTOR_KEY] = actor
    return actor


def pages(actor: Actor | None) -> list[st.Page]:
    """The Review pages this actor may open (all of them before sign-in, so deep links survive it)."""
    everyone = actor is None
    listed = [st.Page(VIEWS / "items.py", title="Reviews", icon=":material/rate_review:", url_path="reviews")]
    if everyone or actor.can_review:
        listed.append(
            st.Page(VIEWS / "queue.py", title="My queues", icon=":material/checklist:", url_path="review-queue")
        )
    if everyone or actor.can_manage:
        listed.append(
            st.Page(
                VIEWS / "admin.py",
                title="Review admin",
                icon=":material/admin_panel_settings:",
                url_path="review-admin",
            )
        )
    return listed


def _request_sign_in(wanted: bool) -> None:
    st.session_state[_SIGN_IN_KEY] = wanted


def _sign_out() -> None:
    auth.sign_out()
    st.session_state[_SIGN_IN_KEY] = False


def gate(actor: Actor | None) -> None:
    """Before sign-in: the sign-in form, then stop. After: who is signed in, and a sign-out button."""
    config = st.session_state[_CONFIG_KEY]
    wants_form = actor is not None and actor.user is None and st.session_state.get(_SIGN_IN_KEY, False)
    if actor is None or wants_form:
        st.title("Sign in")
        st.caption("ALBEF attention dashboard · team review")
        auth.sign_in_form(connection(), config)
        if wants_form:
            st.button("Continue without signing in (read-only)", on_click=_request_sign_in, args=(False,))
        st.stop()
    with st.sidebar:
        if actor.user is not None:
            st.markdown(f"Signed in as **{literal(actor.user)}** · `{actor.role}`")
            st.button("Sign out", key="sign_out", icon=":material/logout:", on_click=_sign_out)
        elif sign_in_configured(config):
            st.caption("Not signed in: read-only.")
            st.button("Sign in", key="sign_in", icon=":material/login:", on_click=_request_sign_in, args=(True,))
        else:
            st.caption("Read-only: no accounts are configured (see README, “Team review”).")


def connection() -> sqlite3.Connection:
    """This session's review store connection (set up by :func:`start`)."""
    return st.session_state[_STORE_KEY][1]


def store_path() -> str:
    """The review store's file, for code that must open its own connection (download callbacks)."""
    return st.session_state[_STORE_KEY][0]


def actor() -> Actor:
    """Who this session is (pages only run after :func:`gate` let them)."""
    return st.session_state[_ACTOR_KEY]


def config() -> auth.AuthConfig:
    """The parsed ``[auth]`` settings of this run."""
    return st.session_state[_CONFIG_KEY]


def reviewer_names() -> list[str]:
    """Known accounts that may review (password accounts and OIDC e-mails with reviewer or admin role)."""
    settings = config()
    names = [a.username for a in settings.accounts.values() if a.role in ("reviewer", "admin")]
    names += [email for email, role in settings.email_roles.items() if role in ("reviewer", "admin")]
    return sorted(names)
