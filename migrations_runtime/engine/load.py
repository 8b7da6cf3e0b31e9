"""Step 2 of the flow: every migration file becomes a `Revision`.

Loading never imports a revision file: SQL files are read as text, Python revisions are read
with `ast` (their module-level `revision`, `down_revision`, `branch_labels`, `depends_on`,
`phase`). Importing happens only when a Python revision is executed, so planning a no-op run
stays cheap as history grows.
"""

from __future__ import annotations

import ast
import difflib
import functools
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from .discover import Service
from .errors import MigrationFileError

FILENAME_RE = re.compile(
    r"^(?P<timestamp>\d{4}-\d{2}-\d{2}T\d{4})__(?P<service>[a-z][a-z0-9_]*)__"
    r"(?P<slug>[a-z0-9][a-z0-9_]*)\.(?P<ext>sql|py)$"
)
# A backfill's name: `<service>.<slug>` of its file `YYYY-MM-DDThhmm__<service>__<slug>.sql`.
BACKFILL_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z0-9][a-z0-9_]*$")
FILENAME_HINT = ("YYYY-MM-DDThhmm__<service>__<slug>.sql (or .py), "
                 "e.g. 2026-11-25T1405__users__add_email.sql")
PHASES = ("expand", "contract")
UP_MARKER = "-- migrate:up"
DOWN_MARKER = "-- migrate:down"
NO_TRANSACTION = "-- migrate:no-transaction"
MARKERS = {"up": UP_MARKER, "down": DOWN_MARKER, "no-transaction": NO_TRANSACTION}
# A line meant as a marker: `-- migrate:down`, `--migrate: down`, `-- Migrate:Down` alike, so a
# misspelt marker can never turn a down section into part of the up section.
MARKER_RE = re.compile(r"^--\s*migrate\s*:\s*(?P<name>.*?)\s*$", re.IGNORECASE)
# A header comment `-- key: value`; the key is a directive when, lower-cased with `_` and spaces
# read as `-`, it is one of DIRECTIVES.
DIRECTIVE_RE = re.compile(r"^--\s*(?P<key>[A-Za-z][A-Za-z _-]*?)\s*:\s*(?P<value>.*?)\s*$")
DIRECTIVES = ("phase", "depends-on", "requires-backfill")
# A comment line that is a marker or a directive with the colon missing (`-- migrate down`,
# `-- phase contract`): refused, so prose never silently becomes one and one never silently
# becomes prose.
COLONLESS_RE = re.compile(
    r"^--\s*(?:(?P<key>migrate)\s+(?P<value>up|down|no[ _-]?transaction)"
    r"|(?P<key2>phase)\s+(?P<value2>expand|contract)"
    r"|(?P<key3>depends[ _-]?on)\s+(?P<value3>[a-z][a-z0-9_]*_\d{12})"
    r"|(?P<key4>requires[ _-]?backfill)\s+(?P<value4>[a-z][a-z0-9_]*\.[a-z0-9_]+))\s*$",
    re.IGNORECASE)

Phase = Literal["expand", "contract"]
Kind = Literal["sql", "python"]


def revision_id(service: str, timestamp: str) -> str:
    """`users` + `2026-11-25T1405` → `users_202611251405`: unique per service and minute,
    at most 32 characters, and free of Alembic's revision syntax (`@ - + :`)."""
    return f"{service}_{timestamp.replace('-', '').replace('T', '')}"


@dataclass(frozen=True)
class RevisionFile:
    """What a migration file's name says about it."""

    path: Path
    timestamp: str
    service: str
    slug: str
    kind: Kind

    @property
    def revision_id(self) -> str:
        return revision_id(self.service, self.timestamp)


def parse_filename(path: Path) -> RevisionFile:
    match = FILENAME_RE.match(path.name)
    if not match:
        raise MigrationFileError(path, f"file name does not follow {FILENAME_HINT}")
    kind: Kind = "sql" if match["ext"] == "sql" else "python"
    return RevisionFile(path, match["timestamp"], match["service"], match["slug"], kind)


