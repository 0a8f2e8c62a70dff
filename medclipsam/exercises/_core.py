"""The machinery every check shares: cases, calling the student's function safely, comparing
outputs and writing feedback a student can act on.

A check runs the student's function and the reference on the same inputs (each a :class:`Case`),
compares the outputs, and, where they differ, tries known wrong variants of the formula on that
input: when the student's output equals one, the feedback names the mistake.

Naming a mistake follows three rules, so that hints never contradict each other:

* **exclusive**: a failing case gets at most one hint: of the named mistakes that reproduce the
  student's output there, the one that explains the most failing cases (ties: the first in the
  order the check lists them, most specific first);
* **consistent**: a case *speaks against* a named mistake when the variant's output differs from
  the right answer there and the student's (finite, usable) output differs from the variant's; a
  mistake is ruled out when as many cases speak against it as failing cases it explains. A
  pooled Dice therefore never gets the hint "images with two empty masks were left out",
  although the two agree on an input with one empty pair (the inputs where they differ speak
  against it), while a second slip on one input (say a near-constant channel) does not hide the
  mistake that explains all the others;
* only when no named mistake explains a failing case may the check's ``diagnose`` add one
  hint of another kind (an overflow, a NaN from 0 / 0, a right value with a wrong gradient).
"""

from __future__ import annotations

import copy
import functools
import inspect
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import _record

__all__ = ["FAIL_MARK", "PASS_MARK", "Case", "CheckResult", "StudentRaised"]

#: A named wrong variant on one case: (the hint naming the mistake, the variant's output on the
#: case's inputs, or None where the variant is undefined, e.g. 0 / 0).
Mistake = tuple[str, Any]

#: First word of the report line a check prints (the grader reads these).
PASS_MARK = "[PASS]"
FAIL_MARK = "[FAIL]"
_MAX_LISTED = 3  # failing cases named besides the first one


@dataclass
class CheckResult:
    """What a check found.

    ``passed``: every case agreed with the reference; ``n_cases``/``n_failed``: how many inputs
    were tried / disagreed; ``messages``: the feedback, one paragraph per item (the first is the
    summary line starting with ``[PASS]`` or ``[FAIL]``); ``hints``: the distinct hints given
    (at most one per failing case, see the module docstring). ``bool(result)`` is ``passed``.
    """

    name: str
    passed: bool
    n_cases: int
    n_failed: int = 0
    messages: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.passed

    def report(self) -> str:
        """The feedback as one printable text."""
        return "\n".join(self.messages)

    def __str__(self) -> str:
        return self.report()


@dataclass
class Case:
    """One input: ``args``/``kwargs`` for the function, a ``label`` saying what it is (shapes,
    seed, the edge case it tests) and ``extra`` data the comparison may need."""

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


class StudentRaised(Exception):
    """The student's function raised ``error``."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


def invoke(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the student's ``fn``; an exception it raises comes out as :class:`StudentRaised`."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - any error of the student's code is feedback
        raise StudentRaised(e) from e


def describe_exception(e: BaseException) -> str:
    """``"ValueError: message (at line 12: `x = ...`)"`` for an exception of student code."""
    text = f"{type(e).__name__}: {e}".rstrip(": ")
    frames = traceback.extract_tb(e.__traceback__)
    inner = [f for f in frames if "medclipsam/exercises" not in f.filename.replace("\\", "/")]
    if inner:
        f = inner[-1]
        where = f"line {f.lineno}" + (f" of {f.name}()" if f.name not in ("<module>", "") else "")
        if f.line:
            where += f": `{f.line.strip()}`"
        text += f"\n    (raised at {where})"
    if isinstance(e, NotImplementedError):
        text += (
            "\n    Not written yet: replace `raise NotImplementedError()` with your code and "
            "run the cell again."
        )
    return text


# --------------------------------------------------------------------------------------------
# formatting and comparing values


def fmt(value: Any, precision: int = 4) -> str:
    """A short text form of a number, array or tensor."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return fmt(value.item(), precision)
        return np.array2string(
            value,
            precision=precision,
            suppress_small=True,
            threshold=40,
            max_line_width=96,
            separator=", ",
        )
    if isinstance(value, float):
        return f"{value:.{precision + 2}g}"
    return repr(value)


def indent(text: str, n: int) -> str:
    """``text`` with every line after the first indented by ``n`` spaces (for feedback)."""
    return text.replace("\n", "\n" + " " * n)


