"""Scenario files: read, expand and validate ``scenarios/**/*.yaml`` (SPEC section 6).

:func:`load_scenarios` turns one file into :class:`Scenario` values -- one per
combination of its ``matrix`` -- or raises :class:`ScenarioFileError` listing every
problem with its file:line:column, the step, the key path, what was expected and,
for a misspelt name, a suggestion. Nothing here needs pytest or a running process:
the pytest plugin only wraps scenarios in items (:mod:`.items`), and
:mod:`.runner` executes them.

Expansion happens before validation, so a problem is reported for the combination
that has it: ``matrix`` values fill ``{key}`` placeholders, then each service template
with ``count: N`` becomes N services ``NAME-0`` ... with ``{index}`` filled in. The
placeholders of the running test (``{python}``, ``{dummy}``, ``{tmp}``; ``{file}`` in
``check`` expectations) are only checked here and filled in by the runner.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from pytest_supervisor.report.metric_targets import TargetError, Targets, validate
from pytest_supervisor.scenarios import steps
from pytest_supervisor.scenarios.checks import STEP_BUILDERS, ValueChecker
from pytest_supervisor.scenarios.document import (
    Document,
    KeyPath,
    Problems,
    ScenarioFileError,
    format_path,
    read_document,
)
from pytest_supervisor.settings import PHASES
from pytest_supervisor.suggest import did_you_mean
from pytest_supervisor.targets import NAMES as TARGETS

__all__ = [
    "Scenario",
    "ScenarioFileError",
    "load_scenarios",
    "fill_placeholders",
    "fill_yaml_placeholders",
]

PLATFORMS = ("linux", "darwin", "win32")
RUNTIME_PLACEHOLDERS = ("python", "dummy", "tmp")

_TOP_LEVEL = (
    "name",
    "phase",
    "platforms",
    "skip_under_wine",
    "target",
    "timeout",
    "config",
    "config_file",
    "matrix",
    "metric_targets",
    "steps",
)
_REQUIRED = ("name", "phase", "steps")
# `{{name}}` is a literal `{name}`; any other `{name}` is a placeholder -- except in
# `${name}`, the supervisor's own environment expansion.
_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_]\w*)\}\}|(?<!\$)\{([A-Za-z_]\w*)\}")
_MATRIX_KEY = re.compile(r"[A-Za-z_]\w*\Z")


@dataclass(frozen=True)
class Scenario:
    """One runnable scenario: a file, or one combination of its matrix."""

    shown_as: str  # the file as messages show it
    test_name: str  # the pytest item's name: the file's stem, plus [matrix values]
    name: str
    phase: str
    platforms: Optional[Tuple[str, ...]]  # None: every platform
    skip_under_wine: Optional[str]  # why it cannot run in a Windows Python under wine
    timeout: Optional[float]
    config: Optional[Mapping[str, Any]]  # inline, runtime placeholders still unfilled
    config_file: Optional[Path]
    services: Tuple[str, ...]  # every service of the config
    steps: Tuple[steps.Step, ...]
    uses_status: bool  # an expect_state step asks the supervisor's control socket
    metric_targets: Optional[Targets]  # for the reports (see report.metric_targets)
    target: Optional[str] = None  # the supervisor it runs on; None: the run's targets


def load_scenarios(path: Path, shown_as: str, stress_scale: float = 1.0) -> List[Scenario]:
    """Every scenario of one file; ``ScenarioFileError`` if anything in it is wrong."""
    document = read_document(path, shown_as)
    problems = Problems(document)
    if not isinstance(document.value, dict):
        got = "an empty file" if document.value is None else repr(document.value)
        problems.add(
            (), f"expected a mapping with the keys name, phase, steps (and config), got {got}"
        )
        problems.raise_if_any()
    top = document.value
    for key in top:
        if key not in _TOP_LEVEL:
            problems.add(
                (key,),
                f"unknown key{did_you_mean(key, _TOP_LEVEL)}; known: " + ", ".join(_TOP_LEVEL),
                at_key=True,
            )
    for key in _REQUIRED:
        if key not in top:
            problems.add((key,), "missing: this key is required")
    combinations = _matrix(top.get("matrix"), problems)
    problems.raise_if_any()
    scenarios = []
    for values in combinations:
        expanded = Document(
            document.file, substitute(top, values), document.positions, document.key_positions
        )
        checker = _Checker(expanded, path, stress_scale, matrix_keys=tuple(values))
        scenario = checker.scenario(_test_name(path, values))
        scenarios.append(scenario)
        for problem in checker.problems.found:
            if str(problem) not in {str(seen) for seen in problems.found}:
                problems.found.append(problem)
    problems.raise_if_any()
    return [scenario for scenario in scenarios if scenario is not None]


def substitute(value: Any, values: Mapping[str, Any], final: bool = False) -> Any:
    """``value`` with ``{name}`` placeholders of ``values`` filled in, at any depth.

    A string that is one placeholder becomes the value itself (so ``times: "{n}"`` stays
    a number). ``{{name}}`` is kept for a later stage, and turned into ``{name}`` by the
    ``final`` one.
    """
    if isinstance(value, dict):
        return {key: substitute(item, values, final) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, values, final) for item in value]
    if not isinstance(value, str):
        return value
    whole = _PLACEHOLDER.fullmatch(value)
    if whole and whole.group(2) in values:
        return values[whole.group(2)]

    def fill(match: re.Match) -> str:
        if match.group(1) is not None:
            return "{" + match.group(1) + "}" if final else match.group(0)
        name = match.group(2)
        return str(values[name]) if name in values else match.group(0)

    return _PLACEHOLDER.sub(fill, value)


def fill_placeholders(value: Any, values: Mapping[str, str]) -> Any:
    """The runner's last stage: fill the test's placeholders and unescape ``{{name}}``."""
    return substitute(value, values, final=True)


def fill_yaml_placeholders(text: str, values: Mapping[str, str]) -> str:
    """``fill_placeholders`` for YAML text (a ``check`` step's config): each value is written
    so that YAML reads back exactly the value -- escaped inside a double-quoted scalar, where
    a Windows path such as ``C:\\work\\python.exe`` would hold the escapes ``\\w`` and
    ``\\p``; with its quotes doubled inside a single-quoted one; as it is anywhere else.
    """
    quoted = _quoted_scalars(text)

    def fill(match: re.Match) -> str:
        if match.group(1) is not None:
            return "{" + match.group(1) + "}"
        name = match.group(2)
        if name not in values:
            return match.group(0)
        value = str(values[name])
        style = next((style for start, end, style in quoted if start <= match.start() < end), "")
        if style == '"':
            return json.dumps(value, ensure_ascii=False)[1:-1]  # JSON's escapes are YAML's too
        if style == "'":
            return value.replace("'", "''")
        return value

    return _PLACEHOLDER.sub(fill, text)


def _quoted_scalars(text: str) -> List[Tuple[int, int, str]]:
    """(start, end, quote) of each quoted scalar of YAML text, as far as it can be read."""
    found = []
    try:
        for token in yaml.scan(text):
            if isinstance(token, yaml.ScalarToken) and token.style in ('"', "'"):
                found.append((token.start_mark.index, token.end_mark.index, str(token.style)))
    except yaml.YAMLError:
        pass  # a config meant to be broken: the quotes before the error are known
    return found


def _placeholders(text: str) -> List[str]:
    return [match.group(2) for match in _PLACEHOLDER.finditer(text) if match.group(2)]


def _matrix(raw: Any, problems: Problems) -> List[Dict[str, Any]]:
    """Every combination of matrix values, in file order; ``[{}]`` without a matrix."""
    if raw is None:
        return [{}]
    if not isinstance(raw, dict) or not raw:
        problems.add(("matrix",), "expected a mapping of names to lists of values")
        return [{}]
    axes = []
    for key, options in raw.items():
        if not _MATRIX_KEY.match(key) or key in RUNTIME_PLACEHOLDERS + ("file", "index"):
            problems.add(
                ("matrix", key),
                "expected a name made of letters, digits and '_' that is not one of the"
                " placeholders {python}, {dummy}, {tmp}, {file}, {index}",
                at_key=True,
            )
        if not isinstance(options, list) or not options:
            problems.add(("matrix", key), "expected a non-empty list of values")
            continue
        for index, option in enumerate(options):
            if isinstance(option, (dict, list)) or option is None:
                problems.add(
                    ("matrix", key, index), f"expected text, a number or a boolean, got {option!r}"
                )
        axes.append([(key, option) for option in options])
    return [dict(combination) for combination in itertools.product(*axes)]


def _test_name(path: Path, values: Mapping[str, Any]) -> str:
    if not values:
        return path.stem
    return f"{path.stem}[{'-'.join(str(value) for value in values.values())}]"


class _Checker(ValueChecker):
    """Validates one expanded scenario: the file's keys, its config and its steps."""

    def __init__(
        self, document: Document, file: Path, stress_scale: float, matrix_keys: Tuple[str, ...]
    ) -> None:
        super().__init__(document, file, stress_scale)
        self.matrix_keys = matrix_keys  # for suggestions: their placeholders are filled already
        self.config_file_content: Any = None

    # -- the whole file ------------------------------------------------------

    def scenario(self, test_name: str) -> Optional[Scenario]:
        top = self.document.value
        self._check_placeholders(top, (), ())
        name = self.text(top.get("name"), ("name",))
        phase = self.choice(top.get("phase"), ("phase",), PHASES)
        platforms = None
        if top.get("platforms") is not None:
            platforms = tuple(
                self.choice(item, ("platforms", index), PLATFORMS)
                for index, item in enumerate(self.sequence(top["platforms"], ("platforms",)))
            )
        skip_under_wine = None
        if top.get("skip_under_wine") is not None:
            skip_under_wine = self.text(top["skip_under_wine"], ("skip_under_wine",)).strip()
        timeout = None
        if top.get("timeout") is not None:
            timeout = self.number(top["timeout"], ("timeout",), positive=True)
        target = None
        if top.get("target") is not None:
            target = self.choice(top["target"], ("target",), TARGETS)
        config, config_file = self._config(top)
        metric_targets = self._metric_targets(top.get("metric_targets"))
        body = self.step_list(top.get("steps"), ("steps",), started=False)
        if config_file is not None and self.uses_status:
            self._check_control_socket(config_file)
        if self.problems.found:
            return None
        return Scenario(
            shown_as=self.document.file,
            test_name=test_name,
            name=name,
            phase=phase,
            platforms=platforms,
            skip_under_wine=skip_under_wine,
            timeout=timeout,
            config=config,
            config_file=config_file,
            services=self.services,
            steps=body[0],
            uses_status=self.uses_status,
            metric_targets=metric_targets,
            target=target,
        )

    def _config(self, top: Mapping[str, Any]) -> Tuple[Optional[Dict[str, Any]], Optional[Path]]:
        inline, named = top.get("config"), top.get("config_file")
        if inline is not None and named is not None:
            self.problems.add(("config_file",), "give either config or config_file, not both")
            return None, None
        if named is not None:
            return None, self._config_file(named)
        if inline is None:
            return None, None
        if not isinstance(inline, dict) or not isinstance(inline.get("services"), dict):
            self.problems.add(("config",), "expected a supervisor config: a mapping with services")
            return None, None
        services: Dict[str, Any] = {}
        for service, template in inline["services"].items():
            services.update(self._expand_template(service, template))
        self.services, self.services_known = tuple(services), True
        return {**inline, "services": services}, None

    def _metric_targets(self, raw: Any) -> Optional[Targets]:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            self.problems.add(("metric_targets",), "expected a mapping of targets to limits")
            return None
        valid: Targets = {}
        for name, limit in raw.items():
            try:
                valid.update(validate({name: limit}, _TARGETS_ORIGIN))
            except TargetError as error:
                # The message starts with the origin; the problem names the key instead.
                message = str(error)[len(_TARGETS_ORIGIN) + 2 :]
                self.problems.add(("metric_targets", name), message)
        return valid

    def _config_file(self, raw: Any) -> Optional[Path]:
        relative = self.text(raw, ("config_file",))
        path = (self.file.parent / relative).resolve()
        try:
            loaded = yaml.safe_load(path.read_text("utf-8"))
        except OSError as error:
            self.problems.add(("config_file",), f"cannot read {path}: {error.strerror}")
            return None
        except UnicodeDecodeError:
            self.problems.add(("config_file",), f"cannot read {path}: it is not UTF-8 text")
            return None
        except yaml.YAMLError as error:
            detail = getattr(error, "problem", None) or error
            self.problems.add(("config_file",), f"{path} is not valid YAML: {detail}")
            return None
        if isinstance(loaded, dict) and isinstance(loaded.get("services"), dict):
            self.services, self.services_known = tuple(loaded["services"]), True
        self.config_file_content = loaded
        return path

    def _check_control_socket(self, path: Path) -> None:
        content = self.config_file_content
        settings = content.get("supervisor") if isinstance(content, dict) else None
        if isinstance(settings, dict) and "control_socket" in settings \
                and not settings["control_socket"]:
            self.problems.add(
                ("config_file",),
                f"expect_state asks the supervisor through its control socket, which"
                f" {path.name} turns off (supervisor.control_socket: false)",
            )

    def _expand_template(self, name: str, template: Any) -> Dict[str, Any]:
        """``{name: template}``, or N services ``name-0`` ... for a template with count."""
        if not isinstance(template, dict) or "count" not in template:
            self._check_placeholders(template, ("config", "services", name), ())
            return {name: template}
        path = ("config", "services", name)
        count = self.integer(template["count"], path + ("count",), minimum=1)
        self._check_placeholders(template, path, ("index",))
        body = {key: value for key, value in template.items() if key != "count"}
        return {
            f"{name}-{index}": substitute(body, {"index": index}) for index in range(count or 0)
        }

    # -- steps ---------------------------------------------------------------

    def step_list(
        self, raw: Any, path: KeyPath, started: bool
    ) -> Tuple[Tuple[steps.Step, ...], bool]:
        """The steps of a list, and whether the supervisor has been started after them."""
        items = self.sequence(raw, path)
        if not items and isinstance(raw, list):
            self.problems.add(path, "expected at least one step")
        found = []
        for index, item in enumerate(items):
            step, started = self.one_step(item, path + (index,), started)
            if step is not None:
                found.append(step)
        return tuple(found), started

    def one_step(self, raw: Any, path: KeyPath, started: bool) -> Tuple[Optional[steps.Step], bool]:
        if not isinstance(raw, dict) or len(raw) != 1:
            got = ", ".join(raw) if isinstance(raw, dict) and raw else repr(raw)
            self.problems.add(
                path, f"expected a step: a mapping with one key, the step kind; got {got}"
            )
            return None, started
        ((kind, body),) = raw.items()
        if kind not in STEP_KINDS:
            self.problems.add(
                path + (kind,),
                f"unknown step kind{did_you_mean(kind, STEP_KINDS)}; known: "
                + ", ".join(STEP_KINDS),
                at_key=True,
            )
            return None, started
        position = self.document.position(path)
        place = steps.StepPlace(format_path(path), position.line if position else 0, kind)
        if kind == "start" and "repeat" in path:
            self.problems.add(path + (kind,), "a scenario starts one supervisor: not in a repeat")
        elif kind == "start" and started:
            self.problems.add(path + (kind,), "a scenario starts one supervisor; it already did")
        elif kind not in _WITHOUT_SUPERVISOR and not started:
            self.problems.add(
                path + (kind,), "needs a running supervisor: put a `start` step before it"
            )
        if kind == "repeat":
            return self._repeat(body, path + (kind,), place, started)
        built = STEP_BUILDERS[kind](self, body, path + (kind,), place)
        return built, started or kind == "start"

    def _repeat(
        self, body: Any, path: KeyPath, place: steps.StepPlace, started: bool
    ) -> Tuple[Optional[steps.Step], bool]:
        fields = self.fields(body, path, ("times", "steps"), required=("times", "steps"))
        times = self.integer(fields.get("times"), path + ("times",), minimum=1)
        inner, started = self.step_list(fields.get("steps"), path + ("steps",), started)
        return steps.Repeat(place, times or 1, inner), started

    def _check_placeholders(self, value: Any, path: KeyPath, extra: Sequence[str]) -> None:
        """Report ``{name}`` placeholders that nothing will fill in.

        The config's services are checked where they are expanded (a template may
        use ``{index}``), and check expectations where ``{file}`` is allowed.
        """
        if isinstance(value, dict):
            for key, item in value.items():
                child = path + (key,)
                if child == ("config", "services"):
                    continue  # each service is checked where templates are expanded
                in_check = bool(path) and path[-1] == "check" and key in _FILE_PLACEHOLDER_KEYS
                self._check_placeholders(item, child, (*extra, "file") if in_check else extra)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._check_placeholders(item, path + (index,), extra)
        elif isinstance(value, str):
            allowed = (*RUNTIME_PLACEHOLDERS, *extra)
            for name in _placeholders(value):
                if name not in allowed:
                    suggestion = did_you_mean(
                        name, (*allowed, *self.matrix_keys), shown=lambda known: f"{{{known}}}"
                    )
                    self.problems.add(
                        path,
                        f"unknown placeholder {{{name}}}{suggestion}; known here: "
                        + ", ".join(f"{{{known}}}" for known in allowed)
                        + " and the matrix names (write {{"
                        + name
                        + "}} for a literal)",
                    )


_FILE_PLACEHOLDER_KEYS = ("expect_stdout", "expect_stderr")
_TARGETS_ORIGIN = "metric_targets"


STEP_KINDS = (*STEP_BUILDERS, "repeat")
# Steps that make sense before (or without) a supervisor.
_WITHOUT_SUPERVISOR = ("start", "check", "sleep", "repeat")
