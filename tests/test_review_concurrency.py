"""Concurrent writers on one review store lose nothing: sessions as threads, servers as processes."""

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from db import review
from db.review import Actor, Item, signin

REPO = Path(__file__).resolve().parents[1]
RUN = "0123456789abcdef"
ADMIN = Actor("root", "admin")

# A dashboard server process: opens the store (possibly creating it), says it is ready, waits for the
# start signal so that both processes write at the same time, then writes.
SERVER = """
import sys, time
from pathlib import Path
from db import review
from db.review import Actor, Item, signin

path, name, ready, go, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
con = review.connect(path)
ready.touch()
deadline = time.monotonic() + 60
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("no start signal")
    time.sleep(0.005)
actor = Actor(name, "reviewer")
never_throttled = signin.ThrottlePolicy(free_failures=10 * n)
for i in range(n):
    item = Item("0123456789abcdef", 1, 1, i, "attention", 6)
    review.set_verdict(con, actor, item, "noisy")
    review.add_comment(con, actor, item, f"{name} {i}")
    assert signin.claim_sign_in(con, never_throttled, "mallory", None, time.time()) == 0
    # A user pauses between clicks. Without a pause one process re-takes the lock right after each
    # commit while the other's busy handler sleeps, so the other waits (no loss) but never interleaves.
    time.sleep(0.002)
"""


def test_twenty_sessions_writing_fifty_verdicts_each_lose_none(tmp_path):
    path = tmp_path / "review.sqlite"
    review.connect(path).close()
    n_threads, n_writes = 20, 50
    start = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def session(t: int) -> None:
        con = review.connect(path)  # one connection per session, as the dashboard does
        actor = Actor(f"reviewer{t:02d}", "reviewer")
        try:
            start.wait()
            for i in range(n_writes):
                # Everyone judges the same items, so writers collide on the same rows and pages.
                review.set_verdict(con, actor, Item(RUN, 1, 1, i, "gradcam", 8), review.VERDICTS[(t + i) % 5])
        except BaseException as e:  # noqa: BLE001 - reported below with the thread's failure
            errors.append(e)
        finally:
            con.close()

    threads = [threading.Thread(target=session, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    assert errors == []
    con = review.connect(path)
    per_reviewer = dict(con.execute("SELECT reviewer, COUNT(*) FROM verdicts GROUP BY reviewer").fetchall())
    assert per_reviewer == {f"reviewer{t:02d}": n_writes for t in range(n_threads)}
    audit = con.execute("SELECT COUNT(*), COUNT(DISTINCT actor) FROM audit_log").fetchone()
    assert tuple(audit) == (n_threads * n_writes, n_threads)
    assert review.verify_audit_chain(con, ADMIN).ok
    assert review.agreement(con)["n_shared"].eq(n_writes).all()


def test_two_server_processes_writing_at_once_lose_none(tmp_path):
    path, go, n = tmp_path / "review.sqlite", tmp_path / "go", 150  # the store does not exist yet
    names = ["server-a", "server-b"]
    ready = {name: tmp_path / f"{name}.ready" for name in names}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SERVER, str(path), name, str(ready[name]), str(go), str(n)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in names
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready.values()):
            assert time.monotonic() < deadline, "servers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs

    con = review.connect(path)
    assert dict(con.execute("SELECT reviewer, COUNT(*) FROM verdicts GROUP BY reviewer").fetchall()) == {
        name: n for name in names
    }
    assert con.execute("SELECT COUNT(*) FROM comments").fetchone()[0] == 2 * n
    assert con.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0] == 4 * n
    # Both processes count sign-in attempts on one counter: none lost.
    assert signin.sign_in_failures(con, "user", "mallory")[0] == 2 * n
    assert review.verify_audit_chain(con, ADMIN).ok  # their audit rows form one hash chain
    # Both really wrote at the same time: their audit rows interleave.
    actors = [r[0] for r in con.execute("SELECT actor FROM audit_log ORDER BY audit_id")]
    switches = sum(a != b for a, b in zip(actors, actors[1:], strict=False))
    assert switches > 1


def test_opening_waits_for_another_process_creating_the_store(tmp_path):
    # Another process is mid-way through creating the store: it holds the write lock of a file that is
    # not yet in WAL mode. SQLite refuses the WAL switch at once there (no busy wait), so without a retry
    # a second dashboard starting at the same moment fails with "database is locked".
    path = tmp_path / "review.sqlite"
    creator = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    creator.execute("BEGIN IMMEDIATE")
    creator.execute("CREATE TABLE being_created (x)")
    threading.Timer(0.3, creator.execute, ["COMMIT"]).start()
    con = review.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert review.schema_version(con) == review.SCHEMA_VERSION
