"""Language: templated route instructions, navigator questions and find-object requests.

Instructions follow a path: an opening turn relative to the start heading, room exits and entries,
turns with landmarks, and a stop landmark, each drawn from paraphrase tables.
"""

from __future__ import annotations

import math

import numpy as np

from prevalent.data.synthetic.houses import House
from prevalent.env.angles import wrap_angle

_TURN_WORDS = {
    "left": ["turn left", "make a left", "go left", "take a left"],
    "right": ["turn right", "make a right", "go right", "take a right"],
    "around": ["turn around", "turn all the way around", "face the other way"],
    "straight": ["walk forward", "go straight ahead", "head straight", "walk straight"],
}
_EXIT = ["exit the {room}", "leave the {room}", "walk out of the {room}", "go out of the {room}"]
_ENTER = ["enter the {room}", "go into the {room}", "walk into the {room}", "continue into the {room}"]
_THROUGH = ["walk through the {room}", "cross the {room}", "go across the {room}"]
_PASS = ["pass the {obj}", "walk past the {obj}", "go by the {obj}"]
_STOP = [
    "stop next to the {obj}",
    "wait by the {obj}",
    "stop in front of the {obj}",
    "stop when you reach the {obj}",
    "stand near the {obj} and stop",
]
_STOP_ROOM = ["stop in the {room}", "wait inside the {room}", "stop once you are in the {room}"]
_JOIN = [", then ", " and ", ". ", ", "]
_QUESTIONS = [
    "which way should i go?",
    "where do i go now?",
    "should i go left or right?",
    "do i keep going?",
    "which direction now?",
    "am i close? where next?",
]
_FIND = [
    "find the {obj} in the {room}",
    "go to the {room} and find the {obj}",
    "look for a {obj} in the {room}",
    "the {obj} is in the {room}, please find it",
]


def _turn_word(rel_heading: float) -> str:
    """left/right/around/straight for a heading change (positive = clockwise = right)."""
    if abs(rel_heading) < math.radians(35):
        return "straight"
    if abs(rel_heading) > math.radians(140):
        return "around"
    return "right" if rel_heading > 0 else "left"


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _nearest_object(house: House, k: int, radius: float = 2.5) -> str | None:
    room = house.rooms[house.viewpoint_rooms[k]]
    px, py, _ = house.positions[k]
    best = min(room.objects, key=lambda o: math.hypot(o[1] - px, o[2] - py), default=None)
    if best is None or math.hypot(best[1] - px, best[2] - py) > radius:
        return None
    return best[0]


def describe_path(
    house: House,
    path: list[str],
    heading: float,
    rng: np.random.Generator,
    stop: bool = True,
    stop_object: str | None = None,
) -> str:
    """A templated instruction for ``path`` starting at ``heading`` (radians).

    It says the opening turn, each room exit/entry, turns of more than 35° with a nearby landmark,
    and where to stop (next to ``stop_object`` when given, else an object near the goal, else in the
    goal's room).
    """
    rows = [house.viewpoints.index(vp) for vp in path]
    pos = house.positions
    clauses: list[str] = []
    current_heading = heading
    for step in range(len(rows) - 1):
        a, b = rows[step], rows[step + 1]
        move_heading = math.atan2(pos[b, 0] - pos[a, 0], pos[b, 1] - pos[a, 1])
        turn = _turn_word(float(wrap_angle(move_heading - current_heading)))
        room_a = house.rooms[house.viewpoint_rooms[a]]
        room_b = house.rooms[house.viewpoint_rooms[b]]
        big_turn = abs(float(wrap_angle(move_heading - current_heading))) > math.radians(50)
        if step == 0 or (big_turn and room_a.index == room_b.index):
            landmark = _nearest_object(house, a) if step > 0 else None
            words = _pick(rng, _TURN_WORDS[turn])
            if landmark and turn in ("left", "right") and rng.random() < 0.6:
                words += f" at the {landmark}"
            clauses.append(words)
        if room_a.index != room_b.index:
            if rng.random() < 0.5:
                clauses.append(_pick(rng, _EXIT).format(room=room_a.room_type))
            clauses.append(_pick(rng, _ENTER).format(room=room_b.room_type))
        elif step == 1 and rng.random() < 0.3:
            clauses.append(_pick(rng, _THROUGH).format(room=room_a.room_type))
        elif rng.random() < 0.2:
            landmark = _nearest_object(house, b)
            if landmark and landmark != _nearest_object(house, rows[-1]):
                clauses.append(_pick(rng, _PASS).format(obj=landmark))
        current_heading = move_heading
    if stop:
        landmark = stop_object or _nearest_object(house, rows[-1])
        if landmark:
            clauses.append(_pick(rng, _STOP).format(obj=landmark))
        else:
            clauses.append(
                _pick(rng, _STOP_ROOM).format(room=house.rooms[house.viewpoint_rooms[rows[-1]]].room_type)
            )
    text = clauses[0]
    for clause in clauses[1:]:
        joiner = _pick(rng, _JOIN)
        text += joiner + (clause[0].upper() + clause[1:] if joiner == ". " else clause)
    return text[0].upper() + text[1:] + "."


def navigator_question(rng: np.random.Generator) -> str:
    """What an NDH navigator asks when unsure of the way."""
    return _pick(rng, _QUESTIONS)


def find_request(rng: np.random.Generator, obj: str, room: str) -> str:
    """A HANNA find-object request for ``obj`` in a room of type ``room``."""
    return _pick(rng, _FIND).format(obj=obj, room=room)
