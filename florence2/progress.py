"""Progress bars: one home for the optional ``tqdm`` (the ``progress`` extra).

>>> bar = progress_bar(total=100, unit="img", desc="labeling")
>>> bar.update(8); bar.set_postfix(loss=0.3); bar.write("a line that does not break the bar"); bar.close()

Without tqdm installed, or when not ``enabled``, the bar draws nothing (``write`` still prints to
stderr, so logs are never lost). ``enabled=None`` means "when stderr is a terminal and there is more
than one thing to do", the usual default of a command-line tool.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class ProgressBar:
    """A tqdm bar, or nothing that looks like one. Use as a context manager or call ``close``."""

    def __init__(self, bar: Any = None, file: TextIO | None = None) -> None:
        self._bar = bar
        self._file = file

    @property
    def drawn(self) -> bool:
        """True when a real bar is shown."""
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, **values: Any) -> None:
        if self._bar is not None:
            self._bar.set_postfix(refresh=False, **values)

    def write(self, text: str) -> None:
        """Print a line above the bar (or to stderr when there is no bar)."""
        file = self._file or sys.stderr
        if self._bar is not None:
            self._bar.write(text, file=file)
        else:
            print(text, file=file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(
    total: int | None,
    *,
    enabled: bool | None = True,
    unit: str = "it",
    desc: str | None = None,
    initial: int = 0,
    file: TextIO | None = None,
) -> ProgressBar:
    """A progress bar over ``total`` units on ``file`` (stderr by default).

    enabled: True draws a bar when tqdm is installed; False never does; None when ``file`` is a
        terminal and ``total`` is more than one.
    """
    stream = file or sys.stderr
    if enabled is None:
        enabled = (total is None or total > 1) and bool(getattr(stream, "isatty", lambda: False)())
    if not enabled:
        return ProgressBar(file=file)
    try:
        from tqdm import tqdm
    except ImportError:
        return ProgressBar(file=file)
    bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, file=stream)
    return ProgressBar(bar, file=file)
