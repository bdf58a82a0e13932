"""Language: templated route instructions, navigator questions and find-object requests.

Route descriptions follow a path: an opening turn relative to the start heading, room exits and
entries, turns with landmarks, and a stop landmark, each drawn from the paraphrase tables of one
template family (:class:`Phrasing`): :data:`INSTRUCTION` for R2R instructions and :data:`DIALOG`
for what the out-of-domain tasks say (NDH oracle answers, HANNA help).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from prevalent.data.synthetic.houses import House
from prevalent.env.angles import wrap_angle


@dataclass(frozen=True)
class Phrasing:
    """One template family: the paraphrase tables a route description is drawn from."""

    turn: dict[str, list[str]]
    turn_landmark: str  # appended to a left/right turn: where to turn
    exit: list[str]
    enter: list[str]
    through: list[str]
    pass_by: list[str]
    stop: list[str]
    stop_room: list[str]
    join: list[str]


#: R2R route instructions — also the only text PREVALENT's pre-training triplets carry.
INSTRUCTION = Phrasing(
    turn={
        "left": ["turn left", "make a left", "go left", "take a left"],
        "right": ["turn right", "make a right", "go right", "take a right"],
        "around": ["turn around", "turn all the way around", "face the other way"],
        "straight": ["walk forward", "go straight ahead", "head straight", "walk straight"],
    },
    turn_landmark=" at the {obj}",
    exit=["exit the {room}", "leave the {room}", "walk out of the {room}", "go out of the {room}"],
    enter=["enter the {room}", "go into the {room}", "walk into the {room}", "continue into the {room}"],
    through=["walk through the {room}", "cross the {room}", "go across the {room}"],
    pass_by=["pass the {obj}", "walk past the {obj}", "go by the {obj}"],
    stop=[
        "stop next to the {obj}",
        "wait by the {obj}",
        "stop in front of the {obj}",
        "stop when you reach the {obj}",
        "stand near the {obj} and stop",
    ],
    stop_room=["stop in the {room}", "wait inside the {room}", "stop once you are in the {room}"],
    join=[", then ", " and ", ". ", ", "],
)

#: How the out-of-domain tasks talk: NDH oracle answers and HANNA help. A different family — other
#: verbs, other turn phrases, other joints, no "stop" — so that the pre-trained encoder has not read
#: this language and "out of domain" means something (only world words, rooms and objects, are shared).
DIALOG = Phrasing(
    turn={
        "left": ["hang a left", "swing left", "bear left", "veer to your left"],
        "right": ["hang a right", "swing right", "bear right", "veer to your right"],
        "around": ["spin around", "double back", "reverse direction"],
        "straight": ["keep going", "carry on ahead", "continue onward", "keep moving ahead"],
    },
    turn_landmark=" near the {obj}",
    exit=["get out of the {room}", "head out of the {room}", "step outside the {room}"],
    enter=["head into the {room}", "step inside the {room}", "make your way to the {room}"],
    through=["keep going through the {room}", "move along the {room}"],
    pass_by=["go beyond the {obj}", "you will see the {obj} on the way"],
    stop=[
        "the {obj} should be right there",
        "you are done when you see the {obj}",
        "look for the {obj}, that is the spot",
        "you made it once you see the {obj}",
    ],
    stop_room=["you are done in the {room}", "that is the {room}, you made it"],
    join=[" and then ", ", after that ", " and after that ", "; "],
)

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
    phrasing: Phrasing = INSTRUCTION,
) -> str:
    """A templated instruction for ``path`` starting at ``heading`` (radians).

    It says the opening turn, each room exit/entry, turns of more than 35° with a nearby landmark,
    and where to stop (next to ``stop_object`` when given, else an object near the goal, else in the
    goal's room), in the template family ``phrasing``.
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
            words = _pick(rng, phrasing.turn[turn])
            if landmark and turn in ("left", "right") and rng.random() < 0.6:
                words += phrasing.turn_landmark.format(obj=landmark)
            clauses.append(words)
        if room_a.index != room_b.index:
            if rng.random() < 0.5:
                clauses.append(_pick(rng, phrasing.exit).format(room=room_a.room_type))
            clauses.append(_pick(rng, phrasing.enter).format(room=room_b.room_type))
        elif step == 1 and rng.random() < 0.3:
            clauses.append(_pick(rng, phrasing.through).format(room=room_a.room_type))
        elif rng.random() < 0.2:
            landmark = _nearest_object(house, b)
            if landmark and landmark != _nearest_object(house, rows[-1]):
                clauses.append(_pick(rng, phrasing.pass_by).format(obj=landmark))
        current_heading = move_heading
    if stop:
        landmark = stop_object or _nearest_object(house, rows[-1])
        if landmark:
            clauses.append(_pick(rng, phrasing.stop).format(obj=landmark))
        else:
            goal_room = house.rooms[house.viewpoint_rooms[rows[-1]]].room_type
            clauses.append(_pick(rng, phrasing.stop_room).format(room=goal_room))
    text = clauses[0]
    for clause in clauses[1:]:
        joiner = _pick(rng, phrasing.join)
        text += joiner + (clause[0].upper() + clause[1:] if joiner == ". " else clause)
    return text[0].upper() + text[1:] + "."


def navigator_question(rng: np.random.Generator) -> str:
    """What an NDH navigator asks when unsure of the way."""
    return _pick(rng, _QUESTIONS)


def find_request(rng: np.random.Generator, obj: str, room: str) -> str:
    """A HANNA find-object request for ``obj`` in a room of type ``room``."""
    return _pick(rng, _FIND).format(obj=obj, room=room)
