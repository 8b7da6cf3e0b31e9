"""`svcmig graph`: text formats, database state, and pictures readable at 10 × 50."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from tests.authoring.helpers import big_project
from tests.conftest import code_heads, run_cli


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_mermaid_and_dot_with_applied_and_pending(project: Path, database_url: str) -> None:
    assert run_cli(project, "migrate", "--phase", "expand", database_url=database_url
                   ).returncode == 0
    heads = code_heads(project)
    (project / "services/users/migrations/2026-12-24T0000__users__later.sql").write_text(
        "SELECT 1;")
    mermaid = run_cli(project, "graph", "--database-url", database_url)
    assert mermaid.returncode == 0, mermaid.stderr
    text = mermaid.stdout
    assert text.startswith("flowchart LR") and 'subgraph lane_0["orders"]' in text
    assert "users_202611120800 -.->|depends on| orders_202611120900" in text
    applied_line = next(line for line in text.splitlines() if line.endswith(" applied"))
    pending_line = next(line for line in text.splitlines() if line.endswith(" pending"))
    assert "users_202611020900" in applied_line and "users_202612240000" in pending_line

    dot = run_cli(project, "graph", "--format", "dot", "--database-url", database_url)
    assert dot.returncode == 0, dot.stderr
    assert dot.stdout.startswith("digraph svcmig {") and "subgraph cluster_1" in dot.stdout
    assert f'"{heads["users"]}" -> "users_202612240000";' in dot.stdout
    assert 'style="rounded,filled,dashed"' in dot.stdout  # pending

    as_json = json.loads(run_cli(project, "graph", "--json", database_url=None).stdout)
    assert as_json["services"] == ["orders", "users"]
    assert {"from": "users_202611120800", "to": "orders_202611120900",
            "kind": "depends_on"} in as_json["edges"]


def test_png_and_svg_of_ten_services_by_fifty_revisions(tmp_path: Path) -> None:
    root = big_project(tmp_path / "big")
    png = tmp_path / "graph.png"
    done = run_cli(root, "graph", "--output", str(png))
    assert done.returncode == 0, done.stderr
    width, height = png_size(png)
    # A column per revision (at least 50) of about 170 px and a lane per service of ~110 px:
    # boxes and 7-point labels never shrink with the graph's size.
    assert width >= 50 * 150 and height >= 10 * 100
    svg = tmp_path / "graph.svg"
    assert run_cli(root, "graph", "--format", "svg", "-o", str(svg)).returncode == 0
    text = svg.read_text()
    assert text.lstrip().startswith(("<?xml", "<svg")) and "notify" in text
    assert "add_column_email_4" in text.replace("\n", "")  # labels stay text, searchable
