#!/usr/bin/env python3
"""A compact process supervisor in one module.

Run it with ``python supervisor.py run -c services.yaml``; only the standard library and
PyYAML are needed, and PyYAML only for a config in YAML (psutil, when importable, is used to
find a service's processes on systems without ``/proc``).

How it is put together, top to bottom:

* **Logging** -- ``log()`` writes human lines (text or JSON) to stderr or a file, in colour
  on a terminal, and keeps the latest in memory for ``supervisor logs``.
* **Config** -- YAML is composed into nodes (so every problem carries a line), validated in
  one pass into named tuples; every problem is collected into one ``ConfigError``. A JSON
  object is read by json into nodes of the same shape.
* **Event stream** -- one JSON object per line for every state transition (SPEC §4).
* **Service states** -- one ``State`` enum and one transition table; ``Service.transition``
  is the only place a state changes, and it emits exactly one event.
* **Process seam** -- ``PosixProcesses`` / ``WindowsProcesses``: spawning in a new session,
  signalling a group, finding a service's escaped processes, reaping, exit watches.
  Nothing else in the module asks which OS it runs on.
* **ServiceManager** -- decides: restart policies, backoff, stopping, shutdown. It sleeps in
  ``selectors`` until a child exits, a signal arrives or a timer is due; it never polls.
* **Self-respawn** -- an unexpected exception in the main loop re-executes the supervisor
  with ``os.execv``; the running services are handed over through a small JSON file and
  adopted (same PIDs) by the new image. On Windows an exec cannot keep children, so the
  supervisor restarts in-process instead (same PID) and starts its services again.
* **CLI** -- ``run``, ``check``, and the commands that talk to a running supervisor through
  its control socket (``status``, ``start``, ``stop``, ``logs``, ``signal`` ...).
"""
from __future__ import annotations

import os
import sys

# Run as a script, CPython keeps the script's parse tree until the script returns: for this
# file about 10 MB, held for the whole life of a supervisor. An import frees it once the module
# is compiled, or loads __pycache__ and never builds it. So `python supervisor.py run`
# re-executes itself at once (same PID, same sys.argv) to import this file and run it from
# there: before the imports below, so that they are done once, by the image that stays.
# It hands over the module as it compiled it (the first argument after the code: a memfd to
# read it from, or "-"), so that the import does not compile it again where no bytecode is
# cached (PYTHONDONTWRITEBYTECODE, a read-only folder): some 40 ms.
_RUN_AS_IMPORT = (
    "import importlib.util as u, marshal, os, sys; compiled = sys.argv.pop(1); del sys.argv[0]; "
    "s = u.spec_from_file_location('supervisor', sys.argv[0]); "  # the script's path
    "m = sys.modules['supervisor'] = u.module_from_spec(s); "
    "exec(marshal.load(os.fdopen(int(compiled), 'rb')), vars(m)) if compiled != '-' "
    "else s.loader.exec_module(m); "
    "m.command_line()")


def run_as_import() -> None:
    """Re-execute this script as an import (see above); returns only where that cannot be:
    no exec that keeps the PID (Windows), no interpreter to name, or the exec failed (the
    script runs as well, only bigger). Only for `run`: a short command is gone before the
    memory matters, and "run" anywhere in the arguments is close enough to tell."""
    if os.name == "posix" and sys.executable and "run" in sys.argv[1:]:
        try:
            compiled = _hand_over(sys._getframe(1).f_code)  # the caller: this module's code
            os.execv(sys.executable, [sys.executable, "-c", _RUN_AS_IMPORT, compiled] + sys.argv)
        except OSError:
            pass


def _hand_over(code: types.CodeType) -> str:
    """A descriptor the next image can read ``code`` from (Linux: a memfd, memory that is
    never a file anyone else can reach), or "-" where there is none."""
    if not hasattr(os, "memfd_create"):
        return "-"
    import marshal
    fd = os.memfd_create("supervisor.py", 0)  # (no MFD_CLOEXEC: it must cross the exec)
    os.set_inheritable(fd, True)
    data = marshal.dumps(code)
    while data:
        data = data[os.write(fd, data):]
    os.lseek(fd, 0, os.SEEK_SET)
    return str(fd)


if __name__ == "__main__" and __spec__ is None:  # no spec: a file run, not `python -m`
    run_as_import()

import argparse
import binascii
import collections
import contextlib
import ctypes
import enum
import errno
import heapq
import itertools
import json
import math
import re
import select
import selectors
import shlex
import signal
import socket
import stat
import struct
import time
import types

# Type checkers read the imports below; the running module does not import typing, which
# would cost half a megabyte and some 3 ms (turning every NamedTuple field into a ForwardRef)
# for the supervisor's whole life. It gets two stand-ins instead.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import queue
    import subprocess
    import threading
    from typing import (
        Any,
        Callable,
        Deque,
        Dict,
        FrozenSet,
        Iterator,
        List,
        Mapping,
        NamedTuple,
        Optional,
        Protocol,
        Set,
        Tuple,
    )

    import yaml

    class _Node(Protocol):
        """A composed YAML node, or a _JsonNode shaped like one."""
        @property
        def id(self) -> str: ...  # "scalar", "sequence" or "mapping"
        value: Any
        start_mark: Any

    _Validator = Callable[["_Checker", _Node, str], Any]
    _Checked = Dict[str, Tuple[Any, _Node]]  # key -> (validated value, its node)
    _Entries = Dict[str, Tuple[_Node, _Node]]  # key -> (key node, value node)
else:
    Protocol = object  # at run time a protocol is the documentation of a seam

    class _NamedTupleType(type):
        """typing.NamedTuple's class syntax (fields as annotations, defaults as values,
        methods), built on collections.namedtuple."""

        def __new__(mcs, name, bases, namespace):
            if not bases:  # NamedTuple itself
                return super().__new__(mcs, name, bases, namespace)
            fields = list(namespace.get("__annotations__", {}))
            defaulted = [field for field in fields if field in namespace]
            if defaulted != fields[len(fields) - len(defaulted):]:
                raise TypeError(f"{name}: a field without a default after one with a default")
            base = collections.namedtuple(name, fields, module=namespace["__module__"],
                                          defaults=[namespace.pop(f) for f in defaulted])
            return type(name, (base,), dict(namespace, __slots__=()))

    class NamedTuple(metaclass=_NamedTupleType):
        pass


__version__ = "0.1.0"

IS_WINDOWS = sys.platform == "win32"
HANDOFF_ENV = "SUPERVISOR_HANDOFF"
SERVICE_TAG_ENV = "SUPERVISOR_SERVICE_TAG"

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

# os.open() flags of the files we append to. Windows opens descriptors in text mode unless
# told otherwise, turning "\n" into "\r\n" behind our back (and past our byte counts).
APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)


# --------------------------------------------------------------------------- logging

LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


RECENT_BYTES = 32768          # of output kept per service, and of our own log (logs -n)
RECENT_LINE_BYTES = 4096      # a longer line is kept cut to this
LOG_TAIL_LINES = 20           # what `logs` shows, and error messages quote of a service's output


class RecentLines:
    """The latest lines of one output -- a service's, or the supervisor's own log -- within
    RECENT_BYTES, and the ``logs -f`` clients following it. (There is one per service: it
    holds nothing, not even an empty deque, until the first line comes.)"""

    __slots__ = ("lines", "size", "followers")

    def __init__(self) -> None:
        self.lines: Optional[Deque[bytes]] = None
        self.size = 0
        self.followers: List[Callable[[List[bytes]], bool]] = []  # each says False once gone

    def add(self, lines: List[bytes]) -> None:
        if self.lines is None:
            self.lines = collections.deque()
        for line in lines:
            line = line[:RECENT_LINE_BYTES]
            self.lines.append(line)
            self.size += len(line)
        while self.size > RECENT_BYTES:
            self.size -= len(self.lines.popleft())
        if self.followers:
            self.followers = [follower for follower in self.followers if follower(lines)]

    def last(self, count: int) -> List[bytes]:
        return list(self.lines or ())[-count:] if count > 0 else []


LEVEL_COLOURS = {"debug": "2", "info": "32", "warning": "33", "error": "1;31"}  # ANSI SGR
SERVICE_COLOURS = ("36", "35", "34", "33", "32", "96", "95", "94", "93", "92")


class _LogSettings:
    level = LOG_LEVELS["info"]
    fmt = "text"
    path: Optional[str] = None
    stream: Any = sys.stderr
    held: Optional[List[Tuple[float, str, str, Optional[str]]]] = None  # see HeldOutput
    recent = RecentLines()  # for `logs` without a name
    colours_allowed = False  # not turned off by --no-color or NO_COLOR
    colour = False           # and the log goes to a terminal
    services: Dict[str, str] = {}  # name -> its colour, in config order
    width = 0                # of the longest service name: their lines align


def configure_logging(level: str = "info", fmt: str = "text", path: Optional[str] = None,
                      colour: bool = True) -> None:
    _LogSettings.level = LOG_LEVELS[level]
    _LogSettings.fmt = fmt
    _LogSettings.path = path
    _LogSettings.stream = open(path, "a", buffering=1) if path else sys.stderr
    _LogSettings.colours_allowed = colour and not os.environ.get("NO_COLOR")  # no-color.org
    _LogSettings.colour = _in_colour(_LogSettings.stream)


def _in_colour(stream: Any) -> bool:
    """Colours on a terminal only, and only where allowed."""
    try:
        return _LogSettings.colours_allowed and stream.isatty()
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False


def name_services(names: List[str]) -> None:
    """The services of the config, in its order: each gets a colour, and their log lines
    and output align on the longest name."""
    _LogSettings.services = {name: SERVICE_COLOURS[i % len(SERVICE_COLOURS)]
                             for i, name in enumerate(names)}
    _LogSettings.width = max(map(len, names), default=0)


def _paint(text: str, colour: Optional[str], on: bool) -> str:
    return "\x1b[%sm%s\x1b[0m" % (colour, text) if on and colour else text


def _service_name(service: str, colour: bool) -> str:
    return _paint(service, _LogSettings.services.get(service), colour)


def output_prefix(service: str, colour: bool) -> bytes:
    """What comes before each line of a service's inherited output: its aligned name."""
    padding = " " * (_LogSettings.width - len(service))
    return ("%s%s | " % (_service_name(service, colour), padding)).encode()


def format_log_line(ts: float, level: str, message: str, service: Optional[str], fmt: str,
                    colour: bool = False) -> str:
    if fmt == "json":
        return json.dumps({"ts": round(ts, 6), "level": level, "service": service,
                           "message": message})
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + ".%03d" % (ts % 1 * 1000)
    label = _paint("%-7s" % level.upper(), LEVEL_COLOURS[level], colour)
    if service:
        padding = " " * (_LogSettings.width - len(service))
        label += " [%s]%s" % (_service_name(service, colour), padding)
    return "%s %s %s" % (stamp, label, message)


def log(level: str, message: str, service: Optional[str] = None) -> None:
    """Write one human-readable log line if ``level`` passes the configured threshold."""
    if LOG_LEVELS[level] < _LogSettings.level:
        return
    entry = (time.time(), level, message, service)
    if _LogSettings.held is not None:
        _LogSettings.held.append(entry)
    else:
        _write_log([entry])


def _write_log(entries: List[Tuple[float, str, str, Optional[str]]]) -> None:
    lines = [format_log_line(*entry, _LogSettings.fmt) for entry in entries]
    _LogSettings.recent.add([line.encode() for line in lines])
    if _LogSettings.colour:
        lines = [format_log_line(*entry, _LogSettings.fmt, colour=True) for entry in entries]
    if _LogSettings.stream is None:
        return  # started with stderr closed, and no log_file: kept for `logs` only
    text = "".join(line + "\n" for line in lines)
    try:
        _LogSettings.stream.write(text)
        _LogSettings.stream.flush()
    except (OSError, ValueError):
        pass  # a closed or full log stream must never take the supervisor down


# --------------------------------------------------------------------------- config

# The document is composed (not loaded) so that every node keeps its line; the
# walk below validates each key through a table of validators. A validator
# reports what is wrong and returns a value anyway, so one bad key never hides
# the next: parse_config raises once, at the end, with everything it found.


class Problem(NamedTuple):
    """One thing wrong with a config file; `key` is a dotted path such as services.web.restart."""

    file: str
    line: Optional[int]
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return ": ".join(part for part in (where, self.key, self.message) if part)


class ConfigError(Exception):
    """A config that cannot be used; str() lists every problem, one per line."""

    def __init__(self, problems: List[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(map(str, self.problems)))


class Backoff(NamedTuple):
    factor: float = 1.0
    max_delay: float = 60.0
    jitter: float = 0.0


class OutputSpec(NamedTuple):
    mode: str  # "inherit" | "null" | "file"
    file: Optional[str] = None
    max_bytes: Optional[int] = None
    backups: int = 0


class ReadySpec(NamedTuple):
    kind: str  # "after" (seconds still running) | "log" | "tcp" | "file"
    target: Any  # seconds for "after", else a regex, "HOST:PORT" or a path
    timeout: float


class ServiceConfig(NamedTuple):
    name: str
    command: Tuple[str, ...]
    shell: bool
    cwd: Optional[str]
    env: Mapping[str, str]  # read-only: == compares contents, so reload can tell a changed env
    restart: str
    success_exit_codes: FrozenSet[int]
    max_retries: Optional[int]
    restart_delay: float
    backoff: Backoff
    reset_after: float
    stop_signal: str
    stop_timeout: float
    kill_mode: str  # "tree": what its main process leaves is stopped at its exit; "process": kept
    ready: Optional[ReadySpec]
    depends_on: Tuple[str, ...]
    stdout: OutputSpec
    stderr: OutputSpec
    autostart: bool
    umask: Optional[int]
    user: Optional[str]

    def __hash__(self) -> int:  # env, a mapping proxy, cannot be hashed; equal configs hash equal
        return hash((self.name, self.command))


class SelfRespawn(NamedTuple):
    enabled: bool = True
    max: int = 5
    window: float = 60.0


class SupervisorSettings(NamedTuple):
    log_level: str = "info"
    log_format: str = "text"
    log_file: Optional[str] = None
    events_file: Optional[str] = None
    control_socket: Optional[str] = "default"  # a path, "default" (see control_socket_path) or None
    shutdown_timeout: float = 30.0
    self_respawn: SelfRespawn = SelfRespawn()
    state_file: Optional[str] = None


class Config(NamedTuple):
    path: str
    supervisor: SupervisorSettings
    services: Mapping[str, ServiceConfig]  # in file order


# Portable names, accepted even where this OS lacks them, so one config serves every platform.
_POSIX_SIGNALS = frozenset((
    "SIGTERM", "SIGINT", "SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2",
    "SIGABRT", "SIGALRM", "SIGCONT", "SIGSTOP", "SIGWINCH", "SIGPIPE", "SIGBREAK",
))


def canonical_signal_name(value: Any) -> Optional[str]:
    """The canonical name: "TERM", "sigterm", "SIGTERM", 15 -> "SIGTERM"; None if not a signal."""
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            name = signal.Signals(value).name
        except ValueError:
            return None
        # Windows numbers its console events (CTRL_C_EVENT = 0) among the signals
        return name if name.startswith("SIG") else None
    if not isinstance(value, str):
        return None
    name = value.strip().upper()
    for candidate in (name, "SIG" + name):
        if candidate.startswith("SIG") and candidate in signal.Signals.__members__:
            return signal.Signals[candidate].name  # aliases such as SIGIOT -> SIGABRT
        if candidate in _POSIX_SIGNALS:
            return candidate
    return None


_NOT_SCALAR = object()  # a list or mapping where a scalar was expected, or an unreadable value
_SERVICE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _node_value(node: _Node) -> Any:
    if isinstance(node, _JsonNode):
        return node.data
    import yaml
    try:
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError):  # e.g. a timestamp such as 2024-13-01
        return node.value if node.id == "scalar" else _NOT_SCALAR


def _scalar_value(node: _Node) -> Any:
    return _node_value(node) if node.id == "scalar" else _NOT_SCALAR


def _is_null(node: _Node) -> bool:
    return _scalar_value(node) is None


def _describe(node: _Node) -> str:
    """The value as the user wrote it, for "got ..." (YAML spellings for null and booleans)."""
    value = _node_value(node)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if value is _NOT_SCALAR:  # could not be read at all
        return "a list" if node.id == "sequence" else "a mapping"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _node_line(node: _Node) -> int:
    return node.start_mark.line + 1


