"""Autograder of the course exercises (``notebooks/exercises/``).

Each ``check_*`` function calls a student's function and the package's reference implementation
(:mod:`medclipsam.exercises.reference`) on randomised inputs and edge cases, and prints feedback:
which input differs (shapes, seed), how (max abs difference, expected and got values for small
cases, a wrong shape or dtype, the exception raised), and, when the output equals a known wrong
variant, the mistake by name. It returns a :class:`CheckResult`; with ``strict=True`` a failure
raises ``AssertionError`` carrying the feedback (what the notebooks' check cells do).

The checks of each exercise (:data:`EXERCISES`):

* 1, DHN-NCE: :func:`check_hard_negative_weights`, :func:`check_dhn_nce`;
* 2, gScoreCAM: :func:`check_channel_selection`, :func:`check_channel_masks`,
  :func:`check_gscorecam_weights`, :func:`check_combine_maps`, and :func:`check_gscorecam_map`
  (all steps chained on the toy CLIP, against the package's ``gscorecam``);
* 3, boxes: :func:`check_saliency_to_mask`, :func:`check_boxes`;
* 4, weak supervision: :func:`check_mean_dice`, :func:`check_interpretation` (and, not graded,
  :func:`compare_with_table` and :func:`summarize_table`, which the notebook calls).

:func:`grade_notebooks` runs a folder of submitted notebooks and scores each against its
exercise's full list of checks, from the checks' own signed results, not the printed text
(also ``python -m medclipsam.exercises grade SUBMISSIONS/ --out grades/``); the score is feedback,
see :data:`FEEDBACK_NOTE` for what it cannot detect.
"""

from . import reference
from ._core import CheckResult
from .boxes import check_boxes, check_saliency_to_mask
from .dhn_nce import check_dhn_nce, check_hard_negative_weights
from .evaluation import (
    ANSWER_KEYS,
    check_interpretation,
    check_mean_dice,
    compare_with_table,
    format_table,
    summarize_table,
    table_from_reproduce,
    weak_verdict,
)
from .grading import EXERCISES, FEEDBACK_NOTE, grade_notebooks
from .gscorecam import (
    check_channel_masks,
    check_channel_selection,
    check_combine_maps,
    check_gscorecam_map,
    check_gscorecam_weights,
    gscorecam_with,
    layer_activations,
)

__all__ = [
    "ANSWER_KEYS",
    "EXERCISES",
    "FEEDBACK_NOTE",
    "CheckResult",
    "check_boxes",
    "check_channel_masks",
    "check_channel_selection",
    "check_combine_maps",
    "check_dhn_nce",
    "check_gscorecam_map",
    "check_gscorecam_weights",
    "check_hard_negative_weights",
    "check_interpretation",
    "check_mean_dice",
    "check_saliency_to_mask",
    "compare_with_table",
    "format_table",
    "grade_notebooks",
    "gscorecam_with",
    "layer_activations",
    "reference",
    "summarize_table",
    "table_from_reproduce",
    "weak_verdict",
]
