"""MULTI / EXEC / DISCARD / WATCH / UNWATCH."""

from __future__ import annotations

import time

import pytest
import redis

from server_wire import read_reply


def test_multi_exec(r):
    pipe = r.pipeline(transaction=True)
    pipe.set("a", 1).incr("a").get("a")
    assert pipe.execute() == [True, 2, b"2"]


def test_exec_keeps_errors_of_each_command(r):
    r.set("s", "text")
    pipe = r.pipeline(transaction=True)
    pipe.incr("s").set("t", 1)
    results = pipe.execute(raise_on_error=False)
    assert isinstance(results[0], redis.ResponseError)
    assert results[1] is True


def test_execabort_after_queueing_error(raw):
    raw.sendall(b"MULTI\r\nSET a 1\r\nNOSUCHCMD\r\nGET\r\nEXEC\r\nGET a\r\n")
    data = b""
    while data.count(b"\r\n") < 6:
        data += read_reply(raw)
    lines = data.split(b"\r\n")
    assert lines[0] == b"+OK"
    assert lines[1] == b"+QUEUED"
    assert lines[2].startswith(b"-ERR unknown command 'NOSUCHCMD'")
    assert lines[3] == b"-ERR wrong number of arguments for 'get' command"
    assert lines[4] == b"-EXECABORT Transaction discarded because of previous errors."
    assert lines[5] == b"$-1"


def test_nesting_and_orphans(raw):
    raw.sendall(b"EXEC\r\nDISCARD\r\nMULTI\r\nMULTI\r\nWATCH x\r\nDISCARD\r\n")
    data = b""
    while data.count(b"\r\n") < 6:
        data += read_reply(raw)
    assert data.split(b"\r\n")[:6] == [
        b"-ERR EXEC without MULTI",
        b"-ERR DISCARD without MULTI",
        b"+OK",
        b"-ERR MULTI calls can not be nested",
        b"-ERR WATCH inside MULTI is not allowed",
        b"+OK",
    ]


def test_discard(r):
    conn = r.connection_pool.get_connection()
    conn.send_command("MULTI")
    conn.read_response()
    conn.send_command("SET", "d", "1")
    assert conn.read_response() in (b"QUEUED", "QUEUED")
    conn.send_command("DISCARD")
    conn.read_response()
    r.connection_pool.release(conn)
    assert r.get("d") is None


def test_watch_aborts_when_key_changes(kvorum_node, r):
    r.set("w", 1)
    with r.pipeline() as pipe:
        pipe.watch("w")
        with kvorum_node.client() as other:
            other.set("w", 2)
        pipe.multi()
        pipe.set("w", 3)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert r.get("w") == b"2"


def test_watch_passes_when_untouched(r):
    r.set("w", 1)
    with r.pipeline() as pipe:
        pipe.watch("w")
        pipe.multi()
        pipe.incr("w")
        assert pipe.execute() == [2]


def test_watch_missing_key_then_created(kvorum_node, r):
    with r.pipeline() as pipe:
        pipe.watch("fresh")
        r.set("fresh", 1)
        pipe.multi()
        pipe.get("fresh")
        with pytest.raises(redis.WatchError):
            pipe.execute()


def test_unwatch(r):
    r.set("u", 1)
    with r.pipeline() as pipe:
        pipe.watch("u")
        r.set("u", 2)
        pipe.unwatch()
        pipe.multi()
        pipe.get("u")
        assert pipe.execute() == [b"2"]


def test_flushall_touches_only_existing_watched_keys(r):
    r.set("x", 1)
    with r.pipeline() as pipe:
        pipe.watch("x")
        r.flushall()
        pipe.multi()
        pipe.ping()
        with pytest.raises(redis.WatchError):
            pipe.execute()
    with r.pipeline() as pipe:
        pipe.watch("absent")
        r.flushall()
        pipe.multi()
        pipe.ping()
        assert pipe.execute() == [True]


def test_watched_key_that_expires_aborts(r):
    r.set("e", 1, px=100)
    with r.pipeline() as pipe:
        pipe.watch("e")
        time.sleep(0.15)
        pipe.multi()
        pipe.ping()
        with pytest.raises(redis.WatchError):
            pipe.execute()


def test_watch_already_expired_key_does_not_abort(r):
    r.set("gone", 1, px=1)
    time.sleep(0.01)
    with r.pipeline() as pipe:
        pipe.watch("gone")
        pipe.multi()
        pipe.ping()
        assert pipe.execute() == [True]


def test_no_multi_commands_are_refused_and_abort(raw):
    raw.sendall(b"MULTI\r\nSHUTDOWN\r\nEXEC\r\nPING\r\n")
    data = b""
    while data.count(b"\r\n") < 4:
        data += read_reply(raw)
    assert data.split(b"\r\n")[:4] == [
        b"+OK",
        b"-ERR Command not allowed inside a transaction",
        b"-EXECABORT Transaction discarded because of previous errors.",
        b"+PONG",
    ]


def test_exec_over_maxmemory_is_aborted(kvorum_node, r):
    r.set("k", "somevalue")
    conn = r.connection_pool.get_connection()
    try:
        conn.send_command("MULTI")
        conn.read_response()
        conn.send_command("SET", "x", "1")
        conn.read_response()
        with kvorum_node.client() as admin:
            admin.config_set("maxmemory", "1")
            try:
                conn.send_command("EXEC")
                with pytest.raises(redis.ResponseError, match="Transaction discarded because of: OOM command not allowed"):
                    conn.read_response()
            finally:
                admin.config_set("maxmemory", "0")
    finally:
        r.connection_pool.release(conn)
    assert r.get("x") is None
