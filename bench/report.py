"""Shared by the bench scripts: print a Markdown section, and append it to
bench/RESULTS.md (or another file) when asked."""

from __future__ import annotations


def emit(lines: list[str], write: str | None) -> None:
    report = "\n".join(lines) + "\n"
    print(report)
    if write:
        with open(write, "a") as f:
            f.write(report)
