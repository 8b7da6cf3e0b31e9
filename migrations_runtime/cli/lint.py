"""`svcmig lint`: the CI guard's command line.

Exit codes: 0 no errors (warnings are printed; --strict fails on them), 1 errors,
2 usage errors or a file that does not parse.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..engine.discover import Service, discover_services, find_project_root
from ..engine.errors import SvcmigError
from ..engine.interrupts import InterruptLatch
from ..guard import rules
from ..guard.backfills import backfill_paths
from ..guard.findings import Finding, Severity
from ..guard.formatters import FORMATTERS
from ..guard.gitbase import diff_against
from ..guard.linter import Linter, is_revision_file
from .common import EXIT_PROBLEM, EXIT_USAGE, fail, stop_on_sigterm

DEFAULT_PG_VERSION = 16


def _all_revision_files(services: list[Service]) -> list[Path]:
    """Every revision file, then every backfill file, of every service."""
    return [path for service in services for path in sorted(service.migrations_dir.iterdir())
            if is_revision_file(path)] + [path for service in services
                                          for path in backfill_paths(service)]


def _expand(paths: tuple[Path, ...], services: list[Service]) -> list[Path]:
    """Files as given; folders become the revision and backfill files of the service folders
    inside them."""
    everything = _all_revision_files(services)
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            folder = path.resolve()
            found.extend(p for p in everything
                         if p.resolve() == folder or folder in p.resolve().parents)
        else:
            found.append(path)
    return found


def _under(path: Path, roots: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved == r or r in resolved.parents for r in roots)


def exit_code(findings: list[Finding], strict: bool) -> int:
    if any(f.rule is rules.PARSE_ERROR for f in findings):
        return EXIT_USAGE
    if any(f.severity is Severity.ERROR for f in findings):
        return EXIT_PROBLEM
    if strict and findings:
        return EXIT_PROBLEM
    return 0


@click.command("lint")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--base", metavar="GIT_REV",
              help="Lint revisions and backfills changed since GIT_REV; edited, renamed, "
              "deleted or out-of-order revisions and edited or renamed backfills are errors.")
@click.option("--all", "lint_all", is_flag=True,
              help="Lint every revision and backfill of every service.")
@click.option("--format", "output_format", type=click.Choice(sorted(FORMATTERS)),
              default="text", show_default=True)
@click.option("--pg-version", type=click.IntRange(10, 99), default=DEFAULT_PG_VERSION,
              show_default=True, help="PostgreSQL major version the migrations run on.")
@click.option("--strict", is_flag=True, help="Fail (exit 1) on warnings too.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, metavar="N",
              help="Lint services in up to N processes (1: in this one). Default: one per CPU "
              "once there are 500 revision files to read, else 1.")
@click.option("--trace", is_flag=True,
              help="Also run the linted revisions on a throwaway Postgres and report the locks, "
              "rewrites and scans observed (docs/guard.md, trace mode).")
@click.option("--database-url", envvar=None, default=None,
              help="With --trace: a server to trace on, through any database on it; a "
              "throwaway database is created there and dropped. Default: the project's "
              "embedded Postgres. $DATABASE_URL is never used.")
def lint(paths: tuple[Path, ...], base: str | None, lint_all: bool, output_format: str,
         pg_version: int, strict: bool, jobs: int | None, trace: bool,
         database_url: str | None) -> None:
    """Check migration files for locking, rewriting, destructive or cross-service SQL.

    With no PATHS and no --base, every revision and backfill is linted (same as --all).
    """
    if database_url and not trace:
        raise click.UsageError("--database-url is for --trace")
    if lint_all and (base or paths):
        raise click.UsageError("--all lints everything; do not combine it with PATHS or --base")
    stop_on_sigterm()
    try:
        with InterruptLatch() as latch:
            root = find_project_root()
            services = discover_services(root)
            findings: list[Finding] = []
            if base:
                diff = diff_against(root, base)
                targets = diff.changed
                findings.extend(diff.findings)
                if paths:
                    roots = [p.resolve() for p in paths]
                    targets = [p for p in targets if _under(p, roots)]
                    findings = [f for f in findings if _under(f.path, roots)]
            elif paths:
                targets = _expand(paths, services)
            else:
                targets = _all_revision_files(services)
            findings.extend(Linter(services, pg_version, workers=jobs).lint_paths(targets))
            if trace and not any(f.rule is rules.PARSE_ERROR for f in findings):
                from ..tools.trace import trace as run_trace

                findings.extend(run_trace(root, targets, database_url).findings)
        if latch.requested:  # a Python revision swallowed the KeyboardInterrupt
            raise KeyboardInterrupt
    except SvcmigError as err:  # the guard could not run: 2, apart from what it finds (1)
        fail(str(err), EXIT_USAGE)
    findings.sort(key=Finding.sort_key)
    output = FORMATTERS[output_format](findings, root)
    if output:
        click.echo(output)
    sys.exit(exit_code(findings, strict))
