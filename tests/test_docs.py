"""The docs cannot drift from the code: every relative link resolves, every `vald` flag they name exists.

A flag counts as named for a command when it follows ``vald <command>`` in the same inline code span or
the same (backslash-continued) line of a code block, up to the next ``vald`` or a shell separator.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from vald.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    slugs = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower())
            slugs.add(title.replace(" ", "-"))
    return slugs


def _subcommands() -> dict[str, set[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: set(p._option_string_actions) for name, p in sub.choices.items()}


def test_the_readme_is_a_front_page() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, len(lines)
    text = "\n".join(lines)
    assert "make demo" in text and "make test" in text and "](docs/" in text and ".png)" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists() or (anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved)):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def _commands(text: str, names: set[str]) -> list[tuple[str, str]]:
    """(command, the text after ``vald <command>``) for every mention in code."""
    spans = [m.group(1) for m in INLINE.finditer(FENCE.sub("", text))]
    for block in FENCE.finditer(text):
        spans += re.sub(r"\\\n", " ", block.group(1)).splitlines()
    found = []
    for span in spans:
        for part in re.split(r"(?=\bvald )", span)[1:]:
            words = part.split(maxsplit=2)
            if len(words) >= 2 and words[1] in names:
                # the flags end at a pipe, a new command, or "--" (what follows is another program's, e.g.
                # `vald bound IP -- ray start --head`)
                tail = re.split(r"[|;&#]|\bthen\b|\s--(?=\s|$)", words[2] if len(words) > 2 else "")[0]
                found.append((words[1], tail))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_vald_flag_in_the_docs_exists(page: Path) -> None:
    options = _subcommands()
    unknown = []
    for command, tail in _commands(page.read_text(encoding="utf-8"), set(options)):
        unknown += [f"vald {command} {flag}" for flag in FLAG.findall(tail) if flag not in options[command]]
    assert not unknown, f"{page.name}: {sorted(set(unknown))}"


def test_the_flag_check_can_fail() -> None:
    options = _subcommands()
    text = "run `vald serve --config x --no-such-flag` and `vald bench --image a` and `vald bound 10.0.0.1 -- ray x`"
    found = _commands(text, set(options))
    assert found == [("serve", "--config x --no-such-flag"), ("bench", "--image a"), ("bound", "10.0.0.1")]
    assert "--no-such-flag" not in options["serve"] and "--image" in options["bench"]
