"""Sign-in throttling kept in the review store, shared by every dashboard session and process.

Failed sign-ins are counted per user name and per client address; `claim_sign_in` checks and counts an
attempt in one write transaction, so parallel attempts from any number of sessions and processes cannot
all pass the check. Accounts and passwords are dashboard/auth.py's; this module stores only the counts.
"""

import sqlite3
from dataclasses import dataclass

from db.review.store import one, write

_SIGN_IN_FAILURES = "SELECT failures, last_failure_at FROM sign_in_failures WHERE kind = ? AND name = ?"
_COUNT_SIGN_IN_FAILURE = """
INSERT INTO sign_in_failures (kind, name, failures, last_failure_at) VALUES (:kind, :name, 1, :now)
ON CONFLICT (kind, name) DO UPDATE SET
    failures = CASE WHEN :now - last_failure_at > :reset_after THEN 1 ELSE failures + 1 END,
    last_failure_at = MAX(last_failure_at, :now)"""
_CLEAR_USER_FAILURES = "DELETE FROM sign_in_failures WHERE kind = 'user' AND name = ?"
_UNCOUNT_ADDRESS_FAILURE = """
UPDATE sign_in_failures SET failures = failures - 1 WHERE kind = 'address' AND name = ? AND failures > 0"""


@dataclass(frozen=True)
class ThrottlePolicy:
    """How long sign-ins must wait after failures in a row, per user name and per client address."""

    free_failures: int = 3  # failures of one user name allowed back to back (typos) before any wait
    address_free_failures: int = 10  # the same from one client address, any names: people may share one
    base_delay_s: float = 1.0  # the first wait; doubles with each further failure
    max_delay_s: float = 900.0  # cap, so an attacker can lock an account out for 15 minutes at most
    reset_after_s: float = 3600.0  # a failure this long after the previous one starts a new count

    def delay_s(self, failures: int, free: int | None = None) -> float:
        """Seconds to wait after `failures` failures in a row, the first `free` (default free_failures) of
        them without a wait: 0, ..., 0, base, 2 base, 4 base, ..., max."""
        extra = failures - (self.free_failures if free is None else free)
        if extra < 0:
            return 0.0
        return min(self.max_delay_s, self.base_delay_s * 2.0 ** min(extra, 64))


# ---------------------------------------------------------------------------------------------- sign-in


def sign_in_failures(con: sqlite3.Connection, kind: str, name: str) -> tuple[int, float]:
    """(failures in a row, unix time of the last one) counted for a user name (`kind` 'user') or a client
    address ('address'); (0, 0.0) if none."""
    row = one(con, _SIGN_IN_FAILURES, (kind, name))
    return (0, 0.0) if row is None else (row["failures"], row["last_failure_at"])


def _sign_in_counters(policy: ThrottlePolicy, username: str, address: str | None) -> dict[tuple[str, str], int]:
    """The counters (kind, name) an attempt for `username` from `address` (None: unknown) goes on, with
    the failures each allows before a wait."""
    counters = {("user", username): policy.free_failures}
    if address is not None:
        counters[("address", address)] = policy.address_free_failures
    return counters


def sign_in_wait_s(
    con: sqlite3.Connection, policy: ThrottlePolicy, username: str, address: str | None, now: float
) -> float:
    """Seconds before `username` may try to sign in again from `address` (0 if now): the longer of the
    user name's and the address's waits."""
    waits = [0.0]
    for (kind, name), free in _sign_in_counters(policy, username, address).items():
        failures, last_at = sign_in_failures(con, kind, name)
        # `now` may predate a failure that another session counted while this one waited for the lock.
        elapsed = max(now - last_at, 0.0)
        if elapsed <= policy.reset_after_s:
            waits.append(policy.delay_s(failures, free) - elapsed)
    return max(waits)


def claim_sign_in(
    con: sqlite3.Connection, policy: ThrottlePolicy, username: str, address: str | None, now: float
) -> float:
    """Let one password check for `username` from `address` (None: unknown) go ahead, or say how long
    it must wait.

    In one write transaction: when `sign_in_wait_s` is 0 the attempt is counted as a failure of the user
    name and of the address before the password is checked, and 0 is returned; otherwise nothing is
    counted and the wait is returned. Counting first is what keeps parallel attempts, from any session or
    process, from all passing the check; `sign_in_succeeded` takes the count back.
    """
    with write(con):
        wait = sign_in_wait_s(con, policy, username, address, now)
        if wait == 0:
            for kind, name in _sign_in_counters(policy, username, address):
                params = {"kind": kind, "name": name, "now": now, "reset_after": policy.reset_after_s}
                con.execute(_COUNT_SIGN_IN_FAILURE, params)
    return wait


def sign_in_succeeded(con: sqlite3.Connection, username: str, address: str | None) -> None:
    """After a claimed attempt succeeded: the user name's failures are forgotten; the address only loses
    the failure counted in advance, so that one good account does not clear a guessing address."""
    with write(con):
        con.execute(_CLEAR_USER_FAILURES, (username,))
        if address is not None:
            con.execute(_UNCOUNT_ADDRESS_FAILURE, (address,))
