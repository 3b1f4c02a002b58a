"""The package tree is the architecture: every import inside apnsd points down the layers, never up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APNSD = Path(__file__).resolve().parents[2] / "apnsd"
# Lower numbers are lower layers. Shared modules sit in the layer of what they need: config validates
# header values with core's rules, so it sits above core and below everything that reads config.
LAYER = {
    "errors": 0,
    "core": 1,
    "wire": 1,
    "config": 2,
    "logs": 2,
    "metrics": 2,
    "proxy": 2,
    "gateway": 3,
    "store": 3,
    "worker": 4,
    "client": 4,
    "testing": 5,
    "cli": 5,
}


def layer_of(module: str) -> str | None:
    """The top-level part of an ``apnsd.…`` module name, if it is one of the layers."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "apnsd" and parts[1] in LAYER else None


def imports(path: Path) -> list[str]:
    """Every ``apnsd`` module a file imports (module-level or inside functions)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("apnsd"):
            out += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [alias.name for alias in node.names if alias.name.startswith("apnsd")]
    return out


@pytest.mark.parametrize("path", sorted(APNSD.rglob("*.py")), ids=lambda p: str(p.relative_to(APNSD)))
def test_imports_point_down_the_layers(path: Path) -> None:
    """A module imports only from its own layer or lower ones (cli and testing may use each other)."""
    own = layer_of("apnsd." + ".".join(path.relative_to(APNSD).with_suffix("").parts))
    if own is None:
        return  # apnsd/__init__.py and __main__.py
    upward = [
        m for m in imports(path) if (target := layer_of(m)) is not None and target != own and LAYER[target] > LAYER[own]
    ]
    assert [] == upward
