"""Plain-text tables for the tools' reports."""

from __future__ import annotations


def render_table(rows: list[list[object]], headers: list[str]) -> str:
    """Left-aligned columns separated by two spaces, with a dashed line under the headers."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])
