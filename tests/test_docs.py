"""The docs stay true: every relative link resolves, and docs/cli.md lists exactly the CLI's options.

Links: every ``[text](target)``, ``![alt](target)`` and HTML ``src=`` / ``href=`` outside code blocks in
README.md, CHANGELOG.md and docs/*.md must name an existing file; a ``#anchor`` must match a heading of the
target page (GitHub's heading slugs). Options: docs/cli.md has one ``## `dreamfleet COMMAND` `` section per
command (``## `dreamfleet` `` for the top-level flags); every option in the first column of that section's
tables must exist in ``dreamfleet COMMAND --help``, and every option in the help must be in the tables.
``run`` inherits the ``dreamfleet dream`` section (see ``INHERITS``). A new option is documented by adding one
table row to its command's section.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from dreamfleet.cli import build_parser

from conftest import REPO

PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
CLI_PAGE = REPO / "docs" / "cli.md"
INHERITS = {"run": "dream"}  # `dreamfleet run` takes every `dreamfleet dream` option too
TOP = ""  # the section of `dreamfleet` itself (--version, --verbose)

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
COMMAND_HEADING = re.compile(r"^##\s+`dreamfleet(?:\s+([a-z][\w-]*))?`\s*$")
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def prose(text: str) -> str:
    """The page without fenced code blocks (their brackets are code, not links)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(prose(page.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    text = prose(page.read_text())
    return MD_LINK.findall(text) + HTML_LINK.findall(text)


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: no such file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_relative_links_resolve(page: Path):
    assert links(page) or page.parent.name == "docs", f"{page.name} links nowhere"
    problems = broken_links(page)
    assert not problems, f"{page.relative_to(REPO)}: broken links:\n" + "\n".join(problems)


def test_link_checker_catches_broken_links(tmp_path: Path):
    (tmp_path / "other.md").write_text("# A `code` heading: yes\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-code-heading-yes) [dup](other.md#twice-1) [self](#top)\n# Top\n"
                    "[gone](missing.md) [bad](other.md#nope) ![img](pic.png) <img src=\"x.png\">\n"
                    "```\n[in code](not-checked.md)\n```\n[web](https://example.com/x.md)\n")
    assert [p.split(":")[0] for p in broken_links(page)] == ["missing.md", "other.md#nope", "pic.png", "x.png"]


def documented_options(page: Path = CLI_PAGE) -> dict[str, set[str]]:
    """Command name ("" for the top level) -> options in the first column of its section's tables."""
    sections: dict[str, set[str]] = {}
    command = None
    for line in prose(page.read_text()).splitlines():
        if line.startswith("## "):
            match = COMMAND_HEADING.match(line)
            command = (match.group(1) or TOP) if match else None
            if command is not None:
                sections.setdefault(command, set())
        elif command is not None and line.startswith("|") and not re.match(r"^\|[\s:|-]+\|?$", line):
            first_cell = line.split("|")[1]
            sections[command].update(OPTION.findall(first_cell))
    return sections


def parser_options() -> dict[str, list[list[str]]]:
    """Command name ("" for the top level) -> each action's option strings, as `--help` shows them."""
    parser = build_parser()

    def actions(p: argparse.ArgumentParser) -> list[list[str]]:
        return [a.option_strings for a in p._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]

    out = {TOP: actions(parser)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update({name: actions(sub) for name, sub in action.choices.items()})
    return out


def test_cli_page_lists_exactly_the_options_of_each_command():
    documented, real = documented_options(), parser_options()
    assert set(real) - set(documented) == set(), "commands without a `## `dreamfleet X`` section in docs/cli.md"
    problems = []
    for command, docs in documented.items():
        if command not in real:  # a plugin whose package is not installed (e.g. Ray for `run`)
            continue
        known = {s for strings in real[command] for s in strings}
        problems += [f"dreamfleet {command}: {o} is documented but not in --help" for o in sorted(docs - known)]
        covered = docs | (documented.get(INHERITS[command], set()) if command in INHERITS else set())
        problems += [f"dreamfleet {command}: {'/'.join(s)} is in --help but not in docs/cli.md"
                     for s in real[command] if not covered & set(s)]
    assert not problems, "\n".join(problems)


def test_option_parser_reads_the_tables(tmp_path: Path):
    page = tmp_path / "cli.md"
    page.write_text("## `dreamfleet`\n| option | x |\n|---|---|\n| `-v`, `--verbose` | more |\n"
                    "## `dreamfleet dream`\n| option | meaning |\n|---|---|\n| `--smooth none\\|a-b` | `--not-me` |\n"
                    "## Job file\n| `--ignored` | |\n")
    assert documented_options(page) == {"": {"-v", "--verbose"}, "dream": {"--smooth"}}
