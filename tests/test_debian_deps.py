"""`make test` sets a fresh Debian machine up itself: scripts/debian-deps asks
apt-get for exactly the packages that are missing (as root), or names them in
one line and exits 2 before any test runs (not root). dpkg-query and apt-get
are stand-ins on PATH that answer from a list and record what they were asked.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "debian-deps"
LIST = ROOT / "scripts" / "debian-packages.txt"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]

FAKE_DPKG_QUERY = """#!/bin/sh
# dpkg-query -W -f=FORMAT PKG...: "PKG install ok installed" for those in $FAKE_INSTALLED.
shift 2
status=0
for pkg in "$@"; do
  if printf ' %s ' "$FAKE_INSTALLED" | grep -q " $pkg "; then
    echo "$pkg install ok installed"
  else
    echo "dpkg-query: no packages found matching $pkg" >&2; status=1
  fi
done
exit $status
"""
FAKE_APT_GET = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
"""


def listed(*targets: str) -> list[str]:
    """The packages scripts/debian-packages.txt names for these targets, in order."""
    found = []
    for line in LIST.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[1] in targets:
            found.append(words[0])
    return found


class Machine:
    """A PATH with stand-in dpkg-query and apt-get, in a folder anyone can read
    (so that the script can run as nobody too)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log = folder / "apt-get.log"
        for name, text in (("dpkg-query", FAKE_DPKG_QUERY), ("apt-get", FAKE_APT_GET)):
            (folder / name).write_text(text)
            (folder / name).chmod(0o755)
        self.log.touch()
        self.log.chmod(0o666)

    def run(
        self,
        argv: list[str],
        installed: list[str],
        python: str = sys.executable,
        npm: str = "/bin/false",
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{self.folder}:{os.environ['PATH']}",
            "FAKE_INSTALLED": " ".join(installed),
            "FAKE_LOG": str(self.log),
            "PYTHON": python,
            "NPM": npm,  # no npm of its own unless a test says so
            "HOME": str(self.folder),
        }
        return subprocess.run(
            argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
        )  # fmt: skip

    def asked(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def machine() -> Iterator[Machine]:
    folder = Path(tempfile.mkdtemp(prefix="debian-deps-"))
    folder.chmod(0o755)
    yield Machine(folder)
    shutil.rmtree(folder)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="installs are asked for as root only")


def as_nobody(argv: list[str]) -> list[str]:
    return [*NOBODY, *argv] if os.geteuid() == 0 else argv


@needs_root
def test_as_root_it_asks_apt_get_for_exactly_the_missing_packages(machine):
    everything = listed("run", "test")
    missing = ["chromium", "nginx", "hyperfine"]
    result = machine.run([str(SCRIPT), "test"], [p for p in everything if p not in missing])
    assert result.returncode == 0, result.stderr
    assert machine.asked() == [
        "update -qq",
        "install -y -qq --no-install-recommends " + " ".join(missing),
    ]
    assert result.stderr == f"withcache: installing Debian packages: {' '.join(missing)}\n"


@needs_root
def test_nothing_missing_asks_nothing_and_says_nothing(machine):
    result = machine.run([str(SCRIPT), "test"], listed("run", "test"))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert machine.asked() == []


@needs_root
def test_run_needs_only_the_run_packages(machine):
    result = machine.run([str(SCRIPT), "run"], [], python="/bin/false")
    assert result.returncode == 0, result.stderr
    assert machine.asked()[1].endswith("--no-install-recommends " + " ".join(listed("run")))
    assert "chromium" not in machine.asked()[1]


@needs_root
def test_python3_venv_is_asked_for_only_when_ensurepip_is_missing(machine):
    others = [p for p in listed("run", "test") if p != "python3-venv"]
    assert machine.run([str(SCRIPT), "test"], others).returncode == 0
    assert machine.asked() == []  # this Python has ensurepip: the package isn't needed
    assert machine.run([str(SCRIPT), "test"], others, python="/bin/false").returncode == 0
    assert machine.asked()[-1] == "install -y -qq --no-install-recommends python3-venv"


@needs_root
def test_npm_is_asked_for_only_when_no_npm_runs(machine):
    others = [p for p in listed("run", "test") if p != "npm"]
    assert machine.run([str(SCRIPT), "test"], others, npm=sys.executable).returncode == 0
    assert machine.asked() == []  # a Node with npm from elsewhere must not be replaced
    assert machine.run([str(SCRIPT), "test"], others).returncode == 0
    assert machine.asked()[-1] == "install -y -qq --no-install-recommends npm"


def test_not_root_it_names_the_missing_packages_in_one_line_and_exits_2(machine):
    missing = ["chromium", "docker-compose"]
    installed = [p for p in listed("run", "test") if p not in missing]
    result = machine.run(as_nobody([str(SCRIPT), "test"]), installed)
    assert result.returncode == 2
    assert result.stderr == (
        "withcache: missing Debian packages: chromium docker-compose "
        "(as root: apt-get install chromium docker-compose)\n"
    )
    assert machine.asked() == []


def test_make_test_stops_at_the_missing_packages_before_any_test_runs(machine):
    # As nobody, with nothing installed: `make test` must end at its first step.
    result = machine.run(as_nobody(["make", "--no-print-directory", "test"]), [], "/bin/false")
    assert result.returncode == 2
    first = result.stderr.splitlines()[0]
    named = first.removeprefix("withcache: missing Debian packages: ").split(" (")[0]
    assert named.split() == listed("run", "test")
    assert "pytest" not in result.stdout + result.stderr
    assert machine.asked() == []


def test_every_package_says_why_it_is_needed():
    for line in LIST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            _package, targets, why = re.fullmatch(r"(\S+)\s+(\S+)\s+#\s*(.+)", line).groups()
            assert targets in ("run", "test"), line
            assert len(why) > 10, line


def test_ci_only_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line and not line.startswith("#")]
    assert commands[-1] == "make test"
    assert "apt-get" not in ci
    assert "make test" in (ROOT / "README.md").read_text()
    assert os.stat(SCRIPT).st_mode & stat.S_IXOTH
