"""The dashboard in a real browser: Streamlit's server in a subprocess, driven by Debian's Chromium.

Screenshots go to artifacts/screenshots/ (kept by CI as test artifacts).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import pytest

from db import queries, rankings, review
from db.review import Actor, Item
from tests.chromium import SCREENSHOTS, playwright_api
from tests.conftest import run_extraction

playwright = playwright_api()

REPO = Path(__file__).resolve().parents[1]
PAGE_SIZE = 24
# The goal is 2 s warm on an idle machine; the bound here leaves room for a loaded CI runner.
WARM_SEARCH_LIMIT_S = 6.0
HIGHLIGHT = "span.stMarkdownColoredBackground"  # the word a caption is shown for
METRICS = ("background_mass", "entropy")
# The goal is 1.5 s warm per interaction on an idle machine; the bound, like the search page's, leaves
# room for a loaded runner.
WARM_INTERACTION_LIMIT_S = WARM_SEARCH_LIMIT_S
# What a healthy server prints: its banner. Any other line (a warning, a traceback) fails the log test.
BANNER = re.compile(r"^\s*$|You can now view|URL: |Uvicorn server started|Did not auto detect|docs\.streamlit\.io")
SERVER_LOGS: dict[str, list[str]] = {}  # base URL -> the server's output lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(base: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            time.sleep(0.5)  # let the reader thread take the last lines
            raise RuntimeError(f"streamlit exited with {server.returncode}: {''.join(SERVER_LOGS[base])}")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as response:
                if response.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer at {base} within {timeout} s")


def keep_lines(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


@contextmanager
def streamlit_server(db: Path, review_db: Path) -> Iterator[str]:
    """`streamlit run dashboard/app.py -- --db DB --review-db REVIEW_DB` on a free localhost port, without
    accounts (open, read-only); yields its base URL."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(REPO / "dashboard" / "app.py"),
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--",
        "--db",
        str(db),
        "--review-db",
        str(review_db),
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    SERVER_LOGS[base] = []
    threading.Thread(target=keep_lines, args=(process.stdout, SERVER_LOGS[base]), daemon=True).start()
    try:
        wait_healthy(base, process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def server(extracted_db, tmp_path_factory):
    """The dashboard on the real extraction of the shared COCO subset; yields its base URL."""
    with streamlit_server(extracted_db, tmp_path_factory.mktemp("browser") / "review.sqlite") as base:
        yield base


def wait_for_overlays(page, count: int, timeout_ms: int = 60_000) -> None:
    """Wait until the Search page shows ``count`` result images with their pixels loaded."""
    page.wait_for_function(
        """n => { const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
                  return imgs.length === n && imgs.every(img => img.complete && img.naturalWidth > 0); }""",
        arg=count,
        timeout=timeout_ms,
    )


def shoot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def test_search_a_word_see_overlays_open_an_image(server, page):
    page.goto(server)
    page.get_by_text("Choose a word or a COCO category").wait_for(timeout=60_000)
    # Type into the word box like a user, pick the suggestion.
    page.get_by_role("combobox", name="Word").click()
    page.keyboard.type("man")
    page.get_by_role("option", name="man ·").first.click()
    wait_for_overlays(page, PAGE_SIZE)
    assert "word=man" in page.url
    playwright.expect(page.locator(HIGHLIGHT, has_text="man")).to_have_count(PAGE_SIZE)
    shoot(page, "search_man")

    # A bound control writes itself into the URL, so the view can be shared.
    page.get_by_text("Filters and ranking").click()
    page.get_by_text("ascending").click()
    page.wait_for_url("**order=ascending**", timeout=30_000)
    wait_for_overlays(page, PAGE_SIZE)

    page.locator('[data-testid="stPageLink"] a', has_text="Image").first.click()
    page.wait_for_url("**/image?**", timeout=30_000)
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=60_000)
    page.get_by_text("Every word", exact=True).wait_for()
    assert "image=" in page.url and "w=" in page.url
    playwright.expect(page.locator(HIGHLIGHT)).to_have_count(1)  # the chosen word, in its caption
    shoot(page, "image_detail")

    # Region to words: click a grid cell of the image.
    area = page.locator('[data-testid="stPlotlyChart"] .nsewdrag').first.bounding_box()
    x, y = area["x"] + 0.8 * area["width"], area["y"] + 0.3 * area["height"]
    page.mouse.move(x - 10, y - 10)
    page.mouse.move(x, y, steps=5)  # plotly picks the point under the pointer on hover
    page.mouse.click(x, y)
    page.get_by_text("Selected cells").wait_for(timeout=30_000)
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    shoot(page, "image_region")


