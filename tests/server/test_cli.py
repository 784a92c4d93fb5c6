"""`kvorum server`: flags, YAML config, help, and clean shutdown on signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node_process import REPO, Node

ENV = dict(os.environ, PYTHONPATH=str(REPO))


def kvorum(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvorum", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def test_help_documents_every_flag_and_key():
    top = kvorum("--help")
    assert top.returncode == 0 and "server" in top.stdout
    help_text = kvorum("server", "--help").stdout
    for flag in ("--port", "--bind", "--config", "--requirepass", "--maxmemory", "--maxmemory-policy",
                 "--log-level", "--protected-mode"):
        assert flag in help_text
    for key in ("maxclients", "proto-max-bulk-len", "client-output-buffer-limit", "client-query-buffer-limit"):
        assert key in help_text


def test_yaml_config_and_flag_override(tmp_path: Path, node_factory):
    config = tmp_path / "kvorum.yaml"
    config.write_text("maxmemory: 100mb\nmaxmemory-policy: allkeys-lru\nmaxclients: 77\ntimeout: 30\n")
    node = node_factory("--config", str(config), "--maxmemory", "1gb")
    with node.client() as r:
        assert r.config_get("maxmemory") == {"maxmemory": str(1024**3)}
        assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
        assert r.config_get("maxclients") == {"maxclients": "77"}
        assert r.config_get("timeout") == {"timeout": "30"}
        assert r.info("server")["config_file"] == str(config)


@pytest.mark.parametrize("content, message", [
    ("no-such-setting: 1\n", "unknown setting"),
    ("maxmemory: plenty\n", "maxmemory: argument must be a memory value"),
    ("- a list\n", "expected a mapping"),
])
def test_bad_config_is_refused(tmp_path: Path, content, message):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    result = kvorum("server", "--config", str(config), "--port", "0")
    assert result.returncode != 0
    assert message in result.stderr


def test_bad_flag_value_is_refused():
    result = kvorum("server", "--maxmemory", "lots", "--port", "0")
    assert result.returncode != 0 and "argument must be a memory value" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_cleanly(sig):
    node = Node()
    with node.client() as r:
        r.set("k", "v")
        node.process.send_signal(sig)
        assert node.process.wait(timeout=15) == 0
    output = node.process.stdout.read().decode()
    assert "Traceback" not in output
    node.stop()


def test_shutdown_command():
    node = Node()
    raw = node.connect()
    raw.sendall(b"SHUTDOWN NOSAVE\r\n")
    assert node.process.wait(timeout=15) == 0
    raw.close()
    node.stop()


def test_port_in_use_is_a_clean_error(kvorum_node):
    result = kvorum("server", "--port", str(kvorum_node.port))
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1 port" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cluster-secret", "short"], "cluster-secret must hold 16 to 4096 bytes"),
        (["--cluster-secret", "s" * 32, "--cluster-secret-file", "x"], "not both"),
        (["--cluster-secret-file", "/nonexistent/secret"], "cannot read cluster-secret-file"),
    ],
)
def test_an_unusable_cluster_secret_is_refused_before_the_node_starts(tmp_path: Path, flags, message):
    result = kvorum("server", "--node-id", "n1", "--peers", "n1@127.0.0.1:1", "--data-dir", str(tmp_path),
                    *flags)
    assert result.returncode == 2 and message in result.stderr
