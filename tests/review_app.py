"""The review app under test: accounts for each role, a fresh store, AppTest sessions and helpers to drive them
(fixtures registered by tests/conftest.py)."""

import sys
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import auth
from db import queries, review
from db.queries import WordFilter
from db.review import Item

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
ROUNDS = 4  # the cheapest bcrypt cost keeps sign-ins fast here
ROLES = {"alice": "reviewer", "bob": "reviewer", "carol": "admin", "victor": "viewer"}
WORD = "dog"  # the word the queues are made of: in the small subset's captions, with a labelled dog
INJECTIONS = [
    "<script>alert('xss')</script>",
    "'; DROP TABLE verdicts; --",
    "**bold** [link](javascript:alert(1)) <img src=x onerror=alert(1)>",
    "x' OR '1'='1",
]


@pytest.fixture(scope="module")
def accounts() -> dict:
    return {
        name: {"password_hash": auth.hash_password(f"{name}-pw", rounds=ROUNDS), "role": role}
        for name, role in ROLES.items()
    }


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "review.sqlite"


@pytest.fixture
def make_app(small_db, store, accounts, monkeypatch):
    """A fresh browser session on the dashboard: AppTest with the given [auth] secrets (None: none)."""
    monkeypatch.setattr(sys, "argv", ["app.py", "--db", str(small_db), "--review-db", str(store)])

    def make(public_read: bool = False, secrets: bool = True) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=60)
        if secrets:
            at.secrets["auth"] = {"public_read": public_read, "users": accounts}
        return at

    return make


@pytest.fixture(scope="module")
def dog_words(small_db) -> pd.DataFrame:
    """The gradcam rows of the word 'dog' in the small subset, as the Search page ranks them."""
    con = queries.connect_readonly(small_db)
    try:
        rows = queries.search_words(
            con, WordFilter(word=WORD, method="gradcam"), sort="background_mass", limit=None, with_maps=False
        )
    finally:
        con.close()
    assert len(rows) >= 4
    return rows


def sign_in(at: AppTest, user: str, password: str | None = None) -> AppTest:
    by_label = {t.label: t for t in at.text_input}
    by_label["User name"].input(user)
    by_label["Password"].input(f"{user}-pw" if password is None else password)
    return button(at, "Sign in").click().run()


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def labels(at: AppTest) -> list[str]:
    return [b.label for b in at.button]


def texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def verdict_lines(at: AppTest) -> list[str]:
    """The panel's verdict lines without their time: ':colour-badge[verdict] **reviewer**'."""
    return [
        m.value.rsplit(" · ", 1)[0]
        for m in at.markdown
        if "-badge[" in m.value and "**" in m.value and m.value.split("[", 1)[1].split("]", 1)[0] in review.VERDICTS
    ]


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The first dataframe shown that has `column`."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def can_open(at: AppTest, page: str, title: str | None = None) -> bool:
    """Whether this session's navigation has `page` (and, when given, it shows `title`)."""
    try:
        at.switch_page(page).run()
    except ValueError as exc:  # AppTest: the page is not registered with st.navigation in this session
        assert "Could not find a navigation page" in str(exc)
        return False
    return title is None or title in [t.value for t in at.title]


def signed_in(make_app, user: str, **kwargs) -> AppTest:
    at = make_app(**kwargs)
    at.run()
    sign_in(at, user)
    assert not at.exception
    return at


def open_item(at: AppTest, item: Item) -> AppTest:
    at.query_params["item"] = item.key
    at.switch_page("review/views/items.py").run()
    assert not at.exception, at.exception
    return at
