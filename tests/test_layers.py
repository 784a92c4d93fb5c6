"""No module reaches up a layer (DESIGN.md §2): each package imports only the layers below it.

Imports are read from the source (every `import` and `from ... import`, including
those inside functions and under TYPE_CHECKING), so an upward reference cannot
hide in a function body.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import kvorum

PACKAGE = pathlib.Path(kvorum.__file__).parent

# Layer -> the kvorum modules it may import (a layer may always import itself).
# A name with a dot allows one module of a layer, not the whole layer: Redis
# cluster's key -> slot hash and the write-concern names are the leaf modules of
# `cluster` that the CLUSTER and WAIT commands need.
ALLOWED = {
    "protocol": set(),
    "settings": set(),
    "store": set(),
    "consensus": set(),
    "storage": {"consensus"},
    "scripting": {"protocol"},
    "commands": {"kvorum", "protocol", "settings", "store", "scripting", "cluster.slots", "cluster.concern"},
    "cluster": set(),
    "replica": {"commands", "protocol", "store", "cluster", "consensus"},
    "server": {"kvorum", "protocol", "settings", "store", "consensus", "storage", "commands", "cluster",
               "replica", "scripting"},
    "client": set(),
    "sim": {"consensus", "replica", "store", "commands", "protocol"},
}


def _layer_imports(package: pathlib.Path = PACKAGE) -> dict[str, set[tuple[str, str]]]:
    """Layer -> (importing file, imported kvorum module) for every import that leaves the layer."""
    found: dict[str, set[tuple[str, str]]] = {}
    for path in package.rglob("*.py"):
        relative = path.relative_to(package)
        layer = relative.parts[0] if len(relative.parts) > 1 else path.stem
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                parts = module.split(".")
                if parts[0] != "kvorum" or (len(parts) > 1 and parts[1] == layer):
                    continue
                found.setdefault(layer, set()).add((str(relative), ".".join(parts[1:3]) or "kvorum"))
    return found


def _allowed(layer: str, target: str) -> bool:
    allowed = ALLOWED[layer]
    return target in allowed or target.split(".")[0] in allowed


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_layers_below(layer):
    upward = sorted((source, target) for source, target in _layer_imports().get(layer, ())
                    if not _allowed(layer, target))
    assert upward == []


def test_every_layer_is_listed():
    """A new package must say what it may import."""
    entry_points = {"__init__", "__main__", "cli"}
    layers = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    layers |= {path.stem for path in PACKAGE.glob("*.py")} - entry_points
    assert layers <= set(ALLOWED)


def test_checker_catches_an_upward_import(tmp_path):
    """The check fails for a store module importing the server."""
    fake = tmp_path / "kvorum"
    (fake / "store").mkdir(parents=True)
    (fake / "store" / "__init__.py").write_text("")
    (fake / "store" / "bad.py").write_text("def f():\n    from kvorum.server.state import ServerState\n")
    assert _layer_imports(fake) == {"store": {("store/bad.py", "server.state")}}
    assert not _allowed("store", "server.state")
