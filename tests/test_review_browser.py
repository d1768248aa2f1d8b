"""Two reviewers in two real browsers on one queue: a `streamlit run` server on a real extraction and a
real review store, driven with Playwright through Debian's Chromium. Each reviewer sees the other's
verdicts after a refresh. Screenshots go to artifacts/screenshots/."""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dashboard import auth
from db import queries, review
from db.queries import WordFilter
from db.review import Actor, Item
from tests.chromium import SCREENSHOTS, playwright_api

sync_api = playwright_api()

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "dashboard" / "app.py"
ROLES = {"alice": "reviewer", "bob": "reviewer", "carol": "admin"}
TIMEOUT_MS = 30_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secrets_toml(path: Path) -> Path:
    lines = ["[auth]", "public_read = false", ""]
    for name, role in ROLES.items():
        lines += [
            f"[auth.users.{name}]",
            f'password_hash = "{auth.hash_password(f"{name}-pw", rounds=4)}"',
            f'role = "{role}"',
            "",
        ]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def queue(small_db, tmp_path) -> tuple[Path, list[Item]]:
    """A review store with a queue of four 'dog' words assigned to alice and bob."""
    con = queries.connect_readonly(small_db)
    try:
        rows = queries.search_words(
            con, WordFilter(word="dog", method="gradcam"), sort="background_mass", limit=4, with_maps=False
        )
    finally:
        con.close()
    items = [Item.from_row(r) for r in rows.to_dict("records")]
    store = tmp_path / "review.sqlite"
    review.create_queue(
        review.connect(store), Actor("carol", "admin"), "dogs on sofas", {"word": "dog"}, items, ["alice", "bob"]
    )
    return store, items


@pytest.fixture
def server(small_db, queue, tmp_path):
    """`streamlit run dashboard/app.py` on a free port with password accounts in a secrets file."""
    store, _ = queue
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--secrets.files", str(secrets_toml(tmp_path / "secrets.toml")),
         "--", "--db", str(small_db), "--review-db", str(store)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read() == b"ok":
                    break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"streamlit did not start:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def sign_in(page, url: str, user: str, screenshot: Path | None = None) -> None:
    page.goto(url)
    name = page.get_by_role("textbox", name="User name")
    sync_api.expect(name).to_be_visible(timeout=TIMEOUT_MS)
    if screenshot is not None:
        page.screenshot(path=screenshot)
    name.fill(user)
    page.get_by_role("textbox", name="Password").fill(f"{user}-pw")
    page.get_by_role("button", name="Sign in").click()
    sync_api.expect(page.get_by_text(f"Signed in as {user}")).to_be_visible(timeout=TIMEOUT_MS)
    page.get_by_role("link", name="My queues").click()
    sync_api.expect(page.get_by_text("Item 1 of 4")).to_be_visible(timeout=TIMEOUT_MS)


def settle(page) -> None:
    """Wait until the script run the last action started has finished."""
    page.wait_for_timeout(300)
    sync_api.expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=TIMEOUT_MS)


def verdict_line(page, user: str, verdict: str):
    """The review panel's line for one reviewer's verdict, e.g. 'noisy alice · 2026-... UTC'."""
    return page.get_by_test_id("stMarkdownContainer").filter(has_text=f"{verdict} {user} ·")


def test_two_reviewers_see_each_others_verdicts(server, queue, browser):
    store, items = queue
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    alice = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    bob = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    sign_in(alice, server, "alice", SCREENSHOTS / "review_sign_in.png")
    sign_in(bob, server, "bob")
    sync_api.expect(bob.get_by_text("No verdict yet.")).to_be_visible()

    alice.keyboard.press("2")  # noisy, then on to item 2
    sync_api.expect(alice.get_by_text("Item 2 of 4")).to_be_visible(timeout=TIMEOUT_MS)

    bob.keyboard.press("r")  # Streamlit's rerun key: a refresh that keeps the session
    sync_api.expect(verdict_line(bob, "alice", "noisy")).to_be_visible(timeout=TIMEOUT_MS)
    settle(bob)
    bob.screenshot(path=SCREENSHOTS / "review_bob_sees_alice.png", full_page=True)

    bob.get_by_role("button", name="aligned").click()
    sync_api.expect(bob.get_by_text("Item 2 of 4")).to_be_visible(timeout=TIMEOUT_MS)
    # The run that moved on also empties the note box: typing before it ends can be overwritten.
    settle(bob)
    # Typing a digit into the note is text, not a verdict shortcut.
    note = bob.get_by_role("textbox", name="Note with my verdict (optional)")
    note.fill("3 dogs, 1 sofa")
    note.blur()  # commits the note; with the focus off it, keys are shortcuts again
    settle(bob)
    sync_api.expect(note).to_have_value("3 dogs, 1 sofa")
    assert review.item_review(review.connect(store), items[1]).verdicts == ()
    bob.keyboard.press("3")
    sync_api.expect(bob.get_by_text("Item 3 of 4")).to_be_visible(timeout=TIMEOUT_MS)

    alice.keyboard.press("k")  # back to item 1
    sync_api.expect(alice.get_by_text("Item 1 of 4")).to_be_visible(timeout=TIMEOUT_MS)
    sync_api.expect(verdict_line(alice, "bob", "aligned")).to_be_visible(timeout=TIMEOUT_MS)
    sync_api.expect(verdict_line(alice, "alice", "noisy")).to_be_visible()
    settle(alice)
    alice.screenshot(path=SCREENSHOTS / "review_alice_sees_bob.png", full_page=True)

    con = review.connect(store)
    assert {(v.reviewer, v.verdict) for v in review.item_review(con, items[0]).verdicts} == {
        ("alice", "noisy"),
        ("bob", "aligned"),
    }
    second = review.item_review(con, items[1]).verdicts
    assert [(v.reviewer, v.verdict, v.note) for v in second] == [("bob", "background-heavy", "3 dogs, 1 sofa")]
    assert (SCREENSHOTS / "review_alice_sees_bob.png").stat().st_size > 10_000
