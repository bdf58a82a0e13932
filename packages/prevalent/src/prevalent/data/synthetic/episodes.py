"""Episodes in the real task formats: R2R paths, NDH dialog instances, HANNA find-object requests.

R2R paths are shortest paths of 4–7 viewpoints and at least 4 m, with 3 instructions each. NDH
dialogs split a game into instances at navigator questions ("which way now?"); oracle answers
describe the next ≤ 5 shortest-path steps toward the target object's region. HANNA episodes ask to
find an object in a room; help responses describe the next steps of the route.
"""

from __future__ import annotations

import math

import numpy as np

from prevalent.data.synthetic.houses import House, Room
from prevalent.data.synthetic.language import DIALOG, describe_path, find_request, navigator_question
from prevalent.env.graph import NavGraph


def _sample_path(house: House, graph: NavGraph, rng: np.random.Generator, min_len=4, max_len=7, min_dist=4.0):
    for _ in range(200):
        start = house.viewpoints[int(rng.integers(len(house.viewpoints)))]
        goal = house.viewpoints[int(rng.integers(len(house.viewpoints)))]
        if graph.distance(start, goal) < min_dist:
            continue
        path = graph.shortest_path(start, goal)
        if min_len <= len(path) <= max_len:
            return path
    return None


def r2r_items(
    house: House, graph: NavGraph, n_paths: int, rng: np.random.Generator, first_id: int
) -> list[dict]:
    """``n_paths`` R2R records (3 instructions each) on shortest paths of the house."""
    items = []
    for k in range(n_paths):
        path = _sample_path(house, graph, rng)
        if path is None:
            break
        heading = float(rng.uniform(0, 2 * np.pi))
        items.append(
            {
                "distance": round(graph.path_length(path), 2),
                "scan": house.scan,
                "path_id": first_id + k,
                "path": path,
                "heading": round(heading, 3),
                "instructions": [describe_path(house, path, round(heading, 3), rng) for _ in range(3)],
            }
        )
    return items


def _object_region(house: House, graph: NavGraph, room: Room, obj: tuple, radius: float) -> list[str]:
    members = [vp for k, vp in enumerate(house.viewpoints) if house.viewpoint_rooms[k] == room.index]
    near = [vp for vp in members if math.hypot(*(graph.position(vp)[:2] - np.array(obj[1:3]))) <= radius]
    if not near:
        near = [min(members, key=lambda vp: math.hypot(*(graph.position(vp)[:2] - np.array(obj[1:3]))))]
    return near


def ndh_items(
    house: House, graph: NavGraph, n_games: int, rng: np.random.Generator, first_idx: int
) -> list[dict]:
    """NDH instances from ``n_games`` dialogs: each question point of a game is one instance."""
    items = []
    inst_idx = first_idx
    for game in range(n_games):
        room = house.rooms[int(rng.integers(len(house.rooms)))]
        obj = room.objects[int(rng.integers(len(room.objects)))]
        end_panos = _object_region(house, graph, room, obj, radius=2.5)
        starts = [vp for vp in house.viewpoints if min(graph.distance(vp, e) for e in end_panos) >= 6.0]
        if not starts:
            continue
        position = starts[int(rng.integers(len(starts)))]
        heading = float(rng.uniform(0, 2 * np.pi))
        goal = min(end_panos, key=lambda e: graph.distance(position, e))
        route = graph.shortest_path(position, goal)
        dialog: list[dict] = []
        nav_history: list[str] = []
        turn = 0
        while True:
            planner = route[:5]
            instance_dialog = [dict(t) for t in dialog]
            items.append(
                {
                    "inst_idx": inst_idx,
                    "game_idx": first_idx + game,
                    "scan": house.scan,
                    "target": obj[0],
                    "start_pano": {"heading": round(heading, 6), "elevation": 0.0, "pano": position},
                    "nav_camera": [],
                    "dialog_history": instance_dialog,
                    "nav_history": list(nav_history),
                    "end_panos": end_panos,
                    "planner_path": planner,
                    "player_path": planner,
                }
            )
            inst_idx += 1
            if len(route) <= 5:
                break
            # the navigator walks the planner's steps, then asks; the oracle describes the next steps
            nav_history.extend(route[:4])
            position = route[4]
            heading = _heading_of_arrival(house, route[:5])
            route = route[4:]
            question = navigator_question(rng)
            final = len(route) <= 5
            answer = describe_path(
                house, route[:5], heading, rng, stop=final, stop_object=obj[0], phrasing=DIALOG
            ).lower()
            dialog += [
                {"nav_idx": len(nav_history), "role": "navigator", "message": question},
                {"nav_idx": len(nav_history), "role": "oracle", "message": answer},
            ]
            turn += 1
    return items


def hanna_items(
    house: House, graph: NavGraph, n_items: int, rng: np.random.Generator, prefix: str
) -> list[dict]:
    """HANNA-style find-object episodes with help responses every 4 steps along the route."""
    items = []
    for k in range(n_items):
        room = house.rooms[int(rng.integers(len(house.rooms)))]
        obj = room.objects[int(rng.integers(len(room.objects)))]
        goals = _object_region(house, graph, room, obj, radius=2.0)
        starts = [vp for vp in house.viewpoints if min(graph.distance(vp, g) for g in goals) >= 4.0]
        if not starts:
            continue
        start = starts[int(rng.integers(len(starts)))]
        heading = round(float(rng.uniform(0, 2 * np.pi)), 3)
        path = graph.shortest_path(start, min(goals, key=lambda g: graph.distance(start, g)))
        responses, h = [], heading
        for s in range(0, len(path) - 1, 4):
            segment = path[s : s + 5]
            text = describe_path(
                house, segment, h, rng, stop=segment[-1] == path[-1], stop_object=obj[0], phrasing=DIALOG
            )
            responses.append({"viewpoint": segment[0], "instruction": text, "path": segment})
            h = _heading_of_arrival(house, segment)
        items.append(
            {
                "instr_id": f"{prefix}{k}",
                "scan": house.scan,
                "start": start,
                "heading": heading,
                "target": obj[0],
                "instruction": find_request(rng, obj[0], room.room_type),
                "goal_viewpoints": goals,
                "path": path,
                "help": responses,
            }
        )
    return items


def _heading_of_arrival(house: House, path: list[str]) -> float:
    """The heading (radians) of the last move of ``path``: where the walker faces on arrival."""
    if len(path) < 2:
        return 0.0
    a, b = (house.viewpoints.index(v) for v in path[-2:])
    return float(math.atan2(*(house.positions[b, :2] - house.positions[a, :2])) % (2 * math.pi))
