"""pytest hooks and fixtures: options, markers and fixtures wired to the plain classes.

Registered through ``pytest_supervisor.pytest_plugins``, so it is loaded exactly once
however the package itself was loaded. The plugin is loaded into every pytest run of an
environment that has it installed: what only a session that uses it needs (the harness, the
scenario machinery, reports) is imported when first used, so that a project that does not
use it pays next to nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple

import pytest

from pytest_supervisor import settings as settings_module
from pytest_supervisor.report import plugin as report_plugin
from pytest_supervisor.settings import PHASES, PluginSettings, Setting

if TYPE_CHECKING:
    from pytest_supervisor.dummy_command import DummyService
    from pytest_supervisor.factory import SupervisorFactory
    from pytest_supervisor.handle import SupervisorHandle

SETTINGS_KEY = pytest.StashKey[PluginSettings]()
# A test that asks for one of these, or has one of these markers, uses the plugin.
FIXTURES = frozenset((
    "supervisor_factory", "supervisor", "supervisor_config", "dummy_service", "stress_scale",
    "supervisor_target",
))
MARKERS = frozenset(("supervisor_config", report_plugin.MARKER))


class _Option(NamedTuple):
    flag: str  # on the command line
    ini: str  # in the ini file; also the option's dest
    keyword: str  # of settings.parse()
    description: str


_OPTIONS = (
    _Option(
        "--supervisor-cmd",
        "supervisor_cmd",
        "supervisor_cmd",
        "command that runs the supervisor under test, split like a shell would"
        " ('run -c CONFIG ...' is appended). Default: this distribution's supervisor.py.",
    ),
    _Option(
        "--supervisor-target",
        "supervisor_target",
        "target",
        "the supervisor under test: ours (default), supervisord, circus, s6, runit or command"
        " (your own, run with --supervisor-cmd), watched from outside; several, comma-separated,"
        " run each test once per target (a conformance table in the report).",
    ),
    _Option(
        "--supervisor-peer",
        "supervisor_peers",
        "peers",
        "where another target's program is, e.g. 'supervisord=/opt/sd/bin/supervisord,"
        "circus=/opt/circus/bin/circusd' (comma-separated). Default: found on PATH.",
    ),
    _Option(
        "--supervisor-report",
        "supervisor_report",
        "report_dir",
        "folder for the CI reports. Default: reports/ in the rootdir.",
    ),
    _Option(
        "--scenarios",
        "supervisor_scenarios",
        "scenarios_dir",
        "folder of YAML scenario files to collect. Default: scenarios/ in the rootdir.",
    ),
    _Option(
        "--phase",
        "supervisor_phase",
        "phase",
        f"run only tests marked with these phases ({', '.join(PHASES)}; comma-separated)."
        " Tests without a phase marker always run.",
    ),
    _Option(
        "--stress-scale",
        "supervisor_stress_scale",
        "stress_scale",
        "multiplier for the size and duration of stress tests. Default: 1.0.",
    ),
)

_MARKERS = (
    (
        "supervisor_config(config, **options): config (dict or path of a YAML file) and"
        " SupervisorFactory.spawn() options for the `supervisor` fixture"
    ),
    "unit: a unit-phase test (selected by --phase unit)",
    "integration: an integration-phase test (selected by --phase integration)",
    "stress: a stress-phase test (selected by --phase stress)",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("supervisor", "pytest-supervisor")
    for option in _OPTIONS:
        group.addoption(option.flag, dest=option.ini, default=None, help=option.description)
        parser.addini(option.ini, help=f"{option.description} (ini form of {option.flag})")
    report_plugin.add_options(parser, group)


def pytest_configure(config: pytest.Config) -> None:
    for marker in _MARKERS:
        config.addinivalue_line("markers", marker)
    raw = {option.keyword: _setting(config, option) for option in _OPTIONS}
    try:
        config.stash[SETTINGS_KEY] = settings_module.parse(config.rootpath, **raw)
    except settings_module.SettingsError as error:
        raise pytest.UsageError(f"pytest-supervisor: {error}") from None
    if raw["scenarios_dir"] is not None:
        _collect_scenarios_too(config, config.stash[SETTINGS_KEY].scenarios_dir)
    report_plugin.configure(
        config, config.stash[SETTINGS_KEY].report_dir, asked=raw["report_dir"] is not None
    )


def _collect_scenarios_too(config: pytest.Config, folder: Path) -> None:
    """A folder named with --scenarios is collected even when no test path includes it."""
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if folder.resolve() == path or path in folder.resolve().parents:
            return
    config.args.append(str(folder))


def pytest_report_header(config: pytest.Config) -> str | None:
    """Names the supervisor under test when one was named (a run that does not use the plugin
    prints nothing)."""
    command = get_settings(config).supervisor_cmd
    if command is None:
        return None
    return f"supervisor under test: {settings_module.format_command(command)}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(_uses_plugin(item) for item in items):
        _mark_used(config)
    settings = get_settings(config)
    if settings.phases is None:
        return
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        phases = {name for name in PHASES if item.get_closest_marker(name) is not None}
        (kept if settings.selects(phases) else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def _uses_plugin(item: pytest.Item) -> bool:
    fixtures = getattr(item, "fixturenames", ())  # scenario items ask for the fixtures too
    return bool(FIXTURES.intersection(fixtures)) or any(
        item.get_closest_marker(name) is not None for name in MARKERS
    )


def _mark_used(config: pytest.Config) -> None:
    """This run uses the plugin: its report is written."""
    config.stash[report_plugin.REPORTING_KEY].used = True


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """YAML scenario files in the scenarios folder (SPEC section 6) become test items."""
    settings = get_settings(parent.config)
    if file_path.suffix != ".yaml" or not _within(file_path, settings.scenarios_dir):
        return None
    from pytest_supervisor.scenarios.items import ScenarioFile

    return ScenarioFile.from_parent(
        parent, path=file_path, stress_scale=settings.stress_scale, targets=settings.targets
    )


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def get_settings(config: pytest.Config) -> PluginSettings:
    """The validated options of this run (for other plugins and scenario collection)."""
    return config.stash[SETTINGS_KEY]


def _setting(config: pytest.Config, option: _Option) -> Setting | None:
    """The option's raw value and its origin: the command line, else the ini file."""
    value = config.getoption(option.ini)
    if value is not None:
        return Setting(option.flag, value, "command line", config.invocation_params.dir)
    value = config.getini(option.ini)
    if value:
        inipath = config.inipath
        origin, base = (inipath.name, inipath.parent) if inipath else ("ini file", config.rootpath)
        return Setting(option.ini, value, origin, base)
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """With several --supervisor-target, a test that spawns supervisors runs on each."""
    targets = get_settings(metafunc.config).targets
    if len(targets) > 1 and "supervisor_target" in metafunc.fixturenames:
        metafunc.parametrize("supervisor_target", targets, indirect=True)