def test_deep_link_restores_the_view_and_is_fast_when_warm(server, page):
    link = f"{server}/?word=a&sort=entropy&order=ascending&p=2&cmap=viridis"
    page.goto(link)
    wait_for_overlays(page, PAGE_SIZE)
    assert page.get_by_role("combobox", name="Word").input_value().startswith("a ·")
    page.get_by_text("Display").click()
    assert page.get_by_role("combobox", name="Colour map").input_value() == "viridis"
    started = time.monotonic()
    page.goto(link)
    wait_for_overlays(page, PAGE_SIZE)
    warm = time.monotonic() - started
    print(f"warm search page with {PAGE_SIZE} overlays: {warm:.2f} s")
    shoot(page, "search_deep_link")
    assert warm < WARM_SEARCH_LIMIT_S


def test_statistics_and_runs_pages_render(server, page):
    page.goto(f"{server}/statistics?view=leaderboards")
    page.locator('[data-testid="stPlotlyChart"]').nth(3).wait_for(timeout=60_000)
    page.wait_for_timeout(1000)  # let plotly finish drawing before the screenshot
    shoot(page, "statistics_leaderboards")
    # Clicking a bar of the noisiest-words board opens that word's search, ranked by entropy.
    bar = page.locator('[data-testid="stPlotlyChart"]').first.locator("g.point path").first.bounding_box()
    x, y = bar["x"] + bar["width"] - 5, bar["y"] + bar["height"] / 2  # the bar's end: its base is off-axis
    page.mouse.move(x - 5, y)
    page.mouse.click(x, y)
    page.wait_for_url("**word=**", timeout=30_000)
    assert "sort=entropy" in page.url
    wait_for_overlays(page, min(PAGE_SIZE, 3))
    page.goto(f"{server}/runs")
    page.get_by_text("images done").wait_for(timeout=60_000)
    shoot(page, "runs")


# ---------------------------------------------------------------- journeys from the landing page


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """The dashboard on a small build of the embedded demo (what `make run` shows); yields its base URL."""
    from extractor.demo.prepare import prepare

    db = prepare(tmp_path_factory.mktemp("demo"), n_images=60, seed=0, res=128)
    with streamlit_server(db, tmp_path_factory.mktemp("demo_review") / "review.sqlite") as base:
        yield base, db


@pytest.fixture(scope="module")
def subset_server(server, extracted_db):
    return server, extracted_db


def shown_slice(page) -> tuple[str, str, int]:
    """(run, method, layer) the URL names: the sidebar writes them on every page."""
    query = parse_qs(urlparse(page.url).query)
    return query["run"][0], query["method"][0], int(query["layer"][0])


def settle(page, outcome) -> None:
    """Wait until `outcome` (a locator) shows and the script run that drew it has ended (its stale
    elements gone)."""
    outcome.wait_for(timeout=60_000)
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=60_000)


def timed(page, action, outcome) -> float:
    """Seconds from an action until the page has settled on its outcome."""
    started = time.monotonic()
    action()
    settle(page, outcome)
    return time.monotonic() - started


def ranking_links(page) -> list[str]:
    """The ranking's links ("rank. name · mean · count"), once all 24 are drawn."""
    links = page.locator('[data-testid="stPageLink"] a')
    playwright.expect(links).to_have_count(PAGE_SIZE, timeout=30_000)
    return links.all_inner_texts()


