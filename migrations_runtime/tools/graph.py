"""`svcmig graph`: the revision graph drawn as lanes (one per service), revisions in order along
each lane, cross-service `depends_on` as edges, applied/pending marked when a database is given.

Text formats (Mermaid, Graphviz DOT) paste into docs and pull requests; SVG and PNG are drawn
in pure Python with matplotlib, so a fresh machine needs no Graphviz binary.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..engine.errors import SvcmigError
from ..engine.ledger import DatabaseState
from ..engine.load import Revision
from ..engine.validate import Graph, parents

Format = Literal["mermaid", "dot", "svg", "png"]
FORMATS: tuple[Format, ...] = ("mermaid", "dot", "svg", "png")
State = Literal["applied", "pending", "dirty", "unknown"]

COLOURS: dict[State, tuple[str, str]] = {  # fill, edge
    "applied": ("#c8e6c9", "#2e7d32"),
    "pending": ("#ffffff", "#757575"),
    "dirty": ("#ffe0b2", "#e65100"),
    "unknown": ("#e3f2fd", "#1565c0"),
}
DEPENDENCY_COLOUR = "#c62828"


@dataclass(frozen=True)
class Node:
    revision: Revision
    lane: int
    column: int
    state: State

    @property
    def label(self) -> str:
        """`2026-11-25T1405 add_email`, split on two lines by the renderers."""
        return f"{self.revision.timestamp} {self.revision.slug}"


@dataclass(frozen=True)
class Edge:
    source: str  # the revision that must come first
    target: str
    kind: Literal["chain", "depends_on"]


@dataclass(frozen=True)
class Layout:
    """Where everything goes: lanes are services, columns respect every edge (a revision sits
    right of its parent and of what it depends on), so the picture reads left to right."""

    lanes: tuple[str, ...]
    nodes: dict[str, Node]
    edges: tuple[Edge, ...]
    with_state: bool

    @property
    def columns(self) -> int:
        return 1 + max((n.column for n in self.nodes.values()), default=-1)

    def as_dict(self) -> dict[str, object]:
        return {
            "services": list(self.lanes),
            "revisions": [
                {"revision": n.revision.id, "service": n.revision.service,
                 "file": n.revision.file, "phase": n.revision.phase, "column": n.column,
                 **({"state": n.state} if self.with_state else {})}
                for n in self.nodes.values()],
            "edges": [{"from": e.source, "to": e.target, "kind": e.kind} for e in self.edges],
        }


def revision_state(revision: Revision, state: DatabaseState | None) -> State:
    if state is None:
        return "unknown"
    row = state.ledger.get(revision.id)
    if row is None:
        return "pending"
    return "dirty" if row.state == "dirty" else "applied"


def layout(graph: Graph, state: DatabaseState | None = None) -> Layout:
    lanes = tuple(s.name for s in graph.services)
    lane_of = {name: index for index, name in enumerate(lanes)}
    column: dict[str, int] = {}
    nodes: dict[str, Node] = {}
    edges: list[Edge] = []
    for rev in graph.ordered():
        column[rev.id] = max((column[p] + 1 for p in parents(rev) if p in column), default=0)
        nodes[rev.id] = Node(rev, lane_of[rev.service], column[rev.id],
                             revision_state(rev, state))
        if rev.down_revision:
            edges.append(Edge(rev.down_revision, rev.id, "chain"))
        edges.extend(Edge(target, rev.id, "depends_on") for target in rev.depends_on)
    return Layout(lanes, nodes, tuple(edges), state is not None)


# --- text formats ------------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def to_mermaid(lay: Layout) -> str:
    lines = ["flowchart LR"]
    for index, lane in enumerate(lay.lanes):
        lines.append(f'  subgraph lane_{index}["{_mermaid_text(lane)}"]')
        lines.append("    direction LR")
        for node in lay.nodes.values():
            if node.lane == index:
                rev = node.revision
                lines.append(f'    {rev.id}["{rev.timestamp}<br/>{_mermaid_text(rev.slug)}"]')
        lines.append("  end")
    for edge in lay.edges:
        arrow = "-->" if edge.kind == "chain" else "-.->|depends on|"
        lines.append(f"  {edge.source} {arrow} {edge.target}")
    if lay.with_state:
        for state, (fill, stroke) in COLOURS.items():
            dash = ",stroke-dasharray:4 3" if state == "pending" else ""
            lines.append(f"  classDef {state} fill:{fill},stroke:{stroke}{dash}")
        for state in COLOURS:
            ids = [n.revision.id for n in lay.nodes.values() if n.state == state]
            if ids:
                lines.append(f"  class {','.join(ids)} {state}")
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(lay: Layout) -> str:
    lines = ["digraph svcmig {", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", '
             'fontname="Helvetica", fontsize=10];']
    for index, lane in enumerate(lay.lanes):
        lines.append(f"  subgraph cluster_{index} {{")
        lines.append(f"    label={_dot_quote(lane)}; style=filled; color=\"#f5f5f5\";")
        for node in lay.nodes.values():
            if node.lane == index:
                rev = node.revision
                attributes = f"label={_dot_quote(rev.timestamp + chr(10) + rev.slug)}"
                if lay.with_state:
                    fill, stroke = COLOURS[node.state]
                    attributes += f', fillcolor="{fill}", color="{stroke}"'
                    if node.state == "pending":
                        attributes += ', style="rounded,filled,dashed"'
                lines.append(f"    {_dot_quote(rev.id)} [{attributes}];")
        lines.append("  }")
    for edge in lay.edges:
        extra = (f' [style=dashed, color="{DEPENDENCY_COLOUR}", label="depends on"]'
                 if edge.kind == "depends_on" else "")
        lines.append(f"  {_dot_quote(edge.source)} -> {_dot_quote(edge.target)}{extra};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- pictures ----------------------------------------------------------------------------------

CELL_WIDTH = 1.55  # inches per column
LANE_HEIGHT = 1.0  # inches per lane
BOX_WIDTH = 1.35
BOX_HEIGHT = 0.66
LEFT_MARGIN = 1.5
TOP_MARGIN = 0.95
MAX_PIXELS = 60000  # Agg's limit is 2**16 per side
SLUG_CHARS = 20


def _slug_lines(slug: str) -> str:
    """The slug on at most two lines of SLUG_CHARS, broken at underscores when possible."""
    if len(slug) <= SLUG_CHARS:
        return slug
    cut = slug.rfind("_", 0, SLUG_CHARS) + 1  # keep the underscore on the first line
    cut = cut if cut > 1 else SLUG_CHARS
    rest = slug[cut:]
    if len(rest) > SLUG_CHARS:
        rest = rest[: SLUG_CHARS - 1] + "…"
    return slug[:cut] + "\n" + rest


def render_picture(lay: Layout, fmt: Literal["svg", "png"], title: str = "") -> bytes:
    """Draw the layout; the size grows with columns and lanes so labels never shrink below
    7 points (10 services × 50 revisions stays readable when zoomed)."""
    try:
        import matplotlib
    except ImportError as err:
        raise SvcmigError("SVG and PNG need matplotlib: pip install 'svcmig[graph]' (or use "
                          "--format mermaid|dot)") from err
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch, Rectangle

    columns = max(lay.columns, 1)
    width = LEFT_MARGIN + columns * CELL_WIDTH + 0.3
    height = TOP_MARGIN + max(len(lay.lanes), 1) * LANE_HEIGHT + 0.2
    dpi = min(110.0, MAX_PIXELS / max(width, height))
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 7}):
        fig = Figure(figsize=(width, height), dpi=dpi)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)  # y grows downwards: lane 0 on top
        ax.axis("off")

        def centre(node: Node) -> tuple[float, float]:
            return (LEFT_MARGIN + node.column * CELL_WIDTH + CELL_WIDTH / 2,
                    TOP_MARGIN + node.lane * LANE_HEIGHT + LANE_HEIGHT / 2)

        for index, lane in enumerate(lay.lanes):
            top = TOP_MARGIN + index * LANE_HEIGHT
            ax.add_patch(Rectangle((0, top), width, LANE_HEIGHT, linewidth=0,
                                   facecolor="#f5f5f5" if index % 2 == 0 else "#ffffff"))
            ax.text(0.15, top + LANE_HEIGHT / 2, lane, fontsize=10, fontweight="bold",
                    va="center", ha="left")
        ax.text(0.15, 0.3, title or "svcmig revisions", fontsize=12, fontweight="bold",
                va="center")
        for node in lay.nodes.values():
            x, y = centre(node)
            fill, stroke = COLOURS[node.state]
            ax.add_patch(FancyBboxPatch(
                (x - BOX_WIDTH / 2, y - BOX_HEIGHT / 2), BOX_WIDTH, BOX_HEIGHT,
                boxstyle="round,pad=0,rounding_size=0.08", facecolor=fill, edgecolor=stroke,
                linewidth=1.0, linestyle="--" if node.state == "pending" else "-", zorder=3))
            rev = node.revision
            stamp = f"{rev.timestamp[:10]} {rev.timestamp[11:13]}:{rev.timestamp[13:]}"
            if rev.phase == "contract":
                stamp += "  contract"
            ax.text(x, y - 0.19, stamp, ha="center", va="center", fontsize=6.5,
                    color="#424242", zorder=4)
            ax.text(x, y + 0.08, _slug_lines(rev.slug), ha="center", va="center",
                    fontsize=7.5, linespacing=1.1, zorder=4)
        chain_lines = []
        for edge in lay.edges:
            source, target = lay.nodes[edge.source], lay.nodes[edge.target]
            (x1, y1), (x2, y2) = centre(source), centre(target)
            start = (x1 + BOX_WIDTH / 2, y1)
            end = (x2 - BOX_WIDTH / 2, y2)
            if edge.kind == "chain":  # one collection, not one patch per arrow: 10x faster
                chain_lines.append((start, (end[0] - 0.05, end[1])))
                continue
            bend = 0.0 if y1 == y2 else math.copysign(0.15, y2 - y1)
            ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9,
                                         color=DEPENDENCY_COLOUR, linewidth=1.0,
                                         linestyle="--", connectionstyle=f"arc3,rad={bend}",
                                         zorder=5))
        ax.add_collection(LineCollection(chain_lines, colors="#9e9e9e", linewidths=0.8,
                                         zorder=2))
        ax.scatter([line[1][0] for line in chain_lines], [line[1][1] for line in chain_lines],
                   marker=">", s=12, color="#9e9e9e", zorder=2)
        legend = [Patch(facecolor=COLOURS["unknown"][0], edgecolor=COLOURS["unknown"][1],
                        label="revision")]
        if lay.with_state:
            legend = [Patch(facecolor=COLOURS[s][0], edgecolor=COLOURS[s][1], label=s)
                      for s in ("applied", "pending", "dirty")]
        legend.append(Patch(facecolor="white", edgecolor=DEPENDENCY_COLOUR, linestyle="--",
                            label="depends on (dashed arrow)"))
        fig.legend(handles=legend, loc="center left", ncols=len(legend), frameon=False,
                   bbox_to_anchor=(0.1 / width, 1 - 0.68 / height), fontsize=8)
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=dpi)
    return buffer.getvalue()


def render(graph: Graph, fmt: Format, state: DatabaseState | None = None,
           title: str = "") -> bytes:
    """The graph in `fmt`, as bytes ready to write to a file or stdout."""
    lay = layout(graph, state)
    if fmt == "mermaid":
        return to_mermaid(lay).encode()
    if fmt == "dot":
        return to_dot(lay).encode()
    return render_picture(lay, fmt, title)


def format_for(output: Path | None, explicit: str | None) -> Format | None:
    """`--format`, else the output file's extension (.mmd/.mermaid, .dot/.gv, .svg, .png)."""
    if explicit:
        return explicit  # type: ignore[return-value]
    if output is None:
        return "mermaid"
    by_suffix: dict[str, Format] = {".mmd": "mermaid", ".mermaid": "mermaid", ".md": "mermaid",
                                    ".dot": "dot", ".gv": "dot", ".svg": "svg", ".png": "png"}
    return by_suffix.get(output.suffix.lower())
