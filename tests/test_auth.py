import io
import multiprocessing
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import auth, paths
from db import review
from db.review import signin

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 4  # the cheapest bcrypt cost keeps tests fast; production hashes use auth.DEFAULT_ROUNDS


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    return {name: auth.hash_password(f"{name}-pw", rounds=ROUNDS) for name in ("alice", "carol", "victor")}


@pytest.fixture
def secrets(hashes) -> dict:
    return {
        "auth": {
            "users": {
                "alice": {"password_hash": hashes["alice"], "role": "reviewer"},
                "carol": {"password_hash": hashes["carol"], "role": "admin"},
                "victor": {"password_hash": hashes["victor"], "role": "viewer"},
            },
            "throttle": {"free_failures": 2, "base_delay_s": 10.0, "max_delay_s": 60.0, "reset_after_s": 600.0},
        }
    }


@pytest.fixture
def config(secrets) -> auth.AuthConfig:
    return auth.parse_auth_config(secrets)


@pytest.fixture
def con(tmp_path):
    con = review.connect(tmp_path / "review.sqlite")
    yield con
    con.close()


# ---------------------------------------------------------------------------------------------- passwords


def test_hash_and_verify(hashes):
    assert hashes["alice"].startswith("$2b$04$")
    assert auth.verify_password("alice-pw", hashes["alice"])
    assert not auth.verify_password("alice-pW", hashes["alice"])
    assert not auth.verify_password("", hashes["alice"])
    assert not auth.verify_password("x" * 100, hashes["alice"])  # over bcrypt's 72 bytes: no match, no error
    assert not auth.verify_password("alice-pw", "not a hash")
    assert auth.hash_password("alice-pw", rounds=ROUNDS) != hashes["alice"]  # salted
    for bad in ("", "\u00e9" * 37):  # 74 bytes in UTF-8
        with pytest.raises(ValueError):
            auth.hash_password(bad, rounds=ROUNDS)


