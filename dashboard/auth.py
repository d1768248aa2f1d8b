"""Sign-in for the dashboard: password accounts and OpenID Connect, roles, throttling.

Accounts live in `.streamlit/secrets.toml` (never in the review database), in Streamlit's own `[auth]`
table, which also holds Streamlit's `st.login` (OpenID Connect) settings. Keys before the first
sub-table belong to `[auth]` itself (TOML). See `.streamlit/secrets.example.toml`:

    [auth]
    public_read = false            # true: visitors who have not signed in may read (never write)
    # OpenID Connect, optional: Streamlit's st.login settings (needs Authlib installed).
    redirect_uri = "http://localhost:8501/oauth2callback"
    cookie_secret = "a long random string"
    client_id = "..."              # a default provider; or one [auth.<name>] table per provider,
    client_secret = "..."          # each with client_id, client_secret, server_metadata_url
    server_metadata_url = "https://accounts.google.com/.well-known/openid-configuration"
    oidc_default_role = "viewer"   # role of OIDC users not in [auth.email_roles]; omit to refuse them

    [auth.users.alice]             # a password account; user names cannot contain '@'
    password_hash = "$2b$12$..."   # from: python -m dashboard.auth hash-password
    role = "reviewer"              # viewer | reviewer | admin

    [auth.email_roles]             # OIDC: verified e-mail address -> role
    "carol@example.org" = "admin"

    [auth.throttle]                # failed sign-ins in a row; defaults shown (db/review/signin.py)
    free_failures = 3              # per user name
    address_free_failures = 10     # per client address, whatever the user names
    base_delay_s = 1.0
    max_delay_s = 900.0
    reset_after_s = 3600.0

Roles: viewer reads; reviewer also writes verdicts, tags and comments; admin also manages queues and
reads the audit log (enforced in db/review/). Failed sign-ins are counted per user name and per client
address in the review store, checked and counted in one transaction, so the delay holds across parallel
attempts, sessions and server processes. The client address is Streamlit's `st.context.ip_address`: the
TCP peer, or, behind a reverse proxy on the same host, the address it forwards (uvicorn trusts
X-Forwarded-For from 127.0.0.1 only; FORWARDED_ALLOW_IPS names other proxies). Local connections have
none, and are then throttled per user name only.

Everything but the last section is plain Python; the Streamlit glue imports streamlit when called.
"""

import argparse
import getpass
import logging
import math
import re
import sqlite3
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import bcrypt

from dashboard.markup import literal
from db.review import Actor, signin
from db.review.signin import ThrottlePolicy

log = logging.getLogger(__name__)

ACCOUNT_ROLES = ("viewer", "reviewer", "admin")
DEFAULT_ROUNDS = 12  # bcrypt cost: about 0.2 s per check on a laptop core
MAX_USERNAME_CHARS = 200
_BCRYPT_HASH = re.compile(r"\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53}")
# Checked when the user name is unknown, so that a wrong name costs as long as a wrong password and
# timing does not reveal which names exist. Its password was random and thrown away.
_DUMMY_HASH = "$2b$12$eUhWEQa9dvjd.NbH1dQwNOWSmZu9IG.zEXMHNoXnf5fODI538xPHa"
_SESSION_USER = "_auth_signed_in_user"  # session_state key of the password sign-in; no widget may use it


@dataclass(frozen=True)
class Account:
    """A password account from the secrets."""

    username: str
    role: str
    password_hash: str = field(repr=False)


@dataclass(frozen=True)
class AuthConfig:
    """The parsed `[auth]` secrets."""

    accounts: Mapping[str, Account] = field(default_factory=dict)
    public_read: bool = False
    oidc_providers: tuple[str, ...] = ()  # "default" for provider settings directly in [auth]
    email_roles: Mapping[str, str] = field(default_factory=dict)  # lower-case e-mail -> role
    oidc_default_role: str | None = None
    throttle: ThrottlePolicy = ThrottlePolicy()


@dataclass(frozen=True)
class SignIn:
    """The outcome of a password sign-in."""

    actor: Actor | None  # set when it succeeded
    retry_after_s: float = 0.0  # > 0: sign-ins for this user name (or from this address) wait this long
    throttled: bool = False  # refused without checking the password: too many failures in a row

    @property
    def ok(self) -> bool:
        """Whether the sign-in succeeded."""
        return self.actor is not None


