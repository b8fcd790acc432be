"""The one line ``pulse transcribe`` rewrites in place on a terminal.

It shows progress (files, on stderr) and the interim transcript of the turn in
progress. Anything printed to the same terminal goes through :meth:`LiveLine.around`
so the line is erased first and drawn again after.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["LiveLine", "use_color"]

_CLEAR = "\r\x1b[K"
_DIM = "\x1b[2m"
_RESET = "\x1b[0m"


def use_color(stream: TextIO) -> bool:
    """ANSI styling on ``stream``: a terminal, unless NO_COLOR or TERM=dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LiveLine:
    """A status line on a terminal stream: ``progress`` then ``interim``."""

    def __init__(self, stream: TextIO, *, color: bool) -> None:
        self.stream = stream
        self.color = color
        self.progress = ""
        self.interim = ""
        self._drawn = False

    def _width(self) -> int:
        return max(20, shutil.get_terminal_size((80, 24)).columns - 1)

    def render(self) -> None:
        width = self._width()
        progress = self.progress[:width]
        room = width - len(progress) - (3 if progress else 0)
        interim = " ".join(self.interim.split())
        if interim and room >= 8:
            if len(interim) > room:
                interim = "…" + interim[-(room - 1) :]
        else:
            interim = ""
        if not progress and not interim:
            self.clear()
            return
        if self.color and progress:
            progress = f"{_DIM}{progress}{_RESET}"
        line = progress + (" │ " if progress and interim else "") + interim
        self.stream.write(_CLEAR + line)
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            self.stream.write(_CLEAR)
            self.stream.flush()
            self._drawn = False

    @contextmanager
    def around(self) -> Iterator[None]:
        """Erase the line for the duration of the block, then draw it again."""
        drawn = self._drawn
        self.clear()
        try:
            yield
        finally:
            if drawn or self.progress or self.interim:
                self.render()
