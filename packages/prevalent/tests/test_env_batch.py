"""BatchNavEnv: simulator-style neighbour maths, the panoramic action space, teacher and stepping."""

import math

import numpy as np
import pytest

from prevalent.data import load_r2r
from prevalent.env import (
    IGNORE_ACTION,
    VIEW_ELEVATIONS,
    VIEW_HEADINGS,
    BatchNavEnv,
    InMemoryFeatureStore,
    NavGraph,
    NavGraphs,
    angle_feature,
    heading_toward,
    wrap_angle,
)


@pytest.fixture(scope="module")
def real_graphs(vln_data):
    return NavGraphs(vln_data / "connectivity")


def _toy():
    # facing +y (heading 0): "r" is to the right (+x), "f" ahead, "b" behind, "u" ahead and 1 m up
    graph = NavGraph.from_edges(
        "toy",
        {"o": (0, 0, 1.5), "r": (2, 0, 1.5), "f": (0, 2, 1.5), "b": (0, -2, 1.5), "u": (0, 3, 2.5)},
        [("o", "r"), ("o", "f"), ("o", "b"), ("o", "u")],
    )
    return {"toy": graph}


def test_relative_direction_follows_the_simulator_convention():
    graph = _toy()["toy"]
    assert graph.relative_direction("o", "f")[0] == pytest.approx(0.0)
    assert graph.relative_direction("o", "r")[0] == pytest.approx(math.pi / 2)  # clockwise = right
    assert graph.relative_direction("o", "b")[0] == pytest.approx(math.pi)  # (−π, π]
    assert graph.relative_direction("o", "r", heading=math.pi / 2)[0] == pytest.approx(0.0)
    rel_h, rel_e, dist = graph.relative_direction("o", "u", elevation=0.1)
    assert rel_e == pytest.approx(math.atan2(1, 3) - 0.1)
    assert dist == pytest.approx(math.sqrt(10))


def test_real_neighbours_are_straight_ahead_after_turning_toward_them(real_graphs):
    for scan in real_graphs.available_scans():
        graph = real_graphs[scan]
        for a in graph.viewpoints[::5]:
            for b in graph.neighbour_ids(a):
                rel_heading, rel_elevation, distance = graph.relative_direction(
                    a, b, heading_toward(graph, a, b)
                )
                assert rel_heading == pytest.approx(0.0, abs=1e-9)
                dx, dy, dz = graph.position(b) - graph.position(a)
                assert rel_elevation == pytest.approx(math.atan2(dz, math.hypot(dx, dy)))
                assert distance == pytest.approx(float(np.linalg.norm([dx, dy, dz])))


def test_after_turning_toward_a_neighbour_its_candidate_is_ahead(real_graphs):
    graph = real_graphs["JF19kD82Mey"]
    pairs = [(a, b) for a in graph.viewpoints[::3] for b in graph.neighbour_ids(a)]
    env = BatchNavEnv(real_graphs)
    env.reset(
        ["JF19kD82Mey"] * len(pairs), [a for a, _ in pairs], [heading_toward(graph, a, b) for a, b in pairs]
    )
    for (_, b), ep, cands in zip(pairs, env.episodes, env.candidates()):
        cand = next(c for c in cands if c.viewpoint == b)
        assert abs(cand.rel_heading) <= math.radians(15) + 1e-9  # the heading is snapped to the 30° grid
        assert cand.view_index % 12 == ep.view_index % 12  # it sits in a view straight ahead


def test_candidates_attach_each_neighbour_to_its_closest_view(real_graphs):
    scan = "17DRP5sb8fy"
    graph = real_graphs[scan]
    env = BatchNavEnv(real_graphs, angle_feature_size=8)
    starts = graph.viewpoints
    headings = np.linspace(0, 2 * np.pi, len(starts), endpoint=False)
    env.reset([scan] * len(starts), starts, headings)
    for ep, cands in zip(env.episodes, env.candidates()):
        assert cands[0].is_stop and cands[0].viewpoint == ep.viewpoint
        assert sorted(c.viewpoint for c in cands[1:]) == sorted(graph.neighbour_ids(ep.viewpoint))
        for c in cands[1:]:
            absolute = heading_toward(graph, ep.viewpoint, c.viewpoint)
            dx, dy, dz = graph.position(c.viewpoint) - graph.position(ep.viewpoint)
            elevation = math.atan2(dz, math.hypot(dx, dy))
            brute = min(
                range(36),
                key=lambda ix: math.hypot(
                    wrap_angle(absolute - VIEW_HEADINGS[ix]), elevation - VIEW_ELEVATIONS[ix]
                ),
            )
            assert c.view_index == brute
            assert c.rel_heading == pytest.approx(wrap_angle(absolute - ep.heading))
            assert c.rel_elevation == pytest.approx(elevation)
            np.testing.assert_allclose(
                c.angle_feature, angle_feature(c.rel_heading, c.rel_elevation, 8), atol=1e-6
            )


def test_moving_faces_the_candidate_view_and_puts_the_previous_viewpoint_behind(real_graphs):
    scan = "Pm6F8kyY3z2"
    graph = real_graphs[scan]
    env = BatchNavEnv(real_graphs)
    env.reset([scan] * len(graph), graph.viewpoints, [0.0] * len(graph))
    origins = [ep.viewpoint for ep in env.episodes]
    cands = env.candidates()
    chosen = [c[1] for c in cands]
    env.step([1] * len(graph))
    for ep, origin, cand in zip(env.episodes, origins, chosen):
        assert ep.viewpoint == cand.viewpoint
        assert ep.heading == VIEW_HEADINGS[cand.view_index]
        assert ep.elevation == VIEW_ELEVATIONS[cand.view_index]
        back = next(c for c in env.candidates()[env.episodes.index(ep)] if c.viewpoint == origin)
        assert abs(back.rel_heading) >= math.radians(165) - 1e-9  # within half a view step of behind


