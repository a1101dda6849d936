"""The config loader: defaults, merging, and the exact words and line of every problem."""

import errno
import json
import os
import re
import signal
import sys
import textwrap

import pytest
import yaml

import supervisor as cfg

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True, params=["libyaml", "pure Python"])
def yaml_parser(request, monkeypatch):
    """Every test here runs with both parsers: libyaml's (the fast one, where PyYAML has it)
    and the pure-Python one (a PyYAML without libyaml; also what words a syntax error)."""
    if request.param == "pure Python":
        monkeypatch.setattr(cfg, "_FAST_LOADER", "SafeLoader")
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("this PyYAML has no libyaml")

DEMO = """\
supervisor:
  log_level: debug
  control_socket: /tmp/demo.sock
defaults:
  restart: always
  env: {PYTHONUNBUFFERED: 1}
services:
  db:
    command: python -m http.server 8000
    ready: {tcp: "127.0.0.1:8000", timeout: 5}
  web:
    command: [python, app.py]
    env: {PORT: 8080}
    restart: on-failure
    depends_on: [db]
    stdout: {file: web.log, max_bytes: 1000, backups: 2}
    stderr: null
    stop_signal: INT
    umask: "027"
  report:
    command: echo "it's done" | wc -c
    shell: true
    ready: {log: "^ready$"}
"""

SERVICE_KEYS = (
    "command, shell, cwd, env, restart, success_exit_codes, max_retries, restart_delay, "
    "backoff, reset_after, stop_signal, stop_timeout, kill_mode, ready, depends_on, stdout, "
    "stderr, autostart, umask, user"
)


def service(body: str, name: str = "web") -> str:
    """A one-service config; the first line of `body` is line 3 of the file."""
    return f"services:\n  {name}:\n" + textwrap.indent(textwrap.dedent(body), "    ")


def parse(text: str) -> cfg.Config:
    return cfg.parse_config(text, "services.yaml")


def problems(text: str) -> list:
    with pytest.raises(cfg.ConfigError) as caught:
        parse(text)
    return caught.value.problems


def problem(line, key, message) -> cfg.Problem:
    return cfg.Problem("services.yaml", line, key, message)


# -- what a good config becomes --


def test_demo_config_parses_with_spec_defaults():
    config = parse(DEMO)

    assert config.path == "services.yaml"
    assert config.supervisor == cfg.SupervisorSettings(
        log_level="debug", control_socket="/tmp/demo.sock"
    )
    assert list(config.services) == ["db", "web", "report"]
    assert config.services["db"] == cfg.ServiceConfig(
        name="db",
        command=("python", "-m", "http.server", "8000"),
        shell=False,
        cwd=None,
        env={"PYTHONUNBUFFERED": "1"},
        restart="always",
        success_exit_codes=frozenset({0}),
        max_retries=3,
        restart_delay=0.0,
        backoff=cfg.Backoff(factor=1.0, max_delay=60.0, jitter=0.0),
        reset_after=10.0,
        stop_signal="SIGTERM",
        stop_timeout=10.0,
        kill_mode="tree",
        ready=cfg.ReadySpec("tcp", "127.0.0.1:8000", 5.0),
        depends_on=(),
        stdout=cfg.OutputSpec("inherit"),
        stderr=cfg.OutputSpec("inherit"),
        autostart=True,
        umask=None,
        user=None,
    )
    assert cfg.service_lines(DEMO) == {"db": 8, "web": 11, "report": 20}
    web = config.services["web"]
    assert web.command == ("python", "app.py")
    assert web.depends_on == ("db",)
    assert web.stdout == cfg.OutputSpec("file", "web.log", max_bytes=1000, backups=2)
    assert web.stderr == cfg.OutputSpec("null")
    assert web.stop_signal == "SIGINT"
    assert web.umask == 0o027
    assert config.services["report"].ready == cfg.ReadySpec("log", "^ready$", 30.0)