def _key_path(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _did_you_mean(word: Any, options: Any, normal: Callable[[str], str] = str.lower) -> str:
    """A " (did you mean ...?)" hint naming the option closest to `word`, or ""."""
    if not isinstance(word, str):
        return ""
    import difflib  # (only a mistake needs it)
    by_normal = {normal(option): option for option in options}
    close = difflib.get_close_matches(normal(word), list(by_normal), n=1)
    return f" (did you mean {by_normal[close[0]]!r}?)" if close else ""


class _Checker:
    """Walks composed YAML nodes and collects problems instead of stopping at the first."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: List[Problem] = []
        self.service_names: Tuple[str, ...] = ()

    def report(self, node: Optional[_Node], key: str, message: str) -> None:
        line = None if node is None or node.start_mark is None else _node_line(node)
        self.problems.append(Problem(self.path, line, key, message))

    def expected(self, node: _Node, key: str, what: str) -> None:
        self.report(node, key, f"expected {what}, got {_describe(node)}")

    def mapping(self, node: _Node, key: str) -> _Entries:
        """Entries by key text (so `on:` stays "on"); an empty value counts as an empty mapping."""
        if node.id != "mapping":
            if not _is_null(node):
                self.expected(node, key, "a mapping")
            return {}
        entries: _Entries = {}
        for key_node, value_node in node.value:
            if key_node.id != "scalar":
                self.expected(key_node, key, "a plain key")
            elif key_node.value in entries:
                lines = f"lines {_node_line(entries[key_node.value][0])} and {_node_line(key_node)}"
                self.report(key_node, _key_path(key, key_node.value), f"duplicate key ({lines})")
            else:
                entries[key_node.value] = (key_node, value_node)
        return entries

    def sequence(self, node: _Node, key: str, what: str) -> List[_Node]:
        if node.id == "sequence":
            return list(node.value)
        self.expected(node, key, what)
        return []

    def fields(self, node: _Node, key: str, table: Mapping[str, _Validator]) -> _Checked:
        """Each known key validated to (value, node); unknown keys reported with a suggestion."""
        found: _Checked = {}
        for name, (key_node, value_node) in self.mapping(node, key).items():
            if name in table:
                found[name] = (table[name](self, value_node, _key_path(key, name)), value_node)
            else:
                hint = _did_you_mean(name, table) or "; expected one of " + ", ".join(table)
                self.report(key_node, _key_path(key, name), "unknown key" + hint)
        return found


def _just_values(found: _Checked) -> Dict[str, Any]:
    return {name: value for name, (value, _) in found.items()}


# -- validators: (checker, node, key) -> value; a problem is reported, never raised --


def _check_boolean(ch: _Checker, node: _Node, key: str) -> Any:
    value = _scalar_value(node)
    return value if isinstance(value, bool) else ch.expected(node, key, "true or false")


def _check_text(ch: _Checker, node: _Node, key: str) -> Any:
    value = _scalar_value(node)
    if isinstance(value, str) and value:
        return value
    return ch.expected(node, key, "a non-empty string")


def _nullable(validator: _Validator) -> _Validator:
    return lambda ch, node, key: None if _is_null(node) else validator(ch, node, key)


def _number(what: str, accept: Callable[[float], bool]) -> _Validator:
    def check(ch: _Checker, node: _Node, key: str) -> Any:
        value = _scalar_value(node)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return ch.expected(node, key, "a number")
        if not math.isfinite(value) or not accept(value):
            return ch.expected(node, key, what)
        return float(value)

    return check


def _integer(low: int, high: float = math.inf, what: str = "") -> _Validator:
    what = what or (f"an integer {low}..{high}" if high < math.inf else f"an integer >= {low}")

    def check(ch: _Checker, node: _Node, key: str) -> Any:
        value = _scalar_value(node)
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        return ch.expected(node, key, what)

    return check


def _choice(*options: str) -> _Validator:
    def check(ch: _Checker, node: _Node, key: str) -> Any:
        value = _scalar_value(node)
        if isinstance(value, str) and value in options:
            return value
        hint = _did_you_mean(value, options)
        ch.report(node, key, f"expected one of {', '.join(options)}; got {_describe(node)}{hint}")
        return None

    return check


_check_seconds = _number("a number >= 0", lambda value: value >= 0)
_check_positive_seconds = _number("a number > 0", lambda value: value > 0)


def _check_signal(ch: _Checker, node: _Node, key: str) -> Any:
    name = canonical_signal_name(_scalar_value(node))
    if name is None:
        names = sorted(_POSIX_SIGNALS.union(signal.Signals.__members__))
        hint = _did_you_mean(_scalar_value(node), names, _signal_stem)
        ch.report(node, key, f"expected a signal name such as SIGTERM, got {_describe(node)}{hint}")
    return name


def _signal_stem(name: str) -> str:
    # Compared without the prefix, which every name shares and would make any word look close.
    name = name.strip().upper()
    return name[3:] if name.startswith("SIG") else name


def _check_command(ch: _Checker, node: _Node, key: str) -> Any:
    """A tuple of words, or a string left for _final_command once `shell` is known."""
    if node.id == "sequence":
        if not node.value:
            return ch.expected(node, key, "a non-empty command")
        return tuple(_check_word(ch, item, f"{key}[{i}]") for i, item in enumerate(node.value))
    value = _scalar_value(node)
    if isinstance(value, str) and value.strip():
        return value
    return ch.expected(node, key, "a non-empty command (a string or a list of strings)")


def _check_word(ch: _Checker, node: _Node, key: str) -> Any:
    value = _scalar_value(node)
    return value if isinstance(value, str) else ch.expected(node, key, "a string")


def _final_command(ch: _Checker, command: Any, shell: Any, node: _Node, key: str) -> Any:
    """The argv: with shell: true a string is one shell line, else it is split into words."""
    if command is None or (not shell and not isinstance(command, str)):
        return command
    if shell and not isinstance(command, str):
        return ch.expected(node, key, "a single string with shell: true")
    if shell:
        return (command,)
    try:
        return tuple(shlex.split(command))
    except ValueError as exc:  # unbalanced quotes or a trailing backslash
        ch.report(node, key, f"expected a command line shlex can split, got {command!r} ({exc})")
        return None


def _check_env(ch: _Checker, node: _Node, key: str) -> Any:
    env = {}
    for name, (key_node, value_node) in ch.mapping(node, key).items():
        if "=" in name or not name:
            ch.expected(key_node, _key_path(key, name), "a variable name without '='")
        elif value_node.id != "scalar" or _is_null(value_node):
            ch.expected(value_node, _key_path(key, name), "a string")
        else:
            env[name] = value_node.value  # as written: PORT: 8080 -> "8080", MODE: 0755 -> "0755"
    return types.MappingProxyType(env)


_check_exit_code = _integer(0, 255)


def _check_exit_codes(ch: _Checker, node: _Node, key: str) -> Any:
    items = ch.sequence(node, key, "a list of exit codes")
    return frozenset(_check_exit_code(ch, item, f"{key}[{i}]") for i, item in enumerate(items))


def _check_service_ref(ch: _Checker, node: _Node, key: str) -> Any:
    name = node.value if node.id == "scalar" else None
    if name in ch.service_names:
        return name
    hint = _did_you_mean(name, ch.service_names)
    ch.report(node, key, f"expected a defined service, got {_describe(node)}{hint}")
    return None


def _check_service_refs(ch: _Checker, node: _Node, key: str) -> Any:
    items = ch.sequence(node, key, "a list of service names")
    names = (_check_service_ref(ch, item, f"{key}[{i}]") for i, item in enumerate(items))
    return tuple(dict.fromkeys(name for name in names if name))


def _check_regex(ch: _Checker, node: _Node, key: str) -> Any:
    pattern = _check_text(ch, node, key)
    if pattern is None:
        return None
    try:
        re.compile(pattern)
    except re.error as exc:
        ch.report(node, key, f"expected a regular expression, got {pattern!r} ({exc})")
        return None
    return pattern


def _check_host_port(ch: _Checker, node: _Node, key: str) -> Any:
    value = _scalar_value(node)
    host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if host and port.isdecimal() and 0 < int(port) < 65536:
        return value
    return ch.expected(node, key, "'HOST:PORT' with a port 1..65535")


_READY_PROBES: Dict[str, _Validator] = {
    "after": _check_seconds,
    "log": _check_regex,
    "tcp": _check_host_port,
    "file": _check_text,
}
_READY_KEYS = {**_READY_PROBES, "timeout": _check_positive_seconds}


def _check_ready(ch: _Checker, node: _Node, key: str) -> Any:
    found = _just_values(ch.fields(node, key, _READY_KEYS))
    probes = [name for name in found if name in _READY_PROBES]
    if len(probes) != 1:
        got = ", ".join(probes) or "none"
        ch.report(node, key, f"expected exactly one of after, log, tcp, file; got {got}")
        return None
    return ReadySpec(probes[0], found[probes[0]], found.get("timeout", 30.0))


_OUTPUT_FILE: Dict[str, _Validator] = {
    "file": _check_text,
    "max_bytes": _nullable(_integer(1)),
    "backups": _integer(0),
}


def _check_output(ch: _Checker, node: _Node, key: str) -> Any:
    if node.id == "mapping":
        found = _just_values(ch.fields(node, key, _OUTPUT_FILE))
        if "file" not in found:
            ch.report(node, key, "missing required key 'file'")
        return OutputSpec("file", **found)
    value = _scalar_value(node)
    mode = "null" if value is None else value  # a bare `null` in YAML arrives as None
    if mode in ("inherit", "null"):
        return OutputSpec(mode)
    what = "inherit, null or {file: PATH, max_bytes: N, backups: K}"
    hint = _did_you_mean(value, ("inherit", "null"))
    ch.report(node, key, f"expected {what}; got {_describe(node)}{hint}")
    return None


def _check_control_socket(ch: _Checker, node: _Node, key: str) -> Any:
    value = _scalar_value(node)
    if value is False or value is None:  # no control socket
        return None
    if isinstance(value, str) and value:
        return value
    return ch.expected(node, key, "a path, default or false")


def _check_umask(ch: _Checker, node: _Node, key: str) -> Any:
    # YAML already reads 022 as octal; a string is read as octal too ("022", "0o22").
    value = _scalar_value(node)
    match = re.fullmatch(r"(?:0o)?([0-7]{1,4})", value.strip()) if isinstance(value, str) else None
    mask = int(match.group(1), 8) if match else value
    if isinstance(mask, int) and not isinstance(mask, bool) and 0 <= mask <= 0o777:
        return mask
    return ch.expected(node, key, "an octal umask such as '022'")


def _section(cls: type, table: Mapping[str, _Validator]) -> _Validator:
    return lambda ch, node, key: cls(**_just_values(ch.fields(node, key, table)))


_REQUIRED_KEY = object()

# key -> (validator, default); the keys are ServiceConfig's fields.
_SERVICE_KEYS: Dict[str, Tuple[_Validator, Any]] = {
    "command": (_check_command, _REQUIRED_KEY),
    "shell": (_check_boolean, False),
    "cwd": (_nullable(_check_text), None),
    "env": (_check_env, types.MappingProxyType({})),
    "restart": (_choice("always", "on-failure", "never"), "on-failure"),
    "success_exit_codes": (_check_exit_codes, frozenset({0})),
    "max_retries": (_nullable(_integer(0, what="an integer >= 0 or null")), 3),
    "restart_delay": (_check_seconds, 0.0),
    "backoff": (
        _section(Backoff, {
            "factor": _number("a number >= 1", lambda value: value >= 1),
            "max_delay": _check_seconds,
            "jitter": _number("a number between 0 and 1", lambda value: 0 <= value <= 1),
        }),
        Backoff(),
    ),
    "reset_after": (_check_seconds, 10.0),
    "stop_signal": (_check_signal, "SIGTERM"),
    "stop_timeout": (_check_seconds, 10.0),
    "kill_mode": (_choice("tree", "process"), "tree"),
    "ready": (_nullable(_check_ready), None),
    "depends_on": (_check_service_refs, ()),
    "stdout": (_check_output, OutputSpec("inherit")),
    "stderr": (_check_output, OutputSpec("inherit")),
    "autostart": (_check_boolean, True),
    "umask": (_nullable(_check_umask), None),
    "user": (_nullable(_check_text), None),
}
_SERVICE_VALIDATORS = {name: validator for name, (validator, _) in _SERVICE_KEYS.items()}

_SUPERVISOR_KEYS: Dict[str, _Validator] = {
    "log_level": _choice("debug", "info", "warning", "error"),
    "log_format": _choice("text", "json"),
    "log_file": _nullable(_check_text),
    "events_file": _nullable(_check_text),
    "control_socket": _check_control_socket,
    "shutdown_timeout": _check_positive_seconds,
    "self_respawn": _section(SelfRespawn, {
        "enabled": _check_boolean,
        "max": _integer(0),
        "window": _check_positive_seconds,
    }),
    "state_file": _nullable(_check_text),
}


def _build_service(
    ch: _Checker, name: str, key_node: _Node, node: _Node, defaults: _Checked
) -> Tuple[ServiceConfig, _Checked]:
    """One service: its own keys over `defaults`, except env, merged variable by variable."""
    key = f"services.{name}"
    own = ch.fields(node, key, _SERVICE_VALIDATORS)
    merged = {**defaults, **own}
    if "env" in defaults and "env" in own:
        env = types.MappingProxyType({**defaults["env"][0], **own["env"][0]})
        merged["env"] = (env, own["env"][1])
    settings = {
        option: merged[option][0] if option in merged else default
        for option, (_, default) in _SERVICE_KEYS.items()
    }
    if "command" in merged:
        command, command_node = merged["command"]
        where = key if "command" in own else "defaults"
        settings["command"] = _final_command(
            ch, command, settings["shell"], command_node, f"{where}.command"
        )
    else:
        ch.report(key_node, key, "missing required key 'command'")
    return ServiceConfig(name=name, **settings), merged


def _dependency_cycles(graph: Mapping[str, Tuple[str, ...]]) -> List[List[str]]:
    """Each cycle once, as a path that ends where it starts."""
    done: Set[str] = set()
    cycles: List[List[str]] = []

    def visit(name: str, trail: List[str]) -> None:
        if name in trail:
            cycles.append(trail[trail.index(name):] + [name])
        elif name not in done:
            for dependency in graph.get(name, ()):
                visit(dependency, trail + [name])
            done.add(name)

    for name in graph:
        visit(name, [])
    return cycles


def _syntax_problem(path: str, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    parts = (getattr(exc, "context", None), getattr(exc, "problem", None))
    what = ", ".join(part for part in parts if part) or str(exc).splitlines()[0]
    if mark is None:
        return Problem(path, None, "", f"invalid YAML: {what}")
    return Problem(path, mark.line + 1, "", f"invalid YAML at column {mark.column + 1}: {what}")


def _node_itself(ch: _Checker, node: _Node, key: str) -> _Node:
    return node


# defaults and services are walked by _build_services, once every service name is known.
_TOP_KEYS: Dict[str, _Validator] = {
    "supervisor": _section(SupervisorSettings, _SUPERVISOR_KEYS),
    "defaults": _node_itself,
    "services": _node_itself,
}


def _build_services(
    ch: _Checker, node: Optional[_Node], defaults_node: Optional[_Node]
) -> Dict[str, ServiceConfig]:
    entries = ch.mapping(node, "services") if node else {}
    ch.service_names = tuple(entries)  # known before any depends_on or ready.after is checked
    for name, (key_node, _) in entries.items():
        if not _SERVICE_NAME.fullmatch(name):
            what = "a service name of letters, digits, '_', '.' or '-'"
            ch.report(key_node, "services", f"expected {what}, got {name!r}")
    # Say there are none, unless `services` was something else (reported as not a mapping).
    if not entries and (node is None or node.id == "mapping" or _is_null(node)):
        ch.report(node, "services", "at least one service is required")
    defaults = ch.fields(defaults_node, "defaults", _SERVICE_VALIDATORS) if defaults_node else {}
    services = {}
    depends_on_nodes = {}
    for name, (key_node, value_node) in entries.items():
        services[name], merged = _build_service(ch, name, key_node, value_node, defaults)
        if "depends_on" in merged:
            depends_on_nodes[name] = merged["depends_on"][1]
    graph = {name: service.depends_on for name, service in services.items()}
    for cycle in _dependency_cycles(graph):
        message = "dependency cycle " + " -> ".join(cycle)
        ch.report(depends_on_nodes[cycle[0]], f"services.{cycle[0]}.depends_on", message)
    return services


class _JsonNode:
    """A value of a config written in JSON, in the shape of the YAML node it would compose to
    (``id``, and in ``value`` the entries, the items or the text as written), with the value
    itself in ``data``. It has no line: a JSON config with any problem is read again as YAML,
    whose nodes have theirs, to say where."""

    __slots__ = ("id", "value", "data")
    start_mark = None

    def __init__(self, data: Any) -> None:
        if isinstance(data, dict):
            self.id, self.data = "mapping", _NOT_SCALAR
            self.value: Any = [(_JsonNode(key), _JsonNode(item)) for key, item in data.items()]
        elif isinstance(data, list):
            self.id, self.data, self.value = "sequence", _NOT_SCALAR, [_JsonNode(i) for i in data]
        elif isinstance(data, str):  # a _JsonNumber is the number as written: "8080", "1.50"
            self.id, self.value = "scalar", str(data)
            self.data = json.loads(data) if isinstance(data, _JsonNumber) else data
        else:  # true, false, null
            self.id, self.value, self.data = "scalar", json.dumps(data), data


class _JsonNumber(str):
    """A number in a JSON config, as written."""


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    entries = dict(pairs)
    if len(entries) < len(pairs):
        raise ValueError("a duplicate key")  # said, with both lines, by the YAML reading
    return entries


def _json_root(text: str) -> Optional[_JsonNode]:
    """The nodes of a config that is a JSON object; None for any other text. Read by json in
    a fraction of a millisecond, without importing PyYAML (some 10 ms, and 1 MB for the
    supervisor's whole life): what the pytest plugin and other programs write."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        return _JsonNode(json.loads(text, object_pairs_hook=_unique_keys,
                                    parse_int=_JsonNumber, parse_float=_JsonNumber))
    except ValueError:
        return None


# libyaml's parser when PyYAML has it: some 20 times faster (500 services take 0.12 s to
# compose in pure Python, 7 ms with libyaml). Its error messages are worded differently, so a
# document it refuses is composed again by the pure-Python parser, whose words ours quote.
_FAST_LOADER = "CSafeLoader"


def _yaml_root(text: str, path: str) -> _Node:
    """The composed YAML mapping at the top of a config; ConfigError if there is none."""
    try:
        import yaml
    except ImportError:
        message = "reading YAML needs PyYAML (pip install PyYAML); a config in JSON does not"
        raise ConfigError([Problem(path, None, "", message)]) from None
    try:
        try:
            root = yaml.compose(text, Loader=getattr(yaml, _FAST_LOADER, yaml.SafeLoader))
        except yaml.YAMLError:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([_syntax_problem(path, exc)]) from None
    if isinstance(root, yaml.MappingNode):
        return root
    line, got = (None, "an empty file") if root is None else (
        _node_line(root), _describe(root))  # type: ignore[arg-type]  # (a scalar or a list)
    message = f"expected a mapping with a 'services' key, got {got}"
    raise ConfigError([Problem(path, line, "", message)])


def _checked(ch: _Checker, root: _Node) -> Config:
    top = _just_values(ch.fields(root, "", _TOP_KEYS))
    services = _build_services(ch, top.get("services"), top.get("defaults"))
    supervisor = top.get("supervisor", SupervisorSettings())
    return Config(ch.path, supervisor, types.MappingProxyType(services))


def _config_error(problems: List[Problem]) -> ConfigError:
    unique = dict.fromkeys(problems)  # a bad default is found once per service
    return ConfigError(sorted(unique, key=lambda problem: problem.line or 0))


def parse_config(text: str, path: str) -> Config:
    """Validate a whole config; raises ConfigError listing every problem found.

    A JSON object (JSON is YAML too) is read as JSON. One with a problem is read again as
    YAML, to tell each problem's line; where YAML reads a value otherwise (1e3: a number in
    JSON, a string in YAML), what YAML makes of it stands."""
    json_root = _json_root(text)
    if json_root is None:
        root = _yaml_root(text, path)
    else:
        ch = _Checker(path)
        config = _checked(ch, json_root)
        if not ch.problems:
            return config
        try:
            root = _yaml_root(text, path)
        except ConfigError:  # no PyYAML: the problems, without their lines
            raise _config_error(ch.problems) from None
    ch = _Checker(path)
    config = _checked(ch, root)
    if ch.problems:
        raise _config_error(ch.problems)
    return config


def service_lines(text: str) -> Dict[str, int]:
    """The line each service of a valid config is defined on, for messages ({} without
    PyYAML). Kept out of Config: a service that only moved in the file is not "changed"."""
    ch = _Checker("")
    try:
        services = ch.mapping(_yaml_root(text, ""), "").get("services")
    except ConfigError:
        return {}
    entries = ch.mapping(services[1], "services") if services else {}
    return {name: _node_line(key_node) for name, (key_node, _) in entries.items()}


def read_config_text(path: str) -> str:
    """The text of a config file; an unreadable file is a ConfigError naming it."""
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        message = f"cannot read the config file: {reason}"
        raise ConfigError([Problem(path, None, "", message)]) from None


def load_config(path: str) -> Config:
    """Read and validate a config file."""
    return parse_config(read_config_text(path), path)


def output_problems(config: Config, events_option: Optional[str]) -> List[Problem]:
    """Where the supervisor's own log or event stream could not be written (``check`` and
    ``run`` both say so, in the same words)."""
    settings = config.supervisor
    outputs = [(config.path, "supervisor.log_file", settings.log_file),
               ("", "--events", events_option) if events_option else
               (config.path, "supervisor.events_file", settings.events_file)]
    problems = []
    for where, key, path in outputs:
        reason = _unwritable(path) if path and path != "-" else None
        if reason:
            problems.append(Problem(where, None, key, reason))
    return problems


def _unwritable(path: str) -> Optional[str]:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        return "cannot write %s: the folder %s does not exist" % (path, folder)
    if not os.path.isdir(folder):
        return "cannot write %s: %s is not a folder" % (path, folder)
    if os.path.isdir(path):
        return "cannot write %s: it is a folder" % path
    # as the open will be checked: with the effective ids and capabilities, not the real ones
    effective = os.access in os.supports_effective_ids
    if not os.access(path if os.path.exists(path) else folder, os.W_OK, effective_ids=effective):
        return "cannot write %s: permission denied" % path
    return None


# --------------------------------------------------------------------------- event stream

