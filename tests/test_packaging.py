"""pytest-supervisor installed beside supervisord, whose package is importable as `supervisor`
too: into a fresh virtualenv, from a built wheel and as an editable install. Our `supervisor`
command, `python -m pytest_supervisor` and the plugin must work, and so must supervisord's
`import supervisor.options`. About 15 s: pip installs from its cache or a local index."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from process_helpers import ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="pip builds take minutes under wine"),
]

# What the distribution is built from (pyproject.toml names the rest).
SOURCES = ("pyproject.toml", "README.md", "supervisor.py", "pytest_supervisor", "dummy_services")

PLUGIN_TEST = """
    import sys

    from pytest_supervisor import default_supervisor_command

    SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


    def test_the_plugin_runs_our_supervisor(supervisor_factory):
        assert default_supervisor_command() == (sys.executable, {expected!r})
        handle = supervisor_factory.spawn(
            {{"services": {{"web": {{"command": SLEEPER, "restart": "always"}}}}}})
        handle.kill("web")
        handle.assert_respawned("web", within=10.0)
"""


def pip(*args, timeout=300):
    """The pip running these tests, installing into another environment with --python."""
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, "pip %s failed:\n%s" % (" ".join(args), result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project: building it writes build/ and *.egg-info beside its sources."""
    folder = tmp_path_factory.mktemp("project")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, folder / name)
    return folder


@pytest.fixture(scope="module")
def supervisord_wheel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("supervisord")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder),
         "supervisor"], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.skip("cannot download supervisord's package:\n" + result.stderr[-2000:])
    return next(folder.glob("supervisor-*"))


@pytest.fixture(scope="module")
def our_wheel(project, tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheel")
    pip("wheel", "-q", "--no-deps", "-w", str(folder), str(project))
    return next(folder.glob("pytest_supervisor-*.whl"))


def fresh_venv(folder: Path, *requirements: str) -> Path:
    """A virtualenv with ``requirements`` installed (and what they depend on)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True,
                   timeout=120)
    python = folder / "bin" / "python"
    pip("--python", str(python), "install", "-q", *requirements)
    return python


def run(*argv, cwd):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("install", ["wheel", "editable"])
def test_installs_and_works_beside_supervisord(install, project, our_wheel, supervisord_wheel,
                                               tmp_path):
    ours = ["-e", str(project)] if install == "editable" else [str(our_wheel)]
    python = fresh_venv(tmp_path / "venv", *ours, str(supervisord_wheel))
    work = tmp_path / "work"  # no supervisor.py here to import by accident
    work.mkdir()
    (work / "services.yaml").write_text("services:\n  web:\n    command: sleep 1\n")

    supervisord = run(str(python), "-c", "import supervisor.options, supervisor.supervisorctl;"
                      " print(supervisor.__file__)", cwd=work)
    assert supervisord.returncode == 0, supervisord.stderr
    assert Path(supervisord.stdout.strip()).parent.name == "supervisor"  # its package

    by_command = run(str(python.parent / "supervisor"), "check", cwd=work)
    assert by_command.returncode == 0, by_command.stderr
    assert by_command.stdout == "services.yaml: OK (1 services)\n"
    by_module = run(str(python), "-m", "pytest_supervisor", "check", cwd=work)
    assert by_module.returncode == 0, by_module.stderr
    assert by_module.stdout == by_command.stdout

    if install == "editable":
        expected = project / "supervisor.py"
    else:
        expected = Path(run(str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                            "'purelib'))", cwd=work).stdout.strip(),
                        "pytest_supervisor_standalone", "supervisor.py")
    (work / "test_plugin.py").write_text(textwrap.dedent(PLUGIN_TEST.format(
        expected=str(expected))))
    plugin = run(str(python), "-m", "pytest", "-p", "no:cacheprovider", cwd=work)
    assert plugin.returncode == 0, plugin.stdout[-3000:] + plugin.stderr[-3000:]
    assert "1 passed" in plugin.stdout


def test_the_wheel_holds_no_top_level_supervisor(our_wheel):
    """The wheel's files: supervisor.py only under a name of our own."""
    import zipfile

    names = set(zipfile.ZipFile(our_wheel).namelist())
    assert "pytest_supervisor_standalone/supervisor.py" in names
    assert "pytest_supervisor/__main__.py" in names
    top_level = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top_level == {"pytest_supervisor", "pytest_supervisor_standalone", "dummy_services"}


def test_without_our_module_a_checkout_s_supervisor_py_is_used(monkeypatch):
    """Run from a checkout on sys.path (not installed): the top-level supervisor.py."""
    from pytest_supervisor import factory

    def find_spec(name):
        if name.startswith("pytest_supervisor_standalone"):
            raise ModuleNotFoundError(name)
        return real_find_spec(name)

    real_find_spec = factory.importlib.util.find_spec
    monkeypatch.setattr(factory.importlib.util, "find_spec", find_spec)
    assert factory.default_supervisor_command() == (sys.executable, str(ROOT / "supervisor.py"))


def test_only_supervisord_s_package_is_named_for_what_it_is(monkeypatch, tmp_path):
    from pytest_supervisor import factory
    from pytest_supervisor.errors import LaunchError

    package = tmp_path / "supervisor"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "supervisor", raising=False)
    monkeypatch.setattr(factory, "INSTALLED_SUPERVISOR", "no_such_package.supervisor")
    with pytest.raises(LaunchError) as raised:
        factory.default_supervisor_command()
    assert str(raised.value) == (
        "cannot find the supervisor under test: pytest-supervisor is not installed here, and the"
        " importable 'supervisor' (%s) is a package (supervisord's?), not supervisor.py."
        " Install pytest-supervisor, or name one with --supervisor-cmd."
        % (package / "__init__.py"))
    monkeypatch.setattr(factory.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LaunchError, match="^cannot find the supervisor under test: no importable"
                       " module 'no_such_package.supervisor' or 'supervisor'. Install"):
        factory.default_supervisor_command()
