"""Findings → text for people, JSON for scripts, SARIF 2.1.0 for code scanning, and GitHub
workflow commands that annotate the pull request's diff."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from . import rules
from .findings import Finding, Severity

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
TOOL_NAME = "svcmig-lint"


def display_path(path: Path, root: Path) -> str:
    """The path relative to the project root (as CI annotations need), with / separators."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


class _Shown:
    """`display_path` for the findings of a run: the root is resolved once and each folder once
    (resolving a path costs several stat calls; a run has thousands of findings in a few
    folders); a file that is itself a symbolic link is resolved whole, as display_path does."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.folders: dict[Path, str | None] = {}

    def __call__(self, path: Path) -> str:
        name = path.name
        if name in ("", ".", "..") or os.path.islink(path):
            return display_path(path, self.root)
        folder = path.parent
        if folder not in self.folders:
            try:
                self.folders[folder] = folder.resolve().relative_to(self.root).as_posix()
            except ValueError:  # outside the root (the path itself may be the root)
                self.folders[folder] = None
        shown = self.folders[folder]
        if shown is None:
            return display_path(path, self.root)
        return name if shown == "." else f"{shown}/{name}"


def summary(findings: Sequence[Finding]) -> str:
    errors = sum(f.severity is Severity.ERROR for f in findings)
    return f"{errors} error(s), {len(findings) - errors} warning(s)"


def format_text(findings: Sequence[Finding], root: Path) -> str:
    shown = _Shown(root)
    lines: list[str] = []
    for f in findings:
        lines.append(f"{shown(f.path)}:{f.line}:{f.column} {f.severity.value} "
                     f"{f.rule.name} {f.message}")
        lines.append(f"  hint: {f.rule.hint}")
    lines.append(summary(findings))
    return "\n".join(lines)


def format_json(findings: Sequence[Finding], root: Path) -> str:
    shown = _Shown(root)
    return json.dumps([
        {"path": shown(f.path), "line": f.line, "column": f.column,
         "severity": f.severity.value, "rule": f.rule.name, "message": f.message,
         "hint": f.rule.hint}
        for f in findings
    ], indent=2)


def format_sarif(findings: Sequence[Finding], root: Path) -> str:
    shown = _Shown(root)
    index = {rule.name: i for i, rule in enumerate(rules.ALL_RULES)}
    driver = {
        "name": TOOL_NAME,
        "informationUri": "https://github.com/svcmig/svcmig/blob/main/docs/guard.md",
        "rules": [
            {"id": rule.name, "name": rule.name, "shortDescription": {"text": rule.doc},
             "help": {"text": rule.hint},
             "defaultConfiguration": {"level": rule.severity.value}}
            for rule in rules.ALL_RULES
        ],
    }
    results = [
        {"ruleId": f.rule.name, "ruleIndex": index[f.rule.name], "level": f.severity.value,
         "message": {"text": f"{f.message}. {f.rule.hint}"},
         "locations": [{"physicalLocation": {
             "artifactLocation": {"uri": shown(f.path), "uriBaseId": "%SRCROOT%"},
             "region": {"startLine": f.line, "startColumn": f.column}}}]}
        for f in findings
    ]
    log = {"$schema": SARIF_SCHEMA, "version": "2.1.0",
           "runs": [{"tool": {"driver": driver}, "results": results}]}
    return json.dumps(log, indent=2)


def _escape(value: str, *, property_value: bool = False) -> str:
    value = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property_value:
        value = value.replace(":", "%3A").replace(",", "%2C")
    return value


def format_github(findings: Sequence[Finding], root: Path) -> str:
    shown = _Shown(root)
    return "\n".join(
        f"::{f.severity.value} file={_escape(shown(f.path), property_value=True)},"
        f"line={f.line},col={f.column},title={_escape(f.rule.name, property_value=True)}::"
        f"{_escape(f'{f.message}. Hint: {f.rule.hint}')}"
        for f in findings
    )


FORMATTERS: dict[str, Callable[[Sequence[Finding], Path], str]] = {
    "text": format_text, "json": format_json, "sarif": format_sarif, "github": format_github,
}
