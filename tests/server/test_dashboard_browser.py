"""The dashboard page in a real browser: headless Chromium loads it from a node's admin port,
runs its script, and the page shows what /api/overview says (docs/operations.md).

Skipped where Debian's chromium is not installed."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from node_process import free_port

CHROMIUM = shutil.which("chromium")
BROWSER_TIMEOUT_S = 60
# Chromium stays off the network beyond the page it is given (this machine has none to offer).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_dashboard_renders_in_headless_chromium(node_factory, tmp_path):
    admin_port = free_port()
    node = node_factory("--admin-port", str(admin_port))
    r = node.client()
    for i in range(100):
        r.set(f"k{i}", i)
    result = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", f"http://127.0.0.1:{admin_port}/"],
        capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S,
    )
    dom = result.stdout
    assert '<div id="status" class="ok">ready: serving</div>' in dom, result.stderr[-2000:]
    assert "single (single)" in dom
    assert "<td>100</td>" in dom  # the keys column
    assert 'id="ops-line"' in dom  # the chart was drawn