@pytest.mark.parametrize("which", ["demo_server", "subset_server"])
def test_worst_words_in_two_clicks_and_any_image_in_three(request, page, which):
    base, db = request.getfixturevalue(which)
    heading = page.get_by_text("worst words by mean background mass")
    for _ in range(2):  # the second time warm
        page.goto(base)
        settle(page, heading)
    run_id, method, layer = shown_slice(page)
    con = queries.connect_readonly(db)
    try:
        ranked = {metric: rankings.ranked(con, run_id, method, layer, metric, min_count=5) for metric in METRICS}
        worst = {metric: frame["word"].tolist() for metric, frame in ranked.items()}
        category = queries.list_categories(con, run_id).query("n_images > 0").iloc[0]
        n_images = rankings.ranked_images(
            con, run_id, method, layer, "background_mass", category_id=int(category["category_id"])
        )["n_images"].iloc[0]
    finally:
        con.close()
    assert len(worst["background_mass"]) == PAGE_SIZE
    # No click: the 24 words with the most background mass, worst first.
    links = ranking_links(page)
    assert [link.split(" · ")[0] for link in links] == [f"{i}. {w}" for i, w in enumerate(worst["background_mass"], 1)]
    shoot(page, f"landing_{which}")

    # Click 1: by entropy.
    entropy = page.locator('[data-testid="stButtonGroup"] button', has_text="entropy")
    seconds = [timed(page, entropy.click, page.get_by_text("worst words by mean entropy"))]
    assert [link.split(" · ")[0] for link in ranking_links(page)] == [
        f"{i}. {w}" for i, w in enumerate(worst["entropy"], 1)
    ]
    # Click 2: the noisiest word's maps, ranked by entropy, in the same slice.
    first = page.locator('[data-testid="stPageLink"] a').first
    seconds.append(timed(page, first.click, page.get_by_text("ranked by entropy")))
    wait_for_overlays(page, min(PAGE_SIZE, int(ranked["entropy"]["n"].iloc[0])), timeout_ms=30_000)
    assert f"word={worst['entropy'][0]}" in page.url and shown_slice(page) == (run_id, method, layer)
    shoot(page, f"landing_worst_word_{which}")

    # An image in three clicks: the image ranking, a category, an image.
    page.goto(base)
    settle(page, heading)
    images = page.locator('[data-testid="stButtonGroup"] button', has_text="images")
    seconds.append(timed(page, images.click, page.get_by_text("images by mean background mass")))
    page.get_by_role("combobox", name="With a labelled object of").click()
    option = page.get_by_role("option", name=category["name"], exact=True)
    seconds.append(timed(page, option.click, page.get_by_text(f"{n_images:,} images by mean background mass")))
    shoot(page, f"image_browser_{which}")
    link = page.locator('[data-testid="stPageLink"] a', has_text="Image").first
    seconds.append(timed(page, link.click, page.get_by_text("Every word", exact=True)))
    assert "image=" in page.url
    print(f"{which}: warm interactions settled in " + ", ".join(f"{s:.2f}" for s in seconds) + " s")
    assert max(seconds) < WARM_INTERACTION_LIMIT_S


def test_a_word_opens_where_it_grounds_best_and_a_bad_link_says_so(server, extracted_db, page):
    con = queries.connect_readonly(extracted_db)
    try:
        run = queries.list_runs(con).iloc[0]
        best = rankings.best_slices(con, run["run_id"], word="man").iloc[0]
    finally:
        con.close()
    page.goto(f"{server}/?word=man")
    wait_for_overlays(page, PAGE_SIZE)
    assert shown_slice(page)[1:] == (best["method"], int(best["layer"]))
    playwright.expect(page.get_by_text("grounds best in this run")).to_be_visible()
    attention_only = sorted(set(run["layers"]) - {run["gradcam_layer"]})[0]
    page.goto(f"{server}/?word=man&method=gradcam&layer={attention_only}")
    wait_for_overlays(page, PAGE_SIZE)
    playwright.expect(page.get_by_text(f"Layer “{attention_only}” from the link is not available")).to_be_visible()
    assert shown_slice(page)[1:] == ("gradcam", int(run["gradcam_layer"]))
    assert page.get_by_role("combobox", name="Layer").input_value() == str(run["gradcam_layer"])
    shoot(page, "bad_layer_link")


# ---------------------------------------------------------------- dataset text is shown as text

HOSTILE_IMAGE = 802  # the kitchen of ../shared/coco/val2017-small, with a labelled refrigerator
HOSTILE_FILE = "**bold** <u>x ![f](b.png).jpg"  # a file name holds no slash, so no absolute URL


class Beacon(BaseHTTPRequestHandler):
    """A listener that records every request: what a beacon in dataset text would make a browser fetch."""

    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def beacon() -> Iterator[tuple[str, list[str]]]:
    """A beacon listener on a free port; yields its URL and the paths it was asked for."""
    listener = ThreadingHTTPServer(("127.0.0.1", 0), Beacon)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{listener.server_address[1]}", Beacon.hits
    listener.shutdown()


def hostile(beacon_url: str, where: str) -> str:
    """Markdown and HTML that would fetch `beacon_url` (the path names `where`) if read as markup."""
    return (
        f'![x]({beacon_url}/{where}-md.png) <img src="{beacon_url}/{where}-html.png"> '
        f"**bold** :red[red] <{beacon_url}/{where}-link>"
    )


