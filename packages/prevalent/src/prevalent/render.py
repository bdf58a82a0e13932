"""Top-down maps of a scan's navigation graph with predicted and reference paths.

SVG is always written (plain text, no dependency); a PNG beside it when Pillow is importable.
The map looks down the z axis with +y up (heading 0 points up the page, headings grow clockwise),
edges grey, viewpoints as dots, the reference path green, the prediction red (dashed), the start a
square and the goal(s) a ring.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from prevalent.env.graph import NavGraph, NavGraphs

REFERENCE_COLOUR = "#1b9e3a"
PREDICTION_COLOUR = "#d62728"


def _projector(graph: NavGraph, size: int, margin: int):
    xy = graph.positions[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    scale = (size - 2 * margin) / max(float((hi - lo).max()), 1e-6)
    pad = (size - 2 * margin - (hi - lo) * scale) / 2  # centre the shorter side

    def project(vp: str) -> tuple[float, float]:
        x, y = graph.positions[graph.row(vp), :2]
        return margin + pad[0] + (x - lo[0]) * scale, size - margin - pad[1] - (y - lo[1]) * scale  # +y up

    return project


def map_svg(
    graph: NavGraph,
    reference: Sequence[str] | None = None,
    prediction: Sequence[str] | None = None,
    goals: Sequence[str] = (),
    title: str = "",
    size: int = 512,
) -> str:
    """An SVG document of ``graph`` with optional reference/predicted paths and goal viewpoints."""
    margin = 24
    project = _projector(graph, size, margin)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
        f'viewBox="0 0 {size} {size}">',
        f'<rect width="{size}" height="{size}" fill="white"/>',
    ]
    if title:
        parts.append(f'<text x="8" y="16" font-family="sans-serif" font-size="12">{escape(title)}</text>')
    for i, neighbours in enumerate(graph.neighbours):
        for j in neighbours:
            if j > i:
                (x1, y1), (x2, y2) = project(graph.viewpoints[i]), project(graph.viewpoints[j])
                parts.append(
                    f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#bbbbbb"/>'
                )
    for vp in graph.viewpoints:
        x, y = project(vp)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#555555"><title>{vp}</title></circle>')
    for path, colour, dash, cls in (
        (reference, REFERENCE_COLOUR, "", "reference"),
        (prediction, PREDICTION_COLOUR, ' stroke-dasharray="6,4"', "prediction"),
    ):
        if path:
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in map(project, path))
            parts.append(
                f'<polyline class="{cls}" points="{points}" fill="none" '
                f'stroke="{colour}" stroke-width="3"{dash}/>'
            )
    start = (reference or prediction or [None])[0]
    if start is not None:
        x, y = project(start)
        parts.append(
            f'<rect class="start" x="{x - 6:.1f}" y="{y - 6:.1f}" width="12" height="12" fill="black"/>'
        )
    for goal in goals:
        x, y = project(goal)
        parts.append(
            f'<circle class="goal" cx="{x:.1f}" cy="{y:.1f}" r="9" fill="none" '
            f'stroke="{REFERENCE_COLOUR}" stroke-width="2"/>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def pillow_available() -> bool:
    """Whether PNG maps can be drawn (Pillow importable)."""
    return importlib.util.find_spec("PIL") is not None


def map_png(
    path: str | Path,
    graph: NavGraph,
    reference: Sequence[str] | None = None,
    prediction: Sequence[str] | None = None,
    goals: Sequence[str] = (),
    size: int = 512,
) -> Path:
    """Draw the same map as :func:`map_svg` into a PNG file (needs Pillow)."""
    from PIL import Image, ImageDraw

    margin = 24
    project = _projector(graph, size, margin)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for i, neighbours in enumerate(graph.neighbours):
        for j in neighbours:
            if j > i:
                draw.line(
                    [project(graph.viewpoints[i]), project(graph.viewpoints[j])], fill="#bbbbbb", width=1
                )
    for vp in graph.viewpoints:
        x, y = project(vp)
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill="#555555")
    for route, colour in ((reference, REFERENCE_COLOUR), (prediction, PREDICTION_COLOUR)):
        if route and len(route) > 1:
            draw.line([project(vp) for vp in route], fill=colour, width=3)
    start = (reference or prediction or [None])[0]
    if start is not None:
        x, y = project(start)
        draw.rectangle([x - 6, y - 6, x + 6, y + 6], fill="black")
    for goal in goals:
        x, y = project(goal)
        draw.ellipse([x - 9, y - 9, x + 9, y + 9], outline=REFERENCE_COLOUR, width=2)
    path = Path(path)
    image.save(path)
    return path


def render_episode_maps(
    episodes: Sequence,
    graphs: NavGraphs,
    predictions: dict[str, list],
    out_dir: str | Path,
    png: bool | None = None,
) -> list[Path]:
    """Write ``<instr_id>.svg`` (and ``.png`` when Pillow is present) for each episode; returns the files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = pillow_available() if png is None else png
    written = []
    for ep in episodes:
        graph = graphs[ep.scan]
        trajectory = predictions.get(ep.instr_id)
        prediction = [step[0] for step in trajectory] if trajectory else None
        reference = getattr(ep, "path", None)
        goals = (
            getattr(ep, "goal_viewpoints", None)
            or getattr(ep, "end_panos", None)
            or ([reference[-1]] if reference else [])
        )
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in ep.instr_id)
        svg_path = out_dir / f"{name}.svg"
        svg_path.write_text(map_svg(graph, reference, prediction, goals, title=f"{ep.scan} · {ep.instr_id}"))
        written.append(svg_path)
        if png:
            written.append(map_png(out_dir / f"{name}.png", graph, reference, prediction, goals))
    return written


__all__ = ["map_png", "map_svg", "pillow_available", "render_episode_maps"]
