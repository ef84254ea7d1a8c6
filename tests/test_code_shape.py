"""The deployed package stays readable: no function in receiver/ takes more than six parameters
(values that travel together get a small type of their own)."""

from __future__ import annotations

import ast
from pathlib import Path

RECEIVER = Path(__file__).resolve().parent.parent / "receiver"
MAX_PARAMETERS = 6


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    names = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    count = len(names) + (args.vararg is not None) + (args.kwarg is not None)
    return count - (1 if names and names[0].arg in ("self", "cls") else 0)


def test_no_function_in_the_receiver_takes_more_than_six_parameters() -> None:
    wide = [
        f"{path.name}:{node.lineno} {node.name} ({_parameters(node)})"
        for path in sorted(RECEIVER.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _parameters(node) > MAX_PARAMETERS
    ]
    assert not wide, wide