def test_supervisor_settings_default_when_the_section_is_absent():
    settings = parse(service("command: [x]")).supervisor
    assert settings == cfg.SupervisorSettings()
    assert (settings.log_level, settings.log_format) == ("info", "text")
    assert settings.shutdown_timeout == 30.0
    assert settings.self_respawn == cfg.SelfRespawn(enabled=True, max=5, window=60.0)


def test_defaults_apply_under_each_services_own_keys_and_env_merges():
    config = parse(DEMO)

    assert config.services["db"].restart == "always"
    assert config.services["web"].restart == "on-failure"
    assert dict(config.services["web"].env) == {"PYTHONUNBUFFERED": "1", "PORT": "8080"}


def test_env_values_are_kept_as_written():
    config = parse(service("command: [x]\nenv: {PORT: 8080, MODE: 0755, DEBUG: yes}"))
    assert dict(config.services["web"].env) == {"PORT": "8080", "MODE": "0755", "DEBUG": "yes"}


def test_a_string_command_is_split_like_a_shell_and_kept_whole_with_shell_true():
    config = parse(DEMO)

    assert config.services["db"].command == ("python", "-m", "http.server", "8000")
    assert config.services["report"].command == ('echo "it\'s done" | wc -c',)
    quoted = parse(service("""command: 'prog --name "a b" c\\ d'"""))
    assert quoted.services["web"].command == ("prog", "--name", "a b", "c d")


def test_json_is_accepted():
    config = parse('{"services": {"a": {"command": ["x"], "restart": "never"}}}')
    assert config.services["a"].restart == "never"


def test_a_config_in_json_reads_as_the_same_config_in_yaml():
    as_json = json.dumps(yaml.safe_load(DEMO), indent=1)
    assert as_json.startswith("{")
    assert parse(as_json) == parse(DEMO)


def test_a_config_in_json_keeps_numbers_as_written_where_text_is_wanted():
    config = parse('{"services": {"web": {"command": ["x"], "stop_timeout": 1e3,'
                   ' "env": {"RATIO": 1.50, "PORT": 8080, "ON": true, "NAME": "a\\u00e9"}}}}')
    assert config.services["web"].stop_timeout == 1000.0  # a number in JSON (a string in YAML)
    assert dict(config.services["web"].env) == {
        "RATIO": "1.50", "PORT": "8080", "ON": "true", "NAME": "a\u00e9"}


def test_a_problem_in_a_json_config_is_told_with_its_line():
    text = '{\n "services": {\n  "web": {\n   "comand": ["x"]\n  }\n }\n}\n'
    assert list(map(str, problems(text))) == [
        "services.yaml:3: services.web: missing required key 'command'",
        "services.yaml:4: services.web.comand: unknown key (did you mean 'command'?)"]


def test_a_duplicate_key_in_a_json_config_is_told_with_both_lines():
    text = '{"services": {\n "web": {"command": ["x"]},\n "web": {"command": ["y"]}}}'
    assert list(map(str, problems(text))) == [
        "services.yaml:3: services.web: duplicate key (lines 2 and 3)"]


