import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import LocalCluster  # noqa: E402
from netproxy import partitionable_cluster  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.failed_call = report.failed


@pytest.fixture
def cluster(tmp_path, request):
    """A started 3-node cluster; node logs are printed when the test fails."""
    c = LocalCluster(tmp_path / "cluster")
    try:
        c.start()
        yield c
    finally:
        failed = getattr(request.node, "failed_call", False)
        c.stop()
        if failed:
            print(c.logs())


@pytest.fixture
def net_cluster(tmp_path, request):
    """A started 3-node cluster whose peer links go through a NetProxy, as (cluster, proxy)."""
    with partitionable_cluster(tmp_path / "cluster") as (c, proxy):
        try:
            yield c, proxy
        finally:
            if getattr(request.node, "failed_call", False):
                print(c.logs())
