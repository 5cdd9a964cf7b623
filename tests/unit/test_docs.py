"""README.md is a front page and docs/ a site: the README stays short and starts with the two commands,
every page is in mkdocs.yml's nav, and every relative link (README.md's and the pages') reaches a file
and a heading that exist. Fast and offline: `make docs` builds the site itself."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

DOCS = REPO / "docs"
README = REPO / "README.md"
PAGES = sorted(DOCS.glob("*.md"))

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def prose(text: str) -> str:
    """The text without fenced code blocks: a `# comment` in a YAML block is not a heading."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and MkDocs make it: the text of code spans and links, lower-case,
    punctuation dropped except '-' and '_', spaces turned into '-'."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(prose(path.read_text()))}


def links(path: Path) -> list[str]:
    """Every inline link target in a Markdown file, outside code."""
    return LINK.findall(CODE_SPAN.sub("", prose(path.read_text())))


def relative(target: str) -> bool:
    return not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) and not target.startswith("/")


def broken(path: Path, target: str) -> str | None:
    """Why a relative link from `path` is broken, or None."""
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    if not dest.is_file():
        return f"{path.relative_to(REPO)}: {target}: no such file"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{path.relative_to(REPO)}: {target}: no heading '#{anchor}' in {dest.relative_to(REPO)}"
    return None


def nav_pages(nav: list[Any]) -> list[str]:
    out: list[str] = []
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            out.extend(nav_pages(value) if isinstance(value, list) else [value])
    return out


def test_the_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move detail into docs/"


def test_the_readme_starts_with_the_two_commands() -> None:
    first = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert first
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines()]
    assert "make run" in commands and "make test" in commands


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"
    listed = nav_pages(config["nav"])
    assert len(listed) == len(set(listed)), "a page is listed twice"
    assert sorted(listed) == sorted(p.name for p in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_page_starts_with_its_title(page: Path) -> None:
    assert page.read_text().startswith("# ")


def test_every_relative_link_in_the_readme_works() -> None:
    targets = [t for t in links(README) if relative(t)]
    assert any(t.startswith("docs/") for t in targets)
    assert [why for t in targets if (why := broken(README, t))] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_in_a_page_stays_in_the_site_and_works(page: Path) -> None:
    targets = [t for t in links(page) if relative(t)]
    outside = [t for t in targets if not (page.parent / t.partition("#")[0]).resolve().is_relative_to(DOCS)]
    assert outside == [], "the site has only docs/: name files outside it as `code`, not links"
    assert [why for t in targets if (why := broken(page, t))] == []


def test_slugs_follow_github_and_mkdocs() -> None:
    assert slug("Just-in-time grants") == "just-in-time-grants"
    assert slug("Joining Envoy's access log") == "joining-envoys-access-log"
    assert slug("Why `transport: auto` keeps native") == "why-transport-auto-keeps-native"
    assert slug("1. A workload allow-list") == "1-a-workload-allow-list"
