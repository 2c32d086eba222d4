"""What every answer of a model must satisfy, one named check each: check_model's table.

A check reads one Response and the size of the image it answers (as shown,
after EXIF orientation, at full size) and yields one line per thing wrong,
naming the face and the value. A new field of the contract gets its check
here, as one function and one row of ANSWER_PROPERTIES.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from emotion.contract import Expression, Landmarks, Point, Response, Result

#: How far the seven probabilities of a face may sum from 1: float32 rounding.
SUM_TOLERANCE = 1e-3
#: How close two answers' numbers must be to count as the same answer: float
#: noise, far below a pixel or a visible change in a probability.
SAME_TOLERANCE = 1e-4

Check = Callable[[Response, tuple[int, int]], Iterator[str]]
#: Landmarks' fields, in the contract's order.
_LANDMARKS = tuple(Landmarks.__dataclass_fields__)


@dataclass(frozen=True)
class AnswerProperty:
    """A property of each answer: its name (as failures and ``skip=`` name it) and its check."""

    name: str
    check: Check


def scores(expression: Expression) -> dict[str, float]:
    """The seven values of an expression, by label, unset ones as 0."""
    values = expression.to_dict(include_default_values=True)
    return {label: float(value) for label, value in values.items()}


def probabilities_in_range(response: Response, size: tuple[int, int]) -> Iterator[str]:
    for index, result in enumerate(response.response):
        if result.expression is None:
            continue
        for label, value in scores(result.expression).items():
            if not 0.0 <= value <= 1.0:  # NaN fails too
                yield f"face {index}: {label} is {value:g}"


def probabilities_sum_to_one(response: Response, size: tuple[int, int]) -> Iterator[str]:
    """A face whose expression has any value set claims a distribution: its values sum to 1."""
    for index, result in enumerate(response.response):
        if result.expression is None:
            continue
        values = scores(result.expression)
        total = sum(values.values())
        if any(values.values()) and not abs(total - 1.0) <= SUM_TOLERANCE:
            yield f"face {index}: the seven values sum to {total:g}"


def boxes_inside(response: Response, size: tuple[int, int]) -> Iterator[str]:
    width, height = size
    for index, result in enumerate(response.response):
        box = result.bbox
        if box is None:
            continue
        shown = f"face {index}: box ({box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g})"
        if not all(math.isfinite(v) for v in (box.x1, box.y1, box.x2, box.y2)):
            yield f"{shown} is not finite"
        elif not (0 <= box.x1 <= box.x2 <= width and 0 <= box.y1 <= box.y2 <= height):
            yield f"{shown} is not within 0 <= x1 <= x2 <= {width}, 0 <= y1 <= y2 <= {height}"


def confidence_in_range(response: Response, size: tuple[int, int]) -> Iterator[str]:
    """A detector's confidence, where a model sets one, is a probability."""
    for index, result in enumerate(response.response):
        if result.confidence is not None and not 0.0 <= result.confidence <= 1.0:
            yield f"face {index}: confidence is {result.confidence:g}"


def landmarks(result: Result) -> Iterator[tuple[str, Point]]:
    """A face's landmarks that are set, by name."""
    if result.landmarks is None:
        return
    for name in _LANDMARKS:
        point = getattr(result.landmarks, name)
        if point is not None:
            yield name, point


def landmarks_inside(response: Response, size: tuple[int, int]) -> Iterator[str]:
    width, height = size
    for index, result in enumerate(response.response):
        for name, point in landmarks(result):
            shown = f"face {index}: {name} ({point.x:g}, {point.y:g})"
            if not (math.isfinite(point.x) and math.isfinite(point.y)):
                yield f"{shown} is not finite"
            elif not (0 <= point.x <= width and 0 <= point.y <= height):
                yield f"{shown} is not within 0 <= x <= {width}, 0 <= y <= {height}"


#: Every answer's properties, in the order they are checked.
ANSWER_PROPERTIES: tuple[AnswerProperty, ...] = (
    AnswerProperty("probabilities in [0, 1]", probabilities_in_range),
    AnswerProperty("probabilities sum to 1", probabilities_sum_to_one),
    AnswerProperty("boxes inside the image", boxes_inside),
    AnswerProperty("confidence in [0, 1] where set", confidence_in_range),
    AnswerProperty("landmarks inside the image", landmarks_inside),
)


def differences(first: Response, then: Response) -> list[str]:
    """What differs between two answers beyond float noise, one line each; none if the same."""
    if len(first.response) != len(then.response):
        return [f"{len(first.response)} faces, then {len(then.response)}"]
    found = []
    for index, (a, b) in enumerate(zip(first.response, then.response, strict=True)):
        for field, value_a, value_b in _numbers(a, b):
            if not math.isclose(value_a, value_b, rel_tol=SAME_TOLERANCE, abs_tol=SAME_TOLERANCE):
                found.append(f"face {index}: {field} {value_a:g}, then {value_b:g}")
    return found


def describe(response: Response) -> str:
    """An answer in one line: each face's box and its most likely expression."""
    if not response.response:
        return "no face"
    faces = []
    for result in response.response:
        box = result.bbox
        where = f"({box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g})" if box else "no box"
        if result.expression is None:
            faces.append(f"{where} no expression")
            continue
        values = scores(result.expression)
        top = max(values, key=values.__getitem__)
        faces.append(f"{where} {top} {values[top]:.4g}")
    return f"{len(faces)} face{'s' if len(faces) != 1 else ''}: " + "; ".join(faces)


def _numbers(a: Result, b: Result) -> Iterator[tuple[str, float, float]]:
    """(field, first, then) for each number of two faces' boxes and expressions."""
    for name in ("x1", "y1", "x2", "y2"):
        yield f"box {name}", float(getattr(a.bbox, name, 0.0)), float(getattr(b.bbox, name, 0.0))
    values_a = scores(a.expression) if a.expression is not None else {}
    values_b = scores(b.expression) if b.expression is not None else {}
    for label in dict.fromkeys([*values_a, *values_b]):
        yield label, values_a.get(label, 0.0), values_b.get(label, 0.0)
    yield "confidence", a.confidence or 0.0, b.confidence or 0.0
    points_a, points_b = dict(landmarks(a)), dict(landmarks(b))
    for name in dict.fromkeys([*points_a, *points_b]):
        point_a, point_b = points_a.get(name, Point()), points_b.get(name, Point())
        yield f"{name} x", point_a.x, point_b.x
        yield f"{name} y", point_a.y, point_b.y