class EventStream:
    """Appends one JSON object per event to a file (or stdout), flushed as it happens.

    ``os.write`` on an ``O_APPEND`` descriptor keeps every line whole, and a re-executed
    supervisor reopening the same path simply goes on appending.
    """

    def __init__(self, path: Optional[str], clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.listeners: List[Callable[[Dict[str, Any]], None]] = []
        self.held: Optional[List[Dict[str, Any]]] = None  # see HeldOutput
        if path == "-":
            self._fd: Optional[int] = sys.stdout.fileno()
        elif path:
            self._fd = os.open(path, APPEND_FLAGS, 0o644)
        else:
            self._fd = None

    def emit(self, event: str, service: Optional[str] = None, **fields: Any) -> Dict[str, Any]:
        record = {"ts": time.time(), "mono": self.clock(), "event": event, "service": service}
        record.update(fields)
        if self.held is not None:
            self.held.append(record)
        else:
            self.write([record])
        for listener in self.listeners:
            listener(record)
        return record

    def write(self, records: List[Dict[str, Any]]) -> None:
        if self._fd is None or not records:
            return
        data = "".join(json.dumps(record) + "\n" for record in records).encode()
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            log("warning", "cannot write the event stream: %s" % exc)


class HeldOutput:
    """Hold back log lines and events until the block ends, then write each stream in order
    (their times are those of the moment they happened): a pass of the loop that restarts a
    service starts it before spending time on telling about the exit. (A class, not a
    generator: it is entered at every pass of the loop.)"""

    __slots__ = ("events", "outermost")

    def __init__(self, events: EventStream):
        self.events = events
        self.outermost = False

    def __enter__(self) -> None:
        if self.events.held is None:  # else already held by an enclosing block
            self.outermost = True
            self.events.held, _LogSettings.held = [], []

    def __exit__(self, *exc_info: object) -> None:
        if self.outermost:
            records, entries = self.events.held, _LogSettings.held
            self.events.held = _LogSettings.held = None
            self.events.write(records or [])
            if entries:
                _write_log(entries)


# --------------------------------------------------------------------------- service states

class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    EXITED = "exited"
    FATAL = "fatal"


S = State
# Every legal transition, as event -> (states it may leave, states it may enter).
# Each transition emits exactly that one event. The life of a service:
#
#   stopped -spawned-> starting -ready-> running -exited-> exited
#   exited [-leftovers_stopped-> exited] -restart_scheduled-> backoff -spawned-> ...
#                                        -gave_up-> fatal   (or stays exited: policy says no)
#   any state with processes alive -stopping-> stopping -stopped-> stopped
#
# A main process that exits leaving processes of its tree alive stays `exited` until they are
# stopped (kill_mode: tree); only then does the restart policy act, so two instances never
# coexist. `stopping` is entered from every state in which anything of the tree lives.
TRANSITIONS: Dict[str, Tuple[Set[State], Set[State]]] = {
    "spawned": ({S.STOPPED, S.BACKOFF, S.EXITED, S.FATAL}, {S.STARTING, S.RUNNING}),
    "spawn_failed": ({S.STOPPED, S.BACKOFF, S.EXITED, S.FATAL}, {S.EXITED}),
    "adopted": ({S.STOPPED}, {S.STARTING, S.RUNNING, S.STOPPING}),
    "ready": ({S.STARTING}, {S.RUNNING}),
    "exited": ({S.STARTING, S.RUNNING}, {S.EXITED}),
    "leftovers_stopped": ({S.EXITED}, {S.EXITED}),
    "restart_scheduled": ({S.EXITED}, {S.BACKOFF}),
    "gave_up": ({S.EXITED}, {S.FATAL}),
    "stopping": ({S.STARTING, S.RUNNING, S.BACKOFF, S.EXITED, S.FATAL, S.STOPPED},
                 {S.STOPPING}),
    "stopped": ({S.STOPPING, S.BACKOFF}, {S.STOPPED}),
}
del S


class IllegalTransition(RuntimeError):
    pass


class ExitInfo(NamedTuple):
    returncode: Optional[int]
    signal: Optional[str]

    def describe(self) -> str:
        return "killed by %s" % self.signal if self.signal else "exit code %s" % self.returncode


class Service:
    """One configured service: its state and what the state machine needs to remember."""

    # no __dict__ for each of a thousand services
    __slots__ = ("config", "name", "events", "state", "pid", "retries", "restarts",
                 "started_at", "last_exit", "timer", "tree", "drain", "probe", "start_error",
                 "output", "after_stop")

    def __init__(self, config: ServiceConfig, events: EventStream):
        self.config = config
        self.name = config.name
        self.events = events
        self.state = State.STOPPED
        self.pid: Optional[int] = None
        self.retries = 0          # consecutive restarts, reset after `reset_after` of uptime
        self.restarts = 0         # all restarts since the supervisor started
        self.started_at: Optional[float] = None
        self.last_exit: Optional[ExitInfo] = None
        self.timer: Optional[Timer] = None
        self.tree: Any = None       # every process it has running (the process seam's tree)
        self.drain: Optional[Drain] = None  # while its tree is being emptied
        # while starting: the readiness probe, and why the start failed if it did
        self.probe: Optional[ReadinessProbe] = None
        self.start_error: Optional[str] = None
        self.output = RecentLines()  # what it wrote to the pipes we read
        self.after_stop: Optional[Callable[[], None]] = None  # restart, or removal on reload

    def transition(self, event: str, new_state: State, **fields: Any) -> Dict[str, Any]:
        sources, targets = TRANSITIONS[event]
        if self.state not in sources or new_state not in targets:
            raise IllegalTransition("%s: %s cannot go %s -> %s"
                                    % (self.name, event, self.state.value, new_state.value))
        self.state = new_state
        return self.events.emit(event, self.name, **fields)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _uniform(low: float, high: float) -> float:
    import random  # (only a backoff with jitter needs it)
    return random.uniform(low, high)


def restart_delay(config: ServiceConfig, restart_number: int,
                  rng: Callable[[float, float], float] = _uniform) -> float:
    """Delay before restart number ``restart_number`` (1 = the first restart)."""
    if config.restart_delay <= 0:
        return 0.0
    backoff = config.backoff
    delay = min(config.restart_delay * backoff.factor ** (restart_number - 1), backoff.max_delay)
    if backoff.jitter:
        delay *= 1 + rng(-backoff.jitter, backoff.jitter)
    return max(delay, 0.0)


class Decision(NamedTuple):
    """What the restart policy does after an exit."""
    action: str        # "restart" | "give_up" | "nothing"
    retries: int       # the service's retry count from now on
    delay: float = 0.0  # before the restart


def decide_after_exit(config: ServiceConfig, retries: int, expected: bool, uptime: float,
                      rng: Callable[[float, float], float] = _uniform) -> Decision:
    """The restart policy as a pure function of the config, the retry count so far, whether
    the exit was expected (a success for on-failure) and how long the instance ran."""
    if uptime >= config.reset_after:
        retries = 0
    if config.restart == "never" or (config.restart == "on-failure" and expected):
        return Decision("nothing", retries)
    if config.max_retries is not None and retries >= config.max_retries:
        return Decision("give_up", retries)
    return Decision("restart", retries + 1, restart_delay(config, retries + 1, rng))


class Drain:
    """A service's tree being emptied: after a stop, or of what its exited main process left
    behind. It ends once nothing of the tree is alive."""
    __slots__ = ("pid", "count", "forced", "main_exit", "verdict")

    def __init__(self, pid: Optional[int], count: int, forced: bool = False,
                 main_exit: Optional[ExitInfo] = None,
                 verdict: Optional[Tuple[bool, float]] = None):
        self.pid = pid              # the main process when it began (None: it had exited)
        self.count = count          # processes of the tree alive when it began
        self.forced = forced        # something had to be SIGKILLed
        self.main_exit = main_exit  # a stop: how the main process ended
        self.verdict = verdict      # leftovers of an exit: (expected, uptime)


# --------------------------------------------------------------------------- timers

class Timer:
    __slots__ = ("due", "callback", "cancelled")

    def __init__(self, due: float, callback: Callable[[], None]):
        self.due = due
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """A heap of one-shot timers on an injected monotonic clock."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self._heap: List[Tuple[float, int, Timer]] = []
        self._sequence = itertools.count()

    def call_at(self, due: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(due, callback)
        heapq.heappush(self._heap, (due, next(self._sequence), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self.clock() + delay, callback)

    def next_timeout(self) -> Optional[float]:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        return max(self._heap[0][0] - self.clock(), 0.0)

    def run_due(self, interrupted: Callable[[], bool] = lambda: False) -> None:
        """Run the timers due now; those their callbacks add wait for the next pass, and so
        do the rest once ``interrupted()`` says something more urgent came (a signal)."""
        now, newest = self.clock(), next(self._sequence)
        while self._heap and self._heap[0][0] <= now and self._heap[0][1] < newest \
                and not interrupted():
            timer = heapq.heappop(self._heap)[2]
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()


# --------------------------------------------------------------------------- process seam

class Started(NamedTuple):
    """A start of a service process, before it is told: its pid and the pipes of its output,
    or the error that kept it from starting; and when."""
    pid: Optional[int]
    pipes: List[Tuple[str, int, int]]  # (stream, read end, write end)
    error: Optional[str]
    at: float


class Launch(NamedTuple):
    """Everything the process seam needs to start one service process."""
    command: Any            # list of arguments, or one string run by the shell
    shell: bool
    cwd: Optional[str]
    env: Dict[str, str]
    stdout: Optional[int]   # a descriptor to write to, or None for /dev/null
    stderr: Optional[int]
    user: Optional[str]
    umask: Optional[int]


class ProcessTree(Protocol):
    """Every process one service has running, whatever became of its main process."""
    backend: str  # "cgroup" | "session" | "job"

    def begin(self, pid: int) -> None: ...          # an instance started with main pid `pid`
    def populated(self) -> bool: ...                # cheap: may anything of it be alive?
    def settle(self, members: Set[int]) -> None: ...  # what an exact look found
    def kill(self, members: Set[int]) -> None: ...  # SIGKILL all of it
    def remove(self) -> None: ...                   # at exit: release what holds it


class Processes(Protocol):
    """The process seam: everything the manager asks of the OS (PosixProcesses,
    WindowsProcesses, and the tests' fakes)."""
    backend: str
    exec_keeps_children: bool
    services_open_files: Optional[int]

    @property
    def orphans_come_home(self) -> bool: ...
    def take_charge(self) -> Optional[str]: ...
    def raise_open_files_limit(self, services_soft: Optional[int] = None) -> None: ...
    def release_free_memory(self) -> None: ...
    def wakeup_source(self) -> Optional[Any]: ...
    def drain_wakeup(self) -> None: ...
    def readable(self, fd: int) -> Any: ...
    def shutdown_requests(self) -> Optional[socket.socket]: ...
    def tree(self, name: str, tag: str) -> ProcessTree: ...
    def members(self, trees: List[Any], everywhere: bool = False) -> List[Set[int]]: ...
    def cgroup_left_by(self, supervisor_pid: int, name: str) -> Optional[Any]: ...
    def signal(self, tree: Any, members: Set[int], signame: str) -> bool: ...
    def kill(self, tree: Any, members: Set[int]) -> None: ...
    def release(self, trees: List[Any]) -> None: ...
    def spawn(self, launch: Launch, tree: Any) -> int: ...
    def watch(self, pid: int) -> Optional[int]: ...
    def reap(self) -> List[Tuple[int, ExitInfo]]: ...
    def wait(self, pid: int) -> None: ...
    def is_child(self, pid: int) -> bool: ...
    def orphans(self) -> Set[int]: ...
    def send(self, pid: int, signame: str) -> bool: ...
    def alive(self, pid: int) -> bool: ...
    def start_time(self, pid: Optional[int]) -> Optional[float]: ...
    def terminate_strays(self, pids: Set[int], timeout: float) -> None: ...
    def watch_parent(self, parent_pid: int) -> Optional[Any]: ...


class CgroupTree:
    """A service's processes on Linux with a writable cgroup v2: a cgroup of its own.

    Every process of the service is born in it (see PosixProcesses.spawn) and cannot leave it
    without the rights to write its parent's ``cgroup.procs``, so membership does not depend on
    anything the service can change: session, process group and environment included. The
    kernel counts what is alive (``populated``, zombies excluded) and kills it all at once
    (``cgroup.kill``, Linux 5.14+); a change of ``cgroup.events`` is a file event, which the
    manager's inotify descriptor turns into a wake-up.
    """

    backend = "cgroup"

    def __init__(self, path: str):
        self.path = path

    def begin(self, pid: int) -> None:
        pass  # the instance was born inside the cgroup

    def populated(self) -> bool:
        try:
            with open(os.path.join(self.path, "cgroup.events"), "rb") as events:
                return b"populated 1" in events.read()
        except OSError:
            return False  # removed: nothing can live in it

    def settle(self, members: Set[int]) -> None:
        pass  # the kernel keeps the count

    def kill(self, members: Set[int]) -> None:
        try:
            _write_file(os.path.join(self.path, "cgroup.kill"), b"1")
            return
        except OSError:
            pass  # before Linux 5.14: one by one (nothing new can start once all are killed)
        for pid in members:
            _send(pid, "SIGKILL")

    def remove(self) -> None:
        try:
            os.rmdir(self.path)
        except OSError:
            pass  # still populated, or already gone


class SessionTree:
    """A service's processes where there are no cgroups to hold them.

    Each instance leads a session of its own, and the session keeps its id (the instance's
    first pid) after that pid exits, for every process that stays in it; the environment tag
    (``SUPERVISOR_SERVICE_TAG``) follows even a daemon that started a session of its own;
    and as a child subreaper (Linux) the supervisor inherits every orphan. What escapes: a
    process that starts a session of its own *and* clears its environment.
    """

    backend = "session"
    __slots__ = ("tag", "sessions", "newest", "found")  # one per service: no __dict__ each

    def __init__(self, tag: str):
        self.tag = tag
        self.sessions: Set[int] = set()  # of instances that may have processes left
        self.newest: Optional[int] = None  # the latest instance's session
        self.found: Set[int] = set()     # members seen by the last exact look

    def begin(self, pid: int) -> None:
        self.sessions.add(pid)
        self.newest = pid

    def populated(self) -> bool:
        """Cheap: a process group of its sessions, or a member found before, is alive. The
        manager confirms "empty" with a scan (PosixProcesses.members)."""
        self.found = {pid for pid in self.found if _alive(pid)}
        return bool(self.found) or any(_signal_zero(os.killpg, sid) for sid in self.sessions)

    def settle(self, members: Set[int]) -> None:
        """Remember what was found; an empty tree keeps only its newest session."""
        self.found = set(members)
        if not members:
            self.sessions = {self.newest} if self.newest is not None else set()

    def kill(self, members: Set[int]) -> None:
        for sid in self.sessions:
            _signal_zero(lambda group, _: os.killpg(group, signal.SIGKILL), sid)
        for pid in members:
            _send(pid, "SIGKILL")

    def remove(self) -> None:
        pass


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _send(pid: int, signame: str) -> bool:
    try:
        os.kill(pid, getattr(signal, signame))
    except (ProcessLookupError, PermissionError):
        return False  # already gone, or the PID now belongs to someone else
    return True


def _alive(pid: int) -> bool:
    """Running: a zombie (dead, waiting for its parent to reap it) is not."""
    return _signal_zero(os.kill, pid) and not _is_zombie(pid)


TREE_BACKEND_ENV = "SUPERVISOR_TREE_BACKEND"
TREE_BACKENDS = ("auto", "cgroup", "session")


class StartRefused(Exception):
    """The supervisor cannot start as asked (exit 2): the message says why."""


def _cgroup2_home() -> Tuple[Optional[str], Set[str]]:
    """The folder of this process's own cgroup v2, if the unified hierarchy is mounted, and
    the mount's options."""
    try:
        with open("/proc/self/cgroup") as own:
            relative = next((line[3:].strip() for line in own if line.startswith("0::")), None)
        with open("/proc/self/mountinfo") as mounts:
            # fields: id parent major:minor root mount-point options ... - fstype source super
            mount = next((line.split() for line in mounts
                          if line.split(" - ", 1)[-1].startswith("cgroup2 ")), None)
    except OSError:
        return None, set()
    if relative is None or mount is None:
        return None, set()
    return os.path.join(mount[4], relative.lstrip("/")), set(mount[-1].split(","))


class Inotify:
    """One inotify descriptor: readable when a watched file changes (cgroup.events here)."""

    IN_MODIFY = 0x2
    IN_NONBLOCK_CLOEXEC = 0o4000 | 0o2000000  # Linux's O_NONBLOCK | O_CLOEXEC

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(self.IN_NONBLOCK_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def watch(self, path: str) -> None:
        if self._libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_MODIFY) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch", path)

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self.fd, 4096):
                pass

    def close(self) -> None:
        os.close(self.fd)


class PosixProcesses:
    """Process control on POSIX systems: the one place that knows about sessions and signals.

    Exit detection: SIGCHLD, delivered through ``signal.set_wakeup_fd``, wakes the loop the
    moment a child exits, ours or an orphan re-parented to us, at no descriptor per service.
    Children are reaped with ``waitpid(-1, WNOHANG)``: every child of this process is ours,
    and on Linux the supervisor is a child subreaper, so orphans of its services come home to
    be reaped and their deaths wake us too. A process that is not our child (what a killed
    predecessor left) is watched through a pidfd where the kernel has them (probed, not
    assumed); the parent we exit with, likewise.

    Each service's processes are a tree (``tree()``): a cgroup of its own where cgroup v2 is
    writable, else its sessions and environment tag (CgroupTree, SessionTree).
    """

    def __init__(self) -> None:
        self.use_pidfd = _pidfd_works()
        self.is_subreaper = False
        self.backend = "session"
        self._cgroups: Optional[str] = None   # our folder of service cgroups
        self._home: Optional[str] = None      # the cgroup we run in
        self._inotify: Optional[Inotify] = None
        self._children: Set[int] = set()  # the services' main processes we started
        self._reaped_early: List[Tuple[int, ExitInfo]] = []  # by is_child() without waitid
        self.services_open_files: Optional[int] = None  # see raise_open_files_limit()

    def take_charge(self) -> Optional[str]:
        """Become the parent of whatever our services orphan (Linux: a child subreaper), and
        choose how service trees are held (SUPERVISOR_TREE_BACKEND: auto, cgroup, session);
        returns a note for the log on that choice, if it needs one.

        A cgroup per service holds a tree airtight, but the kernel makes each move of a
        process between cgroups wait for an RCU grace period (about 10 ms) unless cgroup2 is
        mounted with ``favordynmods`` (Linux 6.0+): a respawn would cost that much. So
        ``auto`` takes cgroups only where moves are cheap; ``cgroup`` takes them anyway."""
        _keep_descriptors_from_services()
        wanted = os.environ.get(TREE_BACKEND_ENV, "auto")
        if wanted not in TREE_BACKENDS:
            raise StartRefused("%s=%s: expected one of %s%s" % (
                TREE_BACKEND_ENV, wanted, ", ".join(TREE_BACKENDS),
                _did_you_mean(wanted, TREE_BACKENDS)))
        self.is_subreaper = _become_subreaper()
        if wanted == "session":
            return None
        home, options = _cgroup2_home() if sys.platform.startswith("linux") else (None, set())
        try:
            if home is None:
                raise OSError(errno.ENOENT, "no cgroup v2 hierarchy is mounted")
            if wanted != "cgroup" and "favordynmods" not in options:
                return ("process trees: sessions, not cgroups (cgroup v2 is mounted without "
                        "favordynmods, so each spawn would wait ~10 ms for the kernel; %s=cgroup "
                        "uses them anyway)" % TREE_BACKEND_ENV)
            self._use_cgroups(home)
        except OSError as exc:
            if wanted == "cgroup":
                raise StartRefused("%s=cgroup, but cgroup v2 cannot be used here: %s"
                                   % (TREE_BACKEND_ENV, exc.strerror or exc)) from None
        return None

    def _use_cgroups(self, home: str) -> None:
        folder = os.path.join(home, "supervisor-%d" % os.getpid())
        os.makedirs(folder, exist_ok=True)  # kept across a re-exec (same pid)
        try:
            # Spawning moves us into a service's cgroup and back: prove both moves work.
            _write_file(os.path.join(folder, "cgroup.procs"), b"0")
            _write_file(os.path.join(home, "cgroup.procs"), b"0")
            self._inotify = Inotify()
        except OSError:
            _write_file_quietly(os.path.join(home, "cgroup.procs"), b"0")
            with contextlib.suppress(OSError):
                os.rmdir(folder)
            raise
        self._home, self._cgroups, self.backend = home, folder, "cgroup"

    exec_keeps_children = True  # execv keeps the PID, so the services stay our children

    def raise_open_files_limit(self, services_soft: Optional[int] = None) -> None:
        """Raise our open-files soft limit to the hard limit: each service costs us a few
        descriptors. Services get back ``services_soft`` (default: the soft limit we were
        given), since programs using select() break past descriptor 1024; systemd and the Go
        runtime raise only their own limit too.

        It is given back with prlimit() right after the spawn (no cost), so a service's
        first microseconds run with our limit: a program reading it at once (``sh -c
        'ulimit -n'``) may see ours. A preexec_fn would close that window but turns the
        spawn's vfork into a fork: 0.1 ms -> 1.2 ms a spawn, on every respawn. Lowering
        our own limit around the spawn fails once our descriptors fill the range below
        it. Without prlimit (not Linux) nothing is raised.
        """
        import resource
        if not hasattr(resource, "prlimit"):
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if services_soft is None:
            services_soft = soft
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return  # an infinite hard limit that the kernel caps lower: keep what we have
        if services_soft != hard:
            self.services_open_files = services_soft

    def release_free_memory(self) -> None:
        """Give the C allocator's free pages back to the OS: glibc keeps the free pages inside
        its heap, such as the 5 MB compiling this module leaves when there is no __pycache__."""
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc: its allocator returns free memory by itself

    def wakeup_source(self) -> Optional[Any]:
        """Readable when a service's cgroup changes (cgroup.events: its tree emptied)."""
        return self._inotify.fd if self._inotify is not None else None

    def drain_wakeup(self) -> None:
        if self._inotify is not None:
            self._inotify.drain()

    def readable(self, fd: int) -> Any:
        """What the loop waits on to read pipe ``fd``: the pipe itself, here."""
        return fd

    def shutdown_requests(self) -> Optional[socket.socket]:
        return None  # SIGTERM does this

    # -- service trees

    def tree(self, name: str, tag: str) -> Any:
        """The tree holding every process of service ``name`` (tag: its environment tag)."""
        if self._cgroups is None or self._inotify is None:
            return SessionTree(tag)
        path = os.path.join(self._cgroups, name + ".service")
        try:
            os.makedirs(path, exist_ok=True)
            self._inotify.watch(os.path.join(path, "cgroup.events"))
        except OSError as exc:
            log("warning", "no cgroup of its own (%s); falling back to its session" % exc, name)
            return SessionTree(tag)
        return CgroupTree(path)

    def members(self, trees: List[Any], everywhere: bool = False) -> List[Set[int]]:
        """The live processes of each tree, exactly (a scan where there are no cgroups);
        ``everywhere``: not only below us (the trees of a supervisor that was killed)."""
        found: List[Set[int]] = [set() for _ in trees]
        by_session: Dict[int, Set[int]] = {}
        by_tag: Dict[str, Set[int]] = {}
        for index, tree in enumerate(trees):
            if isinstance(tree, CgroupTree):
                found[index] = _read_pids(os.path.join(tree.path, "cgroup.procs"))
            elif isinstance(tree, RecoveredTree):
                found[index] = {pid for pid in tree.pids if _alive(pid)}
            else:
                by_tag[tree.tag] = found[index]
                for sid in tree.sessions:
                    by_session[sid] = found[index]
        if by_tag:
            # As a subreaper, every process of our services is below us: an orphan comes
            # home to us, so only our descendants need a look (not the whole system).
            _scan_sessions_and_tags(by_session, by_tag,
                                    _descendants() if self.is_subreaper and not everywhere
                                    else None)
        return found

    def signal(self, tree: Any, members: Set[int], signame: str) -> bool:
        """Send ``signame`` to every process of ``tree``; False if none could be told."""
        delivered = False
        if isinstance(tree, SessionTree):
            for sid in tree.sessions:
                delivered = self.send_group(sid, signame) or delivered
        for pid in members:
            delivered = _send(pid, signame) or delivered
        return delivered

    def kill(self, tree: Any, members: Set[int]) -> None:
        tree.kill(members)

    def cgroup_left_by(self, supervisor_pid: int, name: str) -> Optional[Any]:
        """The cgroup of service ``name`` of a supervisor that was killed, if there is one."""
        home, _ = _cgroup2_home() if sys.platform.startswith("linux") else (None, set())
        if home is None:
            return None
        path = os.path.join(home, "supervisor-%d" % supervisor_pid, name + ".service")
        return CgroupTree(path) if os.path.isdir(path) and not os.path.islink(path) else None

    def release(self, trees: List[Any]) -> None:
        """Remove the cgroups (at exit; a re-exec keeps them)."""
        for tree in trees:
            tree.remove()
        if self._cgroups is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._cgroups)

    # -- starting

    def spawn(self, launch: Launch, tree: Any) -> int:
        """Start ``launch`` in a new session, inside ``tree``; raise OSError when it cannot be
        started. Where the tree is a cgroup, the supervisor steps into it for the fork, so the
        child is born there (no window in which it could fork outside), and steps back."""
        if isinstance(tree, CgroupTree):
            assert self._home is not None
            _write_file(os.path.join(tree.path, "cgroup.procs"), b"0")
        try:
            pid = _start_process(launch)
        finally:
            if isinstance(tree, CgroupTree):
                _write_file(os.path.join(self._home, "cgroup.procs"), b"0")  # type: ignore[arg-type]
        self._children.add(pid)
        if self.services_open_files is not None:
            _give_back_open_files_limit(pid, self.services_open_files)
        tree.begin(pid)
        return pid

    # -- watching and reaping

    def watch(self, pid: int) -> Optional[int]:
        """A file descriptor that becomes readable when ``pid`` exits, if this OS offers one."""
        if not self.use_pidfd:
            return None
        try:
            return os.pidfd_open(pid)  # type: ignore[attr-defined]
        except OSError:
            return None  # already gone: the reap that follows will report it

    def reap(self) -> List[Tuple[int, ExitInfo]]:
        """Collect every child that has exited, ours or an orphan re-parented to us."""
        reaped, self._reaped_early = self._reaped_early, []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self._children.discard(pid)
            reaped.append((pid, _exit_info(status)))
        return reaped

    def wait(self, pid: int) -> None:
        """Block until child ``pid`` has exited, and reap it."""
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # already reaped
        self._children.discard(pid)

    def is_child(self, pid: int) -> bool:
        """True if ``pid`` is still our child (alive, or dead and not yet reaped)."""
        if not hasattr(os, "waitid"):
            return self._is_child_by_waitpid(pid)
        try:
            os.waitid(os.P_PID, pid,  # type: ignore[attr-defined]  # not on macOS
                      os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return True

    def _is_child_by_waitpid(self, pid: int) -> bool:
        """is_child() where waitid is missing (macOS): waitpid answers the same question but
        reaps a child that has already exited, so its status is kept for the next reap()."""
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return False
        if reaped:
            self._reaped_early.append((pid, _exit_info(status)))
        return True

    def orphans(self) -> Set[int]:
        """Our live children that are not services' main processes: what services left that
        no tree claimed (without cgroups, a daemon with a session of its own and a cleared
        environment). Linux only; empty elsewhere."""
        children: Set[int] = set()
        with contextlib.suppress(OSError):
            for task in os.listdir("/proc/self/task"):
                children |= _read_pids("/proc/self/task/%s/children" % task)
        return {pid for pid in children if pid not in self._children and _alive(pid)}

    # -- signalling

    def send(self, pid: int, signame: str) -> bool:
        return _send(pid, signame)

    def send_group(self, pgid: int, signame: str) -> bool:
        try:
            os.killpg(pgid, getattr(signal, signame))
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def alive(self, pid: int) -> bool:
        return _alive(pid)

    def start_time(self, pid: Optional[int]) -> Optional[float]:
        """When ``pid`` started (opaque units), to tell it from a later process with its PID."""
        if pid is None:
            return None
        try:
            with open("/proc/%d/stat" % pid, "rb") as stat_file:
                return float(stat_file.read().rsplit(b")", 1)[1].split()[19])
        except (OSError, IndexError, ValueError):
            pass
        return _psutil_start_time(pid)

    def terminate_strays(self, pids: Set[int], timeout: float) -> None:
        """SIGTERM processes that are not our children, SIGKILL them after ``timeout``.

        Runs once at start-up, before the loop; they cannot wake us when they exit (not our
        children), so this waits by re-checking.
        """
        for pid in pids:
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == pid:  # a service's main process: its group goes too
                    self.send_group(pid, "SIGTERM")
            self.send(pid, "SIGTERM")
        deadline = time.monotonic() + timeout
        while any(self.alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(ORPHAN_RECHECK_INTERVAL)
        for pid in pids:
            self.send(pid, "SIGKILL")

    @property
    def orphans_come_home(self) -> bool:
        """Whether every process a service leaves behind ends up as our child."""
        return self.is_subreaper

    def watch_parent(self, parent_pid: int) -> Optional[Any]:
        """Something selectable that wakes us when ``parent_pid`` dies (it is not our child)."""
        if self.use_pidfd:
            try:
                return os.pidfd_open(parent_pid)  # type: ignore[attr-defined]
            except OSError:
                return None
        if hasattr(select, "kqueue"):
            # macOS and the BSDs (the attributes are missing from Linux's type stubs)
            queue = select.kqueue()
            event = select.kevent(parent_pid,  # type: ignore[attr-defined]
                                  filter=select.KQ_FILTER_PROC,  # type: ignore[attr-defined]
                                  flags=select.KQ_EV_ADD  # type: ignore[attr-defined]
                                  | select.KQ_EV_ONESHOT,  # type: ignore[attr-defined]
                                  fflags=select.KQ_NOTE_EXIT)  # type: ignore[attr-defined]
            try:
                queue.control([event], 0)
            except OSError:
                queue.close()
                return None
            return queue
        _set_parent_death_signal(signal.SIGTERM)
        return None


class RecoveredTree:
    """What a supervisor that was killed left of one service: processes proven to be its (see
    ServiceManager.clean_up_after_a_crash), stopped before the service starts again."""

    backend = "recovered"

    def __init__(self, pids: Set[int], alive: Callable[[int], bool]):
        self.pids = set(pids)
        self._alive = alive

    def begin(self, pid: int) -> None:
        pass

    def populated(self) -> bool:
        self.pids = {pid for pid in self.pids if self._alive(pid)}
        return bool(self.pids)

    def settle(self, members: Set[int]) -> None:
        pass

    def kill(self, members: Set[int]) -> None:
        for pid in self.pids | members:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)

    def remove(self) -> None:
        pass


class JobTree:
    """A service's processes on Windows: one job object per instance (kill-on-close), which
    everything it starts is in from its first instruction, and its environment tag."""

    backend = "job"

    def __init__(self, tag: str):
        self.tag = tag
        self.jobs: Dict[int, Any] = {}  # instance's main pid -> its job's handle

    def begin(self, pid: int) -> None:
        pass  # WindowsProcesses.spawn files the instance's job here

    def populated(self) -> bool:
        for pid, job in list(self.jobs.items()):
            if _windows_job_active_processes(job):
                return True
            del self.jobs[pid]
            _kernel32().CloseHandle(job)  # kill-on-close: only once the job is empty
        return False

    def settle(self, members: Set[int]) -> None:
        pass

    def kill(self, members: Set[int]) -> None:
        for job in self.jobs.values():
            _kernel32().TerminateJobObject(job, 1)
        for pid in members:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)  # TerminateProcess, exit code 15

    def remove(self) -> None:
        for job in self.jobs.values():
            _kernel32().CloseHandle(job)
        self.jobs.clear()


