"""Plain-text tables and styled lines for the human output (``--json`` bypasses this).

A few markup tags style the text: ``[bold]``, ``[dim]``, ``[red]``, ``[green]``, ``[yellow]`` and their
combinations (``[bold red]``), closed by ``[/]``. Any other bracketed text (``[vllm]``, ``[0.2-0.4]``) is printed
as it is. Styles become ANSI codes on a terminal (unless ``NO_COLOR`` is set) and are dropped otherwise, so piped
output is plain text. Tables use the box characters of a heavy header; cells wrap at word boundaries to fit the
width (the terminal's, or 150 columns when the output is not a terminal).

This replaced Rich for these tables: importing Rich and laying out its tables took about 0.13 s of the 0.2 s that
``advisor recommend`` spends in the command (cProfile, 2-core machine); paired whole-process runs took 0.84x the
wall time after the change.
"""
from __future__ import annotations

import os
import re
import shutil
import sys

STYLES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33"}
_NAMES = "|".join(STYLES)
_TAG = re.compile(rf"\[(/|(?:{_NAMES})(?: (?:{_NAMES}))*)\]")
PIPE_WIDTH = 150


def parse(markup: str) -> list[tuple[str, tuple[str, ...]]]:
    """``markup`` as (text, styles) pieces; an unclosed tag runs to the end, ``[/]`` closes the latest one."""
    out, stack, pos = [], [], 0
    for m in _TAG.finditer(markup):
        if m.start() > pos:
            out.append((markup[pos:m.start()], tuple(s for t in stack for s in t)))
        if m.group(1) == "/":
            if stack:
                stack.pop()
        else:
            stack.append(tuple(m.group(1).split()))
        pos = m.end()
    if pos < len(markup):
        out.append((markup[pos:], tuple(s for t in stack for s in t)))
    return out


def plain(markup: str) -> str:
    """The visible text of ``markup``."""
    return "".join(t for t, _ in parse(markup))


def _paint(text: str, styles: tuple[str, ...], color: bool) -> str:
    if not color or not styles or not text:
        return text
    return f"\x1b[{';'.join(STYLES[s] for s in styles)}m{text}\x1b[0m"


def _words(markup: str) -> list[list[tuple[str, tuple]]]:
    """Words (split at spaces) as lists of (text, styles) pieces: a word may change style midway."""
    words, cur = [], []
    for text, st in parse(markup):
        parts = text.split(" ")
        for i, p in enumerate(parts):
            if i:
                if cur:
                    words.append(cur)
                cur = []
            if p:
                cur.append((p, st))
    if cur:
        words.append(cur)
    return words


def _wlen(word) -> int:
    return sum(len(t) for t, _ in word)


def _split_word(word, width: int) -> list:
    """A word longer than ``width`` cut into pieces of ``width`` characters."""
    flat = [(ch, st) for t, st in word for ch in t]
    return [[(c, s) for c, s in flat[i:i + width]] for i in range(0, len(flat), width)]


def wrap(markup: str, width: int) -> list[list]:
    """Lines of at most ``width`` visible characters, each a list of words (newlines in ``markup`` kept)."""
    lines = []
    for para in markup.split("\n"):
        line, n = [], 0
        for w in _words(para):
            pieces = _split_word(w, width) if _wlen(w) > width else [w]
            for p in pieces:
                k = _wlen(p)
                if line and n + 1 + k > width:
                    lines.append(line)
                    line, n = [], 0
                n += k + (1 if line else 0)
                line.append(p)
        lines.append(line)
    return lines


def _render_line(words, color: bool) -> tuple[str, int]:
    s = " ".join("".join(_paint(t, st, color) for t, st in w) for w in words)
    return s, sum(_wlen(w) for w in words) + max(len(words) - 1, 0)


class Table:
    """Columns of cells (markup allowed), an optional title; rendered by :meth:`lines`."""

    def __init__(self, title: str | None = None, show_header: bool = True, header_style: str = "bold"):
        self.title, self.show_header, self.header_style = title, show_header, header_style
        self.columns: list[str] = []
        self.rows: list[list[str]] = []

    def add_column(self, name: str) -> None:
        self.columns.append(name)

    def add_row(self, *cells) -> None:
        self.rows.append(["" if c is None else str(c) for c in cells] + [""] * (len(self.columns) - len(cells)))

    def widths(self, total: int) -> list[int]:
        """Column widths (cell text only) fitting ``total`` columns with the borders: each column as wide as its
        widest cell, the widest ones narrowed in turn (not below their longest word, nor below 4) until the
        table fits or no column can give more."""
        cells = ([self.columns] if self.show_header else []) + self.rows
        natural = [max((len(plain(r[j])) for r in cells), default=0) for j in range(len(self.columns))]
        minimum = [min(natural[j], max(4, max((_wlen(w) for r in cells for w in _words(r[j])), default=0)))
                   for j in range(len(self.columns))]
        minimum = [min(m, 30) for m in minimum]  # a long unbreakable word (a path) is cut rather than kept whole
        w = list(natural)
        room = total - (3 * len(w) + 1)
        while sum(w) > room:
            cands = [j for j in range(len(w)) if w[j] > minimum[j]]
            if not cands:
                break
            w[max(cands, key=lambda i: w[i])] -= 1
        return w

    def lines(self, width: int, color: bool = False) -> list[str]:
        w = self.widths(width)
        bar = lambda left, mid, right, ch: left + mid.join(ch * (x + 2) for x in w) + right  # noqa: E731

        def body(cells, style: str | None = None, edge: str = "│") -> list[str]:
            wrapped = [wrap(f"[{style}]{c}[/]" if style and c else c, max(x, 1)) for c, x in zip(cells, w)]
            out = []
            for k in range(max(len(c) for c in wrapped)):
                parts = []
                for cell, x in zip(wrapped, w):
                    s, n = _render_line(cell[k], color) if k < len(cell) else ("", 0)
                    parts.append(f" {s}{' ' * (x - n)} ")
                out.append(edge + edge.join(parts) + edge)
            return out

        out = []
        if self.title:
            full = sum(w) + 3 * len(w) + 1
            t = plain(self.title)
            out.append(t.center(full).rstrip() if len(t) < full else t)
        if self.show_header:
            out.append(bar("┏", "┳", "┓", "━"))
            out += body(self.columns, self.header_style, "┃")
            out.append(bar("┡", "╇", "┩", "━"))
        else:
            out.append(bar("┌", "┬", "┐", "─"))
        for r in self.rows:
            out += body(r)
        out.append(bar("└", "┴", "┘", "─"))
        return out


class Console:
    """Prints markup lines and :class:`Table` objects to a stream."""

    def __init__(self, file=None, width: int | None = None, color: bool | None = None):
        self.file = file or sys.stdout
        tty = hasattr(self.file, "isatty") and self.file.isatty()
        self.width = width or (shutil.get_terminal_size((PIPE_WIDTH, 24)).columns if tty else PIPE_WIDTH)
        self.color = (tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb") if color is None \
            else color

    def print(self, obj="", markup: bool = True) -> None:
        if isinstance(obj, Table):
            text = "\n".join(obj.lines(self.width, self.color))
        elif not markup:
            text = str(obj)
        else:
            text = "".join(_paint(t, st, self.color) for t, st in parse(str(obj)))
        self.file.write(text + "\n")
