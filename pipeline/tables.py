"""Tables a person reads in a terminal or a log (80 columns, no wrapped cells), or pastes elsewhere: Markdown,
CSV, JSON. Used by `aae-pipeline report` and by the trials table `tune` prints."""

from __future__ import annotations

import csv
import io
import json
import shutil
import textwrap
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("table", "markdown", "csv", "json")


@dataclass(frozen=True)
class Column:
    """A column: its header; `optional` columns are left out of a terminal table that would not fit otherwise
    (the rightmost first), never out of the other formats."""

    name: str
    right: bool = False  # numbers align right
    optional: bool = False


@dataclass
class TextTable:
    """A title, columns and rows of already formatted cells."""

    title: str
    columns: list[Column]
    rows: list[list[str]] = field(default_factory=list)


def render(tables: list[TextTable], fmt: str = "table", width: int | None = None) -> str:
    """The tables in one format: `table` (aligned text that fits `width`, default the terminal's, 80 in a log),
    `markdown`, `csv` or `json`."""
    if fmt == "markdown":
        return "\n\n".join(_markdown(table) for table in tables) + "\n"
    if fmt == "csv":
        return _csv(tables)
    if fmt == "json":
        return json.dumps([{"table": t.title, "rows": [dict(zip([c.name for c in t.columns], row, strict=True))
                                                        for row in t.rows]} for t in tables], indent=2) + "\n"
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    width = width or shutil.get_terminal_size((80, 24)).columns
    return "\n\n".join(_text(table, width) for table in tables) + "\n"


def _text(table: TextTable, width: int) -> str:
    keep = list(range(len(table.columns)))
    while _width(table, keep) > width and any(table.columns[i].optional for i in keep):
        keep.remove(max(i for i in keep if table.columns[i].optional))
    sizes = {i: max(len(table.columns[i].name), *(len(row[i]) for row in table.rows)) for i in keep}

    def line(cells: list[str]) -> str:
        parts = [cells[i].rjust(sizes[i]) if table.columns[i].right else cells[i].ljust(sizes[i]) for i in keep]
        return "  ".join(parts).rstrip()

    lines = [table.title, line([c.name for c in table.columns]), "  ".join("-" * sizes[i] for i in keep)]
    lines += [line(row) for row in table.rows]
    dropped = [table.columns[i].name for i in range(len(table.columns)) if i not in keep]
    if dropped:
        note = f"(left out to fit {width} columns: {', '.join(dropped)}; --format markdown shows them)"
        lines.append(textwrap.fill(note, width))
    return "\n".join(lines)


def _width(table: TextTable, keep: list[int]) -> int:
    sizes = [max(len(table.columns[i].name), *(len(row[i]) for row in table.rows)) for i in keep]
    return sum(sizes) + 2 * (len(sizes) - 1)


def _markdown(table: TextTable) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    header = [c.name for c in table.columns]
    rule = "|" + "|".join("---:" if c.right else "---" for c in table.columns) + "|"
    return "\n".join([f"**{table.title}**", "", row(header), rule, *(row(r) for r in table.rows)])


def _csv(tables: list[TextTable]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for table in tables:
        writer.writerow(["table", *(c.name for c in table.columns)])
        writer.writerows([table.title, *row] for row in table.rows)
    return buffer.getvalue()


def number(value: Any, digits: int = 4) -> str:
    """A number as a short cell: `digits` significant figures, "—" for none."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)
