"""Sessions, CSRF tokens, passwords and login throttling, without a server."""

from withcache.server.web.auth import FREE_LOGIN_TRIES, MAX_LOGIN_WAIT, SESSION_SECONDS, Auth

SECRET = b"s" * 32


def test_a_session_cookie_round_trips_and_carries_its_csrf_token():
    auth = Auth("pw", SECRET)
    session, cookie = auth.issue(now=1000.0)
    found = auth.verify(cookie, now=1001.0)
    assert found == session
    assert auth.csrf_ok(found, session.csrf)
    assert not auth.csrf_ok(found, "")
    assert not auth.csrf_ok(found, None)
    assert not auth.csrf_ok(found, session.csrf[:-1] + ("0" if session.csrf[-1] != "0" else "1"))


def test_tampered_expired_foreign_and_malformed_cookies_are_refused():
    auth = Auth("pw", SECRET)
    _, cookie = auth.issue(now=1000.0)
    expires, nonce, mac = cookie.split(".")
    later = str(int(expires) + 10**6)
    assert auth.verify(f"{later}.{nonce}.{mac}", now=1001.0) is None  # extended expiry
    assert auth.verify(f"{expires}.x{nonce}.{mac}", now=1001.0) is None
    assert auth.verify(cookie, now=1000.0 + SESSION_SECONDS + 1) is None
    for junk in ("", "a.b", "a.b.c", "..", "1.2.3.4", "-1.x.y", "\u00b2.x.y", "\u0661.x.y"):
        assert auth.verify(junk, now=1001.0) is None
    # Another secret, or another password, signs differently: those cookies are void.
    assert Auth("pw", b"t" * 32).verify(cookie, now=1001.0) is None
    assert Auth("other", SECRET).verify(cookie, now=1001.0) is None


def test_each_session_has_its_own_csrf_token():
    auth = Auth("pw", SECRET)
    first, _ = auth.issue()
    second, _ = auth.issue()
    assert first.csrf != second.csrf
    assert not auth.csrf_ok(first, second.csrf)


def test_password_check():
    auth = Auth("correct horse", SECRET)
    assert auth.password_ok("correct horse")
    for wrong in ("", "correct", "correct horse ", "Correct horse"):
        assert not auth.password_ok(wrong)
    assert not auth.open
    assert Auth(None, SECRET).open


def test_failed_logins_cost_a_growing_wait_after_a_few_tries():
    auth = Auth("pw", SECRET)
    now = 5000.0
    for _ in range(FREE_LOGIN_TRIES):
        assert auth.login_wait("10.0.0.1", now) == 0
        auth.login_failed("10.0.0.1", now)
    waits = []
    for _ in range(10):
        wait = auth.login_wait("10.0.0.1", now)
        waits.append(wait)
        now += wait
        auth.login_failed("10.0.0.1", now)
    assert waits[0] > 0
    assert waits == sorted(waits)
    assert waits[-1] == MAX_LOGIN_WAIT
    assert auth.login_wait("10.0.0.2", now) == 0  # other addresses are not held up
    auth.login_succeeded("10.0.0.1")
    assert auth.login_wait("10.0.0.1", now) == 0