def test_a_json_config_needs_no_pyyaml_and_a_yaml_one_says_it_does(monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml: ImportError
    config = parse('{"services": {"a": {"command": ["x"]}}}')
    assert config.services["a"].command == ("x",)
    assert list(map(str, problems("services:\n  a: {command: [x]}\n"))) == [
        "services.yaml: reading YAML needs PyYAML (pip install PyYAML);"
        " a config in JSON does not"]
    assert list(map(str, problems('{"services": {"a": {"command": ["x"], "restart": 1}}}'))) == [
        "services.yaml: services.a.restart: expected one of always, on-failure, never; got 1"]


def test_the_same_service_compares_equal_and_a_changed_env_does_not():
    config, moved_config = parse(DEMO), parse("\n\n" + DEMO)
    first, moved = config.services["web"], moved_config.services["web"]
    changed = parse(DEMO.replace("PORT: 8080", "PORT: 8081")).services["web"]

    assert cfg.service_lines("\n\n" + DEMO)["web"] == cfg.service_lines(DEMO)["web"] + 2
    assert first == moved and hash(first) == hash(moved)  # the line is not compared
    assert first != changed


def test_umask_accepts_octal_strings_and_yaml_octal_numbers():
    assert parse(service("command: [x]\numask: 022")).services["web"].umask == 0o22
    assert parse(service("command: [x]\numask: '0o22'")).services["web"].umask == 0o22


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("TERM", "SIGTERM"),
        ("sigterm", "SIGTERM"),
        ("SIGTERM", "SIGTERM"),
        (15, "SIGTERM"),
        (" int ", "SIGINT"),
        ("SIGBREAK", "SIGBREAK"),
        ("KILL", "SIGKILL"),
        ("TREM", None),
        (True, None),
        (None, None),
        (0, None),
    ],
)
def test_canonical_signal_name(value, name):
    assert cfg.canonical_signal_name(value) == name


@pytest.mark.skipif(not hasattr(signal, "SIGIOT"), reason="SIGIOT is a POSIX alias")
def test_a_signal_alias_gets_its_canonical_name():
    assert cfg.canonical_signal_name("IOT") == "SIGABRT"


# -- how problems read --


def test_a_problem_reads_file_line_key_message():
    assert str(problem(7, "services.web.cwd", "bad")) == "services.yaml:7: services.web.cwd: bad"
    assert str(problem(None, "services", "bad")) == "services.yaml: services: bad"
    assert str(problem(3, "", "bad")) == "services.yaml:3: bad"
    error = cfg.ConfigError([problem(1, "a", "x"), problem(2, "b", "y")])
    assert str(error) == "services.yaml:1: a: x\nservices.yaml:2: b: y"