def _role(value: Any, where: str) -> str:
    if value not in ACCOUNT_ROLES:
        raise ValueError(f"{where}: role must be one of {ACCOUNT_ROLES}, got {value!r}")
    return value


def parse_auth_config(secrets: Mapping[str, Any]) -> AuthConfig:
    """Parse the `[auth]` table of the secrets (a dict from tomllib, or `st.secrets`); ValueError names
    the offending entry (never its hash). No `[auth]` table: no accounts, nothing public."""
    auth = secrets.get("auth", {})
    accounts = {}
    for username, entry in auth.get("users", {}).items():
        where = f"[auth.users.{username}]"
        if "@" in username or not username.strip() or len(username) > MAX_USERNAME_CHARS:
            raise ValueError(f"{where}: a user name is non-empty, at most {MAX_USERNAME_CHARS} chars, no '@'")
        password_hash = entry.get("password_hash", "")
        if not isinstance(password_hash, str) or not _BCRYPT_HASH.fullmatch(password_hash):
            raise ValueError(f"{where}: password_hash is not a bcrypt hash (python -m dashboard.auth hash-password)")
        accounts[username] = Account(username, _role(entry.get("role"), where), password_hash)

    public_read = auth.get("public_read", False)
    if not isinstance(public_read, bool):
        raise ValueError(f"[auth]: public_read must be true or false, got {public_read!r}")
    email_roles = {e.lower(): _role(r, "[auth.email_roles]") for e, r in auth.get("email_roles", {}).items()}
    default_role = auth.get("oidc_default_role")
    if default_role is not None:
        _role(default_role, "[auth] oidc_default_role")
    throttle = auth.get("throttle", {})
    unknown = set(throttle) - {f.name for f in fields(ThrottlePolicy)}
    if unknown:
        raise ValueError(f"[auth.throttle]: unknown settings {sorted(unknown)}")

    # Streamlit's st.login needs redirect_uri and cookie_secret, plus a provider: client_id in [auth]
    # itself (the default provider) or in a named [auth.<name>] table.
    providers: tuple[str, ...] = ()
    if "redirect_uri" in auth and "cookie_secret" in auth:
        named = tuple(k for k, v in auth.items() if isinstance(v, Mapping) and "client_id" in v)
        providers = (("default",) if "client_id" in auth else ()) + named
    return AuthConfig(
        accounts=accounts,
        public_read=public_read,
        oidc_providers=providers,
        email_roles=email_roles,
        oidc_default_role=default_role,
        throttle=ThrottlePolicy(**throttle),
    )


def hash_password(password: str, rounds: int = DEFAULT_ROUNDS) -> str:
    """A bcrypt hash of `password` for the secrets; ValueError if empty or over bcrypt's 72 bytes."""
    secret = password.encode()
    if not password or len(secret) > 72:
        raise ValueError("a password must be 1 to 72 bytes long (bcrypt ignores anything longer)")
    return bcrypt.hashpw(secret, bcrypt.gensalt(rounds)).decode()


def verify_password(password: str, password_hash: str) -> bool:
    """Whether `password` matches the bcrypt `password_hash` (constant-time compare inside bcrypt)."""
    try:
        return bcrypt.checkpw(password.encode(), password_hash.encode())
    except ValueError:  # a password over 72 bytes, or a malformed hash: no match either way
        return False


def sign_in(
    con: sqlite3.Connection,
    config: AuthConfig,
    username: str,
    password: str,
    *,
    address: str | None = None,
    now: float | None = None,
) -> SignIn:
    """Check a password sign-in, throttled per user name and per client address through the review store.

    While a user name or an address must wait, every attempt is refused without checking the password,
    so guesses during the wait are worthless. Unknown names are counted and slowed exactly like known ones.
    Args:
        address: the client's IP address (`st.context.ip_address`); None when unknown.
        now: unix time (tests pass a clock); default the current time.
    """
    now = time.time() if now is None else now
    if len(username) > MAX_USERNAME_CHARS:
        return SignIn(None)
    wait = signin.claim_sign_in(con, config.throttle, username, address, now)
    if wait > 0:
        log.warning("sign-in for %r from %s refused: throttled for %.0f s more", username, address, wait)
        return SignIn(None, wait, throttled=True)
    account = config.accounts.get(username)
    matched = verify_password(password, account.password_hash if account else _DUMMY_HASH)
    if account is not None and matched:
        signin.sign_in_succeeded(con, username, address)
        return SignIn(Actor(username, account.role))
    failures = signin.sign_in_failures(con, "user", username)[0]
    log.warning("failed sign-in for %r from %s (%d in a row)", username, address, failures)
    return SignIn(None, signin.sign_in_wait_s(con, config.throttle, username, address, now))