def normalise(text: str) -> str:
    """The text a checksum is taken of: no byte order mark, LF line ends, no trailing whitespace,
    no trailing blank lines, so an editor's encoding and whitespace changes do not look like
    tampering. (What runs is `runnable`: whitespace inside a string literal is data.)"""
    text = text.removeprefix("\ufeff")  # a byte order mark is an encoding detail, not content
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).rstrip("\n") + "\n"


def runnable(text: str) -> str:
    """The text a SQL revision's sections are read from and run as: as written, less a byte
    order mark; old Mac line ends (CR alone) become LF so there are lines to read at all."""
    text = text.removeprefix("\ufeff")
    return text.replace("\r", "\n") if "\r" in text and "\n" not in text else text


def checksum(text: str) -> str:
    return _checksum_of_normalised(normalise(text))


def _checksum_of_normalised(normal: str) -> str:
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SqlSource:
    """A SQL revision split into its parts. Line numbers are 1-based lines of the file."""

    up: str
    up_line: int
    down: str | None
    down_line: int | None
    transactional: bool
    phase: Phase
    depends_on: tuple[str, ...]
    # backfills (`<service>.<slug>`) that must have finished before the revision runs
    requires_backfill: tuple[str, ...] = ()
    # why the revision cannot be undone: `-- irreversible: <why>` in a down section without SQL
    irreversible: str | None = None


# An empty down section says why it is empty: `svcmig check` and the guard accept the revision.
IRREVERSIBLE_RE = re.compile(r"^--\s*irreversible\s*:\s*(?P<reason>\S.*?)\s*$", re.IGNORECASE)


def _has_sql(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())


def parse_sql_source(text: str, path: Path) -> SqlSource:
    """Split a SQL file into up/down sections and header directives.

    A plain file is all "up". Directives live in the leading comment block:
    `-- phase: contract`, `-- depends-on: <rev>[, <rev>]`, `-- migrate:no-transaction`.
    """
    return _sql_source(runnable(text), path)


# A file's text → its parsed sections. A run parses a pending file when it loads it and again
# when the preflight reads it back; the same text parses the same way, whatever its path.
_PARSED: dict[str, SqlSource] = {}


def _sql_source(text: str, path: Path) -> SqlSource:
    found = _PARSED.get(text)
    if found is None:
        found = _PARSED[text] = _parse(text, path)
    return found


def _directive_key(key: str, path: Path, line: int) -> str | None:
    """The directive a header comment's key names (`Phase`, `depends_on` and `Depends On` alike),
    None for an ordinary comment; a near miss such as `phases` is refused, so a typo never turns
    a directive into a comment."""
    normal = re.sub(r"[ _-]+", "-", key.strip().lower())
    if normal in DIRECTIVES:
        return normal
    close = difflib.get_close_matches(normal, DIRECTIVES, n=1, cutoff=0.8)
    if close:
        raise MigrationFileError(path, f"unknown directive {key!r}; did you mean "
                                 f"'-- {close[0]}:'? (write it as a plain comment otherwise: "
                                 "'-- note ...' without a colon)", line)
    return None


def visible(line: str) -> str:
    """A line as a reader sees it, for matching markers and directives: stripped, and (when not
    plain ASCII) in Unicode compatibility form (NFKC: a fullwidth colon is a colon) without
    format characters (a byte order mark, zero-width spaces and joiners, soft hyphens), which
    would otherwise hide a marker or a directive from the parser but not from the eye."""
    line = line.strip()
    if line.isascii():
        return line
    folded = unicodedata.normalize("NFKC", line)
    return "".join(ch for ch in folded if unicodedata.category(ch) != "Cf").strip()


# Characters some viewers (a browser, a diff) show as a line break where the parser (and
# PostgreSQL, in a `--` comment) sees none, and a carriage return alone, which PostgreSQL ends a
# comment at but a line-by-line reader does not: either could hide a marker or a statement.
LINE_BREAK_LOOKALIKES = re.compile("[\v\f\x1c\x1d\x1e\x85\u2028\u2029]|\r(?!\n)")
# Words a marker or directive starts with: a comment whose key has them with some letters
# swapped for look-alikes from another script (a Cyrillic 'а' in `phаse`) is refused.
KEYWORDS = ("phase", "depends-on", "requires-backfill", "migrate")