@pytest.mark.parametrize(
    ("body", "line", "key", "message"),
    [
        (
            "command: [x]\nrestrat: always",
            4,
            "services.web.restrat",
            "unknown key (did you mean 'restart'?)",
        ),
        (
            "command: [x]\nzzz: 1",
            4,
            "services.web.zzz",
            "unknown key; expected one of " + SERVICE_KEYS,
        ),
        (
            "command: [x]\nrestart: alway",
            4,
            "services.web.restart",
            "expected one of always, on-failure, never; got 'alway' (did you mean 'always'?)",
        ),
        (
            "command: [x]\nkill_mode: trees",
            4,
            "services.web.kill_mode",
            "expected one of tree, process; got 'trees' (did you mean 'tree'?)",
        ),
        (
            "command: [x]\nrestart_delay: abc",
            4,
            "services.web.restart_delay",
            "expected a number, got 'abc'",
        ),
        (
            "command: [x]\nstop_timeout: true",
            4,
            "services.web.stop_timeout",
            "expected a number, got true",
        ),
        (
            "command: [x]\nreset_after: -1",
            4,
            "services.web.reset_after",
            "expected a number >= 0, got -1",
        ),
        (
            "command: [x]\nrestart_delay: .inf",
            4,
            "services.web.restart_delay",
            "expected a number >= 0, got inf",
        ),
        (
            "command: [x]\nmax_retries: -1",
            4,
            "services.web.max_retries",
            "expected an integer >= 0 or null, got -1",
        ),
        (
            "command: [x]\nmax_retries: 2.5",
            4,
            "services.web.max_retries",
            "expected an integer >= 0 or null, got 2.5",
        ),
        (
            "command: [x]\nbackoff:\n  factor: 0.5",
            5,
            "services.web.backoff.factor",
            "expected a number >= 1, got 0.5",
        ),
        (
            "command: [x]\nbackoff: {jitter: 1.5}",
            4,
            "services.web.backoff.jitter",
            "expected a number between 0 and 1, got 1.5",
        ),
        ("command: [x]\nbackoff: 2", 4, "services.web.backoff", "expected a mapping, got 2"),
        (
            "command: [x]\nstop_signal: SIGTREM",
            4,
            "services.web.stop_signal",
            "expected a signal name such as SIGTERM, got 'SIGTREM' (did you mean 'SIGTERM'?)",
        ),
        (
            "command: [x]\nstop_signal: TREM",
            4,
            "services.web.stop_signal",
            "expected a signal name such as SIGTERM, got 'TREM' (did you mean 'SIGTERM'?)",
        ),
        (
            "command: [x]\nsuccess_exit_codes: [0, 256]",
            4,
            "services.web.success_exit_codes[1]",
            "expected an integer 0..255, got 256",
        ),
        (
            "command: [x]\nsuccess_exit_codes: 0",
            4,
            "services.web.success_exit_codes",
            "expected a list of exit codes, got 0",
        ),
        (
            "command: [x]\nready: {tcp: localhost}",
            4,
            "services.web.ready.tcp",
            "expected 'HOST:PORT' with a port 1..65535, got 'localhost'",
        ),
        (
            "command: [x]\nready: {tcp: 'localhost:99999'}",
            4,
            "services.web.ready.tcp",
            "expected 'HOST:PORT' with a port 1..65535, got 'localhost:99999'",
        ),
        (
            "command: [x]\nready: {timeout: 5}",
            4,
            "services.web.ready",
            "expected exactly one of after, log, tcp, file; got none",
        ),
        (
            "command: [x]\nready: {log: up, file: /tmp/up}",
            4,
            "services.web.ready",
            "expected exactly one of after, log, tcp, file; got log, file",
        ),
        (
            "command: [x]\nready: {file: /tmp/up, timeout: 0}",
            4,
            "services.web.ready.timeout",
            "expected a number > 0, got 0",
        ),
        (
            "command: [x]\nready: {fiel: /tmp/up, log: up}",
            4,
            "services.web.ready.fiel",
            "unknown key (did you mean 'file'?)",
        ),
        (
            "command: [x]\nready: {after: soon}",
            4,
            "services.web.ready.after",
            "expected a number, got 'soon'",
        ),
        (
            "command: [x]\nready: {after: -1}",
            4,
            "services.web.ready.after",
            "expected a number >= 0, got -1",
        ),
        (
            "command: [x]\ndepends_on: [webb]",
            4,
            "services.web.depends_on[0]",
            "expected a defined service, got 'webb' (did you mean 'web'?)",
        ),
        (
            "command: [x]\ndepends_on: web",
            4,
            "services.web.depends_on",
            "expected a list of service names, got 'web'",
        ),
        (
            "command: [x]\ndepends_on: [web]",
            4,
            "services.web.depends_on",
            "dependency cycle web -> web",
        ),
        (
            "command: [x]\nstdout: inheirt",
            4,
            "services.web.stdout",
            (
                "expected inherit, null or {file: PATH, max_bytes: N, backups: K}; "
                "got 'inheirt' (did you mean 'inherit'?)"
            ),
        ),
        (
            "command: [x]\nstderr: {file: err.log, max_bytes: 0}",
            4,
            "services.web.stderr.max_bytes",
            "expected an integer >= 1, got 0",
        ),
        (
            "command: [x]\nstderr: {file: err.log, backups: -1}",
            4,
            "services.web.stderr.backups",
            "expected an integer >= 0, got -1",
        ),
        (
            "command: [x]\nstderr: {max_bytes: 10}",
            4,
            "services.web.stderr",
            "missing required key 'file'",
        ),
        (
            "command: [x]\numask: '999'",
            4,
            "services.web.umask",
            "expected an octal umask such as '022', got '999'",
        ),
        (
            "command: [x]\numask: 1000",
            4,
            "services.web.umask",
            "expected an octal umask such as '022', got 1000",
        ),
        (
            "command: [x]\nuser: 1000",
            4,
            "services.web.user",
            "expected a non-empty string, got 1000",
        ),
        ("command: [x]\ncwd: ''", 4, "services.web.cwd", "expected a non-empty string, got ''"),
        (
            "command: [x]\nshell: 'yes'",
            4,
            "services.web.shell",
            "expected true or false, got 'yes'",
        ),
        (
            "command: [x]\nenv: {A: {B: 1}}",
            4,
            "services.web.env.A",
            "expected a string, got {'B': 1}",
        ),
        ("command: [x]\nenv: {A: null}", 4, "services.web.env.A", "expected a string, got null"),
        (
            "command: [x]\nenv: {'A=B': x}",
            4,
            "services.web.env.A=B",
            "expected a variable name without '=', got 'A=B'",
        ),
        (
            "command: ''",
            3,
            "services.web.command",
            "expected a non-empty command (a string or a list of strings), got ''",
        ),
        ("command: []", 3, "services.web.command", "expected a non-empty command, got []"),
        ("command: [sleep, 10]", 3, "services.web.command[1]", "expected a string, got 10"),
        (
            "command: 'echo \"hi'",
            3,
            "services.web.command",
            "expected a command line shlex can split, got 'echo \"hi' (No closing quotation)",
        ),
        (
            "command: [sh, -c, x]\nshell: true",
            3,
            "services.web.command",
            "expected a single string with shell: true, got ['sh', '-c', 'x']",
        ),
        ("restart: never", 2, "services.web", "missing required key 'command'"),
    ],
)
def test_each_service_problem_has_its_words_and_line(body, line, key, message):
    assert problems(service(body)) == [problem(line, key, message)]


