"""A YAML document as plain values plus the line and column of every value and key.

Scenario files are validated after they are read, and every problem must name where in
the file it is. PyYAML's ``compose`` keeps a position on each node; this module walks
the nodes once, builds the plain values (dicts, lists, scalars) and records each
position under the value's *key path* -- a tuple such as ``("steps", 3, "kill",
"signal")``. Validation then works on plain values and asks for the position of a path
only when it has something to report, so substitutions that keep the shape of the
document (matrix values, placeholders) keep the positions too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

KeyPath = Tuple[Union[str, int], ...]


@dataclass(frozen=True)
class Position:
    line: int  # 1-based, as editors count
    column: int  # 1-based


def format_path(path: KeyPath) -> str:
    """``("steps", 3, "kill", "signal")`` -> ``steps[3].kill.signal``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a scenario file, with where it is."""

    file: str
    position: Optional[Position]
    path: KeyPath
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.position is not None:
            where += f":{self.position.line}:{self.position.column}"
        parts = [where]
        step = _step_of(self.path)
        if step:
            parts.append(step)
        if self.path:
            parts.append(format_path(self.path))
        parts.append(self.message)
        return ": ".join(parts)


def _step_of(path: KeyPath) -> str:
    """``step 3 (kill)`` for a path inside a step -- the innermost step of a repeat."""
    described = ""
    for index in range(len(path) - 1):
        if path[index] == "steps" and isinstance(path[index + 1], int):
            number = path[index + 1]
            kind = path[index + 2] if index + 2 < len(path) else None
            inner = f"step {number}" + (f" ({kind})" if isinstance(kind, str) else "")
            described = f"{described} > {inner}" if described else inner
    return described


class ScenarioFileError(Exception):
    """A scenario file that cannot be used; ``str()`` lists every problem, one a line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


@dataclass
class Document:
    """Plain values of one YAML file and where each came from."""

    file: str  # as shown in messages
    value: Any
    positions: Dict[KeyPath, Position] = field(default_factory=dict)
    key_positions: Dict[KeyPath, Position] = field(default_factory=dict)

    def position(self, path: KeyPath, at_key: bool = False) -> Optional[Position]:
        """Where ``path`` is; for a path that has none (made up later), its nearest parent."""
        if at_key and path in self.key_positions:
            return self.key_positions[path]
        for length in range(len(path), -1, -1):
            found = self.positions.get(path[:length])
            if found is not None:
                return found
        return None


class Problems:
    """Collects the problems of one document, so that one bad key never hides the next."""

    def __init__(self, document: Document) -> None:
        self.document = document
        self.found: List[Problem] = []

    def add(self, path: KeyPath, message: str, at_key: bool = False) -> None:
        """Record a problem; only the first one for a key counts (a missing key is not
        also reported as having a bad value)."""
        if any(problem.path == path for problem in self.found):
            return
        position = self.document.position(path, at_key)
        self.found.append(Problem(self.document.file, position, path, message))

    def raise_if_any(self) -> None:
        if self.found:
            raise ScenarioFileError(self.found)


def read_document(path: Path, shown_as: str) -> Document:
    """Read one YAML file; a syntax error or a second document is a ``ScenarioFileError``."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        problem = Problem(shown_as, None, (), f"cannot read the file: {error}")
        raise ScenarioFileError([problem]) from None
    return parse_document(text, shown_as)


def parse_document(text: str, shown_as: str) -> Document:
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        position = Position(mark.line + 1, mark.column + 1) if mark else None
        detail = ": ".join(part for part in (error.context, error.problem) if part)
        raise ScenarioFileError(
            [Problem(shown_as, position, (), f"not valid YAML: {detail}")]
        ) from None
    except yaml.YAMLError as error:
        raise ScenarioFileError([Problem(shown_as, None, (), f"not valid YAML: {error}")]) from None
    if len(nodes) > 1:
        second = nodes[1].start_mark
        raise ScenarioFileError(
            [
                Problem(
                    shown_as,
                    Position(second.line + 1, second.column + 1),
                    (),
                    "a scenario file holds one YAML document; this is a second one",
                )
            ]
        )
    document = Document(shown_as, None)
    if nodes:
        document.value = _Walker(document).value(nodes[0], ())
    return document


class _Walker:
    """Turns composed nodes into plain values, recording positions on the way."""

    def __init__(self, document: Document) -> None:
        self.document = document
        self.constructor = SafeConstructor()
        self.problems = Problems(document)

    def value(self, node: yaml.Node, path: KeyPath) -> Any:
        self.document.positions[path] = _position(node)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item, path + (index,)) for index, item in enumerate(node.value)]
        try:
            return self.constructor.construct_object(node, deep=True)
        except ConstructorError as error:
            self.problems.add(path, f"cannot read this value: {error.problem}")
            self.problems.raise_if_any()

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> Dict[str, Any]:
        try:
            self.constructor.flatten_mapping(node)  # applies `<<` merge keys
        except ConstructorError as error:
            self.problems.add(path, f"cannot merge: {error.problem}")
            self.problems.raise_if_any()
        mapping: Dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.constructor.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                self.document.positions[path + (str(key),)] = _position(key_node)
                self.problems.add(path + (str(key),), f"keys must be text, got {key!r}")
                continue
            child = path + (key,)
            if key in mapping:
                first = self.document.key_positions[child]
                self.document.key_positions[child] = _position(key_node)
                self.problems.add(
                    child, f"duplicate key (first given at line {first.line})", at_key=True
                )
                continue
            self.document.key_positions[child] = _position(key_node)
            mapping[key] = self.value(value_node, child)
        self.problems.raise_if_any()
        return mapping


def _position(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)
