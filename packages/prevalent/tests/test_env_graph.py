"""NavGraph: reading connectivity files, shortest paths, and clear errors for broken files."""

import heapq
import json

import numpy as np
import pytest

from dgm_core.errors import UserError
from prevalent.env import NavGraph, NavGraphs


def _dijkstra(graph: NavGraph, source: int) -> np.ndarray:
    dist = np.full(len(graph), np.inf)
    dist[source] = 0.0
    heap = [(0.0, source)]
    while heap:
        d, i = heapq.heappop(heap)
        if d > dist[i]:
            continue
        for j in graph.neighbours[i]:
            nd = d + float(np.linalg.norm(graph.positions[i] - graph.positions[j]))
            if nd < dist[j]:
                dist[j] = nd
                heapq.heappush(heap, (nd, j))
    return dist


def _record(image_id, xyz, unobstructed, included=True):
    pose = [1, 0, 0, xyz[0], 0, 1, 0, xyz[1], 0, 0, 1, xyz[2], 0, 0, 0, 1]
    return {
        "image_id": image_id,
        "pose": pose,
        "included": included,
        "visible": list(unobstructed),
        "unobstructed": list(unobstructed),
        "height": 1.5,
    }


def _write(tmp_path, scan, records):
    (tmp_path / f"{scan}_connectivity.json").write_text(json.dumps(records))
    return tmp_path


def test_real_graphs_match_brute_force_dijkstra(vln_data):
    graphs = NavGraphs(vln_data / "connectivity")
    scans = graphs.available_scans()
    assert len(scans) == 4
    for scan in scans:
        graph = graphs[scan]
        assert graphs[scan] is graph  # cached
        np.testing.assert_allclose(graph.distances, graph.distances.T)
        for source in range(0, len(graph), 7):
            np.testing.assert_allclose(graph.distances[source], _dijkstra(graph, source), atol=1e-9)


def test_real_graph_reads_positions_from_the_pose_translation(vln_data):
    records = json.loads((vln_data / "connectivity" / "17DRP5sb8fy_connectivity.json").read_text())
    graph = NavGraph.load(vln_data / "connectivity", "17DRP5sb8fy")
    included = [r for r in records if r["included"]]
    assert len(graph) == len(included) < len(records)  # excluded viewpoints are dropped
    first = included[0]
    np.testing.assert_allclose(
        graph.position(first["image_id"]), [first["pose"][3], first["pose"][7], first["pose"][11]]
    )
    excluded = next(r["image_id"] for r in records if not r["included"])
    assert excluded not in graph


def test_edges_need_both_viewpoints_included_and_unobstructed(tmp_path):
    records = [
        _record("a", (0, 0, 1.5), [False, True, True]),
        _record("b", (3, 4, 1.5), [True, False, False]),
        _record("c", (0, 1, 1.5), [True, False, False], included=False),
    ]
    graph = NavGraph.load(_write(tmp_path, "s", records), "s")
    assert graph.viewpoints == ["a", "b"]
    assert graph.is_adjacent("a", "b")
    assert graph.distance("a", "b") == pytest.approx(5.0)  # 3-4-5 triangle


def test_shortest_paths_are_consistent_with_distances(vln_data):
    graph = NavGraph.load(vln_data / "connectivity", "JF19kD82Mey")
    rng = np.random.default_rng(0)
    checked = 0
    while checked < 30:
        a, b = (str(v) for v in rng.choice(graph.viewpoints, size=2, replace=False))
        if not np.isfinite(graph.distance(a, b)):
            continue  # real scans can have separate components (e.g. an unreachable floor)
        checked += 1
        path = graph.shortest_path(a, b)
        assert path[0] == a and path[-1] == b
        assert all(graph.is_adjacent(x, y) for x, y in zip(path, path[1:]))
        assert graph.path_length(path) == pytest.approx(graph.distance(a, b))
    assert graph.shortest_path(graph.viewpoints[0], graph.viewpoints[0]) == [graph.viewpoints[0]]


def test_hand_made_graph_distances_and_next_steps():
    graph = NavGraph.from_edges(
        "toy",
        {"a": (0, 0, 0), "b": (1, 0, 0), "c": (2, 0, 0), "d": (1, 5, 0)},
        [("a", "b"), ("b", "c"), ("a", "d"), ("d", "c")],
    )
    assert graph.distance("a", "c") == pytest.approx(2.0)
    assert graph.next_step("a", "c") == "b"
    assert graph.shortest_path("c", "a") == ["c", "b", "a"]
    assert graph.neighbour_ids("a") == ["b", "d"]


def test_disconnected_goal_is_a_clear_error():
    graph = NavGraph.from_edges("toy", {"a": (0, 0, 0), "b": (1, 0, 0), "z": (9, 9, 0)}, [("a", "b")])
    assert graph.distance("a", "z") == np.inf
    with pytest.raises(UserError, match="unreachable"):
        graph.shortest_path("a", "z")


def test_non_square_connectivity_is_rejected(tmp_path):
    records = [_record("a", (0, 0, 0), [False, True]), _record("b", (1, 0, 0), [True, False, False])]
    with pytest.raises(UserError, match="not square"):
        NavGraph.load(_write(tmp_path, "s", records), "s")


def test_asymmetric_connectivity_is_rejected(tmp_path):
    records = [_record("a", (0, 0, 0), [False, True]), _record("b", (1, 0, 0), [False, False])]
    with pytest.raises(UserError, match="not symmetric"):
        NavGraph.load(_write(tmp_path, "s", records), "s")


def test_malformed_and_missing_files_are_clear_errors(tmp_path):
    (tmp_path / "bad_connectivity.json").write_text("[{")
    with pytest.raises(UserError, match="malformed JSON"):
        NavGraph.load(tmp_path, "bad")
    with pytest.raises(UserError, match="no connectivity file"):
        NavGraphs(tmp_path)["nope"]
    with pytest.raises(UserError, match="lacks field"):
        NavGraph.from_records("s", [{"image_id": "a"}])


def test_unknown_viewpoint_is_a_clear_error():
    graph = NavGraph.from_edges("toy", {"a": (0, 0, 0), "b": (1, 0, 0)}, [("a", "b")])
    with pytest.raises(UserError, match="not in scan toy"):
        graph.distance("a", "nowhere")
