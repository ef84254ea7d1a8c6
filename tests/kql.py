"""A small evaluator for the subset of KQL that infra/app/queries/*.kql use, run on the rows that
captured Application Insights envelopes become. Not a KQL engine: it knows the operators and
functions those queries need, and fails loudly (KqlUnsupported) on anything else, so a query that
grows a new construct makes its test fail until this file learns it.

What it catches: a column that does not exist in the table (KeyError), a ``customDimensions`` key
that the real exporter never writes (see :func:`dimension_keys`), a conversion that does not parse
the values the exporter writes, and filters/aggregations that select the wrong records.

Semantics kept from KQL: ``tostring(null)`` is ``""``; comparisons with null are false; ``=~``,
``startswith`` and ``has`` ignore case, ``==`` and ``in`` do not; ``order by`` is descending unless
``asc``; ``ago()`` and ``now()`` use the ``now`` given to :meth:`Query.run`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

Row = dict[str, Any]


class KqlUnsupported(Exception):
    """The query uses something this evaluator does not implement."""


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<timespan>\d+(?:\.\d+)?(?:ms|d|h|m|s)(?![A-Za-z0-9_]))
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<op>!in\b|==|!=|=~|!~|>=|<=|\.\.|[<>=()\[\],.+\-*/|;])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)
_UNITS = {"ms": timedelta(milliseconds=1), "s": timedelta(seconds=1), "m": timedelta(minutes=1)}
_UNITS |= {"h": timedelta(hours=1), "d": timedelta(days=1)}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


def tokenize(text: str) -> list[Token]:
    text = re.sub(r"//[^\n]*", "", text)
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise KqlUnsupported(f"cannot read {text[position : position + 20]!r}")
        position = match.end()
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, match.group()))
    return tokens


def timespan(text: str) -> timedelta:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


# ---- expressions: tuples ("kind", ...) ----

Node = tuple[Any, ...]


class Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens, self.i = tokens, 0

    def peek(self, offset: int = 0) -> Token | None:
        index = self.i + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def at(self, *texts: str) -> bool:
        token = self.peek()
        return token is not None and token.text in texts

    def take(self, text: str | None = None) -> Token:
        token = self.peek()
        if token is None or (text is not None and token.text != text):
            raise KqlUnsupported(f"expected {text!r}, found {token.text if token else 'the end'!r}")
        self.i += 1
        return token

    def done(self) -> bool:
        return self.i >= len(self.tokens)

    def expression(self) -> Node:
        node = self.conjunction()
        while self.at("or"):
            self.take()
            node = ("or", node, self.conjunction())
        return node

    def conjunction(self) -> Node:
        node = self.comparison()
        while self.at("and"):
            self.take()
            node = ("and", node, self.comparison())
        return node

    def comparison(self) -> Node:
        node = self.additive()
        if self.at("==", "!=", "=~", "!~", "<", ">", "<=", ">=", "startswith", "has", "endswith", "contains"):
            return ("cmp", self.take().text, node, self.additive())
        if self.at("in", "!in"):
            negate = self.take().text == "!in"
            self.take("(")
            items = self.arguments(")")
            return ("in", negate, node, items)
        return node

    def additive(self) -> Node:
        node = self.multiplicative()
        while self.at("+", "-"):
            node = ("arith", self.take().text, node, self.multiplicative())
        return node

    def multiplicative(self) -> Node:
        node = self.postfix()
        while self.at("*", "/"):
            node = ("arith", self.take().text, node, self.postfix())
        return node

    def postfix(self) -> Node:
        node = self.primary()
        while self.at("[", "."):
            if self.take().text == "[":
                node = ("index", node, self.expression())
                self.take("]")
            else:
                node = ("index", node, ("literal", self.take().text))
        return node

    def primary(self) -> Node:
        token = self.take()
        if token.kind == "string":
            return ("literal", bytes(token.text[1:-1], "utf-8").decode("unicode_escape"))
        if token.kind == "number":
            return ("literal", float(token.text) if "." in token.text else int(token.text))
        if token.kind == "timespan":
            return ("literal", timespan(token.text))
        if token.text == "(":
            node = self.expression()
            self.take(")")
            return node
        if token.text == "[":
            return ("list", self.arguments("]"))
        if token.text == "-":
            return ("arith", "-", ("literal", 0), self.primary())
        if token.kind == "ident":
            if token.text in ("true", "false"):
                return ("literal", token.text == "true")
            if self.at("("):
                self.take("(")
                return ("call", token.text, self.arguments(")"))
            return ("name", token.text)
        raise KqlUnsupported(f"unexpected {token.text!r}")

    def arguments(self, close: str) -> list[Node]:
        items: list[Node] = []
        while not self.at(close):
            items.append(self.expression())
            if not self.at(close):
                self.take(",")
        self.take(close)
        return items

    def assignments(self, stop: tuple[str, ...] = ()) -> list[tuple[str | None, Node]]:
        """``name = expr, expr, ...`` up to the end or a word in ``stop``."""
        found: list[tuple[str | None, Node]] = []
        while not self.done() and not self.at(*stop):
            name = None
            following = self.peek(1)
            if self.peek() is not None and self.peek().kind == "ident" and following and following.text == "=":  # type: ignore[union-attr]
                name = self.take().text
                self.take("=")
            found.append((name, self.expression()))
            if self.at(","):
                self.take(",")
        return found


# ---- evaluation ----


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _number(value: Any, kind: type) -> Any:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if kind is int else number


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = _text(value).lower()
    return {"true": True, "false": False, "1": True, "0": False}.get(text)


def _bin(value: Any, size: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, datetime):
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        return epoch + (value - epoch) // size * size
    return math.floor(value / size) * size


def _compare(op: str, left: Any, right: Any) -> bool:
    if left is None or right is None:
        return False
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op == "=~":
        return _text(left).lower() == _text(right).lower()
    if op == "!~":
        return _text(left).lower() != _text(right).lower()
    if op == "startswith":
        return _text(left).lower().startswith(_text(right).lower())
    if op == "endswith":
        return _text(left).lower().endswith(_text(right).lower())
    if op in ("has", "contains"):
        return _text(right).lower() in _text(left).lower()
    return bool({"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[op])


_SCALARS: dict[str, Callable[..., Any]] = {
    "tostring": _text,
    "toint": lambda v: _number(v, int),
    "tolong": lambda v: _number(v, int),
    "todouble": lambda v: _number(v, float),
    "toreal": lambda v: _number(v, float),
    "tobool": _bool,
    "isempty": lambda v: v is None or v == "",
    "isnotempty": lambda v: v is not None and v != "",
    "isnull": lambda v: v is None,
    "isnotnull": lambda v: v is not None,
    "bin": _bin,
    "dynamic": lambda v: v,
    "strcat": lambda *v: "".join(_text(x) for x in v),
}
AGGREGATES = {"count", "countif", "min", "max", "minif", "maxif", "avg", "sum", "percentile", "dcount", "arg_max"}


@dataclass
class Context:
    now: datetime
    names: dict[str, Any]


def evaluate(node: Node, row: Row, context: Context) -> Any:
    kind = node[0]
    if kind == "literal":
        return node[1]
    if kind == "list":
        return [evaluate(item, row, context) for item in node[1]]
    if kind == "name":
        name = node[1]
        if name in row:
            return row[name]
        if name in context.names:
            return context.names[name]
        raise KeyError(f"no column or name {name!r} (columns: {sorted(row)})")
    if kind == "index":
        container, key = evaluate(node[1], row, context), evaluate(node[2], row, context)
        if isinstance(container, dict):
            return container.get(key)
        raise KqlUnsupported(f"indexing {type(container).__name__}")
    if kind == "or":
        return bool(evaluate(node[1], row, context)) or bool(evaluate(node[2], row, context))
    if kind == "and":
        return bool(evaluate(node[1], row, context)) and bool(evaluate(node[2], row, context))
    if kind == "cmp":
        return _compare(node[1], evaluate(node[2], row, context), evaluate(node[3], row, context))
    if kind == "in":
        value = evaluate(node[2], row, context)
        options: list[Any] = []
        for item in node[3]:
            found = evaluate(item, row, context)
            options.extend(found if isinstance(found, list) else [found])
        return (value not in options) if node[1] else (value in options)
    if kind == "arith":
        left, right = evaluate(node[2], row, context), evaluate(node[3], row, context)
        if left is None or right is None:
            return None
        operator = node[1]
        if operator == "+":
            return left + right
        if operator == "-":
            return left - right
        return left * right if operator == "*" else left / right
    if kind == "call":
        name, args = node[1], node[2]
        if name == "ago":
            return context.now - evaluate(args[0], row, context)
        if name == "now":
            return context.now
        if name == "case":
            for condition, value in zip(args[:-1:2], args[1:-1:2], strict=True):
                if evaluate(condition, row, context):
                    return evaluate(value, row, context)
            return evaluate(args[-1], row, context)
        if name in _SCALARS:
            return _SCALARS[name](*(evaluate(arg, row, context) for arg in args))
        raise KqlUnsupported(f"function {name}()")
    raise KqlUnsupported(kind)


def _column_name(name: str | None, node: Node) -> str:
    if name:
        return name
    if node[0] == "name":
        return str(node[1])
    if node[0] == "call" and node[1] == "bin" and node[2][0][0] == "name":
        return str(node[2][0][1])
    if node[0] == "call":
        return f"{node[1]}_"
    raise KqlUnsupported(f"an unnamed column {node}")


def _aggregate(node: Node, rows: list[Row], context: Context) -> dict[str, Any] | Any:
    if node[0] != "call" or node[1] not in AGGREGATES:
        raise KqlUnsupported(f"summarize {node}")
    name, args = node[1], node[2]

    def values(arg: Node, where: Node | None = None) -> list[Any]:
        chosen = [r for r in rows if where is None or evaluate(where, r, context)]
        return [v for v in (evaluate(arg, r, context) for r in chosen) if v is not None]

    if name == "count":
        return len(rows)
    if name == "countif":
        return sum(1 for r in rows if evaluate(args[0], r, context))
    if name in ("min", "max", "minif", "maxif"):
        found = values(args[0], args[1] if name.endswith("if") else None)
        return (min if name.startswith("min") else max)(found) if found else None
    if name in ("avg", "sum"):
        found = values(args[0])
        return (sum(found) / len(found) if name == "avg" else sum(found)) if found else None
    if name == "dcount":
        return len(set(values(args[0])))
    if name == "percentile":
        found = sorted(values(args[0]))
        if not found:
            return None
        rank = max(0, math.ceil(evaluate(args[1], {}, context) / 100 * len(found)) - 1)
        return found[rank]
    # arg_max(by, columns...): the columns of the row where `by` is largest
    best = max(rows, key=lambda r: evaluate(args[0], r, context))
    return {_column_name(None, arg): evaluate(arg, best, context) for arg in args}


@dataclass
class Stage:
    operator: str
    parser: Parser


class Query:
    """One query text: ``let`` statements, then a pipeline starting from a table."""

    def __init__(self, text: str) -> None:
        self.text = text
        statements = _split(tokenize(text), ";")
        self.lets: list[tuple[str, Node]] = []
        for statement in statements[:-1]:
            parser = Parser(statement)
            parser.take("let")
            name = parser.take().text
            parser.take("=")
            self.lets.append((name, parser.expression()))
        stages = _split(statements[-1], "|")
        if len(stages[0]) != 1 or stages[0][0].kind != "ident":
            raise KqlUnsupported("a pipeline must start from a table")
        self.table = stages[0][0].text
        self.stages = [Stage(tokens[0].text, Parser(tokens[1:])) for tokens in stages[1:]]

    @property
    def operators(self) -> list[str]:
        return [stage.operator for stage in self.stages]

    def run(self, tables: dict[str, list[Row]], *, now: datetime) -> list[Row]:
        context = Context(now, {})
        for name, node in self.lets:
            context.names[name] = evaluate(node, {}, context)
        rows = [dict(row) for row in tables[self.table]]
        for stage in self.stages:
            stage.parser.i = 0
            rows = _STAGES.get(stage.operator, _unsupported)(stage.parser, rows, context)
        return rows


def _split(tokens: list[Token], separator: str) -> list[list[Token]]:
    parts: list[list[Token]] = [[]]
    depth = 0
    for token in tokens:
        depth += token.text in "([" and token.kind == "op"
        depth -= token.text in ")]" and token.kind == "op"
        if token.text == separator and token.kind == "op" and depth == 0:
            parts.append([])
        else:
            parts[-1].append(token)
    return [part for part in parts if part]


def _where(parser: Parser, rows: list[Row], context: Context) -> list[Row]:
    condition = parser.expression()
    return [row for row in rows if evaluate(condition, row, context)]


def _extend(parser: Parser, rows: list[Row], context: Context) -> list[Row]:
    columns = parser.assignments()
    out = []
    for row in rows:
        extended = dict(row)
        for name, node in columns:  # each sees the columns before it, like KQL's extend
            extended[_column_name(name, node)] = evaluate(node, extended, context)
        out.append(extended)
    return out


def _project(parser: Parser, rows: list[Row], context: Context) -> list[Row]:
    columns = parser.assignments()
    return [{_column_name(name, node): evaluate(node, row, context) for name, node in columns} for row in rows]


def _summarize(parser: Parser, rows: list[Row], context: Context) -> list[Row]:
    aggregates = parser.assignments(stop=("by",))
    keys: list[tuple[str | None, Node]] = []
    if parser.at("by"):
        parser.take("by")
        keys = parser.assignments()
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(evaluate(node, row, context) for _, node in keys), []).append(row)
    out = []
    for key, members in groups.items():
        result: Row = {_column_name(name, node): value for (name, node), value in zip(keys, key, strict=True)}
        for name, node in aggregates:
            value = _aggregate(node, members, context)
            if isinstance(value, dict) and name is None:
                result.update(value)
            else:
                result[_column_name(name, node)] = value
        out.append(result)
    return out


def _order(parser: Parser, rows: list[Row], context: Context) -> list[Row]:
    parser.take("by")
    keys: list[tuple[Node, bool]] = []
    while not parser.done():
        node = parser.expression()
        descending = True
        if parser.at("asc", "desc"):
            descending = parser.take().text == "desc"
        keys.append((node, descending))
        if parser.at(","):
            parser.take(",")
    for node, descending in reversed(keys):  # stable sorts, last key first
        present = [r for r in rows if evaluate(node, r, context) is not None]
        missing = [r for r in rows if evaluate(node, r, context) is None]
        rows = sorted(present, key=_sort_key(node, context), reverse=descending) + missing
    return rows


def _sort_key(node: Node, context: Context) -> Callable[[Row], Any]:
    return lambda row: evaluate(node, row, context)


def _render(parser: Parser, rows: list[Row], context: Context) -> list[Row]:
    return rows  # a chart of the same rows


def _unsupported(parser: Parser, rows: list[Row], context: Context) -> list[Row]:
    raise KqlUnsupported(f"operator at {parser.tokens[:3]}")


_STAGES: dict[str, Callable[[Parser, list[Row], Context], list[Row]]] = {
    "where": _where,
    "extend": _extend,
    "project": _project,
    "summarize": _summarize,
    "order": _order,
    "sort": _order,
    "render": _render,
}


def dimension_keys(text: str) -> set[str]:
    """Every ``customDimensions["x"]`` / ``customDimensions.x`` key a query reads."""
    return set(re.findall(r'customDimensions\["([^"]+)"\]', text)) | set(re.findall(r"customDimensions\.(\w+)", text))


def conversions(text: str) -> Iterator[tuple[str, str]]:
    """(function, key) for each ``toint(customDimensions["key"])``-style conversion in a query."""
    for function, key in re.findall(r'(to\w+)\(customDimensions\["([^"]+)"\]\)', text):
        yield function, key
    for function, key in re.findall(r"(to\w+)\(customDimensions\.(\w+)\)", text):
        yield function, key
