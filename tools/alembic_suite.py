"""Alembic's own test suite, with and without svcmig: svcmig's Alembic plugin must not change
how Alembic behaves for anyone else.

Downloads the sdist of the Alembic version installed here, runs its test suite twice from the
sdist's folder (which is what `import alembic` then finds) and compares every test's outcome:

- in a fresh venv holding only what the suite needs (SQLAlchemy and pytest at the versions
  installed here, Mako, typing_extensions, tzdata), and
- with this project's interpreter, where svcmig is installed and its `alembic.plugins` entry
  point loads the plugin into that same Alembic.

Prints both summaries and every test whose outcome differs; exits 1 when one does.

Usage: .venv/bin/python tools/alembic_suite.py [--workdir DIR]
(needs the package index for the sdist and the fresh venv; about a minute.)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import venv
import xml.etree.ElementTree as ElementTree
from importlib.metadata import version
from pathlib import Path

SUITE_NEEDS = ("mako", "typing_extensions", "tzdata")


def run(command: list[str], cwd: Path | None = None) -> None:
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def sdist(workdir: Path) -> Path:
    """Alembic's source tree at the installed version."""
    wanted = version("alembic")
    run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
         "--no-deps", f"alembic=={wanted}", "-d", str(workdir)])
    with tarfile.open(workdir / f"alembic-{wanted}.tar.gz") as archive:
        archive.extractall(workdir, filter="data")
    return workdir / f"alembic-{wanted}"


def plain_python(workdir: Path) -> Path:
    """A venv with only what Alembic's suite needs, at this environment's versions."""
    folder = workdir / "plain"
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", f"sqlalchemy=={version('sqlalchemy')}",
         f"pytest=={version('pytest')}", *SUITE_NEEDS])
    return python


def outcomes(python: Path, source: Path, name: str) -> dict[str, str]:
    """test id → passed / failed / error / skipped, from a JUnit report of the whole suite."""
    report = source.parent / f"{name}.xml"
    subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "--maxfail=100000", f"--junitxml={report}", "tests"], cwd=source,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found: dict[str, str] = {}
    for case in ElementTree.parse(report).iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
        found[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return found


def plugin_loads(python: Path, source: Path) -> bool:
    """Whether importing that Alembic from `source` loads svcmig's plugin into it."""
    probe = ("import alembic.script.base as base\n"
             "from migrations_runtime.alembic import plugin\n"
             "raise SystemExit(0 if getattr(base.Script, plugin._INSTALLED_FLAG, False) else 1)")
    return subprocess.run([str(python), "-c", probe], cwd=source).returncode == 0


def summary(found: dict[str, str]) -> str:
    counts = {kind: sum(1 for o in found.values() if o == kind)
              for kind in ("passed", "failure", "error", "skipped")}
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to put the sdist and the venv (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alembic_suite_") as temporary:
        workdir = args.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        source = sdist(workdir)
        without = outcomes(plain_python(workdir), source, "without_svcmig")
        if not plugin_loads(Path(sys.executable), source):
            print("svcmig's plugin does not load here: run with the project's venv "
                  "(`pip install -e .` first)", file=sys.stderr)
            return 2
        with_svcmig = outcomes(Path(sys.executable), source, "with_svcmig")
    print(f"Alembic {version('alembic')} test suite, SQLAlchemy {version('sqlalchemy')}")
    print(f"  without svcmig: {summary(without)}")
    print(f"  with svcmig:    {summary(with_svcmig)}")
    differ = sorted(test for test in without.keys() | with_svcmig.keys()
                    if without.get(test) != with_svcmig.get(test))
    for test in differ:
        print(f"  differs: {test}: {without.get(test)} without, {with_svcmig.get(test)} with")
    print("same outcome for every test" if not differ else f"{len(differ)} test(s) differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
