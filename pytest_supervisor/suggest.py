"""The plugin's one "did you mean" for a misspelt name (supervisor.py, a drop-in file, keeps
its own)."""

from __future__ import annotations

import difflib
from typing import Callable, Iterable


def did_you_mean(word: object, options: Iterable[str], shown: Callable[[str], str] = repr) -> str:
    """`` (did you mean 'x'?)`` for the option closest to ``word``, or nothing."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {shown(close[0])}?)" if close else ""