class WindowsProcesses:
    """Process control on Windows.

    Each service starts suspended, in a new process group (so that CTRL_BREAK_EVENT reaches
    only its group), and is put into a job object with kill-on-close before it runs, so
    nothing it starts can slip out of the job by racing the assignment. The job ends the
    whole tree at once (TerminateJobObject), and it dies with us: if the supervisor is
    killed, the system closes its job handles and every service tree goes with them.

    Stopping: whatever ``stop_signal`` says, a group is asked to stop with CTRL_BREAK_EVENT,
    the one request Windows can deliver to a process group. It needs a console shared with
    the service; where it cannot be delivered (no console, or wine, which has not
    implemented it) ``send_group`` says so and the manager terminates the tree at once
    instead of waiting out ``stop_timeout`` for nothing. A single process outside the job
    has no gentle equivalent: it is left for the forced kill.

    ``selectors`` on Windows waits only on sockets, so exits are seen by one thread per
    child blocked on its process handle, which wakes the loop through a socket pair (a
    thread each is the price; there is no Windows pidfd), and each output pipe is copied into
    a socket by a thread of its own. The exec emulation starts a new process, which cannot
    inherit the services (their jobs close with the old image) and which the supervisor's
    parent would not be waiting on: ``exec_keeps_children`` is False, and the supervisor
    re-executes itself in-process instead, starting its services again.
    """

    orphans_come_home = False
    exec_keeps_children = False

    def __init__(self) -> None:
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._exited: Deque[Tuple[int, ExitInfo]] = collections.deque()  # from the waiters
        self._popen: Dict[int, subprocess.Popen] = {}

    backend = "job"

    services_open_files: Optional[int] = None

    def raise_open_files_limit(self, services_soft: Optional[int] = None) -> None:
        """Windows has no open-files limit to raise."""

    def wakeup_source(self) -> Optional[socket.socket]:
        return self._wake_reader

    def drain_wakeup(self) -> None:
        _drain(self._wake_reader)

    def take_charge(self) -> Optional[str]:
        return None  # the job objects hold each service's tree instead

    def tree(self, name: str, tag: str) -> Any:
        return JobTree(tag)

    def members(self, trees: List[Any], everywhere: bool = False) -> List[Set[int]]:
        found: List[Set[int]] = [set() for _ in trees]
        _scan_psutil({}, {tree.tag: found[index] for index, tree in enumerate(trees)
                          if not isinstance(tree, RecoveredTree)})
        for index, tree in enumerate(trees):
            if isinstance(tree, RecoveredTree):
                found[index] = {pid for pid in tree.pids if self.alive(pid)}
        return found

    def cgroup_left_by(self, supervisor_pid: int, name: str) -> Optional[Any]:
        return None  # no cgroups here

    def signal(self, tree: Any, members: Set[int], signame: str) -> bool:
        """A stop request reaches a process group only, as CTRL_BREAK_EVENT (a lone process is
        left for the forced kill); False where it cannot be delivered."""
        if signame == "SIGKILL":
            tree.kill(members)
            return True
        delivered = False
        for pgid in getattr(tree, "jobs", ()):
            delivered = self.send_group(pgid, signame) or delivered
        return delivered

    def kill(self, tree: Any, members: Set[int]) -> None:
        tree.kill(members)

    def release(self, trees: List[Any]) -> None:
        for tree in trees:
            tree.remove()

    def orphans(self) -> Set[int]:
        return set()  # nothing is re-parented to us on Windows

    def release_free_memory(self) -> None:
        pass  # nothing like glibc's malloc_trim to call here

    def readable(self, fd: int) -> Any:
        return _socket_for_pipe(fd)

    def shutdown_requests(self) -> Optional[socket.socket]:
        """A socket that becomes readable whenever another process sets the event named
        ``SHUTDOWN_EVENT % our pid``: how to ask us to shut down without sharing our console
        (CTRL_BREAK_EVENT needs one; a service manager, a CI runner or wine has none)."""
        kernel32 = _kernel32()
        # Manual-reset and never reset: a request stands until we exit, so the image of an
        # in-process restart, which waits on the same event, sees it too.
        event = kernel32.CreateEventW(None, True, False, SHUTDOWN_EVENT % os.getpid())
        if not event:
            return None
        reader, writer = socket.socketpair()
        reader.setblocking(False)

        def relay_request() -> None:
            if kernel32.WaitForSingleObject(event, INFINITE) == WAIT_OBJECT_0:
                try:
                    writer.send(b"x")
                except OSError:
                    pass  # the loop that listened is gone

        in_thread(relay_request, "shutdown-event")
        return reader

    # -- starting

    def spawn(self, launch: Launch, tree: Any) -> int:
        """Start ``launch`` in a job of its own; raise OSError when it cannot be started."""
        if launch.user is not None:
            raise PermissionError(errno.EPERM, "user: is not supported on Windows")
        # (umask is ignored: Windows files carry ACLs, not mode bits)
        import subprocess
        proc = subprocess.Popen(
            launch.command, shell=launch.shell, cwd=launch.cwd, env=launch.env,
            stdin=subprocess.DEVNULL, stdout=_or_devnull(launch.stdout),
            stderr=_or_devnull(launch.stderr),
            creationflags=subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
            | CREATE_SUSPENDED)
        job = None
        try:
            job = tree.jobs[proc.pid] = _windows_job(proc)
        except OSError as exc:
            # Without a job the tree is still found through its tag, only less surely.
            log("warning", "pid %d runs outside a job object: %s" % (proc.pid, exc))
        if _ntdll().NtResumeProcess(_process_handle(proc)) != 0:
            proc.kill()
            proc.wait()
            if job is not None:
                _kernel32().CloseHandle(tree.jobs.pop(proc.pid))
            raise OSError(errno.EPERM, "cannot resume the suspended process")
        self._popen[proc.pid] = proc
        in_thread(self._wait_for_exit, "wait-%d" % proc.pid, proc)
        return proc.pid

    def _wait_for_exit(self, proc: subprocess.Popen) -> None:
        returncode = proc.wait()
        self._exited.append((proc.pid, ExitInfo(returncode, None)))
        try:
            self._wake_writer.send(b"x")
        except OSError:
            pass  # the loop is closing

    # -- watching and reaping

    def watch(self, pid: int) -> Optional[int]:
        return None  # the wait threads wake the loop through wakeup_source()

    def reap(self) -> List[Tuple[int, ExitInfo]]:
        reaped = []
        while self._exited:
            pid, info = self._exited.popleft()
            self._popen.pop(pid, None)
            reaped.append((pid, info))
        return reaped

    def wait(self, pid: int) -> None:
        proc = self._popen.get(pid)
        if proc is not None:
            proc.wait()

    def is_child(self, pid: int) -> bool:
        return pid in self._popen

    # -- signalling

    def send(self, pid: int, signame: str) -> bool:
        if signame != "SIGKILL":
            # A stop request reaches a process group only (and CTRL_BREAK_EVENT to a pid
            # that leads no group could reach every process on the console): a lone process
            # is left for the forced kill.
            return False
        try:
            os.kill(pid, signal.SIGTERM)  # TerminateProcess, exit code 15
        except OSError:
            return False  # already gone
        return True

    def send_group(self, pgid: int, signame: str) -> bool:
        if signame == "SIGKILL":
            return self.send(pgid, signame)
        try:
            os.kill(pgid, signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        except OSError as exc:
            log("warning", "cannot send CTRL_BREAK_EVENT to process group %d (%s); a console "
                "shared with the service is needed" % (pgid, exc))
            return False
        return True

    def alive(self, pid: int) -> bool:
        kernel32 = _kernel32()
        handle = kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
        if not handle:
            return False
        try:
            code = ctypes.c_ulong()
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            return code.value == STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)

    def start_time(self, pid: Optional[int]) -> Optional[float]:
        return None if pid is None else _psutil_start_time(pid)

    def terminate_strays(self, pids: Set[int], timeout: float) -> None:
        for pid in pids:
            self.send(pid, "SIGKILL")  # Windows has no gentler way for a stranger's process

    def watch_parent(self, parent_pid: int) -> Optional[Any]:
        """A socket that becomes readable when ``parent_pid`` exits (a thread waits on it)."""
        kernel32 = _kernel32()
        handle = kernel32.OpenProcess(SYNCHRONIZE, False, parent_pid)
        if not handle:
            return None
        reader, writer = socket.socketpair()

        def wait_for_parent() -> None:
            kernel32.WaitForSingleObject(handle, INFINITE)
            kernel32.CloseHandle(handle)
            try:
                writer.send(b"x")
            except OSError:
                pass  # the supervisor stopped watching
            writer.close()

        in_thread(wait_for_parent, "parent")
        return reader


# The named event (in this session's namespace) that asks a supervisor on Windows to shut
# down gracefully, as SIGTERM does on POSIX: set it with OpenEventW + SetEvent.
SHUTDOWN_EVENT = "Local\\supervisor-shutdown-%d"
WAIT_OBJECT_0 = 0
CREATE_SUSPENDED = 0x00000004
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
SYNCHRONIZE = 0x00100000
STILL_ACTIVE = 259
INFINITE = 0xFFFFFFFF
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
JOB_OBJECT_BASIC_ACCOUNTING_INFORMATION = 1
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9

_WIN32_LIBRARIES: Dict[str, Any] = {}


def _kernel32() -> Any:
    """kernel32 with the prototypes used here (handles are pointer-sized), loaded once."""
    if "kernel32" in _WIN32_LIBRARIES:
        return _WIN32_LIBRARIES["kernel32"]
    from ctypes import wintypes
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    handle, dword, pointer = wintypes.HANDLE, wintypes.DWORD, ctypes.c_void_p
    prototypes = {
        "OpenProcess": (handle, [dword, wintypes.BOOL, dword]),
        "CloseHandle": (wintypes.BOOL, [handle]),
        "GetExitCodeProcess": (wintypes.BOOL, [handle, pointer]),
        "WaitForSingleObject": (dword, [handle, dword]),
        "CreateJobObjectW": (handle, [pointer, wintypes.LPCWSTR]),
        "SetInformationJobObject": (wintypes.BOOL, [handle, ctypes.c_int, pointer, dword]),
        "QueryInformationJobObject": (wintypes.BOOL,
                                      [handle, ctypes.c_int, pointer, dword, pointer]),
        "AssignProcessToJobObject": (wintypes.BOOL, [handle, handle]),
        "TerminateJobObject": (wintypes.BOOL, [handle, wintypes.UINT]),
        "IsProcessInJob": (wintypes.BOOL, [handle, handle, pointer]),
        "CreateEventW": (handle, [pointer, wintypes.BOOL, wintypes.BOOL, wintypes.LPCWSTR]),
    }
    for name, (restype, argtypes) in prototypes.items():
        function = getattr(kernel32, name)
        function.restype, function.argtypes = restype, argtypes
    _WIN32_LIBRARIES["kernel32"] = kernel32
    return kernel32


def _ntdll() -> Any:
    """ntdll for NtResumeProcess: resuming a process started suspended needs its main thread
    handle otherwise, which Popen closes."""
    if "ntdll" not in _WIN32_LIBRARIES:
        ntdll = ctypes.WinDLL("ntdll")  # type: ignore[attr-defined]
        ntdll.NtResumeProcess.restype = ctypes.c_long
        ntdll.NtResumeProcess.argtypes = [ctypes.c_void_p]
        _WIN32_LIBRARIES["ntdll"] = ntdll
    return _WIN32_LIBRARIES["ntdll"]


def _process_handle(proc: subprocess.Popen) -> int:
    return int(proc._handle)  # type: ignore[attr-defined]  # Windows Popen keeps it here


def _windows_job(proc: subprocess.Popen) -> Any:
    """A job object holding ``proc`` that kills everything in it when its handle closes."""

    class IoCounters(ctypes.Structure):
        _fields_ = [(name, ctypes.c_ulonglong) for name in (
            "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
            "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]

    class BasicLimits(ctypes.Structure):
        _fields_ = [("PerProcessUserTimeLimit", ctypes.c_longlong),
                    ("PerJobUserTimeLimit", ctypes.c_longlong),
                    ("LimitFlags", ctypes.c_uint32), ("MinimumWorkingSetSize", ctypes.c_size_t),
                    ("MaximumWorkingSetSize", ctypes.c_size_t),
                    ("ActiveProcessLimit", ctypes.c_uint32), ("Affinity", ctypes.c_size_t),
                    ("PriorityClass", ctypes.c_uint32), ("SchedulingClass", ctypes.c_uint32)]

    class ExtendedLimits(ctypes.Structure):
        _fields_ = [("BasicLimitInformation", BasicLimits), ("IoInfo", IoCounters),
                    ("ProcessMemoryLimit", ctypes.c_size_t),
                    ("JobMemoryLimit", ctypes.c_size_t),
                    ("PeakProcessMemoryUsed", ctypes.c_size_t),
                    ("PeakJobMemoryUsed", ctypes.c_size_t)]

    kernel32 = _kernel32()
    job = kernel32.CreateJobObjectW(None, None)
    if not job:
        raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
    limits = ExtendedLimits()
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    if not (kernel32.SetInformationJobObject(job, JOB_OBJECT_EXTENDED_LIMIT_INFORMATION,
                                             ctypes.byref(limits), ctypes.sizeof(limits))
            and kernel32.AssignProcessToJobObject(job, _process_handle(proc))):
        error = ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
        kernel32.CloseHandle(job)
        raise error
    return job


def _windows_job_active_processes(job: Any) -> int:

    class Accounting(ctypes.Structure):
        _fields_ = [("TotalUserTime", ctypes.c_longlong), ("TotalKernelTime", ctypes.c_longlong),
                    ("ThisPeriodTotalUserTime", ctypes.c_longlong),
                    ("ThisPeriodTotalKernelTime", ctypes.c_longlong),
                    ("TotalPageFaultCount", ctypes.c_uint32),
                    ("TotalProcesses", ctypes.c_uint32), ("ActiveProcesses", ctypes.c_uint32),
                    ("TotalTerminatedProcesses", ctypes.c_uint32)]

    info = Accounting()
    if not _kernel32().QueryInformationJobObject(job, JOB_OBJECT_BASIC_ACCOUNTING_INFORMATION,
                                                 ctypes.byref(info), ctypes.sizeof(info), None):
        return 0
    return int(info.ActiveProcesses)


def in_thread(target: Callable[..., None], name: str, *args: Any) -> threading.Thread:
    """Start ``target(*args)`` in a daemon thread. (threading is imported here only: most
    supervisors on POSIX never start a thread.)"""
    import threading
    thread = threading.Thread(target=target, name=name, args=args, daemon=True)
    thread.start()
    return thread


def _socket_for_pipe(fd: int) -> socket.socket:
    """A socket that receives what is written into pipe ``fd``, for a loop that can wait on
    sockets only (Windows). A thread copies until every writer has closed the pipe, then
    closes its end, so the reader sees the end of the output as usual."""
    reader, writer = socket.socketpair()

    def copy() -> None:
        try:
            while True:
                data = os.read(fd, OUTPUT_CHUNK)
                if not data:
                    break
                writer.sendall(data)  # blocks while the loop lags: the service waits, as on POSIX
        except OSError:
            pass  # the loop closed its end: nobody wants this output any more
        finally:
            os.close(fd)
            writer.close()

    in_thread(copy, "pipe-%d" % fd)
    return reader


def _signal_zero(kill: Callable[[int, int], None], target: int) -> bool:
    try:
        kill(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_zombie(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid, "rb") as stat_file:
            return stat_file.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        pass
    try:
        import psutil
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except Exception:  # noqa: BLE001 - psutil missing, or the process is gone
        return False


def _give_back_open_files_limit(pid: int, soft: int) -> None:
    import resource
    try:
        _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)  # type: ignore[attr-defined]
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))  # type: ignore[attr-defined]
    except (ProcessLookupError, PermissionError):
        pass  # it is gone already, or it switched user (it then kept the limit we gave it)


def _traceback() -> str:
    import traceback  # (only an unexpected error needs it)
    return traceback.format_exc()


def describe_os_error(exc: Exception) -> str:
    """An error in words: running out of descriptors names the limit to raise."""
    if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
        try:
            import resource
            limit = " (%d)" % resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except ImportError:
            limit = ""
        return ("out of file descriptors: the supervisor's open-files limit%s is reached; "
                "raise it (ulimit -n, systemd's LimitNOFILE=) or run fewer services" % limit)
    if isinstance(exc, OSError) and exc.errno == errno.ENFILE:
        return "out of file descriptors: the system's open-files table is full (fs.file-max)"
    return "%s: %s" % (type(exc).__name__, exc)


def _exit_info(status: int) -> ExitInfo:
    if os.WIFSIGNALED(status):
        return ExitInfo(None, signal.Signals(os.WTERMSIG(status)).name)
    return ExitInfo(os.WEXITSTATUS(status), None)


# A service starts with every signal at its default action, as systemd starts its units: none
# stays ignored because the supervisor (or whoever started it, nohup say) ignores it.
_DEFAULT_SIGNALS = frozenset(getattr(signal, "valid_signals", lambda: ())()) - {
    getattr(signal, "SIGKILL", None), getattr(signal, "SIGSTOP", None)}


def _start_process(launch: Launch) -> int:
    """Start one service process in a session of its own; its pid.

    posix_spawn (vfork and exec: the cost does not grow with the supervisor's size, and no
    Python runs in the child) wherever it can do all that is asked; Popen for a working folder,
    a user or a umask, which posix_spawn cannot set. The supervisor's own descriptors are all
    close-on-exec (Python opens them so, and ``_keep_descriptors_from_services`` marks those
    it was given), so a service gets stdin, stdout and stderr only."""
    argv = ["/bin/sh", "-c", launch.command] if launch.shell else list(launch.command)
    if launch.cwd is None and launch.user is None and launch.umask is None \
            and hasattr(os, "posix_spawn"):
        actions: List[Tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
        for fd, target in ((1, launch.stdout), (2, launch.stderr)):
            if target is None:
                actions.append((os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0))
            else:
                actions.append((os.POSIX_SPAWN_DUP2, target, fd))
        try:
            return os.posix_spawn(_find_program(argv[0], launch.env), argv, launch.env,
                                  file_actions=actions, setsid=True, setsigmask=(),
                                  setsigdef=_DEFAULT_SIGNALS)
        except NotImplementedError:  # no POSIX_SPAWN_SETSID (macOS before 10.15): Popen does it
            pass
    import subprocess
    try:
        proc = subprocess.Popen(
            argv, cwd=launch.cwd, env=launch.env, stdin=subprocess.DEVNULL,
            stdout=_or_devnull(launch.stdout), stderr=_or_devnull(launch.stderr),
            start_new_session=True, close_fds=True, **_privileges(launch.user, launch.umask))
    except subprocess.SubprocessError as exc:  # Python 3.8's preexec_fn failed in the child
        raise OSError(str(exc)) from None
    proc.returncode = 0  # reap() collects it (waitpid -1): Popen must never wait for it too
    return proc.pid


def _keep_descriptors_from_services() -> None:
    """Make every descriptor the supervisor was given beyond 0-2 (a shell's ``3>file``, a pipe
    of its parent's) close-on-exec, so that no service inherits it; and put /dev/null on any of
    0-2 that is closed, so that no pipe of ours takes its number."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # it takes the lowest free number: this one
    with contextlib.suppress(OSError):
        for name in os.listdir("/dev/fd"):
            if int(name) > 2:
                with contextlib.suppress(OSError):  # (the listing's own, closed by now)
                    os.set_inheritable(int(name), False)


def _or_devnull(fd: Optional[int]) -> int:
    import subprocess
    return subprocess.DEVNULL if fd is None else fd


def _find_program(program: str, env: Mapping[str, str]) -> str:
    """The file exec runs for ``program``: itself if it names a path, else the first executable
    of that name along the service's own PATH, as execvp (and Popen) look for it."""
    if os.sep in program:
        return program
    denied = None
    for folder in os.get_exec_path(env):
        path = os.path.join(folder, program)
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return path
            denied = denied or path
    if denied is not None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), denied)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _privileges(user: Optional[str], umask: Optional[int]) -> Dict[str, Any]:
    """Popen arguments that drop to ``user`` and set ``umask`` in the child."""
    if user is not None:
        import pwd
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise LookupError("user: no such user %r" % user) from None
        if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
            raise PermissionError(errno.EPERM, "user: switching to %r needs root" % user)
    if sys.version_info >= (3, 9):
        switch: Dict[str, Any] = {"umask": -1 if umask is None else umask}
        if user is not None:  # the user's own groups too, or the child keeps root's
            switch.update(user=entry.pw_uid, group=entry.pw_gid,
                          extra_groups=os.getgrouplist(user, entry.pw_gid))
        return switch

    def drop() -> None:  # Python 3.8 has no user= or umask= (this costs vfork)
        if umask is not None:
            os.umask(umask)
        if user is not None:
            os.initgroups(user, entry.pw_gid)
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
    return {"preexec_fn": drop} if user is not None or umask is not None else {}


def _pidfd_works() -> bool:
    """pidfd_open exists (Python 3.9+) and the kernel supports it (Linux 5.3+)."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _become_subreaper() -> bool:
    PR_SET_CHILD_SUBREAPER = 36
    return sys.platform.startswith("linux") and _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _set_parent_death_signal(signum: int) -> bool:
    PR_SET_PDEATHSIG = 1
    return sys.platform.startswith("linux") and _prctl(PR_SET_PDEATHSIG, signum)


def _read_pids(path: str) -> Set[int]:
    """The pids listed in a file such as cgroup.procs (none if it cannot be read)."""
    try:
        with open(path, "rb") as listing:
            return {int(word) for word in listing.read().split()}
    except (OSError, ValueError):
        return set()


def _write_file_quietly(path: str, data: bytes) -> None:
    with contextlib.suppress(OSError):
        _write_file(path, data)


def _leads_session(pid: int) -> bool:
    """Whether ``pid`` leads a session of its own, as every service's main process does."""
    try:
        return os.getsid(pid) == pid
    except (OSError, AttributeError):
        return False  # gone; or Windows, where a job holds a service instead


def _descendants() -> Optional[Set[int]]:
    """Every process below this one, from the kernel's lists of each task's children; None
    where the kernel keeps no such lists (CONFIG_PROC_CHILDREN)."""
    me = os.getpid()
    if not os.path.exists("/proc/%d/task/%d/children" % (me, me)):
        return None
    found: Set[int] = set()
    todo = [me]
    while todo:
        pid = todo.pop()
        try:
            tasks = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue  # it exited meanwhile
        for task in tasks:
            for child in _read_pids("/proc/%d/task/%s/children" % (pid, task)) - found:
                found.add(child)
                todo.append(child)
    return found


def _scan_sessions_and_tags(by_session: Dict[int, Set[int]], by_tag: Dict[str, Set[int]],
                            candidates: Optional[Set[int]] = None) -> None:
    """Add every live process (of ``candidates``, else of the system) to the set of its
    session id in ``by_session``, or else to the set of its environment tag in ``by_tag``:
    one pass over /proc (psutil where it is missing)."""
    if not os.path.isdir("/proc/self"):
        _scan_psutil(by_session, by_tag)
        return
    me = os.getpid()
    needle = b"\0" + SERVICE_TAG_ENV.encode() + b"="
    pids = candidates if candidates is not None else \
        (int(entry) for entry in os.listdir("/proc") if entry.isdigit())
    for pid in pids:
        if pid == me:
            continue
        try:
            with open("/proc/%d/stat" % pid, "rb") as stat_file:
                fields = stat_file.read().rsplit(b")", 1)[1].split()
            if fields[0] == b"Z":
                continue  # a zombie is dead already
            members = by_session.get(int(fields[3]))
            if members is None:
                with open("/proc/%d/environ" % pid, "rb") as environ_file:
                    environ = b"\0" + environ_file.read()
                start = environ.find(needle)
                if start < 0:
                    continue
                start += len(needle)
                end = environ.find(b"\0", start)
                members = by_tag.get(environ[start:end if end >= 0 else None].decode(
                    errors="replace"))
        except (OSError, IndexError, ValueError):
            continue  # gone, or another user's process
        if members is not None:
            members.add(pid)