def test_hash_password_cli(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret pass\n"))
    auth.main(["hash-password", "--stdin", "--rounds", str(ROUNDS)])
    assert auth.verify_password("s3cret pass", capsys.readouterr().out.strip())


def test_hash_password_cli_as_module():
    out = subprocess.run(
        [sys.executable, "-m", "dashboard.auth", "hash-password", "--stdin", "--rounds", str(ROUNDS)],
        input="from the shell\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout
    assert auth.verify_password("from the shell", out.strip())


# ---------------------------------------------------------------------------------------------- secrets


def test_example_secrets_parse_and_their_passwords_match():
    secrets = tomllib.loads((REPO / ".streamlit" / "secrets.example.toml").read_text())
    config = auth.parse_auth_config(secrets)
    assert {n: a.role for n, a in config.accounts.items()} == {
        "alice": "reviewer", "bob": "reviewer", "carol": "admin", "victor": "viewer",
    }  # fmt: skip
    assert auth.verify_password("carol-example-password", config.accounts["carol"].password_hash)
    assert config.public_read is False and config.oidc_providers == ()
    assert config.email_roles["dana@example.org"] == "admin"
    assert "password_hash" not in repr(config)  # hashes stay out of logs and error pages


def test_no_secrets_means_no_accounts_and_no_public_access():
    config = auth.parse_auth_config({})
    assert (config.accounts, config.public_read, config.oidc_providers) == ({}, False, ())


@pytest.mark.parametrize(
    ("users", "auth_extra", "message"),
    [
        ({"al@ice": {"role": "viewer"}}, {}, "no '@'"),
        ({"alice": {"role": "owner"}}, {}, "role must be one of"),
        ({"alice": {"role": "viewer", "password_hash": "hunter2"}}, {}, "not a bcrypt hash"),
        ({}, {"public_read": "false"}, "public_read must be true or false"),
        ({}, {"email_roles": {"x@example.org": "root"}}, "role must be one of"),
        ({}, {"throttle": {"free_failure": 1}}, "unknown settings"),
    ],
)
def test_invalid_secrets_are_refused_with_a_clear_message(hashes, users, auth_extra, message):
    users = {name: {"password_hash": hashes["alice"], **entry} for name, entry in users.items()}
    with pytest.raises(ValueError, match=message) as raised:
        auth.parse_auth_config({"auth": {"users": users, **auth_extra}})
    assert hashes["alice"] not in str(raised.value)


OIDC = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "s" * 32}
PROVIDER = {"client_id": "id", "client_secret": "secret", "server_metadata_url": "https://idp/.well-known"}


@pytest.mark.parametrize(
    ("auth_table", "providers"),
    [
        ({**OIDC, **PROVIDER}, ("default",)),
        ({**OIDC, "google": PROVIDER, "okta": PROVIDER}, ("google", "okta")),
        ({"google": PROVIDER}, ()),  # no redirect_uri/cookie_secret: st.login cannot work
        ({**OIDC}, ()),
    ],
)
def test_oidc_providers_detected_from_streamlit_settings(auth_table, providers):
    assert auth.parse_auth_config({"auth": auth_table}).oidc_providers == providers


def test_oidc_user_gets_role_by_verified_email():
    config = auth.parse_auth_config(
        {"auth": {**OIDC, **PROVIDER, "email_roles": {"Dana@Example.org": "admin"}, "oidc_default_role": "viewer"}}
    )
    user = {"is_logged_in": True, "email": "dana@example.ORG", "email_verified": True}
    assert auth.oidc_actor(config, user) == review.Actor("dana@example.ORG", "admin")
    assert auth.oidc_actor(config, {**user, "email": "eve@example.org"}).role == "viewer"
    assert auth.oidc_actor(config, {**user, "email_verified": False}) is None
    assert auth.oidc_actor(config, {**user, "is_logged_in": False}) is None
    assert auth.oidc_actor(config, {"is_logged_in": True}) is None
    strict = auth.parse_auth_config({"auth": {**OIDC, **PROVIDER}})
    assert auth.oidc_actor(strict, {"is_logged_in": True, "email": "eve@example.org"}) is None


# ---------------------------------------------------------------------------------------------- sign-in


def test_sign_in_gives_the_account_role(con, config):
    assert auth.sign_in(con, config, "alice", "alice-pw").actor == review.Actor("alice", "reviewer")
    assert auth.sign_in(con, config, "carol", "carol-pw").actor.can_manage
    assert not auth.sign_in(con, config, "victor", "victor-pw").actor.can_review
    for username, password in [("alice", "carol-pw"), ("nobody", "alice-pw"), ("", ""), ("Alice", "alice-pw")]:
        result = auth.sign_in(con, config, username, password)
        assert not result.ok and result.actor is None


def test_repeated_failures_are_slowed_down_across_sessions(tmp_path, config):
    # free_failures=2, base 10 s doubling, capped at 60 s, forgotten after 600 s.
    first = review.connect(tmp_path / "review.sqlite")
    other = review.connect(tmp_path / "review.sqlite")  # another session or server process
    t = 1000.0
    waits = [auth.sign_in(first, config, "alice", "guess", now=t + 100 * i).retry_after_s for i in range(6)]
    assert waits == [0.0, 10.0, 20.0, 40.0, 60.0, 60.0]

    t += 500  # the last failure was at t = 1500; alice must wait 60 s from then
    locked = auth.sign_in(other, config, "alice", "alice-pw", now=t + 30)
    assert not locked.ok and locked.throttled and locked.retry_after_s == pytest.approx(30.0)  # right password
    assert signin.sign_in_failures(other, "user", "alice")[0] == 6  # refusals during the wait are not counted
    assert auth.sign_in(other, config, "alice", "alice-pw", now=t + 61).ok
    assert signin.sign_in_failures(first, "user", "alice") == (0, 0.0)  # success clears the count


def test_unknown_names_are_throttled_like_known_ones_and_failures_expire(con, config):
    for i in range(2):
        assert not auth.sign_in(con, config, "mallory", "x", now=100.0 + i).throttled
    refused = auth.sign_in(con, config, "mallory", "x", now=105.0)
    assert refused.throttled and refused.retry_after_s == pytest.approx(6.0)
    assert auth.sign_in(con, config, "alice", "alice-pw", now=105.0).ok  # other names are unaffected
    # Long after the last failure, the count starts again: one more failure costs nothing.
    assert auth.sign_in(con, config, "mallory", "x", now=10_000.0).retry_after_s == 0.0
    assert signin.sign_in_failures(con, "user", "mallory")[0] == 1


def test_failures_from_one_address_slow_every_name_from_it(con, secrets):
    secrets["auth"]["throttle"] |= {"address_free_failures": 3}
    config = auth.parse_auth_config(secrets)
    for name in ("ann", "ben", "cid"):  # one failure each: no name is throttled by itself
        assert not auth.sign_in(con, config, name, "x", address="203.0.113.9", now=100.0).throttled
    refused = auth.sign_in(con, config, "alice", "alice-pw", address="203.0.113.9", now=101.0)
    assert refused.throttled and refused.retry_after_s == pytest.approx(9.0)
    assert auth.sign_in(con, config, "alice", "alice-pw", address="198.51.100.7", now=101.0).ok  # another address
    # A success from the address takes back only its own attempt: one good account does not clear it.
    assert auth.sign_in(con, config, "alice", "alice-pw", address="203.0.113.9", now=200.0).ok
    assert signin.sign_in_failures(con, "address", "203.0.113.9") == (3, 200.0)
    assert auth.sign_in(con, config, "dan", "x", address="203.0.113.9", now=201.0).throttled


def test_throttle_policy_delays():
    policy = auth.ThrottlePolicy()
    assert [policy.delay_s(n) for n in range(1, 8)] == [0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0]  # 3 free tries
    assert [policy.delay_s(n, policy.address_free_failures) for n in (9, 10, 11)] == [0.0, 1.0, 2.0]
    assert policy.delay_s(10_000) == policy.max_delay_s


PARALLEL = 20


def _attempt_in_threads(path, config, names, address, start, checked) -> None:
    """One wrong password per name, each in its own thread and review store connection (a session),
    all released together by the `start` barrier; counts in `checked` the passwords really checked."""

    def attempt(name: str) -> None:
        con = review.connect(path)
        try:
            start.wait()
            result = auth.sign_in(con, config, name, "wrong", address=address)
        finally:
            con.close()
        if not result.throttled:
            with checked.get_lock():
                checked.value += 1

    threads = [threading.Thread(target=attempt, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize(("names", "address", "allowed"), [
    (["alice"] * PARALLEL, None, auth.ThrottlePolicy.free_failures),
    ([f"user{i}" for i in range(PARALLEL)], "203.0.113.9", auth.ThrottlePolicy.address_free_failures),
])  # fmt: skip
def test_parallel_wrong_passwords_get_only_the_free_checks(tmp_path, names, address, allowed):
    # Half the attempts in threads here, half in threads of a second process (another server), at once.
    path = tmp_path / "review.sqlite"
    review.connect(path).close()
    account = {"password_hash": auth.hash_password("alice-pw"), "role": "reviewer"}  # production cost
    config = auth.parse_auth_config({"auth": {"users": {"alice": account}}})  # default throttle
    fork = multiprocessing.get_context("fork")
    start, checked = fork.Barrier(PARALLEL), fork.Value("i", 0)
    half = PARALLEL // 2
    other = fork.Process(target=_attempt_in_threads, args=(path, config, names[half:], address, start, checked))
    other.start()
    _attempt_in_threads(path, config, names[:half], address, start, checked)
    other.join(timeout=120)
    assert other.exitcode == 0
    assert checked.value == allowed
    con = review.connect(path)
    counted = (
        signin.sign_in_failures(con, "user", "alice")
        if address is None
        else signin.sign_in_failures(con, "address", address)
    )
    assert counted[0] == allowed  # every check was counted, no refusal was


# ---------------------------------------------------------------------------------------------- paths


@pytest.fixture
def image_root(tmp_path) -> Path:
    root = tmp_path / "images"
    (root / "val2014").mkdir(parents=True)
    (root / "val2014" / "a.jpg").write_bytes(b"jpg")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "val2014" / "inside.jpg").symlink_to(root / "val2014" / "a.jpg")
    (root / "val2014" / "outside.jpg").symlink_to(tmp_path / "secret.txt")
    (root / "linked_dir").symlink_to(tmp_path)
    return root


@pytest.mark.parametrize(
    "relative",
    [
        "../secret.txt",
        "val2014/../../secret.txt",
        "val2014/../../images_evil/x.jpg",
        "/etc/passwd",
        "C:\\Windows\\win.ini",
        "\\\\server\\share\\x.jpg",
        "val2014/outside.jpg",
        "linked_dir/secret.txt",
        "",
        "val2014/a.jpg\x00.png",
    ],
)
def test_paths_escaping_the_image_root_are_refused(image_root, relative):
    with pytest.raises(ValueError):
        paths.safe_image_path(image_root, relative)


@pytest.mark.parametrize(
    ("relative", "target"),
    [
        ("val2014/a.jpg", "val2014/a.jpg"),
        ("val2014/../val2014/a.jpg", "val2014/a.jpg"),
        ("val2014/inside.jpg", "val2014/a.jpg"),
    ],
)
def test_paths_inside_the_image_root_resolve(image_root, relative, target):
    path = paths.safe_image_path(image_root, relative)
    assert path == (image_root / target).resolve() and path.read_bytes() == b"jpg"


# ---------------------------------------------------------------------------------------------- Streamlit


def _app(db_path: str) -> None:
    import streamlit as st

    from dashboard import auth
    from db import review

    config = auth.load_config()
    con = review.connect(db_path)
    actor = auth.current_actor(config)
    if actor is None:
        auth.sign_in_form(con, config)
        st.stop()
    st.write(f"signed in: {actor.user} ({actor.role})")
    if actor.user is not None and st.button("Sign out"):
        auth.sign_out()
        st.rerun()


def _sign_in(at: AppTest, username: str, password: str) -> AppTest:
    at.text_input[0].input(username)
    at.text_input[1].input(password)
    return at.button[0].click().run()


@pytest.fixture
def app(tmp_path, secrets) -> AppTest:
    at = AppTest.from_function(_app, args=(str(tmp_path / "review.sqlite"),), default_timeout=30)
    at.secrets["auth"] = secrets["auth"]
    return at


def test_streamlit_sign_in_form_flow(app):
    app.run()
    assert not app.markdown and len(app.text_input) == 2  # nothing shown before sign-in
    _sign_in(app, "alice", "wrong")
    assert app.error[0].value == "Wrong user name or password."
    _sign_in(app, "alice", "wrong")
    assert app.error[0].value == "Wrong user name or password. Try again in 10 s."
    _sign_in(app, "alice", "alice-pw")
    assert app.error[0].value.startswith("Too many failed sign-ins. Try again in ")
    _sign_in(app, "carol", "carol-pw")
    assert app.markdown[0].value == "signed in: carol (admin)"
    app.button[0].click().run()  # sign out
    assert not app.markdown and len(app.text_input) == 2


def test_streamlit_public_read_shows_anonymous(app):
    app.secrets["auth"] = {**app.secrets["auth"], "public_read": True}
    app.run()
    assert app.markdown[0].value == "signed in: None (anonymous)"