def refuse_hidden_text(text: str, path: Path) -> None:
    """A NUL (PostgreSQL's parser stops there) or a line-break look-alike, anywhere."""
    if "\x00" in text:
        offset = text.index("\x00")
        raise MigrationFileError(path, f"a NUL character at offset {offset}: PostgreSQL's parser "
                                 "stops there, so what follows would silently not run; remove it",
                                 text[:offset].count("\n") + 1, kind="parse")
    found = LINE_BREAK_LOOKALIKES.search(text)
    if found:
        raise MigrationFileError(
            path, f"the character U+{ord(found[0][0]):04X}, which some viewers show as a line "
            "break and the parser does not (or the other way round): a marker or statement "
            "could look different to a reviewer than it runs; use plain line ends (LF or CRLF)",
            text[:found.start()].count("\n") + 1, kind="parse")


def _lookalike_keyword(line: str) -> str | None:
    """The marker or directive word a comment's key imitates with letters from another script
    (`-- phаse:` with a Cyrillic 'а'), or None."""
    key = re.match(r"^--\s*([^:]{1,30}?)\s*:", line)
    if key is None or key[1].isascii():
        return None
    folded = unicodedata.normalize("NFKD", key[1].lower())
    folded = re.sub(r"[ _-]+", "-", "".join(ch for ch in folded if not unicodedata.combining(ch)))
    for word in KEYWORDS:
        if len(folded) == len(word) and all(a == b or not a.isascii()
                                            for a, b in zip(folded, word, strict=True)):
            return word
    return None


def _parse(text: str, path: Path) -> SqlSource:
    refuse_hidden_text(text, path)
    lines = text.split("\n")
    phase_at: int | None = None
    phase: Phase = "expand"
    depends_on: list[str] = []
    requires_backfill: list[str] = []
    transactional = True
    up_at: int | None = None
    down_at: int | None = None
    in_header = True
    for index, raw in enumerate(lines):
        if raw.isascii() and not raw.lstrip().startswith("--"):  # SQL or blank: the fast path
            if in_header and raw.strip():
                in_header = False
            continue
        line = visible(raw)
        number = index + 1
        imitated = None if line.isascii() else _lookalike_keyword(line)
        if imitated:
            raise MigrationFileError(
                path, f"'{raw.strip()}' spells '{imitated}' with letters from another script "
                "(look-alikes of Latin ones); write it in plain ASCII, or reword the comment",
                number)
        colonless = COLONLESS_RE.match(line)
        if colonless:
            key, value = next((colonless[k], colonless[v]) for k, v in (
                ("key", "value"), ("key2", "value2"), ("key3", "value3"), ("key4", "value4"))
                if colonless[k])
            key = re.sub(r"[ _-]+", "-", key.lower())
            written = f"-- migrate:{value}" if key == "migrate" else f"-- {key}: {value}"
            raise MigrationFileError(
                path, f"'{raw.strip()}' looks like '{written}' without its colon; write it with "
                "the colon, or reword the comment", number)
        marker = MARKER_RE.match(line)
        if marker:
            name = marker["name"].lower().replace("_", "-")
            if name == "up":
                if up_at is not None:
                    raise MigrationFileError(
                        path, f"second '{UP_MARKER}' marker (first on line {up_at + 1}); "
                        "keep one up section", number)
                if down_at is not None:
                    raise MigrationFileError(
                        path, f"'{UP_MARKER}' after '{DOWN_MARKER}'; put the up section first",
                        number)
                up_at = index
            elif name == "down":
                if down_at is not None:
                    raise MigrationFileError(
                        path, f"second '{DOWN_MARKER}' marker (first on line {down_at + 1}); "
                        "keep one down section", number)
                down_at = index
            elif name == "no-transaction":
                if not in_header:
                    raise MigrationFileError(
                        path, f"'{NO_TRANSACTION}' must be in the header, before any SQL", number)
                transactional = False
            else:
                raise MigrationFileError(
                    path, f"unknown marker {marker['name']!r}; known: migrate:up, migrate:down, "
                    "migrate:no-transaction", number)
            continue
        directive = DIRECTIVE_RE.match(line)
        key = _directive_key(directive["key"], path, number) if directive else None
        if key and not in_header:
            raise MigrationFileError(
                path, f"'-- {key}:' must be in the header, before the first SQL statement; "
                "move it to the top of the file", number)
        if directive and key == "phase":
            value = directive["value"].lower()
            if value not in PHASES:
                raise MigrationFileError(
                    path, f"unknown phase {directive['value']!r}; use 'expand' or 'contract'",
                    number)
            if phase_at is not None:
                raise MigrationFileError(
                    path, f"second '-- phase:' directive (first on line {phase_at}); keep one",
                    number)
            phase, phase_at = value, number  # type: ignore[assignment]
            continue
        if directive and key == "depends-on":
            targets = [t.strip() for t in directive["value"].split(",") if t.strip()]
            if not targets:
                raise MigrationFileError(path, "'-- depends-on:' names no revision", number)
            depends_on.extend(targets)
            continue
        if directive and key == "requires-backfill":
            names = [t.strip() for t in directive["value"].split(",") if t.strip()]
            bad = next((n for n in names if not BACKFILL_NAME_RE.match(n)), None)
            if not names or bad is not None:
                raise MigrationFileError(
                    path, f"'-- requires-backfill:' needs backfill names such as "
                    f"users.fill_plan (<service>.<slug>), got {directive['value']!r}", number)
            requires_backfill.extend(names)
            continue
        if line and not line.startswith("--"):
            in_header = False

    up_start = 0 if up_at is None else up_at + 1
    up_end = down_at if down_at is not None else len(lines)
    up = "\n".join(lines[up_start:up_end])
    if not _has_sql(up):
        raise MigrationFileError(
            path, "the up section has no SQL; write the migration or delete the file",
            up_start + 1)
    if up_at is None and down_at is not None:
        # Everything before the down marker is "up": allowed, and the header stays there.
        pass
    down: str | None = None
    irreversible: str | None = None
    if down_at is not None:
        down = "\n".join(lines[down_at + 1:])
        if not _has_sql(down):
            down = None  # no undo; declared so on purpose only with a reason
            irreversible = next((m["reason"] for m in map(IRREVERSIBLE_RE.match,
                                 (line.strip() for line in lines[down_at + 1:])) if m), None)
    return SqlSource(
        up=up,
        up_line=up_start + 1,
        down=down,
        down_line=(down_at + 2) if down_at is not None else None,
        transactional=transactional,
        phase=phase,
        depends_on=tuple(depends_on),
        requires_backfill=tuple(requires_backfill),
        irreversible=irreversible,
    )