def _psutil_start_time(pid: int) -> Optional[float]:
    try:
        import psutil
        return float(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - psutil missing, or the process is gone
        return None


def _resources(pid: int) -> Dict[str, Any]:
    """RSS (bytes) and CPU seconds of ``pid`` when psutil is there; nothing otherwise."""
    try:
        import psutil
        process = psutil.Process(pid)
        with process.oneshot():
            times = process.cpu_times()
            return {"rss": process.memory_info().rss, "cpu": round(times.user + times.system, 3)}
    except Exception:  # noqa: BLE001 - psutil missing, or the process just exited
        return {}


def _scan_psutil(by_session: Dict[int, Set[int]], by_tag: Dict[str, Set[int]]) -> None:
    """_scan_sessions_and_tags() through psutil, where there is no /proc (Windows has no
    sessions: only tags)."""
    try:
        import psutil
    except ImportError:
        return  # without /proc or psutil only the process groups can be found
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            sid = os.getsid(proc.pid) if hasattr(os, "getsid") else None
            members = by_session.get(sid) if sid is not None else None
            if members is None:
                members = by_tag.get(proc.environ().get(SERVICE_TAG_ENV, ""))
        except (psutil.Error, OSError):
            continue
        if members is not None:
            members.add(proc.pid)


# --------------------------------------------------------------------------- output and readiness

OUTPUT_CHUNK = 65536          # read at most this much per wake-up, so every pipe gets its turn
MAX_PARTIAL_LINE = 1 << 20    # a "line" without a newline is passed on in pieces past this
FORWARD_QUEUE_CHUNKS = 256    # output waiting for our stdout/stderr; beyond it, output is dropped
# tcp and file probes: neither "a port started listening" nor "a file appeared" wakes
# anyone portably, so these two re-check at this interval, only while a service starts.
PROBE_INTERVAL = 0.05
VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_variables(text: str, env: Mapping[str, str]) -> str:
    """``${VAR}`` and ``${VAR:-default}`` from ``env`` (unset is empty, as in a shell).

    ``$$`` is a literal $.
    """
    def replace(match: Any) -> str:
        if match.group(0) == "$$":
            return "$"
        value = env.get(match.group(1), "")
        return value if value or match.group(2) is None else match.group(2)
    return VARIABLE.sub(replace, text)


def config_warnings(config: Config, text: str) -> List[str]:
    """What ``check`` warns about: a program that is not found or not executable, and a
    ${VAR} with neither a value nor a default (it expands to nothing)."""
    found = [(name, key, message) for name, service in config.services.items()
             for key, message in _warnings(service)]
    lines = service_lines(text) if found else {}
    return ["%s: warning: services.%s.%s: %s" % (
        Problem(config.path, lines.get(name), "", ""), name, key, message)
        for name, key, message in found]


def _warnings(service: ServiceConfig) -> Iterator[Tuple[str, str]]:
    env = dict(os.environ)
    for name, value in service.env.items():
        for variable in _unset_variables(value, os.environ):
            yield "env." + name, "${%s} has no value and no default" % variable
        env[name] = expand_variables(value, os.environ)
    for word in service.command:
        for variable in _unset_variables(word, env):
            yield "command", "${%s} has no value and no default" % variable
    if not service.shell:
        problem = _program_problem(expand_variables(service.command[0], env), env, service.cwd)
        if problem:
            yield "command", problem


def _unset_variables(text: str, env: Mapping[str, str]) -> List[str]:
    return [match.group(1) for match in VARIABLE.finditer(text)
            if match.group(1) and match.group(2) is None and not env.get(match.group(1))]


def _program_problem(program: str, env: Mapping[str, str], cwd: Optional[str]) -> Optional[str]:
    if os.path.basename(program) != program:  # a path: relative to the service's cwd
        path = os.path.join(cwd or "", program)
        if not os.path.isfile(path):
            return "program %r not found" % program
        return None if os.access(path, os.X_OK) else "program %r is not executable" % program
    import shutil  # (only `check` asks; its which() knows Windows' PATHEXT too)
    if shutil.which(program, path=env.get("PATH")) is not None:
        return None
    folders = (env.get("PATH") or os.defpath).split(os.pathsep)
    if any(os.path.isfile(os.path.join(folder, program)) for folder in folders if folder):
        return "program %r is on PATH but not executable" % program
    return "program %r not found on PATH" % program


class Forwarder:
    """Writes services' prefixed output to our stdout and stderr from a thread of its own, so a
    slow terminal or a full pipe downstream never blocks the loop; past its queue it drops."""

    def __init__(self) -> None:
        self._queue: Optional[queue.Queue[Tuple[Any, bytes]]] = None
        self._thread: Optional[threading.Thread] = None
        self.dropped = 0

    def put(self, stream: Any, data: bytes) -> None:
        if self._queue is None:
            import queue  # (most supervisors never forward: a third of a megabyte saved)
            self._queue = queue.Queue(FORWARD_QUEUE_CHUNKS)
            self._thread = in_thread(self._run, "output", self._queue)
        if self._queue.full():  # (only the loop puts: not full now is not full at the put)
            self.dropped += 1
        else:
            self._queue.put_nowait((stream, data))

    @staticmethod
    def _run(chunks: queue.Queue[Tuple[Any, bytes]]) -> None:
        while True:
            stream, data = chunks.get()
            if stream is None:
                return
            try:
                stream.write(data)
                if chunks.empty():
                    stream.flush()
            except (OSError, ValueError):
                pass  # our own stdout is gone: nothing better to do with the output

    def close(self, timeout: float = 1.0) -> None:
        """Write out what is queued (for at most ``timeout``), then stop the thread."""
        if self._queue is None or self._thread is None:
            return
        import queue
        try:
            self._queue.put((None, b""), timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
        self._queue = self._thread = None


class RotatingFile:
    """A service's output file, rotated by size into PATH.1 ... PATH.K, newest first.

    A write that fails (full disk, no permission) is logged once and the output dropped:
    the service keeps running.
    """

    def __init__(self, spec: OutputSpec, service: str):
        self.path = str(spec.file)
        self.max_bytes = spec.max_bytes
        self.backups = spec.backups
        self.service = service
        self._fd: Optional[int] = None
        self._size = 0
        self._failing = False

    def write(self, data: bytes) -> None:
        try:
            if self._fd is None:
                self._fd = os.open(self.path, APPEND_FLAGS, 0o644)
                self._size = os.fstat(self._fd).st_size
            while data:
                piece = data
                if self.max_bytes and len(data) > self.max_bytes - self._size:
                    room = self.max_bytes - self._size
                    cut = data.rfind(b"\n", 0, max(room, 0)) + 1  # the whole lines that fit
                    if not cut and self._size:
                        self._rotate()
                        continue
                    piece = data[:cut or room]  # a line longer than a whole file is cut
                os.write(self._fd, piece)
                self._size += len(piece)
                data = data[len(piece):]
            self._failing = False
        except OSError as exc:
            if not self._failing:
                log("warning", "cannot write %s: %s; dropping output" % (self.path, exc.strerror),
                    self.service)
            self._failing = True

    def _rotate(self) -> None:
        self.close()
        for number in range(self.backups - 1, 0, -1):
            older = "%s.%d" % (self.path, number)
            if os.path.exists(older):
                os.replace(older, "%s.%d" % (self.path, number + 1))
        if self.backups:
            os.replace(self.path, self.path + ".1")
        else:
            os.unlink(self.path)
        self._fd = os.open(self.path, APPEND_FLAGS, 0o644)
        self._size = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class OutputPipe:
    """The read end of one service stream: read without blocking, split into lines, and
    handed to the service's line watcher and to where the output goes."""

    def __init__(self, source: Any, service: "Service", stream: str,
                 deliver: Callable[[List[bytes]], None]):
        # a pipe's descriptor, or where pipes cannot be waited on (Windows) a socket that a
        # thread copies the pipe into (processes.readable())
        self._socket: Optional[socket.socket] = source if isinstance(source, socket.socket) \
            else None
        self.fd: int = source.fileno() if self._socket is not None else source
        self.service = service
        self.stream = stream  # "stdout" | "stderr"
        self.deliver = deliver
        self._partial = b""
        if self._socket is not None:
            self._socket.setblocking(False)
        else:
            os.set_blocking(self.fd, False)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        else:
            os.close(self.fd)

    def read(self) -> bool:
        """Read what is there; False once every writer has closed its end."""
        try:
            if self._socket is not None:
                data = self._socket.recv(OUTPUT_CHUNK)
            else:
                data = os.read(self.fd, OUTPUT_CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:
            if self._partial:
                self._lines([self._partial])
                self._partial = b""
            return False
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_PARTIAL_LINE:
            lines.append(self._partial)
            self._partial = b""
        if lines:
            self._lines(lines)
        return True

    def _lines(self, lines: List[bytes]) -> None:
        self.service.output.add(lines)
        for line in lines:
            if self.service.probe is None:
                break  # none, or it succeeded on an earlier line of this read
            # (a Windows program ends its lines with CRLF: "up$" must match "up\r\n" too)
            self.service.probe.line(line.rstrip(b"\r").decode(errors="replace"))
        self.deliver(lines)


class ReadinessProbe:
    """Decides when a starting service is ready: still running after some seconds, a line
    of its output matching a regex, a TCP port accepting, or a file existing."""

    def __init__(self, spec: ReadySpec, timers: Timers, selector: selectors.BaseSelector,
                 on_ready: Callable[[], None]):
        self.spec = spec
        self.timers = timers
        self.selector = selector
        self.on_ready = on_ready
        self._timer: Optional[Timer] = None
        self._socket: Optional[socket.socket] = None
        self._pattern = re.compile(spec.target) if spec.kind == "log" else None

    def describe(self) -> str:
        if self.spec.kind == "after":
            return "ready.after (%gs of running)" % self.spec.target
        return "ready.%s probe %r" % (self.spec.kind, self.spec.target)

    def start(self) -> None:
        if self.spec.kind == "after":
            self._timer = self.timers.call_later(float(self.spec.target), self._succeed)
        elif self.spec.kind in ("tcp", "file"):
            self._check()

    def line(self, text: str) -> None:
        if self._pattern is not None and self._pattern.search(text):
            self._succeed()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._socket is not None:
            self.selector.unregister(self._socket)
            self._socket.close()
            self._socket = None

    def _succeed(self) -> None:
        self.cancel()
        self.on_ready()

    def _check(self) -> None:
        self._timer = None
        if self.spec.kind == "file":
            if os.path.exists(self.spec.target):
                self._succeed()
            else:
                self._timer = self.timers.call_later(PROBE_INTERVAL, self._check)
            return
        host, _, port = self.spec.target.rpartition(":")
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host.strip("[]"), int(port), type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError:
            self._timer = self.timers.call_later(PROBE_INTERVAL, self._check)
            return
        sock.setblocking(False)
        sock.connect_ex(address)
        self._socket = sock
        self.selector.register(sock, selectors.EVENT_WRITE, self._connected)

    def _connected(self) -> None:
        assert self._socket is not None
        refused = self._socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.cancel()
        if refused:
            self._timer = self.timers.call_later(PROBE_INTERVAL, self._check)
        else:
            self._succeed()


PlatformProcesses: Any = WindowsProcesses if IS_WINDOWS else PosixProcesses


def default_processes() -> Processes:
    return WindowsProcesses() if IS_WINDOWS else PosixProcesses()


# --------------------------------------------------------------------------- the manager

class InjectedFault(RuntimeError):
    """Raised inside the main loop on request (--allow-fault-injection + SIGUSR1)."""


class ReexecRequested(Exception):
    """The operator asked for a re-exec (SIGUSR2): hand the services over and exec."""


# What the loop does with each signal it is told about (POSIX names; missing ones are skipped).
HANDLED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGBREAK")
_SIGCHLD = getattr(signal, "SIGCHLD", None)
# How long after SIGKILLing everything at the end of a shutdown we still wait for the reaps.
FINAL_REAP_GRACE = 5.0
# Re-check cadence for a stopping service whose processes cannot wake us when they die
# (only where they are not re-parented to us, i.e. not on Linux).
ORPHAN_RECHECK_INTERVAL = 0.05
# How long the state file may lag behind: a SIGKILLed supervisor's successor also finds
# services younger than that, by their tag.
STATE_WRITE_DELAY = 0.1


class ServiceManager:
    """Starts services, watches them and applies their restart policies.

    All decisions are made in ``monitor_services()``, which runs whenever the loop wakes: a
    child exited, a signal arrived or a timer is due. Signal handlers only record the signal.
    """

    def __init__(self, config: Config, events: Optional[EventStream] = None,
                 processes: Any = None, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[float, float], float] = _uniform, config_text: str = ""):
        self.config = config
        self.config_text = config_text  # what a re-executed image parses again
        self.clock = clock
        self.rng = rng
        self.events = events if events is not None else EventStream(None, clock)
        self.processes: Processes = processes if processes is not None else default_processes()
        self.timers = Timers(clock)
        self.services = {name: Service(cfg, self.events) for name, cfg in config.services.items()}
        name_services(list(self.services))
        self.tag_prefix = "%d/" % os.getpid()
        self.allow_fault_injection = False
        self.shutting_down = False
        self.finished = False
        self.exit_code = EXIT_OK
        self.exit_reason = ""  # why it shut down, for the last log line
        self._by_pid: Dict[int, Service] = {}
        self._watches: Dict[int, int] = {}  # pid -> pidfd
        self._pending_signals: List[int] = []
        self._selector = selectors.DefaultSelector()
        self._wakeup: Optional[Tuple[socket.socket, socket.socket]] = None
        self._parent_watch: Any = None  # what processes.watch_parent() gave, until it fired
        self._recheck: Optional[Timer] = None
        self._pipes: Dict[int, OutputPipe] = {}
        self._files: Dict[str, RotatingFile] = {}
        self._forwarder = Forwarder()
        self._awaiting: List[Service] = []  # to be started once their dependencies are ready
        self._dependents: Dict[str, List[Service]] = {}
        self._find_dependents()
        self.control: Optional[ControlServer] = None
        self._status_rows: Dict[str, Dict[str, Any]] = {}  # status() of this pass, by name
        self._replies_after_stop: List[Tuple[List[Service], Callable[[], Any]]] = []
        self._requested: Optional[Exception] = None  # raised by the loop once replies are out
        self._state_write: Optional[Timer] = None
        self._state_written = -STATE_WRITE_DELAY  # clock() of the last state file write
        self._start_times: Dict[int, Optional[float]] = {}  # pid -> start time, for the state file
        self._environments: Dict[str, Tuple[ServiceConfig, Dict[str, str], List[str]]] = {}
        self._base_environment: Optional[Dict[str, str]] = None
        self.state_file: Optional[str] = None  # where live PIDs are kept, once running for real

    # -- public API

    def start_service(self, name: str) -> None:
        """Start ``name`` now unless it is already running or stopping."""
        service = self.services[name]
        if service.state in (State.STOPPED, State.EXITED, State.FATAL, State.BACKOFF):
            service.cancel_timer()
            service.retries = 0  # asked for by a person: a fresh series of attempts
            self._request_start(service)

    def stop_service(self, name: str) -> None:
        """Stop ``name``: stop signal to its group, SIGKILL to its whole tree after the timeout."""
        service = self.services[name]
        if service in self._awaiting:
            self._awaiting.remove(service)  # it was waiting for its dependencies: not any more
        self._begin_stop([service])

    def _find_dependents(self) -> None:
        self._dependents = {name: [] for name in self.services}
        for service in self.services.values():
            for dependency in service.config.depends_on:
                self._dependents[dependency].append(service)

    def monitor_services(self) -> None:
        """One pass: act on signals, reap exits and apply policies, run due timers."""
        if self._requested is not None:
            requested, self._requested = self._requested, None
            raise requested
        with HeldOutput(self.events):  # released before any control reply goes out
            self._handle_signals()
            for pid, info in self.processes.reap():
                self._on_exit(pid, info)
            self.timers.run_due(lambda: bool(self._pending_signals))
            self._check_drained()
        if self.control is not None and self.control.turns:
            self._status_rows.clear()  # one snapshot per pass, shared by every status asked
            self.control.serve()
        if self._replies_after_stop:
            self._send_replies_after_stop()
        if self.shutting_down:
            self._stop_waves()
            if not any(s.drain is not None for s in self.services.values()):
                self._sweep_orphans()
                self.finished = True

    def run_monitoring(self) -> None:
        """The main loop: sleep until something happens, then ``monitor_services()``."""
        self.monitor_services()  # what happened before the loop: signals, exits during an exec
        while not self.finished:
            waiting = self.control is not None and self.control.turns
            for key, _ in self._selector.select(0 if waiting else self.timers.next_timeout()):
                key.data()
            self.monitor_services()

    def shutdown(self, code: int = EXIT_OK, why: str = "") -> None:
        """Stop every service in parallel; the loop ends once all of them are gone."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self.exit_code = code
        self.exit_reason = why
        log("info", "shutting down")
        self._awaiting.clear()
        self._stop_waves()
        timeout = self.config.supervisor.shutdown_timeout
        self.timers.call_later(timeout, self._shutdown_expired)

    # -- starting up

    def start(self, handoff: Optional[Dict[str, Any]] = None, respawn_count: int = 0,
              config_path: str = "", recovered: Optional[Dict[str, Set[int]]] = None) -> None:
        """Install the wake-ups, announce ourselves, then adopt handed-over services or start."""
        tree_note = self.processes.take_charge()
        self._install_wakeups()
        # Our handlers are in place: what was blocked across an exec can come now (it is only
        # recorded), and nothing started below, adopted services restarted included, may
        # inherit a mask that blocks its stop signal.
        unblock_signals()
        self.events.emit("supervisor_started", None, pid=os.getpid(), version=__version__,
                         config=config_path, respawn_count=respawn_count,
                         tree_backend=self.processes.backend)
        log("info", "supervisor %s (pid %d) %s %s: %d services" % (
            __version__, os.getpid(), "re-executed on" if handoff is not None else "started on",
            config_path, len(self.services)))
        if tree_note:
            log("info", tree_note)
        if handoff is not None:
            self._adopt(handoff)
        else:
            self._start_all(dict(recovered or {}))
        self.processes.release_free_memory()  # what loading and starting freed

    def _start_all(self, recovered: Dict[str, Set[int]]) -> None:
        """Start every autostart service, each once what a killed predecessor left of it
        (``recovered``) is gone."""
        for service in self.services.values():
            left = recovered.pop(service.name, set())
            if left:
                self._stop_recovered(service, left)
            elif service.config.autostart:
                self._request_start(service)
        strays = set().union(*recovered.values()) if recovered else set()
        if strays:  # of services this config no longer has
            log("warning", "stopping %d processes left by a supervisor that was killed: %s"
                % (len(strays), ", ".join(map(str, sorted(strays)))))
            self.processes.terminate_strays(strays, timeout=10.0)

    def _stop_recovered(self, service: Service, left: Set[int]) -> None:
        """Stop what a killed supervisor left of ``service`` (its own stop_signal and
        stop_timeout), then start it: never two instances at once."""
        log("warning", "stopping %d processes left by a supervisor that was killed: %s"
            % (len(left), ", ".join(map(str, sorted(left)))), service.name)
        service.tree = RecoveredTree(left, self.processes.alive)
        service.transition("stopping", State.STOPPING, pid=None,
                           signal=service.config.stop_signal)

        def then() -> None:
            service.tree = None  # its own tree from now on
            if service.config.autostart:
                self._request_start(service)
        service.after_stop = then
        for pid in left:  # not our children: their exits wake us through pidfds, where any
            self._watch(pid)
        self._empty_tree(service, None, left)

    def watch_parent(self, parent_pid: int) -> None:
        """Shut down when the process that started us goes away (--exit-with-parent)."""
        watch = self.processes.watch_parent(parent_pid)
        if watch is not None:
            self._parent_watch = watch
            self._selector.register(watch, selectors.EVENT_READ, self._parent_gone)
        if os.getppid() != parent_pid:
            self._parent_gone()

    def _parent_gone(self) -> None:
        # The watch stays readable once it fired (a pidfd or kqueue of a dead process, a
        # socket with unread data): drop it, or it would wake the loop for ever.
        watch, self._parent_watch = self._parent_watch, None
        if watch is not None:
            self._selector.unregister(watch)
            if isinstance(watch, int):
                os.close(watch)
            else:
                watch.close()
        if not self.shutting_down:
            log("info", "the parent process is gone; shutting down")
            self.shutdown(why="the parent process is gone")

    def _install_wakeups(self) -> None:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._wakeup = (reader, writer)
        self._selector.register(reader, selectors.EVENT_READ, self._drain_wakeup)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for name in HANDLED_SIGNALS:
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self._record_signal)
        source = self.processes.wakeup_source()
        if source is not None:
            self._selector.register(source, selectors.EVENT_READ, self.processes.drain_wakeup)
        requests = self.processes.shutdown_requests()
        if requests is not None:
            self._selector.register(requests, selectors.EVENT_READ,
                                    lambda: self._shutdown_requested(requests))

    def _shutdown_requested(self, requests: socket.socket) -> None:
        _drain(requests)
        if not self.shutting_down:
            log("info", "shutdown requested through the shutdown event")
            self.shutdown(why="shutdown requested through the shutdown event")

    def _record_signal(self, signum: int, frame: Any) -> None:
        if signum != _SIGCHLD:  # its handler is there for the wake-up; reap() does the rest
            self._pending_signals.append(signum)

    def _drain_wakeup(self) -> None:
        assert self._wakeup is not None
        _drain(self._wakeup[0])

    def close(self, for_exec: bool = False) -> None:
        """Release the loop's descriptors and signal handlers (before an exec or exit)."""
        if self.control is not None:
            self.control.close(unlink=not for_exec)
        if not for_exec:
            self.remove_state()
            self.processes.release([s.tree for s in self.services.values() if s.tree])
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            self._selector.unregister(self._wakeup[0])
            for sock in self._wakeup:
                sock.close()
            self._wakeup = None
        for pid in list(self._watches):
            self._unwatch(pid)
        self._forwarder.close()

    # -- signals

    def _handle_signals(self) -> None:
        while self._pending_signals:
            name = signal.Signals(self._pending_signals.pop(0)).name
            if name in ("SIGTERM", "SIGBREAK") or (name == "SIGINT" and not self.shutting_down):
                log("info", "received %s" % name)
                self.shutdown(why="received %s" % name)
            elif name == "SIGINT":
                log("warning", "second SIGINT: killing every service now")
                self._begin_stop(list(self.services.values()))
                self._force_kill([s for s in self.services.values() if s.state is State.STOPPING])
            elif name == "SIGUSR1":
                if self.allow_fault_injection:
                    raise InjectedFault("fault injected by SIGUSR1")
                log("warning", "ignoring SIGUSR1 (fault injection is not enabled)")
            elif name == "SIGUSR2" and not self.shutting_down:
                raise ReexecRequested()
            elif name == "SIGHUP" and not self.shutting_down:
                try:
                    self.reload()
                except ConfigError as exc:
                    log("error", "reload refused, nothing changed:\n%s" % exc)

    # -- spawning and exits

    def _request_start(self, service: Service) -> None:
        """Start ``service`` now, or once every service it depends on is ready."""
        waiting_for = [d for d in service.config.depends_on
                       if self.services[d].state is not State.RUNNING]
        if not waiting_for:
            self._spawn(service)
        elif service not in self._awaiting:
            log("info", "waiting for %s to be ready" % ", ".join(waiting_for), service.name)
            self._awaiting.append(service)

    def _start_awaiting(self) -> None:
        for service in list(self._awaiting):
            if all(self.services[d].state is State.RUNNING for d in service.config.depends_on):
                self._awaiting.remove(service)
                self._spawn(service)

    def _spawn(self, service: Service) -> None:
        service.timer = None
        if not self.shutting_down:
            self._tell_start(service, self._start(service))

    def _start(self, service: Service) -> Started:
        """Start a process of ``service``; telling about it is ``_tell_start``'s."""
        pipes: List[Tuple[str, int, int]] = []  # (stream, read end, write end)
        try:
            launch = self._launch(service, pipes)
            pid = self.processes.spawn(launch, self._tree(service))
        except (OSError, ValueError, LookupError) as exc:
            for _, reader, writer in pipes:
                os.close(reader)
                os.close(writer)
            return Started(None, [], describe_os_error(exc), self.clock())
        return Started(pid, pipes, None, self.clock())

    def _tell_start(self, service: Service, started: Started) -> None:
        config = service.config
        if started.pid is None:
            log("error", "cannot start %s: %s" % (" ".join(config.command), started.error),
                service.name)
            service.last_exit = None
            service.transition("spawn_failed", State.EXITED, error=started.error)
            self._apply_policy(service, expected=False, uptime=0.0)
            return
        pid, pipes = started.pid, started.pipes
        for stream, reader, writer in pipes:
            os.close(writer)
            self._add_pipe(OutputPipe(self.processes.readable(reader), service, stream,
                                      self._output_sink(service, stream)))
        self._track(service, pid)
        self._state_changed()
        service.started_at = started.at
        service.start_error = None
        log("info", "spawned pid %d (attempt %d)" % (pid, service.retries + 1), service.name)
        if config.ready is None:
            service.transition("spawned", State.RUNNING, pid=pid, attempt=service.retries + 1)
            self._start_awaiting()
            return
        service.transition("spawned", State.STARTING, pid=pid, attempt=service.retries + 1)
        self._await_ready(service, started.at + config.ready.timeout)

    def _await_ready(self, service: Service, deadline: float) -> None:
        assert service.config.ready is not None
        service.probe = ReadinessProbe(service.config.ready, self.timers, self._selector,
                                       lambda: self._ready(service))
        service.timer = self.timers.call_at(deadline, lambda: self._not_ready(service))
        service.probe.start()

    def _launch(self, service: Service, pipes: List[Tuple[str, int, int]]) -> Launch:
        """What to start for ``service``: variables expanded, output wired to pipes we read."""
        config = service.config
        env, words = self._environment(service)
        streams: Dict[str, Any] = {}
        for stream in ("stdout", "stderr"):
            mode = getattr(config, stream).mode
            watched = config.ready is not None and config.ready.kind == "log"
            if mode == "null" and not watched:
                streams[stream] = None
            else:
                reader, writer = os.pipe()
                pipes.append((stream, reader, writer))
                streams[stream] = writer
        return Launch(words[0] if config.shell else words, config.shell, config.cwd, env,
                      streams["stdout"], streams["stderr"], config.user, config.umask)

    def _environment(self, service: Service) -> Tuple[Dict[str, str], List[str]]:
        """The service's environment and expanded command. What is its own (its env, tag and
        command) is worked out once per config; the supervisor's environment, read once, is
        shared, so a thousand services do not keep a thousand copies of it."""
        config = service.config
        cached = self._environments.get(service.name)
        if cached is None or cached[0] is not config:
            if self._base_environment is None:
                self._base_environment = dict(os.environ)
            base = self._base_environment
            own = {key: expand_variables(value, base) for key, value in config.env.items()}
            own[SERVICE_TAG_ENV] = self.tag_prefix + service.name
            words = [expand_variables(word, {**base, **own}) for word in config.command]
            cached = self._environments[service.name] = (config, own, words)
        env = dict(self._base_environment or ())
        env.update(cached[1])
        return env, cached[2]

    def _output_sink(self, service: Service, stream: str) -> Callable[[List[bytes]], None]:
        spec = getattr(service.config, stream)
        if spec.mode == "file":
            path = expand_variables(spec.file, os.environ)
            target = self._files.get(path)
            if target is None:
                target = self._files[path] = RotatingFile(
                    spec._replace(file=path), service.name)
            return lambda lines: target.write(b"\n".join(lines) + b"\n")
        if spec.mode == "inherit":
            ours = sys.stdout if stream == "stdout" else sys.stderr
            out, colour = getattr(ours, "buffer", None), _in_colour(ours)
            if out is None:  # we were started with it closed: nowhere to pass it on to
                return lambda lines: None
            forwarder = self._forwarder

            def forward(lines: List[bytes]) -> None:
                prefix = output_prefix(service.name, colour)  # a reload may change the width
                forwarder.put(out, b"".join(prefix + line + b"\n" for line in lines))
            return forward
        return lambda lines: None

    def _add_pipe(self, pipe: OutputPipe) -> None:
        self._pipes[pipe.fd] = pipe
        self._selector.register(pipe.fd, selectors.EVENT_READ, lambda: self._read_pipe(pipe))

    def close_pipes(self) -> None:
        """Stop reading the services' output (before they are killed for a restart)."""
        for pipe in list(self._pipes.values()):
            self._selector.unregister(pipe.fd)
            pipe.close()
        self._pipes.clear()

    def _read_pipe(self, pipe: OutputPipe) -> None:
        if not pipe.read():
            self._selector.unregister(pipe.fd)
            pipe.close()
            del self._pipes[pipe.fd]

    def _ready(self, service: Service) -> None:
        assert service.probe is not None
        log("info", "ready (%s)" % service.probe.describe(), service.name)
        service.cancel_timer()
        service.probe = None
        service.transition("ready", State.RUNNING, pid=service.pid)
        self._start_awaiting()

    def _not_ready(self, service: Service) -> None:
        assert service.probe is not None and service.pid is not None
        service.timer = None
        service.start_error = "%s did not succeed within %gs" % (
            service.probe.describe(), service.config.ready.timeout)  # type: ignore[union-attr]
        service.probe.cancel()
        service.probe = None
        log("error", "not ready: %s; killing it%s" % (service.start_error,
                                                     _last_lines(service)), service.name)
        self.processes.kill(service.tree, self._members([service])[0] | {service.pid})

    def _track(self, service: Service, pid: int) -> None:
        """Our child's exit wakes the loop through SIGCHLD (or the Windows wait thread), so it
        costs no descriptor of its own; only processes that are not our children get a watch."""
        service.pid = pid
        self._by_pid[pid] = service

    def _watch(self, pid: int) -> None:
        fd = self.processes.watch(pid)
        if fd is not None:
            self._watches[pid] = fd
            # A pidfd stays readable once its process exited (a zombie another process has
            # yet to reap, say): drop it at once, the monitoring pass that follows does the rest.
            self._selector.register(fd, selectors.EVENT_READ, lambda: self._unwatch(pid))

    def _unwatch(self, pid: int) -> None:
        fd = self._watches.pop(pid, None)
        if fd is not None:
            self._selector.unregister(fd)
            os.close(fd)

    def _on_exit(self, pid: int, info: ExitInfo) -> None:
        self._unwatch(pid)
        service = self._by_pid.pop(pid, None)
        if service is None:
            return  # an orphan re-parented to us: draining trees are re-checked in this pass
        service.pid = None
        if service.state is State.STOPPING:
            assert service.drain is not None
            service.drain.main_exit = info
            return
        uptime = self.clock() - (service.started_at or self.clock())
        expected = info.signal is None and info.returncode in service.config.success_exit_codes
        failure: Dict[str, Any] = {}
        if service.state is State.STARTING:
            expected = False  # whatever its exit code, it never became ready
            if service.probe is not None:
                service.start_error = "exited before it was ready (%s)" % service.probe.describe()
                service.probe.cancel()
                service.probe = None
            service.cancel_timer()
            failure["error"] = service.start_error
        service.last_exit = info
        # The hot path: an empty tree (one read of cgroup.events, or a dead process group)
        # needs no scan, and the restart goes at once.
        leftovers = self._members([service])[0] if service.tree.populated() else set()
        service.tree.settle(leftovers)
        drain = bool(leftovers) and service.config.kill_mode == "tree"
        decision = None if drain or self.shutting_down else decide_after_exit(
            service.config, service.retries, expected, uptime, self.rng)
        # Restarted at once, the replacement starts before anything is told: the events and
        # log lines of this pass are held until it ends, so they still come in order.
        started = self._start(service) if decision is not None and not leftovers \
            and decision.action == "restart" and decision.delay == 0 else None
        level = "info" if expected else "warning"
        log(level, "pid %d exited (%s) after %.3fs%s" % (
            pid, info.describe(), uptime,
            ", leaving %d processes of its tree" % len(leftovers) if leftovers else ""),
            service.name)
        service.transition("exited", State.EXITED, pid=pid, returncode=info.returncode,
                           signal=info.signal, uptime=round(uptime, 6), expected=expected,
                           leftovers=len(leftovers), **failure)
        if drain:
            self._empty_tree(service, None, leftovers, verdict=(expected, uptime))
        else:
            self._apply_policy(service, expected, uptime, decision, started)

    def _apply_policy(self, service: Service, expected: bool, uptime: float,
                      decision: Optional[Decision] = None, started: Optional[Started] = None
                      ) -> None:
        """Restart, give up or leave ``service`` after an exit (``decision``: already taken;
        ``started``: the restart, already started)."""
        if self.shutting_down:
            return
        config = service.config
        if decision is None:
            decision = decide_after_exit(config, service.retries, expected, uptime, self.rng)
        service.retries = decision.retries
        if decision.action == "give_up":
            log("error", "giving up after %d restarts" % service.retries, service.name)
            service.transition("gave_up", State.FATAL, retries=service.retries)
        elif decision.action == "restart":
            service.restarts += 1
            attempt = service.retries + 1
            log("info", "retrying in %.1f s (attempt %d%s)" % (
                decision.delay, attempt, "" if config.max_retries is None
                else " of %d" % (config.max_retries + 1)), service.name)
            service.transition("restart_scheduled", State.BACKOFF,
                               delay=round(decision.delay, 6), attempt=attempt)
            if started is not None:
                self._tell_start(service, started)
                return
            # Otherwise even a zero delay goes through the timer, so that a service that
            # cannot be started at all does not keep the loop from handling signals.
            service.timer = self.timers.call_later(decision.delay, lambda: self._spawn(service))

    # -- emptying trees: stop, and what an exited main process left behind

    def _members(self, services: List[Service]) -> List[Set[int]]:
        """The live processes of each service's tree (one scan for all where it takes one)."""
        return self.processes.members([self._tree(s) for s in services])

    def _tree(self, service: Service) -> Any:
        if service.tree is None:
            service.tree = self.processes.tree(service.name, self.tag_prefix + service.name)
        return service.tree

    def _empty_tree(self, service: Service, pid: Optional[int], members: Set[int],
               verdict: Optional[Tuple[bool, float]] = None) -> None:
        """Ask everything of the service's tree to stop; SIGKILL it after ``stop_timeout``.
        ``_check_drained`` ends it once nothing is alive."""
        signame = service.config.stop_signal
        forced = service.drain is not None and service.drain.forced
        service.drain = Drain(pid, len(members), forced, verdict=verdict)
        if pid is None:
            log("info", "stopping %d processes of its tree with %s" % (len(members), signame),
                service.name)
        service.cancel_timer()
        service.timer = self.timers.call_later(service.config.stop_timeout,
                                               lambda: self._force_kill([service]))
        delivered = self.processes.signal(service.tree, members, signame)
        if not delivered and service.tree.populated():
            # The tree lives but cannot be asked to stop (Windows without a console shared
            # with the service): waiting out stop_timeout would change nothing.
            self._force_kill([service])

    def _check_drained(self) -> None:
        """End the drains whose trees are empty: cheap checks first, then one exact look
        (a scan where there are no cgroups) at those that seem empty."""
        draining = [s for s in self.services.values() if s.drain is not None]
        if not draining:
            return
        quiet = [s for s in draining if s.pid is None and not s.tree.populated()]
        for service, members in zip(quiet, self._members(quiet)):
            assert service.drain is not None
            service.tree.settle(members)
            if members:  # escaped the cheap check (another group, found by tag): tell them too
                self.processes.signal(service.tree, members, "SIGKILL" if service.drain.forced
                                      else service.config.stop_signal)
            else:
                self._drained(service)
        unwatched = [s for s in draining if s.drain is not None and (
            not self.processes.orphans_come_home or isinstance(s.tree, RecoveredTree)
            and not s.tree.pids <= set(self._watches))]
        if unwatched and self._recheck is None:
            # what is left cannot wake us when it exits (not re-parented to us): look again
            self._recheck = self.timers.call_later(ORPHAN_RECHECK_INTERVAL, self._recheck_done)

    def _drained(self, service: Service) -> None:
        drain, service.drain = service.drain, None
        assert drain is not None
        service.cancel_timer()
        if service.state is State.STOPPING:
            info = drain.main_exit
            if info is not None:
                service.last_exit = info
            log("info", "stopped (%s%s)" % (info.describe() if info else "its tree is gone",
                                          ", forced" if drain.forced else ""), service.name)
            service.transition("stopped", State.STOPPED, pid=drain.pid, forced=drain.forced,
                               returncode=info.returncode if info else None,
                               signal=info.signal if info else None)
            self._state_changed()
            self._after_stop(service)
            return
        log("info", "stopped the %d processes it left%s" % (
            drain.count, ", forced" if drain.forced else ""), service.name)
        service.transition("leftovers_stopped", State.EXITED, count=drain.count,
                           forced=drain.forced)
        if drain.verdict is not None:
            self._apply_policy(service, *drain.verdict)

    def _begin_stop(self, services: List[Service]) -> None:
        """Stop each service's whole tree, whatever its state."""
        live = []
        for service in services:
            if service.state is State.STOPPING:
                continue
            service.cancel_timer()
            if service.probe is not None:
                service.probe.cancel()
                service.probe = None
            if service.pid is None and service.drain is None \
                    and not self._tree(service).populated():
                if service.state is State.BACKOFF:
                    service.transition("stopped", State.STOPPED, pid=None, forced=False)
                continue  # nothing of it is alive
            live.append(service)
        for service, members in zip(live, self._members(live)):
            pid, signame = service.pid, service.config.stop_signal
            if pid is not None:
                log("info", "stopping pid %d with %s" % (pid, signame), service.name)
            service.transition("stopping", State.STOPPING, pid=pid, signal=signame)
            self._empty_tree(service, pid, members | ({pid} if pid is not None else set()))

    def _stop_waves(self) -> None:
        """Stop every service that no live service depends on (dependents stop first)."""
        def live(service: Service) -> bool:
            return service.state in (State.STARTING, State.RUNNING, State.BACKOFF,
                                     State.STOPPING) or service.drain is not None

        while True:
            wave = [s for s in self.services.values() if s.state is not State.STOPPING
                    and (live(s) or self._tree(s).populated())
                    and not any(live(d) for d in self._dependents[s.name])]
            if not wave:
                return
            self._begin_stop(wave)

    def _after_stop(self, service: Service) -> None:
        then, service.after_stop = service.after_stop, None
        if then is not None:
            then()

    def _recheck_done(self) -> None:
        self._recheck = None  # the monitoring pass that follows re-checks every draining tree

    def _force_kill(self, services: List[Service]) -> None:
        """SIGKILL everything left of each service's tree."""
        services = [s for s in services if s.drain is not None]
        for service, members in zip(services, self._members(services)):
            assert service.drain is not None
            service.cancel_timer()
            service.drain.forced = True
            if service.pid is not None:
                members.add(service.pid)
            log("warning", "SIGKILL to what is left of its tree (%d processes)" % len(members),
                service.name)
            self.processes.kill(service.tree, members)

    def _shutdown_expired(self) -> None:
        draining = [s for s in self.services.values() if s.drain is not None]
        log("error", "shutdown_timeout reached; killing %d services" % len(draining))
        self._force_kill(draining)
        self.timers.call_later(FINAL_REAP_GRACE, self._abandon)

    def _abandon(self) -> None:
        draining = [s for s in self.services.values() if s.drain is not None]
        for service, members in zip(draining, self._members(draining)):
            log("error", "could not kill: %s" % (", ".join(
                "pid %d (%s)" % (pid, _command_line(pid)) for pid in sorted(members))
                or "pid %s" % service.pid), service.name)
        self.exit_code = EXIT_FAILURE
        self.finished = True

    def _sweep_orphans(self) -> None:
        """At the end of a shutdown: stop what services left that no tree claimed."""
        orphans = self.processes.orphans()
        if not orphans:
            return
        log("warning", "killing %d processes left by services outside their trees: %s" % (
            len(orphans), ", ".join("pid %d (%s)" % (pid, _command_line(pid))
                                    for pid in sorted(orphans))))
        for pid in orphans:
            self.processes.send(pid, "SIGKILL")
            self.processes.wait(pid)

    def kill_everything(self) -> None:
        """Last resort when the loop itself keeps failing: SIGKILL every tree and reap it."""
        services = list(self.services.values())
        for service, members in zip(services, self._members(services)):
            if service.pid is not None:
                members.add(service.pid)
            self.processes.kill(service.tree, members)
        for pid in list(self._by_pid):
            self.processes.wait(pid)  # SIGKILL cannot be ignored: this returns promptly
            self._by_pid.pop(pid).pid = None
        self._sweep_orphans()

    # -- the control socket

    def open_control(self, inherited: Optional[Dict[str, Any]] = None) -> None:
        """Listen on the control socket (or keep listening after an exec)."""
        path = control_socket_path(self.config)
        if not path:
            return
        self.control = ControlServer(path, self._selector, self.timers, self._control_request)
        if inherited:
            self.control.open(inherited["fd"], inherited["token"])
        else:
            self.control.open()

    def _control_request(self, request: Dict[str, Any],
                         reply: Callable[[Dict[str, Any]], bool]) -> None:
        command, args = request.get("cmd"), request.get("args") or {}
        try:
            if not isinstance(command, str):
                raise ControlError("cmd: expected one of %s" % ", ".join(CONTROL_COMMANDS))
            if command not in CONTROL_COMMANDS:
                raise ControlError("unknown command %r%s" % (
                    command, _did_you_mean(command, CONTROL_COMMANDS)))
            if not isinstance(args, dict):
                raise ControlError("args: expected an object")
            names = self._names(args.get("names", []),
                                allow_empty=command not in ("start", "stop", "restart", "signal"))
            if command == "logs":
                self._logs(names if args.get("names") else [], args, reply)
            else:
                self._control_command(command, names, args, reply)
        except ControlError as exc:
            reply({"ok": False, "error": str(exc)})
        except ConfigError as exc:
            refusal = "reload refused, nothing changed:\n%s" % exc
            log("error", refusal)
            reply({"ok": False, "error": refusal})

    def _names(self, names: Any, allow_empty: bool) -> List[Service]:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ControlError("names: expected a list of service names")
        if "all" in names:
            return list(self.services.values())
        unknown = [n for n in names if n not in self.services]
        if unknown:
            raise ControlError("unknown service%s %s; known: %s" % (
                "s" if len(unknown) > 1 else "", ", ".join(map(repr, unknown)),
                ", ".join(self.services)))
        if not names and not allow_empty:
            raise ControlError("names: give at least one service")
        return [self.services[n] for n in names] or list(self.services.values())

    def _control_command(self, command: str, services: List[Service], args: Dict[str, Any],
                         reply: Callable[[Dict[str, Any]], bool]) -> None:
        if command == "status":
            rows = self._status_rows
            missing = [s for s in services if s.name not in rows]
            rows.update((row["name"], row) for row in self.status(missing))
            reply({"ok": True, "result": [rows[s.name] for s in services]})
            return
        self._status_rows.clear()  # what follows changes what status shows
        if command == "start":
            for service in services:
                self.start_service(service.name)
            reply({"ok": True, "result": {s.name: s.state.value for s in services}})
        elif command in ("stop", "restart"):
            for service in services:
                if command == "restart":
                    service.after_stop = lambda s=service: self.start_service(s.name)
                self.stop_service(service.name)
                if service.state is not State.STOPPING:
                    self._after_stop(service)
            self._replies_after_stop.append((services, lambda: reply(
                {"ok": True, "result": {s.name: s.state.value for s in services}})))
        elif command == "reload":
            before = dict(self.services)
            result = self.reload()
            replaced = [before[name] for name in result["removed"] + result["changed"]]
            self._replies_after_stop.append((replaced, lambda: reply(
                {"ok": True, "result": result})))
        elif command == "shutdown":
            reply({"ok": True, "result": "shutting down"})
            self.shutdown(why="asked through the control socket")
        elif command == "reexec":
            reply({"ok": True, "result": "re-executing"})
            self._requested = ReexecRequested()
        elif command == "signal":
            reply({"ok": True, "result": self._send_signal(services, args.get("signal"))})
        elif not self.allow_fault_injection:  # "fault": the portable SIGUSR1
            raise ControlError("fault injection is not enabled (--allow-fault-injection)")
        else:
            reply({"ok": True, "result": "raising in the main loop"})
            self._requested = InjectedFault("fault injected by the control socket")

    def _send_signal(self, services: List[Service], signame: Any) -> Dict[str, str]:
        name = canonical_signal_name(signame)
        if name is None or not hasattr(signal, name):
            known = [n for n in signal.Signals.__members__ if n.startswith("SIG")]
            raise ControlError("not a signal of this system: %r%s" % (
                signame, _did_you_mean(signame, known, _signal_stem)))
        idle = ["%s (%s)" % (s.name, s.state.value) for s in services if s.pid is None]
        if idle:
            raise ControlError("not running: %s" % ", ".join(idle))
        sent = {}
        for service in services:
            assert service.pid is not None
            if not self.processes.send(service.pid, name):
                raise ControlError("cannot send %s to %s (pid %d)" % (
                    name, service.name, service.pid))
            log("info", "sent %s to pid %d, as asked" % (name, service.pid), service.name)
            sent[service.name] = "%s sent to pid %d" % (name, service.pid)
        return sent

    def _logs(self, services: List[Service], args: Dict[str, Any],
              reply: Callable[[Dict[str, Any]], bool]) -> None:
        """The last lines of a service's output (of its file, if it writes one) or of our own
        log, then with ``follow`` every new line as it comes, until the client leaves."""
        count, follow = args.get("lines", LOG_TAIL_LINES), bool(args.get("follow"))
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ControlError("lines: expected an integer >= 0")
        if len(services) > 1:
            raise ControlError("names: give one service, or none for the supervisor's log")
        if services:
            config = services[0].config
            spec = config.stdout if config.stdout.mode == "file" else config.stderr
            ring = services[0].output
            path = expand_variables(str(spec.file), os.environ) if spec.mode == "file" else None
        else:
            ring, path = _LogSettings.recent, _LogSettings.path
        lines = _tail(path, count) if path else ring.last(count)
        if not reply({"ok": True, "result": _texts(lines), "follow": follow}) or not follow:
            return
        ring.followers.append(lambda new: reply({"ok": True, "result": _texts(new)}))

    def _send_replies_after_stop(self) -> None:
        waiting = []
        for services, send in self._replies_after_stop:
            if any(s.state is State.STOPPING for s in services):
                waiting.append((services, send))
            else:
                send()
        self._replies_after_stop = waiting

    def status(self, services: List[Service]) -> List[Dict[str, Any]]:
        """What ``supervisor status`` shows of each service."""
        rows = []
        for service, members in zip(services, self._members(services)):
            started = service.started_at if service.pid is not None else None
            last = service.last_exit
            rows.append({
                "name": service.name, "state": service.state.value, "pid": service.pid,
                "uptime": round(self.clock() - started, 3) if started is not None else None,
                "restarts": service.restarts,
                "last_exit": last._asdict() if last else None,
                "processes": sorted(members),
                **(_resources(service.pid) if service.pid is not None else {}),
            })
        return rows

    def reload(self) -> Dict[str, List[str]]:
        """Re-read the config: start added services, stop removed ones, restart changed ones.

        A config with problems raises ConfigError and changes nothing.
        """
        text = read_config_text(self.config.path)
        new = parse_config(text, self.config.path)
        old = self.config.services
        added = [name for name in new.services if name not in old]
        removed = [name for name in old if name not in new.services]
        changed = [name for name in new.services if name in old and new.services[name] != old[name]]
        if new.supervisor != self.config.supervisor:
            log("warning", "changes under 'supervisor:' take effect at the next reexec")
        self.config, self.config_text = new, text
        for name in added:
            self.services[name] = Service(new.services[name], self.events)
        name_services(list(new.services))
        self._find_dependents()
        for name in removed:
            self._replace(self.services[name], None)
        for name in changed:
            self._replace(self.services[name], new.services[name])
        for name in added:
            if new.services[name].autostart:
                self._request_start(self.services[name])
        log("info", "reloaded: added %s, removed %s, changed %s" % (
            added or "none", removed or "none", changed or "none"))
        self.events.emit("reloaded", None, added=added, removed=removed, changed=changed)
        return {"added": added, "removed": removed, "changed": changed}

    def _replace(self, service: Service, config: Optional[ServiceConfig]) -> None:
        """Stop ``service``, then drop it (no config) or start it again with ``config``."""
        def then() -> None:
            if config is None:
                if service.tree is not None:
                    self.processes.release([service.tree])
                del self.services[service.name]
                self._dependents.pop(service.name, None)
                return
            service.config = config
            service.retries = 0
            if config.autostart:
                self._request_start(service)
        if service in self._awaiting:
            self._awaiting.remove(service)
        service.after_stop = then
        self.stop_service(service.name)
        if service.state is not State.STOPPING:
            self._after_stop(service)

    # -- the state file: what a SIGKILLed supervisor left running

    def state_path(self) -> Optional[str]:
        """Where the state file goes: ``state_file``, else beside the control socket, else in
        the user's private runtime folder; None (with a warning) where its folder is open to
        other users, who could plant a file naming processes for us to kill."""
        settings = self.config.supervisor
        socket_path = control_socket_path(self.config)
        if settings.state_file:
            path = os.path.abspath(settings.state_file)
        elif socket_path:
            path = os.path.abspath(socket_path) + ".state"
        else:
            path = os.path.join(runtime_folder(), _config_file_name(self.config) + ".state")
        try:
            private_folder(os.path.dirname(path), "state file", create=not settings.state_file)
        except ControlError as exc:
            log("warning", "no state file, so no recovery after a SIGKILL: %s" % exc)
            return None
        return path

    def _state_changed(self) -> None:
        """Write the state file in the next pass of the loop (after what this one starts and
        tells), or, right after a write, once STATE_WRITE_DELAY has passed: changes close
        together (several exits at once, a storm) cost one write."""
        if not self.state_file or self._state_write is not None:
            return
        due = max(self._state_written + STATE_WRITE_DELAY, self.clock())
        self._state_write = self.timers.call_at(due, self._write_state)

    def _write_state(self) -> None:
        self._state_write = None
        self._state_written = self.clock()
        path = self.state_file
        assert path is not None
        live = {s.pid for s in self.services.values() if s.pid is not None} | {os.getpid()}
        for pid in live - set(self._start_times):
            self._start_times[pid] = self.processes.start_time(pid)
        self._start_times = {pid: self._start_times[pid] for pid in live}
        me = os.getpid()
        state = {"version": STATE_VERSION,
                 "supervisor": {"pid": me, "start_time": self._start_times[me]},
                 "tag_prefix": self.tag_prefix,
                 "services": {s.name: {"pid": s.pid, "start_time": self._start_times[s.pid]}
                              for s in self.services.values() if s.pid is not None}}
        try:
            write_private_file(path, json.dumps(state).encode())
        except OSError as exc:
            log("warning", "cannot write the state file %s: %s" % (path, exc.strerror or exc))

    def remove_state(self) -> None:
        if self.state_file:
            try:
                os.unlink(self.state_file)
            except OSError:
                pass

    def clean_up_after_a_crash(self) -> Dict[str, Set[int]]:
        """What a killed supervisor of this config left running, service by service, so that
        no service ever runs twice (``start`` stops each before starting it); refuse to start
        if that supervisor is in fact still running.

        A pid is taken for one of ours only when two things prove it: its start time is the
        one recorded (or, for what the old tree started later, after the old supervisor's),
        and it belongs to the old service (its session, or the old supervisor's own tag, or
        its cgroup). The state file is trusted only as far as read_state_file allows."""
        path = self.state_file
        if path is None:
            return {}
        try:
            state = read_state_file(path)
        except ValueError as exc:
            log("warning", "ignoring the state file %s: %s" % (path, exc))
            self.events.emit("state_file_rejected", None, path=path, error=str(exc))
            return {}
        if state is None:
            return {}
        owner = state["supervisor"]
        started = self.processes.start_time(owner["pid"])
        same_owner = started is not None and started == owner["start_time"]
        if owner["pid"] == os.getpid():
            return {}  # our own file (a re-exec that lost its handoff): nothing to recover
        if same_owner and self.processes.alive(owner["pid"]):
            raise ControlError("a supervisor (pid %d) is already running this config; state "
                               "file %s" % (owner["pid"], path))
        left: Dict[str, Set[int]] = {}
        for name, saved in state["services"].items():
            if self.processes.start_time(saved["pid"]) == saved["start_time"] \
                    and _leads_session(saved["pid"]):
                left.setdefault(name, set()).add(saved["pid"])
        if (started is None or same_owner) and owner["start_time"] is not None:
            # The old supervisor is gone (or a zombie, holding its pid): nobody else can be
            # using its tag or its cgroups, which find what escaped its sessions too.
            names, trees = [], []
            for name in sorted(set(state["services"]) | set(self.services)):
                tree = SessionTree(state["tag_prefix"] + name)
                if name in state["services"]:
                    tree.begin(state["services"][name]["pid"])
                cgroup = self.processes.cgroup_left_by(owner["pid"], name)
                names += [name] * (1 + (cgroup is not None))
                trees += [tree] + ([cgroup] if cgroup is not None else [])
            for name, members in zip(names, self.processes.members(trees, everywhere=True)):
                born = {pid for pid in members if (self.processes.start_time(pid) or -1.0)
                        >= owner["start_time"]}
                if born:
                    left.setdefault(name, set()).update(born)
        return left

    # -- handing over to a re-executed image

    def handoff_state(self, respawn_history: List[float],
                      parent_pid: Optional[int]) -> Dict[str, Any]:
        services = {}
        for name, service in self.services.items():
            due = service.timer.due if service.timer is not None and not service.timer.cancelled \
                else None
            drain = service.drain
            services[name] = {
                "state": service.state.value, "pid": service.pid, "retries": service.retries,
                "restarts": service.restarts, "started_at": service.started_at,
                "timer_due": due,
                "last_exit": service.last_exit._asdict() if service.last_exit else None,
                "sessions": sorted(getattr(service.tree, "sessions", ())),
                "drain": None if drain is None else {
                    "pid": drain.pid, "count": drain.count, "forced": drain.forced,
                    "main_exit": drain.main_exit._asdict() if drain.main_exit else None,
                    "verdict": drain.verdict},
            }
        pending = [signal.Signals(signum).name for signum in self._pending_signals]
        pipes = []
        for fd, pipe in self._pipes.items():
            os.set_inheritable(fd, True)  # the services write into these: they cross the exec
            pipes.append({"fd": fd, "service": pipe.service.name, "stream": pipe.stream})
        return {"version": 1, "respawn_history": respawn_history, "parent_pid": parent_pid,
                "config_text": self.config_text, "services": services,
                "pending_signals": pending, "pipes": pipes,
                "awaiting": [service.name for service in self._awaiting],
                "control": self.control.handoff() if self.control else None}

    def _adopt(self, handoff: Dict[str, Any]) -> None:
        # signals received but not yet acted on when the old image gave up
        self._pending_signals.extend(getattr(signal, name) for name in handoff["pending_signals"])
        for saved_pipe in handoff["pipes"]:
            owner = self.services.get(saved_pipe["service"])
            if owner is not None:
                os.set_inheritable(saved_pipe["fd"], False)
                self._add_pipe(OutputPipe(saved_pipe["fd"], owner, saved_pipe["stream"],
                                          self._output_sink(owner, saved_pipe["stream"])))
        self._awaiting = [self.services[name] for name in handoff["awaiting"]]
        for name, saved in handoff["services"].items():
            service = self.services.get(name)
            if service is not None:
                self._adopt_service(service, saved)

    def _adopt_service(self, service: Service, saved: Dict[str, Any]) -> None:
        """Take ``service`` back as the old image left it: the same state, processes and
        timers (a stop or a readiness wait in progress goes on where it was)."""
        service.retries = saved["retries"]
        service.restarts = saved["restarts"]
        service.started_at = saved["started_at"]
        if saved["last_exit"]:
            service.last_exit = ExitInfo(**saved["last_exit"])
        tree = self._tree(service)
        if isinstance(tree, SessionTree):
            tree.sessions.update(saved["sessions"])
            tree.newest = saved["pid"]
        state, pid, due = State(saved["state"]), saved["pid"], saved["timer_due"]
        if saved["drain"] is not None:
            drain = saved["drain"]
            main_exit = drain["main_exit"]
            service.drain = Drain(drain["pid"], drain["count"], drain["forced"],
                                  ExitInfo(**main_exit) if main_exit else None,
                                  tuple(drain["verdict"]) if drain["verdict"] else None)
            service.timer = self.timers.call_at(due if due is not None else self.clock(),
                                                lambda: self._force_kill([service]))
        if pid is not None and self.processes.is_child(pid):
            self._track(service, pid)
            log("info", "adopted pid %d" % pid, service.name)
            adopted_as = state if state in (State.STARTING, State.STOPPING) else State.RUNNING
            service.transition("adopted", adopted_as, pid=pid)
            if adopted_as is State.STARTING:
                self._await_ready(service, due if due is not None else self.clock())
        elif state is State.STOPPING:
            service.transition("adopted", State.STOPPING, pid=None)  # only its tree is left
        elif pid is not None:
            log("warning", "cannot adopt pid %d across the re-exec; starting it again" % pid,
                service.name)
            self._spawn(service)
        elif state is State.BACKOFF:
            service.state = State.BACKOFF
            service.timer = self.timers.call_at(due if due is not None else self.clock(),
                                                lambda: self._spawn(service))
        elif state in (State.EXITED, State.FATAL):
            service.state = state  # a drain of what it left, if any, goes on (above)


def _command_line(pid: int) -> str:
    """``pid``'s command line, for a message naming a process ("?" when it cannot be read)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip() or "?"
    except OSError:
        pass
    try:
        import psutil
        return " ".join(psutil.Process(pid).cmdline()) or "?"
    except Exception:  # noqa: BLE001 - psutil missing, or the process is gone
        return "?"


def _last_lines(service: Service) -> str:
    """The service's last lines of output, for an error message."""
    lines = [line.decode(errors="replace") for line in service.output.last(LOG_TAIL_LINES)]
    if not lines:
        return ""
    return "; its last output:\n" + "\n".join("    " + line for line in lines)


def _texts(lines: List[bytes]) -> List[str]:
    return [line.decode(errors="replace") for line in lines]


def _tail(path: str, count: int) -> List[bytes]:
    """The last ``count`` lines of a file (none if it cannot be read)."""
    try:
        with open(path, "rb") as stream:
            end = stream.seek(0, os.SEEK_END)
            size = 8192
            while True:  # read more of the end until it holds enough lines, or is the file
                start = max(end - size, 0)
                stream.seek(start)
                lines = stream.read(end - start).splitlines()
                if len(lines) > count or start == 0:
                    return lines[-count:] if count else []
                size *= 4
    except OSError:
        return []


def _drain(sock: socket.socket) -> None:
    try:
        while len(sock.recv(4096)) == 4096:  # (less: nothing more was there)
            pass
    except (BlockingIOError, InterruptedError):
        pass


# --------------------------------------------------------------------------- the state file

STATE_VERSION = 2
MAX_STATE_BYTES = 1 << 20


def runtime_folder(for_socket: bool = False) -> str:
    """The user's private folder for sockets and state: $XDG_RUNTIME_DIR/supervisor, else
    ~/.supervisor (never the shared temp folder as such, where others could plant files)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    base = runtime if os.path.isabs(runtime) else os.path.expanduser("~")
    folder = os.path.join(base, "supervisor" if base == runtime else ".supervisor")
    # The longest name we give a socket in it is 24 + 1 + 8 + 5 bytes.
    too_long = for_socket and hasattr(socket, "AF_UNIX") and len(os.fsencode(folder)) + 39 >= 104
    if too_long or not _owned(base):
        # in someone else's home (HOME kept across a change of user), or too long a path for
        # a unix socket (104 bytes on macOS, 108 on Linux): a private folder of the same kind
        # in the temp folder, made and checked the same way
        import tempfile
        folder = os.path.join(tempfile.gettempdir(), "supervisor-%d" % os.getuid())
    return folder


def private_folder(folder: str, what: str, create: bool = True) -> None:
    """Make ``folder`` (0700), or accept the one there only if it is a folder, not a link,
    ours, and closed to others: nobody else may plant a socket or a state file in it.
    ControlError says what is wrong."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.makedirs(folder, mode=0o700)
    try:
        info = os.lstat(folder)
    except OSError as exc:
        raise ControlError("%s folder %s: %s" % (what, folder, exc.strerror)) from None
    if not stat.S_ISDIR(info.st_mode):
        raise ControlError("%s folder %s is a link or a file, not a folder" % (what, folder))
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o077):
        raise ControlError("%s folder %s must belong to you and be closed to others "
                           "(chmod 700)" % (what, folder))


def write_private_file(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` through a file made exclusively (0600, never a link
    followed) in the same folder, renamed over it. (What tempfile.mkstemp does, without
    importing it: a third of a megabyte for the supervisor's whole life.)"""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        temporary = os.path.join(os.path.dirname(path), ".state-%s" % os.urandom(6).hex())
        try:
            fd = os.open(temporary, flags, 0o600)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_state_file(path: str) -> Optional[Dict[str, Any]]:
    """The state file's content, checked field by field; None if there is none; ValueError
    saying what is wrong if it cannot be trusted (not ours, open to others, a link, not what
    we write)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError("cannot open it (%s)" % (
            "it is a link" if exc.errno == errno.ELOOP else exc.strerror)) from None
    with os.fdopen(fd, "rb") as state_file:
        info = os.fstat(state_file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("it is not a regular file")
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise ValueError("it belongs to uid %d, not to us (uid %d)"
                             % (info.st_uid, os.getuid()))
        if info.st_mode & 0o022:
            raise ValueError("others may write it (mode %o)" % (info.st_mode & 0o777))
        text = state_file.read(MAX_STATE_BYTES + 1)
    if len(text) > MAX_STATE_BYTES:
        raise ValueError("it is larger than %d bytes" % MAX_STATE_BYTES)
    try:
        state = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError("not JSON: %s" % exc) from None
    _check_state(state)
    return state  # type: ignore[no-any-return]


def _check_state(state: Any) -> None:
    def pid_record(value: Any, where: str) -> None:
        if not isinstance(value, dict) or set(value) != {"pid", "start_time"}:
            raise ValueError("%s: expected {pid, start_time}" % where)
        pid, started = value["pid"], value["start_time"]
        if type(pid) is not int or not 1 < pid < 1 << 22:
            raise ValueError("%s.pid: expected a process id, got %r" % (where, pid))
        if started is not None and (type(started) not in (int, float) or started < 0
                                    or started != started or started == math.inf):
            raise ValueError("%s.start_time: expected a number, got %r" % (where, started))

    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError("not a state file of version %d" % STATE_VERSION)
    if set(state) != {"version", "supervisor", "tag_prefix", "services"}:
        raise ValueError("expected the keys version, supervisor, tag_prefix, services")
    pid_record(state["supervisor"], "supervisor")
    if state["tag_prefix"] != "%d/" % state["supervisor"]["pid"]:
        raise ValueError("tag_prefix: expected %r, got %r"
                         % ("%d/" % state["supervisor"]["pid"], state["tag_prefix"]))
    services = state["services"]
    if not isinstance(services, dict):
        raise ValueError("services: expected a mapping")
    for name, saved in services.items():
        if not _SERVICE_NAME.fullmatch(name):
            raise ValueError("services: %r is not a service name" % name)
        pid_record(saved, "services.%s" % name)


# --------------------------------------------------------------------------- control socket

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 65536     # a longer line is refused and the client dropped
MAX_CLIENTS = 512             # more at once are turned away, so none can starve the loop
CLIENT_IDLE_TIMEOUT = 10.0    # a client that neither asks nor takes an answer this long is dropped
READ_CHUNK = 4096             # read per wake-up: what a waiting client holds of our memory
ACCEPTS_PER_PASS = 16         # the listener stays readable: the rest come in the next pass
# The time one pass of the loop gives to control requests, one request per client in turn;
# the rest wait for the next pass, so a flood of requests never holds back a respawn.
CONTROL_PASS_BUDGET = 0.001
# Longer numbers are refused: before Python 3.11 reading and writing one costs quadratic time.
MAX_NUMBER_DIGITS = 100
CONTROL_COMMANDS = ("status", "start", "stop", "restart", "reload", "reexec", "shutdown",
                    "logs", "signal", "fault")


class ControlError(Exception):
    """A control request that cannot be carried out; its text is the reply's error."""


class ControlClient:
    """One connection: its unserved requests, its unsent replies, when it last moved."""

    def __init__(self, sock: socket.socket, now: float):
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.authenticated = False
        self.closing = False       # hang up once the answer is out
        self.hung_up = False
        self.active = now          # when it last sent a request or took some of a reply
        self.unanswered = 0        # requests being carried out (a stop waits for the stop)
        self.idle: Optional[Timer] = None
        self.events = 0            # what the selector watches it for; 0: its turn is queued
        self.queued = False


class ControlServer:
    """The supervisor's control endpoint: JSON lines in, one JSON line out per request.

    POSIX: a unix socket with mode 0600 in a directory only its owner can enter; on Linux
    the peer's uid must be ours or root's. Without unix sockets (Windows): a loopback TCP
    port whose number and a random token are written to the socket path, a file only the
    user can read; a client's first line must carry the token.

    Every socket is non-blocking, and no client can cost the loop more than its share:
    reading only fills a client's inbox; the loop serves one request per client in turn
    after its own work, within CONTROL_PASS_BUDGET (``serve``). A client with an answer
    still unsent is not read (back-pressure: its requests wait in the kernel, its backlog is
    one answer), and one that neither asks nor takes an answer for CLIENT_IDLE_TIMEOUT is
    dropped.
    """

    def __init__(self, path: str, selector: selectors.BaseSelector, timers: Timers,
                 handle: Callable[[Dict[str, Any], Callable[[Dict[str, Any]], bool]], None]):
        self.path = path
        self.selector = selector
        self.timers = timers
        self.handle = handle
        self.listener: Optional[socket.socket] = None
        self.token: Optional[str] = None
        self.clients: Dict[socket.socket, ControlClient] = {}
        self.turns: Deque[ControlClient] = collections.deque()  # clients with a request

    def open(self, inherited_fd: Optional[int] = None, token: Optional[str] = None) -> None:
        if inherited_fd is not None:
            self.listener = socket.socket(fileno=inherited_fd)
            self.listener.set_inheritable(False)  # (os.set_inheritable fails on Windows sockets)
            self.token = token
        elif hasattr(socket, "AF_UNIX"):
            self.listener = self._bind_unix()
        else:
            self.listener = self._bind_loopback()
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)

    def _bind_unix(self) -> socket.socket:
        private_folder(os.path.dirname(os.path.abspath(self.path)), "control socket")
        if os.path.exists(self.path):
            if _control_answers(self.path):
                raise ControlError("another supervisor is listening on %s" % self.path)
            os.unlink(self.path)  # left by a supervisor that was killed
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600: no window where others could connect
        try:
            listener.bind(self.path)
        finally:
            os.umask(old_umask)
        listener.listen(128)
        return listener

    def _bind_loopback(self) -> socket.socket:
        import secrets
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self.token = secrets.token_hex(16)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as endpoint:
            json.dump({"port": listener.getsockname()[1], "token": self.token}, endpoint)
        return listener

    def handoff(self) -> Dict[str, Any]:
        """The listening socket crosses an exec, so clients never find nobody there."""
        assert self.listener is not None
        self.listener.set_inheritable(True)
        return {"fd": self.listener.fileno(), "token": self.token}

    def close(self, unlink: bool = True) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        if self.listener is not None:
            self.selector.unregister(self.listener)
            if unlink:
                self.listener.close()
                if os.path.exists(self.path):
                    os.unlink(self.path)
            else:
                self.listener.detach()  # the descriptor stays open for the next image
            self.listener = None

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(ACCEPTS_PER_PASS):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log("warning", "control socket: cannot accept: %s" % describe_os_error(exc))
                return
            if len(self.clients) >= MAX_CLIENTS or not _peer_allowed(sock):
                sock.close()
                continue
            sock.setblocking(False)
            client = ControlClient(sock, self.timers.clock())
            client.authenticated = self.token is None
            self.clients[sock] = client
            self._watch_idle(client)
            self._update(client)

    def _watch_idle(self, client: ControlClient) -> None:
        """Drop ``client`` once it has been idle CLIENT_IDLE_TIMEOUT. One timer per client,
        moved on only when it fires: activity itself costs nothing."""
        if client.unanswered:
            client.active = self.timers.clock()  # waiting for its answer is not being idle
        due = client.active + CLIENT_IDLE_TIMEOUT
        if due <= self.timers.clock():
            self._drop(client)
        else:
            client.idle = self.timers.call_at(due, lambda: self._watch_idle(client))

    def _update(self, client: ControlClient) -> None:
        """Watch ``client`` for what comes next: taking our answer (it is not read meanwhile),
        its next request's turn, or more of its requests."""
        end = client.inbox.find(b"\n")
        if client.outbox:
            events = selectors.EVENT_WRITE
        elif client.closing:
            # Hung up on after its answer: it gets an end of file, and what it still sends is
            # read and thrown away until it leaves (closing on unread data would reset the
            # connection before it could read the answer).
            if not client.hung_up:
                client.hung_up = True
                try:
                    client.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    self._drop(client)
                    return
            events = selectors.EVENT_READ
        elif end > MAX_REQUEST_BYTES or (end < 0 and len(client.inbox) > MAX_REQUEST_BYTES):
            client.inbox = b""
            self._reply(client, {"ok": False, "error": "request longer than %d bytes"
                                 % MAX_REQUEST_BYTES}, close=True)
            return
        elif end >= 0:
            events = 0
            if not client.queued:
                client.queued = True
                self.turns.append(client)
        else:
            events = selectors.EVENT_READ
        if events == client.events:
            return
        if not client.events:
            self.selector.register(client.sock, events, lambda: self._ready(client))
        elif not events:
            self.selector.unregister(client.sock)
        else:
            self.selector.modify(client.sock, events, lambda: self._ready(client))
        client.events = events

    def _ready(self, client: ControlClient) -> None:
        if client.events == selectors.EVENT_WRITE:
            self._flush(client)
        else:
            self._read(client)

    def _read(self, client: ControlClient) -> None:
        try:
            data = client.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.active = self.timers.clock()
        if not client.closing:
            client.inbox += data
        self._update(client)

    def serve(self) -> None:
        """Serve waiting requests, one per client in turn, until CONTROL_PASS_BUDGET is spent
        (the loop calls this once a pass, and does not sleep while requests wait)."""
        deadline = self.timers.clock() + CONTROL_PASS_BUDGET
        for _ in range(len(self.turns)):
            client = self.turns.popleft()
            client.queued = False
            if client.sock not in self.clients or client.outbox:
                continue  # gone, or an answer waits first: taking it queues the client again
            line, client.inbox = client.inbox.split(b"\n", 1)
            self._request(client, line)
            if client.sock in self.clients:
                self._update(client)
            if self.timers.clock() >= deadline:
                return

    def _request(self, client: ControlClient, line: bytes) -> None:
        """Carry out one request. Whatever a client sends, what goes wrong is its answer,
        never an exception in the loop."""
        try:
            request = json.loads(line, parse_int=_short_int)
        except ControlError as exc:
            self._reply(client, {"ok": False, "error": str(exc)})
            return
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." too deep
            reason = "nested too deeply" if isinstance(exc, RecursionError) else "not JSON"
            self._reply(client, {"ok": False, "error": reason})
            return
        if not isinstance(request, dict):
            self._reply(client, {"ok": False, "error": "expected a JSON object"})
            return
        reply_id = request.get("id")
        if reply_id is not None and not isinstance(reply_id, (str, int, float)):
            self._reply(client, {"ok": False, "error": "id: expected a string or a number"})
            return
        if not client.authenticated:
            if request.get("token") != self.token:
                self._reply(client, {"ok": False, "error": "bad token"}, close=True)
                return
            client.authenticated = True
        if request.get("v") != PROTOCOL_VERSION:
            self._reply(client, {"id": reply_id, "ok": False, "error":
                                 "unsupported protocol version %r (this supervisor speaks %d)"
                                 % (request.get("v"), PROTOCOL_VERSION)})
            return
        answered = False
        args = request.get("args")
        follows = isinstance(args, dict) and bool(args.get("follow"))  # `logs -f`: a stream

        def answer(reply: Dict[str, Any]) -> bool:
            """Send a reply (one per request, but for a stream); False if the client is gone."""
            nonlocal answered
            if answered and not follows:
                return False
            if not answered:
                answered = True
                client.unanswered -= 1
            return self._reply(client, dict(reply, id=reply_id))

        client.unanswered += 1
        try:
            self.handle(request, answer)
        except Exception as exc:  # noqa: BLE001 - a request must never take the loop down
            log("error", "a control request failed:\n" + _traceback())
            answer({"ok": False, "error": "internal error: %s: %s" % (type(exc).__name__, exc)})

    def _reply(self, client: ControlClient, reply: Dict[str, Any], close: bool = False) -> bool:
        """Queue ``reply`` for ``client``; False if the client is gone."""
        if client.sock not in self.clients:
            return False  # it left before its answer was ready
        if reply.get("follow") and client.idle is not None:
            client.idle.cancel()  # it listens to a stream now (logs -f): silence is fine
            client.idle = None
        reply.setdefault("v", PROTOCOL_VERSION)
        client.outbox += json.dumps(reply).encode() + b"\n"
        client.closing = client.closing or close
        self._flush(client)
        return client.sock in self.clients

    def _flush(self, client: ControlClient) -> None:
        try:
            sent = client.sock.send(client.outbox)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(client)
            return
        if sent:
            client.outbox = client.outbox[sent:]
            client.active = self.timers.clock()
        self._update(client)

    def _drop(self, client: ControlClient) -> None:
        if self.clients.pop(client.sock, None) is None:
            return
        if client.idle is not None:
            client.idle.cancel()
        if client.events:
            self.selector.unregister(client.sock)
        client.sock.close()


def _short_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ControlError("numbers longer than %d digits are refused" % MAX_NUMBER_DIGITS)
    return int(digits)


def control_socket_path(config: Config) -> Optional[str]:
    """Where the control socket of ``config`` is: the path it names, None for false, or by
    default a file named after the config's absolute path in the user's runtime folder."""
    path = config.supervisor.control_socket
    if path != "default":
        return path
    return os.path.join(runtime_folder(for_socket=True), _config_file_name(config) + ".sock")


def _config_file_name(config: Config) -> str:
    """A file name for ``config``'s socket or state: its name and a checksum of its path."""
    config_path = os.path.realpath(config.path)
    return "%s-%08x" % (re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(config_path))[:24],
                        binascii.crc32(config_path.encode()))


def _owned(folder: str) -> bool:
    if not hasattr(os, "getuid"):
        return True  # Windows: a folder's ACL, not an owner's uid, says who may use it
    try:
        return os.stat(folder).st_uid == os.getuid()
    except OSError:
        return False


def _peer_allowed(sock: socket.socket) -> bool:
    """On Linux, only our own uid or root may control us (the socket's mode says the same)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid in (0, os.getuid())


def _control_answers(path: str) -> bool:
    try:
        control_request(path, {"cmd": "status", "args": {"names": []}}, timeout=2.0)
    except Unreachable:
        return False
    return True


class Unreachable(Exception):
    """No supervisor answered on the control socket."""


def control_request(path: str, request: Dict[str, Any], timeout: float = 60.0,
                    more: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Send one request to the supervisor listening at ``path`` and return its reply. With
    ``more``, each reply goes to it too, and after a reply that says "follow", so does every
    one that follows, until the supervisor closes the connection (logs -f)."""
    request = dict(request, v=PROTOCOL_VERSION, id=1)
    try:
        if hasattr(socket, "AF_UNIX"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(path)
        else:
            with open(path) as endpoint:
                where = json.load(endpoint)
            sock = socket.create_connection(("127.0.0.1", where["port"]), timeout=timeout)
            request["token"] = where["token"]
        with sock, sock.makefile("rb") as replies:
            sock.sendall(json.dumps(request).encode() + b"\n")
            answer = replies.readline()
            if not answer.endswith(b"\n"):
                raise Unreachable("the supervisor at %s closed the connection" % path)
            reply: Dict[str, Any] = json.loads(answer)
            if more is not None:
                more(reply)
                if reply.get("follow"):
                    sock.settimeout(None)
                    for answer in replies:
                        more(json.loads(answer))
    except (OSError, ValueError, KeyError) as exc:
        raise Unreachable("no supervisor answers at %s (%s)" % (path, exc)) from None
    return reply


# --------------------------------------------------------------------------- self-respawn

# Blocked across an exec so that none is lost or kills the image in between; the mask
# survives execv, and the new image unblocks them once its handlers are in place.
EXEC_BLOCKED_SIGNALS = {getattr(signal, name) for name in HANDLED_SIGNALS
                        if hasattr(signal, name) and name != "SIGBREAK"}


def block_signals() -> None:
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, EXEC_BLOCKED_SIGNALS)


def unblock_signals() -> None:
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, EXEC_BLOCKED_SIGNALS)


def respawn_self() -> None:
    """Re-execute this supervisor in place: same interpreter, same arguments, same PID."""
    block_signals()
    try:
        os.execv(sys.executable, [sys.executable] + _own_arguments())
    except OSError:
        unblock_signals()
        raise


def _own_arguments() -> List[str]:
    """The interpreter's arguments that run this supervisor again: sys.argv, or, when that
    names this file (``python supervisor.py``, ``python -m supervisor``), an import of it
    (see _RUN_AS_IMPORT) rather than the script, which would parse it all to re-execute again.
    """
    if sys.argv and os.path.abspath(sys.argv[0]) == os.path.abspath(__file__):
        return ["-c", _RUN_AS_IMPORT, "-"] + sys.argv
    return sys.argv


def write_handoff(state: Dict[str, Any]) -> str:
    """Write the state a re-executed image needs; its path travels in the environment."""
    import tempfile  # (a re-exec is rare; the image that stays never imports it)
    fd, path = tempfile.mkstemp(prefix="supervisor-handoff-", suffix=".json")
    with os.fdopen(fd, "w") as handoff_file:
        json.dump(state, handoff_file)
    os.environ[HANDOFF_ENV] = path
    return path


def take_handoff() -> Optional[Dict[str, Any]]:
    """The state left by the image we were re-executed from, if any (read once, then deleted)."""
    path = os.environ.pop(HANDOFF_ENV, None)
    if not path:
        return None
    try:
        with open(path) as handoff_file:
            state: Dict[str, Any] = json.load(handoff_file)
    except (OSError, ValueError) as exc:
        log("error", "cannot read the handoff file %s: %s" % (path, exc))
        return None
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    return state


# --------------------------------------------------------------------------- running

# Faults tolerated while stopping after a failure: a loop failing more often than this is
# broken, and the services are SIGKILLed instead.
FAULTS_WHILE_STOPPING = 5


class RestartInProcess(Exception):
    """Raised out of ``Runner.run()`` where an exec cannot keep the services (Windows):
    ``main()`` runs a fresh image in this same process with ``state``, which starts them."""

    def __init__(self, state: Dict[str, Any]):
        super().__init__("restart in-process")
        self.state = state


class Runner:
    """Runs one supervisor image: load, start or adopt, loop, and respawn itself on errors."""

    def __init__(self, args: argparse.Namespace, handoff: Optional[Dict[str, Any]] = None):
        self.args = args
        self.handoff = handoff if handoff is not None else take_handoff()
        self.config_path = os.path.abspath(args.config)

    def run(self) -> int:
        handoff = self.handoff
        try:
            config_text = handoff["config_text"] if handoff else read_config_text(self.args.config)
            config = parse_config(config_text, self.args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        settings = config.supervisor
        problems = output_problems(config, self.args.events)
        if problems:
            print(ConfigError(problems), file=sys.stderr)
            return EXIT_USAGE
        configure_logging(self.args.log_level or settings.log_level,
                          self.args.log_format or settings.log_format, settings.log_file,
                          colour=not self.args.no_color)
        events = EventStream(self.args.events or settings.events_file)
        manager = ServiceManager(config, events, config_text=config_text)
        manager.processes.raise_open_files_limit(handoff.get("services_open_files")
                                                 if handoff else None)
        manager.allow_fault_injection = self.args.allow_fault_injection
        history: List[float] = handoff["respawn_history"] if handoff else []
        respawn_count: int = handoff["respawn_count"] if handoff else 0
        parent_pid = handoff["parent_pid"] if handoff else (
            os.getppid() if self.args.exit_with_parent else None)
        manager.state_file = manager.state_path()
        recovered: Dict[str, Set[int]] = {}
        try:
            if handoff is None:
                recovered = manager.clean_up_after_a_crash()
            manager.open_control(handoff["control"] if handoff else None)
        except (ControlError, OSError) as exc:
            if handoff is None:
                log("error", "cannot start: %s" % exc)
                return EXIT_FAILURE
            # services were handed over: supervising them matters more than being reachable
            log("error", "control socket lost across the re-exec: %s" % exc)
        try:
            manager.start(handoff, respawn_count=respawn_count, config_path=self.config_path,
                          recovered=recovered)
        except StartRefused as exc:
            log("error", "cannot start: %s" % exc)
            manager.close()
            return EXIT_USAGE
        if parent_pid is not None:
            manager.watch_parent(parent_pid)
        while True:
            try:
                manager.run_monitoring()
                break
            except ReexecRequested:
                log("info", "re-executing on request")
                self._reexec(manager, history, respawn_count + 1, parent_pid)
            except Exception as exc:  # noqa: BLE001 - any bug in the loop is what this is for
                log("error", "unexpected error in the main loop:\n" + _traceback())
                now = time.monotonic()
                limits = settings.self_respawn
                history = [t for t in history if now - t < limits.window] + [now]
                if manager.shutting_down or not limits.enabled or len(history) > limits.max:
                    why = "main loop failures: %d within %gs" % (len(history), limits.window)
                    log("error", "not respawning (%s); stopping everything" % why)
                    self._stop_after_failure(manager)
                    manager.exit_reason = why
                    break
                events.emit("self_respawn", None, reason="%s: %s" % (type(exc).__name__, exc),
                            count=respawn_count + 1)
                self._reexec(manager, history, respawn_count + 1, parent_pid)
        log("info" if manager.exit_code == EXIT_OK else "error", "exiting with code %d%s" % (
            manager.exit_code, " (%s)" % manager.exit_reason if manager.exit_reason else ""))
        events.emit("supervisor_exiting", None, code=manager.exit_code)
        manager.close()
        return manager.exit_code

    def _reexec(self, manager: ServiceManager, history: List[float], respawn_count: int,
                parent_pid: Optional[int]) -> None:
        block_signals()
        if not manager.processes.exec_keeps_children:
            raise self._restart_in_process(manager, history, respawn_count, parent_pid)
        state = manager.handoff_state(history, parent_pid)
        state["respawn_count"] = respawn_count
        state["services_open_files"] = manager.processes.services_open_files
        path = write_handoff(state)
        manager.close(for_exec=True)
        try:
            respawn_self()
        except OSError as exc:
            os.environ.pop(HANDOFF_ENV, None)
            os.unlink(path)
            log("error", "cannot re-execute %s: %s" % (sys.executable, exc))
            manager.kill_everything()
            sys.exit(EXIT_FAILURE)

    @staticmethod
    def _restart_in_process(manager: ServiceManager, history: List[float], respawn_count: int,
                            parent_pid: Optional[int]) -> RestartInProcess:
        """The re-exec where exec cannot keep the services (Windows): its emulation starts a
        new process, which cannot inherit them (their job objects close with this one) and
        which our parent would not be waiting on. So this image kills its services, keeping
        the PID, the control socket and the respawn history, and a fresh image started in
        this process starts the services again."""
        manager.close_pipes()
        state = manager.handoff_state(history, parent_pid)
        state["respawn_count"] = respawn_count
        state["services_open_files"] = manager.processes.services_open_files
        manager.kill_everything()
        manager.close(for_exec=True)
        log("warning", "services cannot outlive a re-exec on this OS: they are started again")
        return RestartInProcess(state)

    @staticmethod
    def _stop_after_failure(manager: ServiceManager) -> None:
        """Stop every service gracefully, going on after a fault (one more fault must not cost
        the services their stop); only a loop that keeps failing gets brute force."""
        faults = 0
        while True:
            try:
                manager.shutdown(EXIT_FAILURE)
                manager.run_monitoring()
                break
            except Exception:  # noqa: BLE001 - the stop goes on, or falls back to brute force
                faults += 1
                log("error", "unexpected error while stopping:\n" + _traceback())
                if faults > FAULTS_WHILE_STOPPING:
                    log("error", "cannot stop services gracefully (%d faults); killing them"
                        % faults)
                    manager.kill_everything()
                    break
        manager.exit_code = EXIT_FAILURE


# --------------------------------------------------------------------------- CLI

# Each subcommand: what it does and a one-line example, as its --help shows them.
COMMANDS = {
    "run": ("load the config and supervise its services",
            "supervisor run -c services.yaml --events events.jsonl"),
    "check": ("validate the config: exit 0 (warnings do not fail it) or 2 with every error",
              "supervisor check -c services.yaml"),
    "status": ("show the services of the running supervisor", "supervisor status web --json"),
    "start": ("start services (names, or all)", "supervisor start web worker"),
    "stop": ("stop services (names, or all)", "supervisor stop all"),
    "restart": ("stop services, then start them (names, or all)", "supervisor restart web"),
    "reload": ("re-read the config and apply only what changed", "supervisor reload"),
    "reexec": ("re-execute the supervisor; services keep running", "supervisor reexec"),
    "shutdown": ("stop every service and the supervisor", "supervisor shutdown"),
    "logs": ("a service's recent output, or without NAME the supervisor's own log",
             "supervisor logs web -n 50 -f"),
    "signal": ("send a signal to a service's main process", "supervisor signal web SIGHUP"),
}
EXIT_CODES_AND_SIGNALS = """\
exit codes:
  0  success; for run, a clean shutdown
  1  runtime failure (run: e.g. too many self-respawns; a command the supervisor refused)
  2  bad config or usage
  3  no running supervisor answers on the control socket

signals to a running supervisor:
  SIGTERM, SIGINT  shut down gracefully (a second SIGINT kills every service at once)
  SIGHUP           reload the config
  SIGUSR2          re-execute the supervisor; services keep running
  Windows: Ctrl+C and Ctrl+Break shut down gracefully"""


def _add_location_options(parser: argparse.ArgumentParser, command: Optional[str]) -> None:
    """-c and --socket, accepted before and after the subcommand: after it they only
    override (argparse would otherwise reset what was given before)."""
    default = (lambda value: argparse.SUPPRESS) if command else (lambda value: value)
    parser.add_argument("-c", "--config", default=default("services.yaml"), metavar="FILE",
                        help="config file (default: ./services.yaml)")
    if command not in ("run", "check"):
        parser.add_argument("--socket", default=default(None), metavar="PATH",
                            help="control socket (default: the config's control_socket, or "
                            "the default socket of the config)")


def _add_command_options(command: str, parser: argparse.ArgumentParser) -> None:
    if command == "run":
        parser.add_argument("--events", metavar="FILE",
                            help="append the JSON-lines event stream to FILE ('-' = stdout)")
        parser.add_argument("--log-level", choices=sorted(LOG_LEVELS),
                            help="overrides supervisor.log_level")
        parser.add_argument("--log-format", choices=["text", "json"],
                            help="overrides supervisor.log_format")
        parser.add_argument("--no-color", action="store_true",
                            help="no colours in the log, even on a terminal (so does NO_COLOR)")
        parser.add_argument("--exit-with-parent", action="store_true",
                            help="shut down when the process that started the supervisor dies")
        parser.add_argument("--allow-fault-injection", action="store_true",
                            help="SIGUSR1 raises inside the main loop (to test self-respawn)")
    elif command == "status":
        parser.add_argument("names", nargs="*", metavar="NAME", help="default: every service")
        parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    elif command in ("start", "stop", "restart"):
        parser.add_argument("names", nargs="+", metavar="NAME", help="a service, or all")
    elif command == "logs":
        parser.add_argument("name", nargs="?", metavar="NAME",
                            help="a service (default: the supervisor's own log)")
        parser.add_argument("-n", "--lines", type=int, default=LOG_TAIL_LINES, metavar="N",
                            help="how many recent lines (default: %d)" % LOG_TAIL_LINES)
        parser.add_argument("-f", "--follow", action="store_true",
                            help="then print new lines as they come, until Ctrl+C")
    elif command == "signal":
        parser.add_argument("name", metavar="NAME", help="the service")
        parser.add_argument("signal", metavar="SIG", help="e.g. SIGHUP, HUP or 1")


def _help_formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's formatter, told the terminal's width. Left to find it, argparse imports
    shutil (and with it bz2, lzma, fnmatch) at every add_argument: 2 ms of every start."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdecimal():
        width = int(columns)
    else:
        try:
            width = os.get_terminal_size().columns  # stdout's, as shutil asks
        except (OSError, ValueError):
            width = 80
    return argparse.RawDescriptionHelpFormatter(prog, width=width - 2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supervisor", description="A compact process supervisor.",
        epilog=EXIT_CODES_AND_SIGNALS, formatter_class=_help_formatter)
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    _add_location_options(parser, None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name, (summary, example) in COMMANDS.items():
        command = commands.add_parser(
            name, help=summary, description=summary, epilog="example: " + example,
            formatter_class=_help_formatter)
        _add_location_options(command, name)
        _add_command_options(name, command)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """The command line."""
    args = build_parser().parse_args(argv)
    if args.command == "check":
        try:
            text = read_config_text(args.config)
            config = parse_config(text, args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        problems = output_problems(config, None)  # check takes no --events
        if problems:
            print(ConfigError(problems), file=sys.stderr)
            return EXIT_USAGE
        print("%s: OK (%d services)" % (args.config, len(config.services)))
        for warning in config_warnings(config, text):
            print(warning, file=sys.stderr)
        return EXIT_OK
    if args.command == "run":
        handoff = None
        while True:
            try:
                return Runner(args, handoff).run()
            except RestartInProcess as restart:
                handoff = restart.state
    return control_command(args)


def command_line() -> None:
    """The program (this script, its import, the console script): main(), then exit at once.
    By then the services are gone and what the supervisor writes is flushed (or was never
    buffered): tearing the interpreter down, some 20 ms for its 150 modules, would only keep
    whoever waits for the exit waiting."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed, or None (no console)
            stream.flush()
    os._exit(code)


def control_command(args: argparse.Namespace) -> int:
    """Send one command to the running supervisor and print what it answers."""
    path = args.socket
    if path is None:
        try:
            path = control_socket_path(load_config(args.config))
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        if path is None:
            print("%s: supervisor.control_socket is false (no control socket), and no --socket "
                  "was given" % args.config, file=sys.stderr)
            return EXIT_UNREACHABLE
    request = {"cmd": args.command, "args": _request_args(args)}
    try:
        reply = control_request(path, request, more=_print_lines if args.command == "logs"
                                else None)
    except Unreachable as exc:
        print("cannot reach a running supervisor: %s" % exc, file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:  # the way to stop `logs -f`
        return EXIT_OK
    if not reply.get("ok"):
        print("error: %s" % reply.get("error"), file=sys.stderr)
        return EXIT_USAGE if "unknown service" in str(reply.get("error")) else EXIT_FAILURE
    result: Any = reply.get("result")
    if args.command == "status" and not args.json:
        print(format_status(result))
    elif args.command == "status":
        print(json.dumps(result, indent=2))
    elif isinstance(result, dict):
        for key, value in result.items():
            print("%s: %s" % (key, ", ".join(value) if isinstance(value, list) else value))
    elif args.command != "logs":
        print(result)
    return EXIT_OK


def _request_args(args: argparse.Namespace) -> Dict[str, Any]:
    if args.command == "logs":
        return {"names": [args.name] if args.name else [], "lines": args.lines,
                "follow": args.follow}
    if args.command == "signal":
        return {"names": [args.name], "signal": args.signal}
    return {"names": getattr(args, "names", [])}


def _print_lines(reply: Dict[str, Any]) -> None:
    """Print the lines of a `logs` reply as they come."""
    if reply.get("ok"):
        sys.stdout.write("".join(line + "\n" for line in reply.get("result") or ()))
        sys.stdout.flush()


def format_status(rows: List[Dict[str, Any]]) -> str:
    """The ``status`` table: one line per service."""
    def uptime(seconds: Optional[float]) -> str:
        if seconds is None:
            return "-"
        minutes, secs = divmod(int(seconds), 60)
        hours, minutes = divmod(minutes, 60)
        return "%d:%02d:%02d" % (hours, minutes, secs)

    def last_exit(info: Optional[Dict[str, Any]]) -> str:
        if not info:
            return "-"
        return info["signal"] or "exit %s" % info["returncode"]

    header = ["NAME", "STATE", "PID", "PROCS", "UPTIME", "RESTARTS", "LAST EXIT", "RSS", "CPU"]
    table = [header] + [[
        row["name"], row["state"], str(row["pid"] or "-"), str(len(row["processes"])),
        uptime(row["uptime"]),
        str(row["restarts"]), last_exit(row["last_exit"]),
        "%.1fM" % (row["rss"] / 1e6) if "rss" in row else "-",
        "%.2fs" % row["cpu"] if "cpu" in row else "-"] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in table)


if __name__ == "__main__":
    command_line()