def test_reset_snaps_headings_to_the_view_grid(real_graphs):
    env = BatchNavEnv(real_graphs)
    graph = real_graphs["s8pcmisQ38h"]
    env.reset(["s8pcmisQ38h"], [graph.viewpoints[0]], [math.radians(44)], instr_ids=["x"])
    assert env.episodes[0].heading == pytest.approx(math.radians(30))
    assert env.episodes[0].view_index == 13
    assert env.trajectories() == [
        {"instr_id": "x", "trajectory": [[graph.viewpoints[0], env.episodes[0].heading, 0.0]]}
    ]


def test_teacher_walks_real_r2r_paths_to_their_goals(real_graphs, vln_data):
    episodes = load_r2r(vln_data / "R2R" / "R2R_val_seen.json")
    env = BatchNavEnv(real_graphs)
    env.reset([e.scan for e in episodes], [e.start for e in episodes], [e.heading for e in episodes])
    goals = [e.goal for e in episodes]
    for _ in range(20):
        if env.all_ended:
            break
        actions = env.teacher_actions(goals)
        assert all(a == IGNORE_ACTION for a, ep in zip(actions, env.episodes) if ep.ended)
        env.step(actions)
    assert env.all_ended
    assert np.all(env.distances_to(goals) == 0)
    for ep, episode in zip(env.episodes, episodes):
        walked = [step[0] for step in ep.trajectory]
        assert real_graphs[ep.scan].path_length(walked) == pytest.approx(episode.distance, abs=0.01)


def test_teacher_heads_for_the_nearest_goal_of_a_region():
    env = BatchNavEnv(_toy())
    env.reset(["toy"], ["r"], [0.0])
    actions = env.teacher_actions([["f", "b"]])
    assert env.candidates()[0][actions[0]].viewpoint == "o"
    env.step(actions)
    assert env.nearest_goal(0, ["u", "f"]) == "f"


def test_stop_ends_an_episode_and_later_actions_are_ignored():
    env = BatchNavEnv(_toy())
    env.reset(["toy", "toy"], ["o", "o"], [0.0, 0.0], instr_ids=["a", "b"])
    env.step([0, 1])
    assert env.episodes[0].ended and not env.episodes[1].ended
    env.step([3, 0])
    assert env.episodes[0].viewpoint == "o"
    assert env.all_ended
    assert env.teacher_actions(["f", "f"]).tolist() == [IGNORE_ACTION, IGNORE_ACTION]
    subs = env.trajectories()
    assert [s["instr_id"] for s in subs] == ["a", "b"]
    assert len(subs[0]["trajectory"]) == 1 and len(subs[1]["trajectory"]) == 2


def test_out_of_range_actions_are_rejected():
    env = BatchNavEnv(_toy())
    env.reset(["toy"], ["o"], [0.0])
    with pytest.raises(ValueError, match="out of range"):
        env.step([9])
    two = BatchNavEnv(_toy())
    two.reset(["toy", "toy"], ["o", "o"], [0.0, 0.0])
    with pytest.raises(ValueError, match="action -3 out of range"):
        two.step([1, -3])
    assert [ep.viewpoint for ep in two.episodes] == ["o", "o"]  # nobody moved
    with pytest.raises(ValueError, match="1 episodes"):
        env.step([1, 1])


def test_observe_packs_view_features_and_angle_features():
    graphs = _toy()
    rng = np.random.default_rng(0)
    store = InMemoryFeatureStore({("toy", vp): rng.normal(size=(36, 6)) for vp in graphs["toy"].viewpoints})
    env = BatchNavEnv(graphs, store, angle_feature_size=4)
    env.reset(["toy", "toy"], ["o", "r"], [0.0, 0.0])
    obs = env.observe()
    assert obs.candidate_features.shape == (2, 5, 10)
    assert obs.candidate_mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    assert obs.panorama_features.shape == (2, 36, 10)
    assert not obs.candidate_features[:, 0].any()  # STOP row is left to the model
    for k, cand in enumerate(env.candidates()[0][1:], start=1):
        np.testing.assert_allclose(obs.candidate_features[0, k, :6], store["toy", "o"][cand.view_index])
        np.testing.assert_allclose(obs.candidate_features[0, k, 6:], cand.angle_feature)
    np.testing.assert_allclose(obs.panorama_features[1, :, :6], store["toy", "r"])
    assert obs.num_candidates.tolist() == [5, 2]


def test_bounded_action_space_cache_gives_the_same_walk(real_graphs):
    graph = real_graphs["s8pcmisQ38h"]
    starts = graph.viewpoints[:8]
    walks = []
    for limit in (4, 50_000):
        env = BatchNavEnv(real_graphs, max_cached_action_spaces=limit)
        env.reset(["s8pcmisQ38h"] * len(starts), starts, [1.0] * len(starts))
        rng = np.random.default_rng(0)
        for _ in range(10):
            env.step([int(rng.integers(1, len(c))) if len(c) > 1 else 0 for c in env.candidates()])
        assert len(env._action_spaces) <= limit
        walks.append(env.trajectories())
    assert walks[0] == walks[1]
