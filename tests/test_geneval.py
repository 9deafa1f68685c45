"""GenEval scoring on hand-written detections: every tag and each partial-credit branch, expected values worked
out here from the rules in docs/algorithms.md §6.2."""

import pytest

from unirl_jax.rewards.geneval import Detection, Settings, evaluate, relative_position, select


def det(x0, y0, x1, y1, score=0.8, color=None):
  return Detection((x0, y0, x1, y1), score, color)


LEFT, RIGHT = det(0, 0, 10, 10), det(30, 0, 40, 10)  # centres 30 px apart on x, sizes 10


def check(detections, metadata, score, strict, correct):
  r = evaluate(detections, metadata)
  assert r.score == pytest.approx(score) and (r.strict_correct, r.correct) == (strict, correct), r


def test_relative_position_by_hand():
  # offset (-30, 0); shrunk by 0.1 x (10 + 10) = 2 -> (-28, 0); / |offset| = 30 -> dx -0.93: left of
  assert relative_position(LEFT, RIGHT) == {"left of"}
  assert relative_position(RIGHT, LEFT) == {"right of"}
  # offset (-10, -10), shrunk by 2 each -> (-8, -8) / 14.14 = -0.57 on both: left of and above
  assert relative_position(det(0, 0, 10, 10), det(10, 10, 20, 20)) == {"left of", "above"}
  # overlapping: |offset| 1 < margin 2 -> no relation
  assert relative_position(det(0, 0, 10, 10), det(1, 0, 11, 10)) == set()


def test_select_thresholds_orders_and_caps():
  dets = {"cat": [det(0, 0, 1, 1, s) for s in (0.2, 0.95, 0.5)], "dog": [det(0, 0, 1, 1, 0.1)]}
  assert [d.score for d in select(dets, "single_object")["cat"]] == [0.95, 0.5]
  assert "dog" not in select(dets, "single_object")
  assert [d.score for d in select(dets, "counting")["cat"]] == [0.95]  # 0.9 for counting prompts
  many = {"cup": [det(0, 0, 1, 1, 0.5 + i / 100) for i in range(20)]}
  assert len(select(many, "counting", Settings(counting_threshold=0.3))["cup"]) == 16


def test_single_object():
  meta = {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}
  check({"cat": [det(0, 0, 5, 5)]}, meta, 1.0, True, True)
  check({"cat": [det(0, 0, 5, 5, 0.2)]}, meta, 0.0, False, False)  # below the 0.3 threshold
  # two cats: partial 1 - |1 - 2| / 1 = 0; GenEval only needs at least one
  check({"cat": [det(0, 0, 5, 5), det(9, 9, 12, 12)]}, meta, 0.0, False, True)


def test_two_object():
  meta = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]}
  check({"cat": [LEFT], "dog": [RIGHT]}, meta, 1.0, True, True)
  check({"cat": [LEFT]}, meta, 0.5, False, False)  # mean of 1 and 1 - |1 - 0| / 1 = 0


def test_counting_with_exclude():
  meta = {"tag": "counting", "include": [{"class": "apple", "count": 3}], "exclude": [{"class": "apple", "count": 4}]}
  three = [det(i * 20, 0, i * 20 + 10, 10, 0.95) for i in range(3)]
  check({"apple": three + [det(90, 0, 99, 9, 0.5)]}, meta, 1.0, True, True)  # the 0.5 one is below 0.9
  # four confident apples: partial 1 - 1/3; exact count wrong; GenEval: >= 3 found but the exclude (>= 4) fails
  check({"apple": three + [det(90, 0, 99, 9, 0.95)]}, meta, 2 / 3, False, False)
  check({"apple": three[:2]}, meta, 2 / 3, False, False)


def test_colors():
  meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
  check({"car": [det(0, 0, 9, 9, color="red")]}, meta, 1.0, True, True)  # parts [1, 1]
  check({"car": [det(0, 0, 9, 9, color="blue")]}, meta, 0.5, False, False)  # parts [1, 0]
  check({}, meta, 0.0, False, False)  # parts [0, 0]: count wrong, and the colour clause scores 0


def test_color_with_the_wrong_count_scores_zero_for_the_colour():
  meta = {"tag": "colors", "include": [{"class": "car", "count": 2, "color": "red"}]}
  # parts [1 - |2 - 1| / 2, 0]
  check({"car": [det(0, 0, 9, 9, color="red")]}, meta, 0.25, False, False)
  # two cars, one red: parts [1, 1 - |2 - 1| / 2]
  check({"car": [det(0, 0, 9, 9, color="red"), det(20, 0, 29, 9, 0.7, color="green")]}, meta, 0.75, False, False)


def test_color_attr():
  meta = {"tag": "color_attr", "include": [{"class": "bus", "count": 1, "color": "blue"},
                                           {"class": "bench", "count": 1, "color": "green"}]}
  check({"bus": [det(0, 0, 9, 9, color="blue")], "bench": [det(20, 0, 29, 9, color="green")]}, meta, 1.0, True, True)
  # parts [1, 1, 1, 0]
  check({"bus": [det(0, 0, 9, 9, color="blue")], "bench": [det(20, 0, 29, 9, color="red")]}, meta, 0.75, False,
        False)


def test_position():
  meta = {"tag": "position", "include": [{"class": "dog", "count": 1},
                                         {"class": "cat", "count": 1, "position": ["left of", 0]}]}
  check({"dog": [RIGHT], "cat": [LEFT]}, meta, 1.0, True, True)  # parts [1, 1, 1]
  # wrong side: the original appends 0 for the failing pair and then 1 -> parts [1, 1, 0, 1]
  check({"dog": [LEFT], "cat": [RIGHT]}, meta, 0.75, False, False)
  # no dog: parts [0, 1, 0] (the target group is unmatched)
  check({"cat": [LEFT]}, meta, 1 / 3, False, False)


def test_unknown_tag_and_missing_colours_are_named():
  with pytest.raises(ValueError, match="tag 'shapes'"):
    evaluate({}, {"tag": "shapes", "include": []})
  with pytest.raises(ValueError, match="colour of 'car'"):
    evaluate({"car": [det(0, 0, 9, 9)]}, {"tag": "colors", "include": [{"class": "car", "count": 1,
                                                                        "color": "red"}]})
