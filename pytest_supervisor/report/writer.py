"""Writing the report files: ``report.json`` and the ``report.html`` rendered from it.

Apart from :mod:`pytest_supervisor.report.document`, which builds the document, so that
the page's renderer can use the document's helpers without importing its writer back.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

JSON_NAME = "report.json"
HTML_NAME = "report.html"


def write_report(document: Mapping[str, Any], directory: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``directory``; return their paths.

    Each file is written beside its final name and then renamed, so a reader never
    sees half a report.
    """
    # Imported here: only the process that writes the report needs them (and matplotlib).
    from pytest_supervisor.report import html, plots

    directory.mkdir(parents=True, exist_ok=True)
    safe = _json_safe(document)
    json_path = _replace(directory / JSON_NAME, json.dumps(safe, indent=1, allow_nan=False) + "\n")
    html_path = _replace(directory / HTML_NAME, html.render(safe, plots.load()))
    return json_path, html_path


def _replace(path: Path, text: str) -> Path:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text, "utf-8")
    os.replace(partial, path)
    return path


def _json_safe(value: Any) -> Any:
    """Plain JSON: what a test recorded may hold other types, or NaN, which JSON lacks."""
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
