"""Write the arrows table of docs/state-machine.md from receiver.machine.ARROWS (the test keeps them equal).

Run: .venv/bin/python -m devtools.state_machine_page
"""

from __future__ import annotations

from pathlib import Path

from receiver.machine import ARROWS

PAGE = Path(__file__).resolve().parent.parent / "docs" / "state-machine.md"
START, END = "<!-- arrows:start -->\n", "<!-- arrows:end -->"


def render_table() -> str:
    """The table of arrows, from :data:`receiver.machine.ARROWS`."""
    lines = ["| arrow | from | to | who | when |", "|---|---|---|---|---|"]
    for arrow in ARROWS:
        lines.append(f"| `{arrow.name}` | {arrow.source} | {arrow.target} | {arrow.who} | {arrow.when} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    text = PAGE.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    PAGE.write_text(f"{head}{START}{render_table()}{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    main()
