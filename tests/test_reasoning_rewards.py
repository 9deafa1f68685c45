"""The reasoning rewards on hand-written completions: the R1 format (nested, missing, reordered tags), accuracy
(LaTeX, fractions, \\boxed{}, units, multiple-choice letters, wrong answers) and the overlong penalty."""

import numpy as np
import pytest

from unirl_jax import rewards
from unirl_jax.rewards import RewardInputs
from unirl_jax.rewards import reasoning

FORMAT = [
    ("<think>2+2 is 4</think><answer>4</answer>", 1.0),
    ("<think>\nadd them\n</think>\n<answer>\n4\n</answer>\n", 1.0),  # newlines inside and between: fine
    ("  <think>a</think>  <answer>4</answer>  ", 1.0),
    ("<answer>4</answer>", 0.0),  # no thinking
    ("<think>2+2 is 4</think>", 0.0),  # no answer
    ("<think>a</think><answer></answer>", 0.0),  # empty answer
    ("<answer>4</answer><think>a</think>", 0.0),  # reversed
    ("<think>a<think>b</think></think><answer>4</answer>", 0.0),  # nested think
    ("<think>a</think><answer><answer>4</answer></answer>", 0.0),  # nested answer
    ("<think>a</think><answer>4</answer> and more text", 0.0),  # trailing text
    ("so <think>a</think><answer>4</answer>", 0.0),  # leading text
    ("<think>a</think><answer>4</answer><answer>5</answer>", 0.0),  # two answers
    ("<think>a</think><answer>4", 0.0),  # unclosed
]


@pytest.mark.parametrize("completion,want", FORMAT)
def test_format(completion, want):
  got = rewards.get("think_format")(RewardInputs(None, ["q"], completions=[completion]))
  assert got.tolist() == [want]


ACCURACY = [
    # (completion, gold answer, choices, correct)
    ("<think>.</think><answer>42</answer>", "42", None, True),
    ("<think>.</think><answer>41</answer>", "42", None, False),
    ("<think>.</think><answer>$\\frac{1}{2}$</answer>", "0.5", None, True),
    ("<think>.</think><answer>1/2</answer>", "\\frac{1}{2}", None, True),
    ("<think>.</think><answer>2/3</answer>", "\\frac{1}{2}", None, False),
    ("The area is \\boxed{\\frac{3}{4}}.", "$\\frac{3}{4}$", None, True),  # no tags: the boxed answer counts
    ("<think>.</think><answer>\\boxed{12}</answer>", "The total is \\boxed{12}.", None, True),  # MATH solution
    ("<think>.</think><answer>5 cm</answer>", "5", None, True),  # units
    ("<think>.</think><answer>5\\text{ cm}</answer>", "5", None, True),
    ("<think>.</think><answer>1,000</answer>", "1000", None, True),
    ("<think>.</think><answer>x = 3</answer>", "3", None, True),
    ("<think>.</think><answer> 3 </answer>", "<answer> 3 </answer>", None, True),  # gold in answer tags
    ("<think>it is 7</think><answer>8</answer>", "7", None, False),  # the thinking does not count
    ("<think>.</think><answer>B</answer>", "B", ["3", "4", "5", "6"], True),
    ("<think>.</think><answer>(b)</answer>", "B", ["3", "4", "5", "6"], True),
    ("<think>.</think><answer>B. 4</answer>", "B", ["3", "4", "5", "6"], True),
    ("<think>.</think><answer>The answer is C</answer>", "B", ["3", "4", "5", "6"], False),
    ("<think>.</think><answer>4</answer>", "B", ["3", "4", "5", "6"], True),  # the option's text
    ("<think>.</think><answer>5</answer>", "B", ["3", "4", "5", "6"], False),
    ("<think>.</think><answer>E</answer>", "B", ["3", "4", "5", "6"], False),  # no such option
    ("<think>.</think><answer>A</answer>", "(A)", None, True),  # a one-letter gold without choices
    ("<think>.</think><answer>Red.</answer>", "red", None, True),  # not math: normalised exact match
    ("<think>.</think><answer>blue</answer>", "red", None, False),
    ("<think>.</think><answer>two circles</answer>", "Two  circles", None, True),
]


@pytest.mark.parametrize("completion,gold,choices,correct", ACCURACY)
def test_accuracy(completion, gold, choices, correct):
  meta = {"answer": gold} | ({"choices": choices} if choices else {})
  got = rewards.get("accuracy")(RewardInputs(None, ["q"], completions=[completion], metadata=[meta]))
  assert got.tolist() == [float(correct)]


def test_accuracy_names_a_row_without_an_answer():
  with pytest.raises(ValueError, match="row 1 has no answer"):
    rewards.get("accuracy")(RewardInputs(None, ["q", "q"], completions=["4", "4"],
                                         metadata=[{"answer": "4"}, {"question": "q"}]))


def test_overlong_penalty_is_zero_then_linear_to_minus_one():
  x = RewardInputs(None, ["q"] * 5, completions=[""] * 5, completion_lengths=np.array([10, 96, 112, 128, 128]),
                   completion_budget=128)
  np.testing.assert_allclose(rewards.get("overlong")(x), [0.0, 0.0, -0.5, -1.0, -1.0])
  with pytest.raises(ValueError, match="'overlong' needs `completion_lengths`"):
    rewards.get("overlong")(RewardInputs(None, ["q"], completions=[""]))


def test_components_are_logged_and_summed():
  x = RewardInputs(None, ["q", "q"], completions=["<think>a</think><answer>4</answer>", "4"],
                   metadata=[{"answer": "4"}, {"answer": "5"}])
  total, parts = rewards.score("think_format:0.5,accuracy", x)
  assert parts["think_format"].tolist() == [1.0, 0.0] and parts["accuracy"].tolist() == [1.0, 0.0]
  assert total.tolist() == [1.5, 0.0]


def test_extract_answer_takes_the_last_block():
  assert reasoning.extract_answer("<answer>1</answer> then <answer> 2 </answer>") == "2"
  assert reasoning.extract_answer("no tags, 7") == "no tags, 7"