@dataclass(frozen=True)
class Revision:
    """One migration, as the planner and runner see it. `file` is its path from the project
    `root` (`services/<service>/migrations/<name>`), as the ledger stores it."""

    id: str
    service: str
    root: Path
    file: str
    timestamp: str
    slug: str
    kind: Kind
    down_revision: str | None
    depends_on: tuple[str, ...]
    branch_labels: tuple[str, ...]
    phase: Phase
    transactional: bool
    reversible: bool
    # backfills (`<service>.<slug>`) that must have finished on a database before this runs
    requires_backfill: tuple[str, ...]
    checksum: str = field(repr=False)

    @functools.cached_property
    def path(self) -> Path:
        """Built on first use: planning a no-op from the manifest never needs 10,000 of them."""
        return self.root / self.file


REVISION_FIELDS = tuple(f.name for f in fields(Revision))


def revision_from(*values: object) -> Revision:
    """`Revision(*values)` without the generated `__init__`: a frozen dataclass's `__init__`
    sets each field through `object.__setattr__`, which costs a deploy's no-op about 20 ms at
    10,000 revisions (`manifest.load_manifest` builds every one). Same object, same equality."""
    revision = object.__new__(Revision)
    revision.__dict__.update(zip(REVISION_FIELDS, values, strict=True))
    return revision


_PY_ATTRIBUTES = ("revision", "down_revision", "branch_labels", "depends_on", "phase",
                  "transactional", "irreversible", "requires_backfill")


# PEP 263: a coding declaration in a comment on the first or second line
CODING_RE = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")


