#!/usr/bin/env bash
# The light install (issue 15): `pip install -e .` without any extra must author and apply
# migrations. Run from the repository root with a server URL (any database on it; a throwaway
# database is created there and dropped):  tools/light_install.sh postgresql://postgres@host/postgres
# Works in a copy of the project, so the repository is never changed.
set -euo pipefail
server="${1:?usage: tools/light_install.sh SERVER_URL}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
db="svcmig_light_$$"
psql "$server" -qc "create database $db"
trap 'psql "$server" -qc "drop database if exists $db with (force)"; rm -rf "$work"' EXIT
url="${server%/*}/$db"

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q -e "$repo"
bin="$work/venv/bin"
if "$bin/python" -c "import pydantic" 2>/dev/null || "$bin/python" -c "import aws_cdk" 2>/dev/null; then
    echo "the light install pulled in an extra's packages" >&2
    exit 1
fi
mkdir "$work/project"
cp -r "$repo/alembic.ini" "$repo/services" "$work/project/"
cd "$work/project"
export SVCMIG_PROJECT_ROOT="$work/project"
set -x
"$bin/svcmig" --version
"$bin/svcmig" new-service payments
"$bin/svcmig" revision payments -m "add amount" --sql
"$bin/svcmig" migrate --database-url "$url" --log-format json 2>/dev/null
"$bin/svcmig" status --database-url "$url"
"$bin/svcmig" check --database-url "$server" --quiet --no-trace | tail -n 1
"$bin/svcmig" revision payments -m "add currency"  # Python, through Alembic's template
"$bin/alembic" heads
"$bin/svcmig" plan --offline > /dev/null
"$bin/svcmig" graph --format mermaid > /dev/null
"$bin/svcmig" lint --all
