"""Black-box tests of a single node's observability: the admin HTTP port (health, Prometheus
metrics, dashboard), INFO commandstats / errorstats / latencystats, SLOWLOG and CLIENT LIST.

Every test talks to a real node over loopback with redis-py and plain HTTP (docs/operations.md).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from node_process import free_port


def http_get(port: int, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    status, headers, body = http_get(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
def admin_node(node_factory):
    admin_port = free_port()
    node = node_factory("--admin-port", str(admin_port))
    node.admin_port = admin_port
    return node


def test_admin_port_is_off_by_default(kvorum_node):
    r = kvorum_node.client(decode_responses=True)
    assert r.config_get("admin-port") == {"admin-port": "0"}
    assert r.config_get("admin-bind") == {"admin-bind": "127.0.0.1"}


def test_health_endpoints(admin_node):
    status, headers, body = http_get(admin_node.admin_port, "/health/live")
    assert status == 200 and json.loads(body) == {"status": "live"}
    assert headers["Connection"] == "close"
    status, _, body = http_get(admin_node.admin_port, "/health/ready")
    assert status == 200 and json.loads(body)["status"] == "ready"
    status, _, body = http_get(admin_node.admin_port, "/health/ready", "HEAD")
    assert status == 200 and body == b""


def test_unknown_paths_methods_and_oversized_requests(admin_node):
    status, _, body = http_get(admin_node.admin_port, "/nope")
    assert status == 404 and "/metrics" in json.loads(body)["paths"]
    assert http_get(admin_node.admin_port, "/metrics", "POST")[0] == 405
    with socket.create_connection(("127.0.0.1", admin_node.admin_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 431 ")
    with socket.create_connection(("127.0.0.1", admin_node.admin_port), timeout=10) as sock:
        sock.sendall(b"garbage\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
    # The node still serves clients and the admin port after all that.
    assert admin_node.client().ping()
    assert http_get(admin_node.admin_port, "/health/live")[0] == 200


def test_metrics_under_a_write_load(admin_node):
    stop = threading.Event()
    written = [0]

    def load() -> None:
        with admin_node.client() as r:
            while not stop.is_set() and written[0] < 50_000:
                pipe = r.pipeline(transaction=False)
                for i in range(20):
                    pipe.set(f"load:{written[0] + i}", "v")
                pipe.execute()
                written[0] += 20

    writer = threading.Thread(target=load)
    writer.start()
    try:
        r = admin_node.client()
        r.set("short", "x", px=1)
        r.set("text", "abc")
        with pytest.raises(redis.ResponseError):
            r.execute_command("GET")
        with pytest.raises(redis.ResponseError):
            r.execute_command("INCR", "text")
        first = scrape(admin_node.admin_port)
        time.sleep(0.3)
        second = scrape(admin_node.admin_port)
    finally:
        stop.set()
        writer.join()
    calls = ("kvorum_command_calls_total", (("command", "set"),))
    assert 0 < first[calls] < second[calls]
    assert first[("kvorum_command_rejected_calls_total", (("command", "get"),))] == 1
    assert first[("kvorum_command_failed_calls_total", (("command", "incr"),))] == 1
    assert first[("kvorum_error_replies_total", (("prefix", "ERR"),))] >= 2
    count = second[("kvorum_command_duration_seconds_count", (("command", "set"),))]
    assert count == second[calls]
    assert second[("kvorum_command_duration_seconds_bucket", (("command", "set"), ("le", "+Inf")))] == count
    assert 0 < second[("kvorum_command_duration_seconds_sum", (("command", "set"),))] < count
    assert second[("kvorum_connected_clients", ())] >= 2
    assert second[("kvorum_keys", ())] > 1
    assert second[("kvorum_memory_used_bytes", ())] > 0
    assert ("kvorum_evicted_keys_total", ()) in second
    # No replica group on a single node.
    assert not any(name.startswith("kvorum_group_") for name, _ in second)
    time.sleep(0.01)
    r.get("short")  # expires it on access
    assert scrape(admin_node.admin_port)[("kvorum_expired_keys_total", ())] >= 1


def test_dashboard_page_and_overview(admin_node):
    status, headers, body = http_get(admin_node.admin_port, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "/api/overview" in page and "<script>" in page
    assert "http://" not in page and "https://" not in page  # no external assets
    admin_node.client().set("a", "1")
    status, headers, body = http_get(admin_node.admin_port, "/api/overview")
    overview = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert overview["mode"] == "single" and overview["ready"] is True
    assert overview["keys"] == 1 and overview["group"] is None
    assert overview["port"] == admin_node.port
    time.sleep(1.2)  # one ops/sec sample a second
    assert json.loads(http_get(admin_node.admin_port, "/api/overview")[2])["ops_history"]


def info_text(r, section: str) -> str:
    """INFO's text as sent (redis-py would parse it into its own shapes)."""
    conn = r.connection_pool.get_connection()
    try:
        conn.send_command("INFO", section)
        return conn.read_response(disable_decoding=True).decode()
    finally:
        r.connection_pool.release(conn)


