"""Top-down maps: valid SVG with both paths, PNG when Pillow is present."""

import xml.etree.ElementTree as ET

import pytest

from prevalent.data.r2r import R2REpisode
from prevalent.env import NavGraph, NavGraphs
from prevalent.render import map_svg, pillow_available, render_episode_maps


def _graph():
    return NavGraph.from_edges(
        "toy",
        {"a": (0, 0, 0), "b": (2, 0, 0), "c": (2, 3, 0), "d": (0, 3, 0)},
        [("a", "b"), ("b", "c"), ("a", "d")],
    )


def test_svg_draws_every_edge_node_and_both_paths():
    svg = map_svg(_graph(), reference=["a", "b", "c"], prediction=["a", "d"], goals=["c"], title="toy <1>")
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}line")) == 3
    assert len(root.findall(f"{ns}circle")) == 4 + 1  # viewpoints + goal ring
    polylines = {p.get("class"): p.get("points").split() for p in root.findall(f"{ns}polyline")}
    assert len(polylines["reference"]) == 3 and len(polylines["prediction"]) == 2
    # +y is up the page: c (y=3) is drawn above b (y=0)
    (bx, by), (cx, cy) = (map(float, polylines["reference"][k].split(",")) for k in (1, 2))
    assert cy < by and cx == pytest.approx(bx)


def test_render_episode_maps_writes_svg_and_png(tmp_path):
    graphs = NavGraphs()
    graphs.add(_graph())
    episode = R2REpisode("7_0", 7, "toy", "a", 0.0, "go", ["a", "b", "c"], 5.0)
    files = render_episode_maps([episode], graphs, {"7_0": [["a", 0, 0], ["d", 0, 0]]}, tmp_path / "maps")
    names = sorted(p.name for p in files)
    assert "7_0.svg" in names and all(p.is_file() for p in files)
    if pillow_available():
        from PIL import Image

        assert "7_0.png" in names and Image.open(tmp_path / "maps" / "7_0.png").size == (512, 512)
    svg_only = render_episode_maps([episode], graphs, {}, tmp_path / "svg", png=False)
    assert [p.suffix for p in svg_only] == [".svg"]


def test_eval_cli_draws_maps_of_chosen_episodes(tmp_path):
    from prevalent.data import make_synthetic_dataset
    from prevalent.evaluate import main

    data = make_synthetic_dataset(
        tmp_path / "d", seed=2, houses=2, unseen_houses=1, paths_per_house=2, val_paths_per_house=2
    )
    args = ["--data", str(data / "R2R" / "R2R_val_unseen.json"), "--connectivity", str(data / "connectivity")]
    out = tmp_path / "run" / "eval.json"
    from prevalent.data import load_r2r

    episodes = load_r2r(data / "R2R" / "R2R_val_unseen.json")
    chosen = [episodes[-1].instr_id, episodes[1].instr_id]
    assert (
        main(
            [
                *args,
                "--output",
                str(out),
                "--map-ids",
                chosen[0],
                chosen[1],
                "--maps-dir",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    assert sorted(p.stem for p in (tmp_path / "m").glob("*.svg")) == sorted(chosen)
    assert main([*args, "--output", str(out), "--map-ids", "nope_0"]) == 2
