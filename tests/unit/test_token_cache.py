"""The token cache with keystoneauth's own plugins and token bodies (the lab's tests
check it against a real Keystone: tests/lab/test_token_cache_lab.py)."""

from __future__ import annotations

import datetime
import json
import stat

import pytest

from attachflow import errors
from attachflow.token_cache import CATALOG_TTL, Restored, TokenCache, enabled


def plugin(password: str = "pw", auth_url: str = "http://keystone.example:5000/v3",
           username: str = "member"):
    from keystoneauth1.identity import v3
    return v3.Password(auth_url=auth_url, username=username, password=password,
                       user_domain_name="Default", project_name="p",
                       project_domain_name="Default")


def logged_in(p, token: str = "tok-1", minutes_left: float = 60):
    """``p`` as a login leaves it: an auth_ref with a token and its expiry."""
    from keystoneauth1 import access
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
        minutes=minutes_left)
    body = {"token": {"expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                      "methods": ["password"], "catalog": [],
                      "user": {"id": "u", "name": "member", "domain": {"id": "default"}},
                      "project": {"id": "p", "name": "p", "domain": {"id": "default"}}}}
    p.auth_ref = access.create(body=body, auth_token=token)
    return p


NOTHING = Restored(False, None, 0.0)


def test_a_token_stored_by_one_command_is_used_by_the_next(tmp_path):
    cache = TokenCache(tmp_path / "tokens")
    cache.save(logged_in(plugin()), NOTHING)
    fresh = plugin()
    restored = cache.restore(fresh)
    assert restored.used and restored.token == "tok-1"
    assert fresh.auth_ref.auth_token == "tok-1"


def test_the_files_are_readable_by_their_owner_only(tmp_path):
    cache = TokenCache(tmp_path / "state" / "tokens")
    cache.save(logged_in(plugin()), NOTHING)
    assert stat.S_IMODE((tmp_path / "state" / "tokens").stat().st_mode) == 0o700
    files = list((tmp_path / "state" / "tokens").iterdir())
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    # named after keystoneauth's cache id: neither the user nor the password shows
    assert "member" not in files[0].name and "pw" not in files[0].name


@pytest.mark.parametrize("other", [
    {"password": "changed"}, {"auth_url": "http://other.example:5000/v3"},
    {"username": "someone-else"}])
def test_another_password_keystone_or_user_finds_no_token(tmp_path, other):
    cache = TokenCache(tmp_path)
    cache.save(logged_in(plugin()), NOTHING)
    stranger = plugin(**other)
    assert not cache.restore(stranger).used
    assert stranger.auth_ref is None


@pytest.mark.parametrize("minutes_left", [-5, 1])
def test_a_token_expired_or_about_to_is_not_used(tmp_path, minutes_left):
    cache = TokenCache(tmp_path)
    cache.save(logged_in(plugin(), minutes_left=minutes_left), NOTHING)
    fresh = plugin()
    assert not cache.restore(fresh).used
    assert fresh.auth_ref is None          # keystoneauth logs in afresh


def test_a_new_login_replaces_the_stored_token_and_a_failed_one_removes_it(tmp_path):
    cache = TokenCache(tmp_path)
    cache.save(logged_in(plugin()), NOTHING)
    p = plugin()
    known = cache.restore(p)
    logged_in(p, token="tok-2")            # a 401, then a new login mid-command
    known = cache.save(p, known)
    assert known.token == "tok-2" and cache.restore(plugin()).token == "tok-2"
    p.invalidate()                          # the next login was refused
    assert cache.save(p, known) == NOTHING
    assert list(tmp_path.iterdir()) == []


def test_an_unchanged_token_is_not_written_again(tmp_path):
    cache = TokenCache(tmp_path)
    known = cache.save(logged_in(plugin()), NOTHING)
    file = next(tmp_path.iterdir())
    before = file.stat().st_mtime_ns
    p = plugin()
    assert cache.save(p, cache.restore(p)) == known
    assert file.stat().st_mtime_ns == before


def test_a_catalog_older_than_the_ttl_is_read_again(tmp_path):
    now = [1000.0]
    cache = TokenCache(tmp_path, clock=lambda: now[0])
    cache.save(logged_in(plugin()), NOTHING)
    restored = cache.restore(plugin())
    assert not cache.catalog_stale(restored)
    now[0] += CATALOG_TTL + 1
    assert cache.catalog_stale(restored)
    p = plugin()
    restored = cache.restore(p)
    assert not cache.catalog_stale(cache.save(p, restored, catalog_read=True))


def test_a_damaged_file_costs_a_login_not_the_command(tmp_path):
    cache = TokenCache(tmp_path)
    cache.save(logged_in(plugin()), NOTHING)
    next(tmp_path.iterdir()).write_text("{not json")
    fresh = plugin()
    assert not cache.restore(fresh).used and fresh.auth_ref is None


def test_a_state_directory_that_cannot_be_written_costs_the_next_command_a_login(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = TokenCache(blocker / "tokens")       # a directory under a file: ENOTDIR
    cache.save(logged_in(plugin()), NOTHING)
    assert not cache.restore(plugin()).used


def test_expired_tokens_of_other_users_are_pruned_when_a_token_is_stored(tmp_path):
    cache = TokenCache(tmp_path)
    cache.save(logged_in(plugin(password="old")), NOTHING)
    old = next(tmp_path.iterdir())
    data = json.loads(old.read_text())
    state = json.loads(data["state"])
    state["body"]["token"]["expires_at"] = "2000-01-01T00:00:00.000000Z"
    data["state"] = json.dumps(state)
    old.write_text(json.dumps(data))
    cache.save(logged_in(plugin(password="new")), NOTHING)
    assert not old.exists() and len(list(tmp_path.iterdir())) == 1


def test_the_setting_turns_the_cache_off_and_refuses_a_typo(tmp_path):
    env = {"ATTACHFLOW_STATE_DIR": str(tmp_path)}
    assert TokenCache.from_env(env).directory == tmp_path / "tokens"
    assert TokenCache.from_env({**env, "ATTACHFLOW_TOKEN_CACHE": "off"}) is None
    assert enabled({"ATTACHFLOW_TOKEN_CACHE": "on"})
    with pytest.raises(errors.InputError, match="ATTACHFLOW_TOKEN_CACHE 'of' is not one"):
        enabled({"ATTACHFLOW_TOKEN_CACHE": "of"})