def test_a_bad_regex_reports_the_regex_error():
    with pytest.raises(re.error) as caught:
        re.compile("(")
    assert problems(service("command: [x]\nready: {log: '('}")) == [
        problem(
            4, "services.web.ready.log", f"expected a regular expression, got '(' ({caught.value})"
        )
    ]


WEB = service("command: [x]")


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        (
            "supervisor:\n  log_level: verbose\n" + WEB,
            2,
            "supervisor.log_level",
            "expected one of debug, info, warning, error; got 'verbose'",
        ),
        (
            "supervisor:\n  log_level: INFO\n" + WEB,
            2,
            "supervisor.log_level",
            "expected one of debug, info, warning, error; got 'INFO' (did you mean 'info'?)",
        ),
        (
            "supervisor: {log_format: yaml}\n" + WEB,
            1,
            "supervisor.log_format",
            "expected one of text, json; got 'yaml'",
        ),
        (
            "supervisor: {shutdown_timeout: 0}\n" + WEB,
            1,
            "supervisor.shutdown_timeout",
            "expected a number > 0, got 0",
        ),
        (
            "supervisor: {self_respawn: {max: -1}}\n" + WEB,
            1,
            "supervisor.self_respawn.max",
            "expected an integer >= 0, got -1",
        ),
        (
            "supervisor: {self_respawn: {windw: 5}}\n" + WEB,
            1,
            "supervisor.self_respawn.windw",
            "unknown key (did you mean 'window'?)",
        ),
        (
            "supervisor: {log_fil: x.log}\n" + WEB,
            1,
            "supervisor.log_fil",
            "unknown key (did you mean 'log_file'?)",
        ),
        ("sevices: {}\n" + WEB, 1, "sevices", "unknown key (did you mean 'services'?)"),
        ("supervisor: {}\n", None, "services", "at least one service is required"),
        ("services: {}\n", 1, "services", "at least one service is required"),
        ("services: [web]\n", 1, "services", "expected a mapping, got ['web']"),
        (
            service("command: [x]", name="my web"),
            2,
            "services",
            "expected a service name of letters, digits, '_', '.' or '-', got 'my web'",
        ),
        ("- a\n- b\n", 1, "", "expected a mapping with a 'services' key, got ['a', 'b']"),
        ("", None, "", "expected a mapping with a 'services' key, got an empty file"),
    ],
)
def test_each_file_and_supervisor_problem_has_its_words_and_line(text, line, key, message):
    assert problems(text) == [problem(line, key, message)]