def read_python_header(text: str, path: Path) -> dict[str, object]:
    """Module-level literal assignments of a Python revision, without importing it."""
    for number, line in enumerate(text.removeprefix("\ufeff").split("\n")[:2], start=1):
        coding = CODING_RE.match(line)
        if coding and coding[1].lower().replace("_", "-") not in ("utf-8", "utf8"):
            raise MigrationFileError(path, f"a coding declaration for {coding[1]}: svcmig reads "
                                     "revisions as UTF-8 and Alembic would read this one "
                                     "differently; remove the declaration", number)
    try:
        tree = ast.parse(text.removeprefix("\ufeff"), filename=str(path))
    except SyntaxError as err:
        raise MigrationFileError(path, f"Python syntax error: {err.msg}", err.lineno) from err
    found: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in _PY_ATTRIBUTES:
            try:
                found[target.id] = ast.literal_eval(value)
            except ValueError as err:
                raise MigrationFileError(
                    path, f"{target.id} must be a literal (a string, tuple or None)",
                    node.lineno) from err
    declared = found.get("irreversible")
    if declared not in (None, True, False) and not (
            isinstance(declared, str) and declared.strip()):
        raise MigrationFileError(path, "irreversible must say why it cannot be undone, e.g. "
                                 "irreversible = \"the dropped rows cannot come back\" (or "
                                 "True); remove it if the revision has a downgrade")
    found["_has_downgrade"] = any(
        isinstance(node, ast.FunctionDef) and node.name == "downgrade"
        and not all(_does_nothing(statement) for statement in node.body)
        for node in tree.body
    )
    return found


def irreversible_reason(revision: Revision) -> str | None:
    """Why `revision` declares it cannot be undone (a SQL `-- irreversible: <why>` in an empty
    down section, a Python `irreversible = "why"` or `True`), or None when it does not say."""
    text = read_text(revision.path)
    if revision.kind == "sql":
        return _sql_source(runnable(text), revision.path).irreversible
    declared = read_python_header(text, revision.path).get("irreversible")
    if declared is True:
        return "declared irreversible"
    return declared if isinstance(declared, str) else None


def _does_nothing(statement: ast.stmt) -> bool:
    """`pass`, `...` or a docstring: what an empty generated `downgrade()` holds."""
    return isinstance(statement, ast.Pass) or (
        isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant))


def _as_tuple(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)  # type: ignore[attr-defined]


def read_text(path: Path) -> str:
    """A migration file as text; a file that is not UTF-8 is refused naming the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        source = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "<its encoding>"
        raise MigrationFileError(
            path, f"not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} cannot be "
            f"decoded; save the file as UTF-8 (e.g. `iconv -f {source} -t utf-8`)", line,
            kind="parse") from err


def load_revision(name: RevisionFile, service: Service, previous: str | None) -> Revision:
    """Read one file. `previous` is the id of the service's previous file in name order: a SQL
    revision's parent; a Python revision states its own `down_revision`."""
    path = name.path
    if name.service != service.name:
        raise MigrationFileError(
            path, f"file names service {name.service!r} but lives in services/{service.name}/; "
            f"move it to services/{name.service}/migrations/ or rename it")
    text = read_text(path)
    rev_id = name.revision_id
    root, file = service.folder.parent.parent, f"services/{service.name}/migrations/{path.name}"
    normal = normalise(text)
    digest = _checksum_of_normalised(normal)
    if name.kind == "sql":
        source = _sql_source(runnable(text), path)
        return Revision(
            id=rev_id, service=service.name, root=root, file=file, timestamp=name.timestamp,
            slug=name.slug, kind="sql", down_revision=previous, depends_on=source.depends_on,
            branch_labels=(service.name,) if previous is None else (),
            phase=source.phase, transactional=source.transactional,
            reversible=source.down is not None, requires_backfill=source.requires_backfill,
            checksum=digest,
        )
    header = read_python_header(text, path)
    declared = header.get("revision")
    if declared != rev_id:
        raise MigrationFileError(
            path, f"revision = {declared!r} but the file name gives {rev_id!r}; "
            f"set revision = {rev_id!r}")
    if "down_revision" not in header:
        raise MigrationFileError(path, "no down_revision; set it to the previous revision id")
    phase = header.get("phase", "expand")
    if phase not in PHASES:
        raise MigrationFileError(path, f"phase = {phase!r}; use 'expand' or 'contract'")
    down = header["down_revision"]
    if down is not None and not isinstance(down, str):
        raise MigrationFileError(
            path, "down_revision must be one revision id: one branch per service, no merges")
    return Revision(
        id=rev_id, service=service.name, root=root, file=file, timestamp=name.timestamp,
        slug=name.slug, kind="python", down_revision=down,
        depends_on=_as_tuple(header.get("depends_on")),
        branch_labels=_as_tuple(header.get("branch_labels")), phase=phase,  # type: ignore[arg-type]
        transactional=bool(header.get("transactional", True)),
        reversible=bool(header["_has_downgrade"]),
        requires_backfill=_backfill_names(header.get("requires_backfill"), path), checksum=digest,
    )