def oidc_actor(config: AuthConfig, user: Mapping[str, Any]) -> Actor | None:
    """The actor for an OpenID Connect user (`st.user` as a dict), named by e-mail, with the role from
    [auth.email_roles] or oidc_default_role; None if not signed in, e-mail missing or unverified, or no
    role applies."""
    email = user.get("email")
    if not user.get("is_logged_in") or not isinstance(email, str) or not email:
        return None
    if user.get("email_verified") is False:  # providers that say so; an unverified address proves nothing
        return None
    role = config.email_roles.get(email.lower(), config.oidc_default_role)
    return None if role is None else Actor(email, role)


# ---------------------------------------------------------------------------------------------- Streamlit


def load_config() -> AuthConfig:
    """The auth settings from Streamlit's secrets (defaults when there is no secrets file)."""
    import streamlit as st

    try:
        secrets = st.secrets.to_dict()
    except FileNotFoundError:  # Streamlit's "no secrets file" error subclasses it
        secrets = {}
    return parse_auth_config(secrets)


def current_actor(config: AuthConfig) -> Actor | None:
    """Who this session is: the signed-in password account, else the OIDC user, else anonymous when
    public_read, else None (show `sign_in_form` and nothing else). The role is read from the secrets on
    every run, so editing or removing an account takes effect at once."""
    import streamlit as st

    account = config.accounts.get(st.session_state.get(_SESSION_USER))
    if account is not None:
        return Actor(account.username, account.role)
    if config.oidc_providers:
        actor = oidc_actor(config, st.user.to_dict())
        if actor is not None:
            return actor
    return Actor(None, "anonymous") if config.public_read else None


def client_address() -> str | None:
    """The client's IP address as Streamlit's server saw it; None when unknown (a local connection, or a
    session without a real client, such as AppTest's)."""
    import streamlit as st

    address = st.context.ip_address
    return address if isinstance(address, str) else None


def sign_in_form(con: sqlite3.Connection, config: AuthConfig) -> None:
    """Render the sign-in form (password, and one button per OIDC provider) and act on it."""
    import streamlit as st

    user = st.user.to_dict() if config.oidc_providers else {}
    if user.get("is_logged_in") and oidc_actor(config, user) is None:
        st.warning(f"{literal(user.get('email') or 'This account')} has no access to this dashboard.")
        if st.button("Sign out"):
            st.logout()
    with st.form("sign_in"):
        username = st.text_input("User name")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        result = sign_in(con, config, username, password, address=client_address())
        if result.ok:
            st.session_state[_SESSION_USER] = username
            st.rerun()
        message = "Too many failed sign-ins." if result.throttled else "Wrong user name or password."
        if result.retry_after_s > 0:
            message += f" Try again in {math.ceil(result.retry_after_s)} s."
        st.error(message)
    for provider in config.oidc_providers:
        if st.button(f"Sign in with {provider}", key=f"oidc_{provider}"):
            st.login(None if provider == "default" else provider)


def sign_out() -> None:
    """End this session's sign-in (and the OIDC session, whose cookie would sign it in again)."""
    import streamlit as st

    st.session_state.pop(_SESSION_USER, None)
    if st.user.get("is_logged_in"):
        st.logout()


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    """`python -m dashboard.auth hash-password`: print a bcrypt hash to paste into secrets.toml."""
    parser = argparse.ArgumentParser(prog="python -m dashboard.auth", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    hasher = commands.add_parser("hash-password", help="prompt for a password and print its bcrypt hash")
    hasher.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="bcrypt cost factor (log2 rounds)")
    hasher.add_argument("--stdin", action="store_true", help="read the password from the first line of stdin")
    args = parser.parse_args(argv)

    if args.stdin:
        password = sys.stdin.readline().removesuffix("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            parser.exit(1, "the two passwords differ\n")
    try:
        print(hash_password(password, rounds=args.rounds))
    except ValueError as e:
        parser.exit(1, f"{e}\n")


if __name__ == "__main__":
    main()
