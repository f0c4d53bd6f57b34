"""Shared by the bench scripts: print a Markdown section, and put it into
bench/RESULTS.md (or another file) when asked: appended, or in place of the
sections it supersedes, leaving every other script's sections alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def emit(lines: list[str], write: str | None) -> None:
    report = "\n".join(lines) + "\n"
    print(report)
    if write:
        with open(write, "a") as f:
            f.write(report)


def publish(section: str, write: str | None, headings: Sequence[str]) -> None:
    """Print ``section``; with ``write``, put it in that file in place of the sections
    whose headings start with one of ``headings``."""
    print(section)
    if write:
        replace_sections(write, headings, section)


def replace_sections(path: str | Path, headings: Sequence[str], section: str) -> None:
    """Write ``section`` (starting with a ``## `` heading) where the first
    ``## `` section whose heading starts with one of ``headings`` was, dropping
    all such sections; append it if there was none."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            blocks.append([])
        blocks[-1].append(line)
    out: list[str] = []
    placed = False
    for block in blocks:
        if block and any(block[0][3:].startswith(h) for h in headings):
            if not placed:
                out.append(section.rstrip("\n") + "\n\n")
                placed = True
            continue
        out.append("".join(block))
    if not placed:
        out.append(("\n" if out and not out[-1].endswith("\n\n") else "") + section)
    path.write_text("".join(out).rstrip("\n") + "\n")