def shape_of(x: Any) -> tuple[int, ...] | None:
    """The shape of a tensor or array (None for anything else)."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return tuple(x.shape)
    return None


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def compare_arrays(
    expected: Any,
    got: Any,
    *,
    rtol: float,
    atol: float,
    what: str = "output",
    show_values: bool = False,
) -> str | None:
    """None when ``got`` matches ``expected`` (shape and values), else what differs."""
    e, g = to_numpy(expected), to_numpy(got)
    if e.shape != g.shape:
        return f"wrong shape: expected {what} of shape {e.shape}, got {g.shape}"
    if not np.issubdtype(g.dtype, np.number) and g.dtype != bool:
        return f"{what} has dtype {g.dtype}; expected numbers"
    e64, g64 = e.astype(np.float64), g.astype(np.float64)
    bad = ~np.isfinite(g64) & np.isfinite(e64)
    if bad.any():
        n = int(bad.sum())
        return (
            f"{what} has {n} NaN/inf value(s) where finite values were expected "
            f"(first at index {tuple(int(i) for i in np.argwhere(bad)[0])})"
        )
    if e64.size == 0:
        return None
    close = np.isclose(g64, e64, rtol=rtol, atol=atol, equal_nan=True)
    if close.all():
        return None
    diff = np.abs(np.where(np.isfinite(e64), g64 - e64, 0.0))
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
    lines = [
        f"wrong values in the {what}: max abs difference {float(diff.max()):.3g} "
        f"({int((~close).sum())} of {close.size} value(s) outside the tolerance)"
    ]
    if e64.ndim:
        lines[0] += f", largest at index {tuple(int(i) for i in idx)}"
    if show_values or e64.size <= 12:
        lines.append(f"expected: {indent(fmt(e), 14)}")
        lines.append(f"got:      {indent(fmt(g), 14)}")
    else:
        lines.append(f"there: expected {fmt(e64[idx])}, got {fmt(g64[idx])}")
    return "\n    ".join(lines)


def same_values(a: Any, b: Any, rtol: float = 1e-6, atol: float = 1e-8) -> bool:
    """True when ``a`` and ``b`` have one shape and close values (no exception on odd input)."""
    try:
        x, y = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    except (TypeError, ValueError):
        return False
    return x.shape == y.shape and bool(np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True))


def _copy_args(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return copy.deepcopy(args), copy.deepcopy(kwargs)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a.detach(), b.detach()))
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return True


# --------------------------------------------------------------------------------------------
# running a check


@dataclass
class _Failure:
    case: Case
    detail: str
    hint: str | None


def _first(hint: str | Sequence[str] | None) -> str | None:
    """One hint from what a ``diagnose`` or ``error_hint`` returned (the first of a list)."""
    if isinstance(hint, str) or hint is None:
        return hint or None
    return next((h for h in hint if h), None)


def default_matches(output: Any, variant: Any, case: Case) -> bool | None:
    """Whether ``output`` equals ``variant`` (one shape, close values); None when ``output`` is
    no evidence either way (not numbers, or NaN/inf somewhere)."""
    try:
        x = to_numpy(output).astype(np.float64)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(x).all():
        return None
    return same_values(x, variant)


def name_mistakes(
    outcomes: Sequence[tuple[Case, Any, Any, bool]],
    mistakes: Callable[[Case], Sequence[Mistake]],
    matches: Callable[[Any, Any, Case], bool | None],
) -> dict[int, str]:
    """The named mistake of each failing outcome (by its index in ``outcomes``), if any.

    ``outcomes``: ``(case, expected, got, failed)`` for every case the student's function ran on;
    ``mistakes(case)``: the named wrong variants on that case, most specific first (the same
    list, in the same order, on every case; None as the output where a variant is undefined);
    ``matches(output, variant, case)``: True/False, or None when ``output`` says nothing.
    A variant counts on a case only where it differs from the right answer; it is ruled out when
    the cases where it counts and the student's output differs from it are at least as many as
    the failing cases it explains (module docstring).
    """
    evidence: list[list[tuple[str, bool]]] = []
    against: dict[str, int] = {}
    order: dict[str, int] = {}  # a mistake's place in the check's list (most specific first)
    for case, expected, got, _ in outcomes:
        here: list[tuple[str, bool]] = []
        try:
            variants = list(mistakes(case))
        except Exception:  # noqa: BLE001 - a hint is a bonus, never a crash
            variants = []
        for place, (hint, variant) in enumerate(variants):
            order.setdefault(hint, place)
            if variant is None:
                continue
            try:
                if matches(expected, variant, case) is not False:
                    continue  # the variant gives the right answer here: no evidence
                verdict = matches(got, variant, case)
            except Exception:  # noqa: BLE001
                continue
            if verdict is None:
                continue
            here.append((hint, bool(verdict)))
            if not verdict:
                against[hint] = against.get(hint, 0) + 1
        evidence.append(here)
    # Among the mistakes not ruled out, the one that explains the most failing cases comes
    # first (ties: the order the check lists them in, most specific first); each failing case
    # gets the first of them that reproduces its output.
    explains: dict[str, int] = {}
    for (_, _, _, failed), here in zip(outcomes, evidence):
        for h, ok in here:
            if failed and ok:
                explains[h] = explains.get(h, 0) + 1
    rank = {h: (-n, order[h]) for h, n in explains.items() if n > against.get(h, 0)}
    named: dict[int, str] = {}
    for i, ((_, _, _, failed), here) in enumerate(zip(outcomes, evidence)):
        fits = [h for h, ok in here if ok and h in rank]
        if failed and fits:
            named[i] = min(fits, key=rank.__getitem__)
    return named


def run_check(
    name: str,
    student_fn: Callable[..., Any],
    cases: Sequence[Case],
    *,
    run: Callable[[Callable[..., Any], Case, tuple, dict], Any],
    reference: Callable[..., Any],
    compare: Callable[[Any, Any, Case], str | None],
    mistakes: Callable[[Case], Sequence[Mistake]] | None = None,
    matches: Callable[[Any, Any, Case], bool | None] = default_matches,
    diagnose: Callable[[Any, Case, Any], str | list[str] | None] | None = None,
    error_hint: Callable[[BaseException, Case], str | None] | None = None,
    success: str = "",
    strict: bool = False,
    verbose: bool = True,
    after: Callable[[list[tuple[Case, Any, Any]]], str | None] | None = None,
    graded: Sequence[Callable[..., Any]] | None = None,
) -> CheckResult:
    """Run ``student_fn`` and ``reference`` on every case and collect the feedback.

    ``run(fn, case, args, kwargs)`` calls ``fn`` (the reference, or the student's function
    wrapped so that its exceptions come out as :class:`StudentRaised`) and returns what is
    compared; ``compare(expected, got, case)`` returns None or what differs.
    ``mistakes(case)`` lists the named wrong variants on a case, most specific first, and
    ``matches(output, variant, case)`` says whether an output equals one (see
    :func:`name_mistakes`: one hint per failing case, and never for a mistake that another case
    shows the code did not make). Where no named mistake explains a failing case,
    ``diagnose(got, case, expected)`` may give one hint of another kind (``error_hint(exception,
    case)`` when the function raised). ``after(outcomes)`` (the cases that ran, with expected
    and actual outputs) may return a failure that only shows across cases, such as an answer
    that ignores its input. With ``strict`` a failure raises ``AssertionError`` carrying the
    feedback. In a grading run the result is recorded for the grader (:mod:`._record`), with
    whether ``graded`` (the student's functions, default ``[student_fn]``) are the package's own.
    """
    if not callable(student_fn):
        raise TypeError(f"{name}: expected your function, got {type(student_fn).__name__}")
    failures: list[_Failure] = []
    ran: list[tuple[Case, Any, Any, bool]] = []
    ran_failure: dict[int, _Failure] = {}

    def student(*a: Any, **k: Any) -> Any:
        return invoke(student_fn, *a, **k)

    for case in cases:
        expected = run(reference, case, *_copy_args(case.args, case.kwargs))
        args, kwargs = _copy_args(case.args, case.kwargs)
        try:
            got = run(student, case, args, kwargs)
        except StudentRaised as e:
            hint = None
            if error_hint is not None:
                try:
                    hint = _first(error_hint(e.error, case))
                except Exception:  # noqa: BLE001 - a hint is a bonus, never a crash
                    hint = None
            failures.append(
                _Failure(case, "your function raised " + describe_exception(e.error), hint)
            )
            continue
        except Exception as e:  # noqa: BLE001 - the returned value could not be used
            failures.append(
                _Failure(
                    case,
                    f"the value your function returned could not be used: {type(e).__name__}: {e}",
                    None,
                )
            )
            continue
        if not (_equal(args, case.args) and _equal(kwargs, case.kwargs)):
            failures.append(
                _Failure(
                    case,
                    "your function changed its input in place (e.g. an "
                    "in-place operation such as `x /= ...`, `.relu_()` "
                    "or `x[...] = ...`); work on a copy",
                    None,
                )
            )
            continue
        detail = compare(expected, got, case)
        if detail is not None:
            failure = _Failure(case, detail, None)
            failures.append(failure)
            ran_failure[len(ran)] = failure
        ran.append((case, expected, got, detail is not None))
    named = name_mistakes(ran, mistakes, matches) if mistakes is not None else {}
    for i, failure in ran_failure.items():
        if i in named:
            failure.hint = named[i]
        elif diagnose is not None:
            case, expected, got, _ = ran[i]
            try:
                failure.hint = _first(diagnose(got, case, expected))
            except Exception:  # noqa: BLE001 - a diagnosis is a bonus, never a crash
                failure.hint = None
    extra = after([(c, e, g) for c, e, g, _ in ran]) if after is not None else None
    n = len(cases)
    if not failures and extra is None:
        msg = f"{PASS_MARK} {name}: all {n} case{'s' if n != 1 else ''} agree with the reference"
        result = CheckResult(name, True, n, 0, [msg + (f" ({success})" if success else "") + "."])
    else:
        messages, hints = _failure_messages(name, n, failures, extra)
        result = CheckResult(name, False, n, len(failures), messages, hints)
    _record.write_record(
        name, result.passed, n, is_package_code(graded if graded is not None else [student_fn])
    )
    if verbose and (result.passed or not strict):
        print(result.report())
    if strict and not result.passed:
        raise AssertionError(result.report())
    return result


def is_package_code(functions: Sequence[Callable[..., Any]]) -> bool:
    """Whether ``functions`` is empty or one of them is defined in this package (the reference
    checked against itself, e.g. ``check_boxes(ex.reference.mask_to_boxes)``)."""
    if not functions:
        return True
    for fn in functions:
        while isinstance(fn, functools.partial):
            fn = fn.func
        fn = inspect.unwrap(fn) if callable(fn) else fn
        module = getattr(fn, "__module__", None) or type(fn).__module__ or ""
        if module == "medclipsam" or module.startswith("medclipsam."):
            return True
    return False


def _failure_messages(
    name: str, n: int, failures: list[_Failure], extra: str | None
) -> tuple[list[str], list[str]]:
    """The report's lines and the distinct hints, in the order of the first case each explains
    (a hint that only shows across cases, ``extra``, first)."""
    if not failures:
        return (
            [f"{FAIL_MARK} {name}: every case matched the reference, but:", "  " + str(extra)],
            [str(extra)],
        )
    msgs = [f"{FAIL_MARK} {name}: {len(failures)} of {n} case(s) differ from the reference."]
    first = failures[0]
    msgs.append(f"  First failing input: {first.case.label}")
    msgs.append("    " + first.detail)
    explained: dict[str, list[str]] = {}
    for f in failures:
        if f.hint:
            explained.setdefault(f.hint, []).append(f.case.label)
    hints = ([extra] if extra else []) + [h for h in explained if h != extra]
    for h in hints:
        labels = explained.get(h, [])
        if not labels or len(labels) == len(failures):
            msgs.append("  Hint: " + h)
        elif len(labels) == 1:
            msgs.append(f'  Hint (for the input "{labels[0]}"): {h}')
        else:
            msgs.append(
                f"  Hint (for {len(labels)} of the {len(failures)} failing inputs, e.g. "
                f'"{labels[0]}"): {h}'
            )
    others = failures[1:]
    if others:
        listed = "; ".join(f.case.label for f in others[:_MAX_LISTED])
        more = f" and {len(others) - _MAX_LISTED} more" if len(others) > _MAX_LISTED else ""
        msgs.append(f"  Also failing: {listed}{more}.")
    return msgs, hints


def seeds(seed: int, n: int) -> list[int]:
    """``n`` case seeds derived from ``seed`` (so a failing case can be named by its seed)."""
    return [seed * 1000 + i for i in range(n)]