@pytest.fixture(scope="module")
def hostile_db(shared, beacon, tmp_path_factory) -> Path:
    """A real extraction of val2017-small after hostile edits: one image's first caption, file name and
    labelled category hold Markdown and HTML aimed at the beacon."""
    url, _ = beacon
    root = tmp_path_factory.mktemp("hostile")
    small = shared / "coco" / "val2017-small"
    annotations = root / "coco" / "hostile" / "annotations"
    images = root / "coco" / "hostile" / "val2017"
    annotations.mkdir(parents=True)
    images.mkdir()
    for name in ("fixtures", "bert-base-uncased"):
        (root / name).symlink_to(shared / name)
    captions = json.loads((small / "annotations" / "captions_val2017_small.json").read_text())
    instances = json.loads((small / "annotations" / "instances_val2017_small.json").read_text())
    for image in captions["images"]:
        name = HOSTILE_FILE if image["id"] == HOSTILE_IMAGE else image["file_name"]
        shutil.copyfile(small / "val2017" / image["file_name"], images / name)  # a link out: refused
    for image in (*captions["images"], *instances["images"]):
        if image["id"] == HOSTILE_IMAGE:
            image["file_name"] = HOSTILE_FILE
    caption = next(c for c in captions["annotations"] if c["image_id"] == HOSTILE_IMAGE)
    caption["caption"] = hostile(url, "caption") + " " + caption["caption"]
    category = next(a["category_id"] for a in instances["annotations"] if a["image_id"] == HOSTILE_IMAGE)
    next(c for c in instances["categories"] if c["id"] == category)["name"] = hostile(url, "category")
    (annotations / "captions_hostile.json").write_text(json.dumps(captions))
    (annotations / "instances_hostile.json").write_text(json.dumps(instances))
    return run_extraction(root, root / "hostile.duckdb", "hostile")


@pytest.fixture(scope="module")
def hostile_store(hostile_db, beacon, tmp_path_factory) -> tuple[Path, Item]:
    """A review store whose reviewer name, note, tag and comment on a word of the hostile image are
    aimed at the beacon too."""
    url, _ = beacon
    con = queries.connect_readonly(hostile_db)
    try:
        run_id = queries.list_runs(con)["run_id"].iloc[0]
        words = queries.image_detail(con, HOSTILE_IMAGE, run_id)["words"]
    finally:
        con.close()
    item = Item.from_row(words.iloc[0].to_dict() | {"run_id": run_id})
    store = tmp_path_factory.mktemp("hostile_review") / "review.sqlite"
    reviews = review.connect(store)
    reviewer = Actor(hostile(url, "user"), "reviewer")
    review.set_verdict(reviews, reviewer, item, "other", hostile(url, "note"))
    review.add_tag(reviews, reviewer, item, f"![t]({url}/tag.png)")
    review.add_comment(reviews, reviewer, item, hostile(url, "comment"))
    reviews.close()
    return store, item


def test_dataset_and_review_text_is_shown_as_text_and_fetches_nothing(
    hostile_db, hostile_store, beacon, browser, tmp_path
):
    url, hits = beacon
    store, item = hostile_store
    with streamlit_server(hostile_db, store) as base:
        context = browser.new_context(viewport={"width": 1400, "height": 2400})
        requests: list[str] = []
        context.on("request", lambda request: requests.append(request.url))
        page = context.new_page()
        try:
            page.goto(f"{base}/image?image={HOSTILE_IMAGE}&box=true&objects=true")
            page.get_by_text("Every word", exact=True).wait_for(timeout=60_000)
            page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=60_000)
            for where in ("caption", "category"):  # the raw caption, and the labelled objects' names
                playwright.expect(page.get_by_text(hostile(url, where), exact=False).first).to_be_visible()
            playwright.expect(page.get_by_text(HOSTILE_FILE, exact=False)).to_be_visible()
            shoot(page, "hostile_image")

            page.goto(f"{base}/reviews?{urlencode({'item': item.key})}")
            page.get_by_text("Comments (1)").wait_for(timeout=60_000)
            for where in ("user", "note", "comment"):
                playwright.expect(page.get_by_text(hostile(url, where), exact=False).first).to_be_visible()
            shoot(page, "hostile_review")

            # A link that carries markup in a query parameter.
            page.goto(f"{base}/?{urlencode({'word': hostile(url, 'link')})}")
            playwright.expect(page.get_by_text("does not occur in the captions")).to_be_visible(timeout=60_000)
            page.goto(f"{base}/statistics?view=leaderboards&min_n=1")
            page.locator('[data-testid="stPlotlyChart"]').nth(3).wait_for(timeout=60_000)
            page.wait_for_timeout(1000)  # plotly draws its labels after the chart appears
        finally:
            context.close()
    outside = [r for r in requests if not r.startswith((base, "data:", "blob:"))]
    assert outside == [] and hits == []
    assert any(r.startswith(base) for r in requests)  # the listener heard the pages' own requests


@pytest.mark.parametrize("which", ["server", "demo_server"])
def test_the_server_logged_no_warning_or_exception(request, which):
    """Runs last in this module: the servers' whole output during the browser tests is their banner."""
    base = request.getfixturevalue(which)
    base = base if isinstance(base, str) else base[0]
    time.sleep(0.5)
    unexpected = [line for line in SERVER_LOGS[base] if not BANNER.search(line)]
    assert unexpected == [], "".join(unexpected)
