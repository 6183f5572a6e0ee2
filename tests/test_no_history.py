"""Code, configs and tests say what a thing does and why; how it came to be belongs in git log and the results
files. This fails on a comment or docstring that cites an issue, a pass or a row of the results log."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("aae", "pipeline", "conf", "tests", "benchmarks", "docker")
HISTORY = re.compile(
    r"\bissue \d+|\b(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|"
    r"thirteenth|\d+(?:st|nd|rd|th)) pass\b|\brows? \d{2,}|\bbefore issue\b",
    re.IGNORECASE,
)


def test_no_comment_or_docstring_tells_history() -> None:
    found = []
    for folder in CHECKED:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".yaml", ".yml", ".sh") or path == Path(__file__):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if HISTORY.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == [], "\n".join(found)