def _backfill_names(value: object, path: Path) -> tuple[str, ...]:
    """A Python revision's `requires_backfill` (a name or a list of names), checked."""
    names = _as_tuple(value)
    bad = next((n for n in names if not BACKFILL_NAME_RE.match(n)), None)
    if bad is not None:
        raise MigrationFileError(path, f"requires_backfill names {bad!r}; write backfill names "
                                 "such as \"users.fill_plan\" (<service>.<slug>)")
    return names


def not_a_revision(name: str) -> bool:
    """Entries of a migrations folder that are not revisions and are skipped: hidden ones,
    `__init__.py`, `__pycache__`, `README.md`. Anything else must be a revision file."""
    return name.startswith(".") or name in ("__init__.py", "__pycache__", "README.md")


def revision_files(service: Service) -> list[RevisionFile]:
    """The service's migration files in name (= time) order. Other files are refused, so a typo
    in a name never makes a migration silently disappear."""
    names: list[RevisionFile] = []
    root = service.migrations_dir.parents[2].resolve()  # <root>/services/<name>/migrations
    for path in sorted(service.migrations_dir.iterdir()):
        if not_a_revision(path.name):
            continue
        if not path.is_file():  # a folder, a broken link, a pipe (which would hang the read)
            raise MigrationFileError(path, "not a regular file; a migration is a .sql or .py "
                                     "file: remove it or move it out of the migrations folder")
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise MigrationFileError(path, f"a link to {path.resolve()}, outside the project: "
                                     "a migration must live in the repository; copy it here")
        names.append(parse_filename(path))
    return names


def load_service(service: Service) -> list[Revision]:
    revisions: list[Revision] = []
    previous: str | None = None
    for name in revision_files(service):
        revision = load_revision(name, service, previous)
        revisions.append(revision)
        previous = revision.id
    return revisions


SLUG_WORD_RE = re.compile(r"[a-z0-9]+")


def slugify(message: str, path_hint: Path | None = None) -> str:
    """`"Add email!"` → `add_email`; a message with no letters or digits is refused."""
    slug = "_".join(SLUG_WORD_RE.findall(message.lower()))[:40].rstrip("_")
    if not slug:
        raise MigrationFileError(
            path_hint or Path("."), f"message {message!r} has no letters or digits to name the "
            "file after; use a few words such as 'add email to users'")
    return slug


def next_timestamp(newest: str | None, now: datetime) -> str:
    """A timestamp (`YYYY-MM-DDThhmm`, UTC) for a new revision: now, or one minute after the
    service's newest revision when that is not earlier, so a service's files stay in order."""
    candidate = now.astimezone(UTC).replace(second=0, microsecond=0, tzinfo=None)
    if newest is not None:
        latest = datetime.strptime(newest, "%Y-%m-%dT%H%M")
        if candidate <= latest:
            candidate = latest + timedelta(minutes=1)
    return candidate.strftime("%Y-%m-%dT%H%M")


def service_of_revision_id(rev_id: str) -> tuple[str, str] | None:
    """`users_202611251405` → (`users`, `2026-11-25T1405`), or None for another kind of id."""
    match = re.match(r"^([a-z][a-z0-9_]*)_(\d{4})(\d{2})(\d{2})(\d{4})$", rev_id)
    if not match:
        return None
    service, year, month, day, hhmm = match.groups()
    return service, f"{year}-{month}-{day}T{hhmm}"