def info_section(r, section: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in info_text(r, section).splitlines() if ":" in line)


def test_commandstats_errorstats_latencystats_and_resetstat(node_factory):
    node = node_factory()
    r = node.client(decode_responses=True, protocol=2)
    r.execute_command("CONFIG", "RESETSTAT")
    r.set("k", "v")
    pipe = r.pipeline(transaction=False)
    for _ in range(10):
        pipe.get("k")
    pipe.execute()
    for bad in (("GET",), ("INCR", "k"), ("NOSUCH",), ("CONFIG", "NOSUCH")):
        with pytest.raises(redis.ResponseError):
            r.execute_command(*bad)
    stats = info_section(r, "commandstats")
    fields = dict(kv.split("=") for kv in stats["cmdstat_get"].split(","))
    assert list(fields) == ["calls", "usec", "usec_per_call", "rejected_calls", "failed_calls"]
    assert fields["calls"] == "10" and fields["rejected_calls"] == "1" and fields["failed_calls"] == "0"
    assert float(fields["usec_per_call"]) > 0
    assert stats["cmdstat_incr"].startswith("calls=1,") and stats["cmdstat_incr"].endswith(",failed_calls=1")
    assert "cmdstat_set" in stats and "cmdstat_config|resetstat" in stats
    assert not any("nosuch" in key for key in stats)
    assert info_section(r, "errorstats") == {"errorstat_ERR": "count=4"}
    latency = info_section(r, "latencystats")
    values = dict(kv.split("=") for kv in latency["latency_percentiles_usec_get"].split(","))
    assert list(values) == ["p50", "p99", "p99.9"]
    assert 0 < float(values["p50"]) <= float(values["p99"]) <= float(values["p99.9"])
    everything = info_text(r, "all")
    assert "# Commandstats" in everything and "# Errorstats" in everything and "# Latencystats" in everything
    assert "# Commandstats" not in info_text(r, "default")
    with pytest.raises(redis.ResponseError, match="^WRONGTYPE|^ERR"):
        r.execute_command("HSET", "k", "f", "v")
    assert "errorstat_WRONGTYPE" in info_section(r, "errorstats")
    r.execute_command("CONFIG", "RESETSTAT")
    assert info_section(r, "errorstats") == {}
    assert set(info_section(r, "commandstats")) == {"cmdstat_config|resetstat", "cmdstat_info"}
    assert info_section(r, "stats")["total_error_replies"] == "0"


def test_exec_counts_its_commands(node_factory):
    node = node_factory()
    r = node.client(decode_responses=True)
    pipe = r.pipeline(transaction=True)
    pipe.set("a", "1").incr("a").hset("a", "f", "v")
    with pytest.raises(redis.ResponseError):
        pipe.execute()
    stats = info_section(r, "commandstats")
    assert stats["cmdstat_exec"].startswith("calls=1,")
    assert stats["cmdstat_incrby"].startswith("calls=1,")  # redis-py's incr()
    assert stats["cmdstat_hset"].endswith("failed_calls=1")