def test_a_bad_default_is_reported_once_under_defaults():
    text = "defaults:\n  restart: sometimes\nservices:\n  a: {command: [x]}\n  b: {command: [y]}\n"
    assert problems(text) == [
        problem(2, "defaults.restart", "expected one of always, on-failure, never; got 'sometimes'")
    ]


def test_a_dependency_cycle_is_named_once():
    text = (
        "services:\n"
        "  a: {command: [x], depends_on: [b]}\n"
        "  b: {command: [x], depends_on: [c]}\n"
        "  c: {command: [x], depends_on: [a]}\n"
        "  d: {command: [x], depends_on: [a]}\n"
    )
    cycle = "dependency cycle a -> b -> c -> a"
    assert problems(text) == [problem(2, "services.a.depends_on", cycle)]


def test_duplicate_keys_name_both_lines():
    text = "services:\n  web: {command: [x]}\n  db: {command: [y]}\n  web: {command: [z]}\n"
    assert problems(text) == [problem(4, "services.web", "duplicate key (lines 2 and 4)")]
    nested = service("command: [x]\nrestart: always\nrestart: never")
    assert problems(nested) == [problem(5, "services.web.restart", "duplicate key (lines 4 and 5)")]


def test_a_yaml_syntax_error_reports_its_line_and_column():
    [found] = problems("services:\n  web:\n    command: [x\n    restart: never\n")
    assert (found.line, found.key) == (4, "")
    assert found.message.startswith("invalid YAML at column 12: while parsing a flow sequence, ")


def test_every_problem_in_a_file_is_reported_in_one_pass_in_line_order():
    text = (
        "supervisor:\n"
        "  log_level: loud\n"
        "services:\n"
        "  web:\n"
        "    command: [x]\n"
        "    depends_on: [db]\n"
        "    restart: alway\n"
        "    backoff: {factor: 0}\n"
        "  db:\n"
        "    command: [x]\n"
        "    depends_on: [web]\n"
        "    stop_signal: NOPE\n"
        "    colour: red\n"
    )
    assert problems(text) == [
        problem(
            2, "supervisor.log_level", "expected one of debug, info, warning, error; got 'loud'"
        ),
        problem(6, "services.web.depends_on", "dependency cycle web -> db -> web"),
        problem(
            7,
            "services.web.restart",
            "expected one of always, on-failure, never; got 'alway' (did you mean 'always'?)",
        ),
        problem(8, "services.web.backoff.factor", "expected a number >= 1, got 0"),
        problem(
            12, "services.db.stop_signal", "expected a signal name such as SIGTERM, got 'NOPE'"
        ),
        problem(13, "services.db.colour", "unknown key; expected one of " + SERVICE_KEYS),
    ]


# -- files --


def test_load_config_reads_the_file(tmp_path):
    path = tmp_path / "services.yaml"
    path.write_text(DEMO, encoding="utf-8")
    assert list(cfg.load_config(str(path)).services) == ["db", "web", "report"]


def test_a_missing_file_is_a_config_error_naming_it(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load_config(missing)
    reason = os.strerror(errno.ENOENT)
    assert str(caught.value) == f"{missing}: cannot read the config file: {reason}"


@pytest.mark.parametrize(
    "text",
    [
        "services: {web: {command: [x}}",
        "\x07",
        "- 1",
        service("command: 5\nready: {log: '['}"),
        "services:\n  a: {command: x, depends_on: [a], stdout: {file: 1}}\n  a: 1\n",
    ],
)
def test_error_text_is_never_a_traceback(text):
    with pytest.raises(cfg.ConfigError) as caught:
        parse(text)
    assert "Traceback" not in str(caught.value)
    assert all(line.startswith("services.yaml") for line in str(caught.value).splitlines())