@pytest.fixture
def supervisor_target(request: pytest.FixtureRequest) -> str:
    """The supervisor this test runs on: ours, or a --supervisor-target."""
    param = getattr(request, "param", None)
    if param is not None:  # one of several targets: a cell of the conformance table
        from pytest_supervisor.targets import CONFORMANCE, conformance_case

        case = conformance_case(request.node.nodeid, param)
        request.node.user_properties.append((CONFORMANCE, {"case": case, "target": param}))
    chosen = param or getattr(request.node, "supervisor_target", None)
    return str(chosen or get_settings(request.config).targets[0])


@pytest.fixture
def supervisor_factory(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    supervisor_target: str,
) -> Iterator[SupervisorFactory]:
    """Spawns supervisors (``spawn(config, **options)``); all are torn down after the test."""
    from pytest_supervisor.errors import LaunchError, TeardownFailed
    from pytest_supervisor.factory import SupervisorFactory, default_supervisor_command

    _mark_used(request.config)
    settings = get_settings(request.config)
    command = settings.supervisor_cmd
    if command is None and supervisor_target == "ours":
        try:
            command = default_supervisor_command()
        except LaunchError as error:
            pytest.fail(str(error), pytrace=False)
    factory = SupervisorFactory(
        tmp_path_factory.mktemp("supervisor"),
        command=command,
        record=lambda name, value: request.node.user_properties.append((name, value)),
        unsupported=pytest.skip,
        target=supervisor_target,
        peers=settings.peers,
    )
    yield factory
    try:
        factory.close()
    except TeardownFailed as failed:
        pytest.fail(str(failed), pytrace=False)


@pytest.fixture
def supervisor_config() -> object:
    """The `supervisor` fixture's config when the test has no supervisor_config marker.

    Override it (in a conftest or test module) to build the config from other fixtures.
    """
    pytest.fail(
        "the `supervisor` fixture needs a config: mark the test with"
        " @pytest.mark.supervisor_config({...}) or define a `supervisor_config` fixture",
        pytrace=False,
    )


@pytest.fixture
def supervisor(
    request: pytest.FixtureRequest, supervisor_factory: SupervisorFactory
) -> SupervisorHandle:
    """A supervisor started on the config of ``@pytest.mark.supervisor_config(...)``."""
    from pytest_supervisor.errors import HarnessUsageError, SupervisorAssertionError

    marker = request.node.get_closest_marker("supervisor_config")
    if marker is None:
        return supervisor_factory.spawn(request.getfixturevalue("supervisor_config"))
    if len(marker.args) != 1:
        pytest.fail(
            f"@pytest.mark.supervisor_config takes one config (a dict or a path) and spawn"
            f" options as keywords; got {len(marker.args)} positional arguments",
            pytrace=False,
        )
    try:
        return supervisor_factory.spawn(marker.args[0], **marker.kwargs)
    except (TypeError, HarnessUsageError) as error:
        failure = f"@pytest.mark.supervisor_config: {error}"
    except SupervisorAssertionError as error:  # it did not start: its words, not our code
        failure = str(error)
    pytest.fail(failure, pytrace=False)


@pytest.fixture(scope="session")
def dummy_service() -> DummyService:
    """Builds commands for the dummy service: ``dummy_service(exit_after=1, exit_code=3)``."""
    from pytest_supervisor.dummy_command import DummyService
    from pytest_supervisor.errors import HarnessUsageError

    try:
        return DummyService.locate()
    except HarnessUsageError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def stress_scale(pytestconfig: pytest.Config) -> float:
    """The --stress-scale multiplier for stress test sizes and durations."""
    return get_settings(pytestconfig).stress_scale