def test_slowlog(node_factory):
    node = node_factory()
    r = node.client(decode_responses=True)
    assert r.config_get("slowlog-*") == {"slowlog-log-slower-than": "10000", "slowlog-max-len": "128"}
    assert r.execute_command("SLOWLOG", "LEN") == 0
    r.config_set("slowlog-log-slower-than", 0)
    r.set("key", "x" * 300)
    r.execute_command("AUTH", "default", "hunter2")
    r.execute_command("MSET", *[f"k{i}" for i in range(40)])
    entries = r.execute_command("SLOWLOG", "GET", "-1")
    by_name = {entry[3][0].upper(): entry for entry in entries}
    set_entry = by_name["SET"]
    assert len(set_entry) == 6 and isinstance(set_entry[0], int) and abs(set_entry[1] - time.time()) < 60
    assert set_entry[2] >= 0 and set_entry[4].startswith("127.0.0.1:") and set_entry[5] == ""
    assert set_entry[3][2] == "x" * 128 + "... (172 more bytes)"
    assert by_name["AUTH"][3] == ["AUTH", "(redacted)", "(redacted)"]
    mset = by_name["MSET"][3]
    assert len(mset) == 32 and mset[-1] == "... (10 more arguments)"
    ids = [entry[0] for entry in entries]
    assert ids == sorted(ids, reverse=True)  # newest first
    for i in range(10):
        r.get(f"k{i}")
    assert len(r.execute_command("SLOWLOG", "GET")) == 10
    assert len(r.execute_command("SLOWLOG", "GET", "2")) == 2
    with pytest.raises(redis.ResponseError, match="count should be greater than or equal to -1"):
        r.execute_command("SLOWLOG", "GET", "-2")
    r.config_set("slowlog-max-len", 3)
    assert r.execute_command("SLOWLOG", "LEN") == 3
    r.config_set("slowlog-log-slower-than", -1)
    assert r.execute_command("SLOWLOG", "RESET") == "OK"
    r.set("after", "1")
    assert r.execute_command("SLOWLOG", "LEN") == 0
    assert "SLOWLOG <subcommand>" in r.execute_command("SLOWLOG", "HELP")[0]


def test_slowlog_off_the_fast_path(node_factory):
    """A threshold above the hot path's histogram range still logs calls through it: KEYS over
    many keys in a pipeline, and one alone."""
    node = node_factory()
    r = node.client()
    r.mset({f"k{i}": i for i in range(20000)})
    r.config_set("slowlog-log-slower-than", 2000)
    r.execute_command("SLOWLOG", "RESET")
    pipe = r.pipeline(transaction=False)
    pipe.keys("k1*").keys("k2*")
    pipe.execute()
    r.keys("*")
    entries = r.execute_command("SLOWLOG", "GET", "-1")
    assert entries and all(entry[2] > 2000 for entry in entries)
    assert {entry[3][0] for entry in entries} == {b"KEYS"}


def test_client_list_has_redis_fields(kvorum_node):
    r = kvorum_node.client(decode_responses=True)
    line = r.execute_command("CLIENT", "INFO")
    names = [kv.split("=", 1)[0] for kv in line.split()]
    assert names == ["id", "addr", "laddr", "fd", "name", "age", "idle", "flags", "db", "sub", "psub", "ssub",
                     "multi", "watch", "qbuf", "qbuf-free", "argv-mem", "multi-mem", "rbs", "rbp", "obl", "oll",
                     "omem", "tot-mem", "events", "cmd", "user", "redir", "resp", "lib-name", "lib-ver"]


def test_a_mixed_pipeline_counts_every_command(node_factory):
    node = node_factory()
    r = node.client(decode_responses=True)
    pipe = r.pipeline(transaction=False)
    for i in range(30):
        pipe.set(f"k{i}", i).get(f"k{i}").get(f"k{i}").execute_command("PING")
    pipe.execute()
    stats = info_section(r, "commandstats")
    assert stats["cmdstat_set"].startswith("calls=30,")
    assert stats["cmdstat_get"].startswith("calls=60,")
    assert int(stats["cmdstat_ping"].split(",")[0].split("=")[1]) >= 30  # redis-py may PING on connect
