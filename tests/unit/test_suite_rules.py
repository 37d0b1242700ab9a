"""Rules that keep tests from silently dropping out of a run: layer markers, the pull suite's
marker and CI failures for missing tools, one home for tool versions, a default timeout.

The first ones run pytest itself (a subprocess, on throwaway test files or one pull test), since
what they check is how a pytest run collects and reports.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PYTEST_OPTIONS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
    "ini_options"
]


def _pytest(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        # Third-party plugins (hypothesis, schemathesis, ...) are not needed here and slow to load.
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})},
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _suite(tmp_path: Path, modules: dict[str, str]) -> Path:
    """A throwaway suite with this project's root conftest and registered markers."""
    markers = "\n".join(f"    {m}" for m in PYTEST_OPTIONS["markers"])
    (tmp_path / "pytest.ini").write_text(
        f"[pytest]\naddopts = --strict-markers\nmarkers =\n{markers}\n", encoding="utf-8"
    )
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    for name, text in modules.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


MARKED = "import pytest\npytestmark = pytest.mark.unit\ndef test_marked(): pass\n"
UNMARKED = "def test_forgotten(): pass\n"


def test_an_unmarked_module_fails_the_run_even_when_deselected(tmp_path: Path) -> None:
    suite = _suite(tmp_path, {"test_marked.py": MARKED, "test_unmarked.py": UNMARKED})
    for selection in ([], ["-m", "unit"]):
        code, out = _pytest("-q", *selection, cwd=suite)
        assert code == pytest.ExitCode.USAGE_ERROR, out
        named = out.split("without a layer marker")[-1]
        assert "test_unmarked.py" in named, out
        assert "test_marked.py" not in named, out


def test_marked_modules_run(tmp_path: Path) -> None:
    suite = _suite(tmp_path, {"test_marked.py": MARKED})
    code, out = _pytest("-q", cwd=suite)
    assert code == pytest.ExitCode.OK, out


def test_every_module_of_the_project_has_a_layer() -> None:
    """What the hook enforces, read from the files: a module-level marker or a conftest's."""
    by_conftest = {"cluster"}  # tests/cluster/conftest.py marks every test in its folder
    layer = re.compile(r"^pytestmark = .*pytest\.mark\.(unit|runtime|cluster|e2e|image)\b", re.M)
    missing = [
        path.relative_to(ROOT).as_posix()
        for path in sorted((ROOT / "tests").rglob("test_*.py"))
        if path.parent.name not in by_conftest and not layer.search(path.read_text())
    ]
    assert missing == []


def test_pull_suite_has_its_own_marker() -> None:
    assert any(m.startswith("pull:") for m in PYTEST_OPTIONS["markers"])
    code, out = _pytest("--collect-only", "-q", "-m", "not pull", "tests/pull", cwd=ROOT)
    assert code == pytest.ExitCode.NO_TESTS_COLLECTED, out
    code, out = _pytest("--collect-only", "-q", "-m", "pull", "tests/pull", cwd=ROOT)
    assert code == pytest.ExitCode.OK, out
    assert re.search(r"^\d+ tests collected", out, re.M), out


NEEDS_REGISTRY = """import pytest
pytestmark = pytest.mark.runtime
def test_needs_registry(oci_registry): pass
"""


@pytest.mark.parametrize(("ci", "outcome"), [("", "1 skipped"), ("true", "1 error")])
def test_a_missing_registry_skips_locally_and_fails_under_ci(
    tmp_path: Path, ci: str, outcome: str
) -> None:
    """The project's pull conftest, an empty binary cache (a machine where `make setup` did not
    build the registry) and a throwaway test that needs the registry."""
    suite = _suite(tmp_path, {})
    (suite / "conftest.py").unlink()
    pull = suite / "tests" / "pull"
    pull.mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "conftest.py", suite / "tests" / "conftest.py")
    shutil.copy(ROOT / "tests" / "pull" / "conftest.py", pull / "conftest.py")
    (pull / "__init__.py").write_text("", encoding="utf-8")
    (pull / "test_needs_registry.py").write_text(NEEDS_REGISTRY, encoding="utf-8")
    (suite / "hack").mkdir()
    shutil.copy(ROOT / "hack" / "pull-versions.sh", suite / "hack" / "pull-versions.sh")
    (suite / "cache").mkdir()
    env = {"SLM_CACHE_DIR": str(suite / "cache"), "CI": ci}
    code, out = _pytest("-q", "-rA", "tests", cwd=suite, env=env)
    assert outcome in out, out
    if ci:
        assert code == pytest.ExitCode.TESTS_FAILED, out
        assert "CI is set" in out, out
        assert "registry" in out, out
    else:
        assert code == pytest.ExitCode.OK, out


def test_pull_tool_versions_live_in_one_file() -> None:
    versions = (ROOT / "hack" / "pull-versions.sh").read_text()
    pinned = dict(re.findall(r"^([A-Z0-9_]+)=(v\S+)$", versions, re.M))
    assert set(pinned) == {"REGISTRY_VERSION", "ORAS_VERSION"}
    setup = (ROOT / "hack" / "setup.d" / "30-pull.sh").read_text()
    assert "pull-versions.sh" in setup
    assert not re.search(r"^\s*(REGISTRY|ORAS)_VERSION=", setup, re.M), "pinned twice"
    for text in (setup, (ROOT / "tests" / "pull" / "conftest.py").read_text()):
        for version in pinned.values():
            assert version not in text, f"{version} is written outside hack/pull-versions.sh"


def test_a_hung_test_times_out() -> None:
    assert int(PYTEST_OPTIONS["timeout"]) >= 600
