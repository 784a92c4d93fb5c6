"""Connection commands over redis-py, RESP3 and RESP2: PING ECHO HELLO SELECT CLIENT QUIT RESET."""

from __future__ import annotations

import re

import pytest
import redis

from server_wire import call, text


def test_ping_echo(r):
    assert r.ping() is True
    assert call(r, "PING", "hello") == b"hello"
    assert r.echo("x y") == b"x y"
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'ping' command"):
        r.execute_command("PING", "a", "b")


def test_get_set_roundtrip(r):
    assert r.set("k", "v") is True
    assert r.get("k") == b"v"
    assert r.get("missing") is None


def test_hello_reply(kvorum_node):
    for proto in (2, 3):
        with kvorum_node.client(protocol=proto) as r:
            reply = r.execute_command("HELLO", proto)
            if proto == 2:
                reply = dict(zip(reply[::2], reply[1::2]))
            reply = {k.decode() if isinstance(k, bytes) else k: v for k, v in reply.items()}
            assert reply["server"] == b"redis"
            assert reply["version"] == b"7.4.0"
            assert reply["proto"] == proto
            assert reply["id"] == r.client_id()
            assert reply["mode"] == b"standalone"
            assert reply["role"] == b"master"
            assert reply["modules"] == []


def test_hello_errors(r):
    with pytest.raises(redis.ResponseError, match="NOPROTO unsupported protocol version"):
        r.execute_command("HELLO", 4)
    with pytest.raises(redis.ResponseError, match="Protocol version is not an integer"):
        r.execute_command("HELLO", "x")
    with pytest.raises(redis.ResponseError, match="Syntax error in HELLO option 'bogus'"):
        r.execute_command("HELLO", 3, "bogus")


def test_hello_setname(kvorum_node):
    with kvorum_node.client() as r:
        r.execute_command("HELLO", 3, "SETNAME", "worker-1")
        assert text(r.client_getname()) == "worker-1"


def test_select(r):
    assert r.execute_command("SELECT", 0) in (b"OK", "OK", True)
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        r.execute_command("SELECT", 1)


def test_client_id_name_info(r):
    client_id = r.client_id()
    assert isinstance(client_id, int) and client_id > 0
    assert r.client_getname() is None
    assert r.client_setname("alpha") is True
    assert text(r.client_getname()) == "alpha"
    with pytest.raises(redis.ResponseError, match="Client names cannot contain spaces"):
        r.client_setname("has space")
    info = r.client_info()
    assert int(info["id"]) == client_id and info["name"] == "alpha"
    listed = {int(c["id"]): c for c in r.client_list()}
    assert client_id in listed and listed[client_id]["name"] == "alpha"


def test_client_setinfo_and_no_evict(r):
    assert r.execute_command("CLIENT", "SETINFO", "LIB-NAME", "mylib") in (b"OK", True)
    assert r.client_info()["lib-name"] == "mylib"
    with pytest.raises(redis.ResponseError, match="Unrecognized option"):
        r.execute_command("CLIENT", "SETINFO", "BAD", "x")
    assert r.execute_command("CLIENT", "NO-EVICT", "on") in (b"OK", True)
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("CLIENT", "NO-EVICT", "maybe")


def test_client_kill(kvorum_node):
    with kvorum_node.client() as killer, kvorum_node.client() as victim, kvorum_node.client() as other:
        victim_id = victim.client_id()
        other_addr = other.client_info()["addr"]
        assert killer.client_kill_filter(_id=victim_id) == 1
        assert killer.execute_command("CLIENT", "KILL", other_addr) in (b"OK", True)
        ids = {int(c["id"]) for c in killer.client_list()}
        assert victim_id not in ids
        assert other_addr not in {c["addr"] for c in killer.client_list()}
        with pytest.raises(redis.ResponseError, match="No such client"):
            killer.execute_command("CLIENT", "KILL", "1.2.3.4:5")
        assert killer.client_kill_filter(_id=killer.client_id(), skipme=True) == 0


def test_client_errors(r):
    with pytest.raises(redis.ResponseError, match="unknown subcommand 'NOPE'. Try CLIENT HELP."):
        r.execute_command("CLIENT", "NOPE")
    with pytest.raises(redis.ResponseError, match=re.escape("wrong number of arguments for 'client|setname' command")):
        r.execute_command("CLIENT", "SETNAME")


def test_quit_closes_after_reply(raw):
    raw.sendall(b"*1\r\n$4\r\nQUIT\r\n*1\r\n$4\r\nPING\r\n")
    data = b""
    while chunk := raw.recv(100):
        data += chunk
    assert data == b"+OK\r\n"


def test_reset(kvorum_node):
    with kvorum_node.client(protocol=3) as r:
        r.client_setname("before")
        conn = r.connection_pool.get_connection()
        conn.send_command("MULTI")
        assert conn.read_response() in (b"OK", "OK")
        conn.send_command("RESET")
        assert conn.read_response() in (b"RESET", "RESET")
        conn.send_command("CLIENT", "INFO")
        info = conn.read_response()
        info = info.decode() if isinstance(info, bytes) else info
        assert " name= " in info and " multi=-1 " in info and " resp=2 " in info
        r.connection_pool.release(conn)


def test_unknown_command_text(r):
    with pytest.raises(redis.ResponseError) as err:
        r.execute_command("FOO", "a", "b")
    assert str(err.value) == "unknown command 'FOO', with args beginning with: 'a' 'b' "
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get' command"):
        r.execute_command("GET")
