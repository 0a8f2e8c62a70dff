"""The machinery every check shares: cases, calling the student's function safely, comparing
outputs and writing feedback a student can act on.

A check runs the student's function and the reference on the same inputs (each a :class:`Case`),
compares the outputs, and, where they differ, tries known wrong variants of the formula on that
input: when the student's output equals one, the feedback names the mistake.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["FAIL_MARK", "PASS_MARK", "Case", "CheckResult", "StudentRaised"]

#: First word of the report line a check prints (the grader reads these).
PASS_MARK = "[PASS]"
FAIL_MARK = "[FAIL]"
_MAX_LISTED = 3  # failing cases named besides the first one


@dataclass
class CheckResult:
    """What a check found.

    ``passed``: every case agreed with the reference; ``n_cases``/``n_failed``: how many inputs
    were tried / disagreed; ``messages``: the feedback, one paragraph per item (the first is the
    summary line starting with ``[PASS]`` or ``[FAIL]``). ``bool(result)`` is ``passed``.
    """

    name: str
    passed: bool
    n_cases: int
    n_failed: int = 0
    messages: list[str] = field(default_factory=list)

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
    hint: str | list[str] | None


def run_check(
    name: str,
    student_fn: Callable[..., Any],
    cases: Sequence[Case],
    *,
    run: Callable[[Callable[..., Any], Case, tuple, dict], Any],
    reference: Callable[..., Any],
    compare: Callable[[Any, Any, Case], str | None],
    diagnose: Callable[[Any, Case, Any], str | list[str] | None] | None = None,
    error_hint: Callable[[BaseException, Case], str | None] | None = None,
    success: str = "",
    strict: bool = False,
    verbose: bool = True,
    after: Callable[[list[tuple[Case, Any, Any]]], str | None] | None = None,
) -> CheckResult:
    """Run ``student_fn`` and ``reference`` on every case and collect the feedback.

    ``run(fn, case, args, kwargs)`` calls ``fn`` (the reference, or the student's function
    wrapped so that its exceptions come out as :class:`StudentRaised`) and returns what is
    compared; ``compare(expected, got, case)`` returns None or what differs;
    ``diagnose(got, case, expected)`` may name the mistake (a hint or a list of hints;
    ``error_hint(exception, case)`` when the function raised); ``after(outcomes)`` (the cases
    that ran, with expected and actual outputs) may return a failure that only shows across
    cases, such as an answer that ignores its input. With ``strict`` a failure raises
    ``AssertionError`` carrying the feedback.
    """
    if not callable(student_fn):
        raise TypeError(f"{name}: expected your function, got {type(student_fn).__name__}")
    failures: list[_Failure] = []
    outcomes: list[tuple[Case, Any, Any]] = []

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
                    hint = error_hint(e.error, case)
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
        outcomes.append((case, expected, got))
        detail = compare(expected, got, case)
        if detail is not None:
            hint = None
            if diagnose is not None:
                try:
                    hint = diagnose(got, case, expected)
                except Exception:  # noqa: BLE001 - a diagnosis is a bonus, never a crash
                    hint = None
            failures.append(_Failure(case, detail, hint))
    extra = after(outcomes) if after is not None else None
    n = len(cases)
    if not failures and extra is None:
        msg = f"{PASS_MARK} {name}: all {n} case{'s' if n != 1 else ''} agree with the reference"
        result = CheckResult(name, True, n, 0, [msg + (f" ({success})" if success else "") + "."])
    else:
        result = CheckResult(
            name, False, n, len(failures), _failure_messages(name, n, failures, extra)
        )
    if verbose and (result.passed or not strict):
        print(result.report())
    if strict and not result.passed:
        raise AssertionError(result.report())
    return result


def _failure_messages(name: str, n: int, failures: list[_Failure], extra: str | None) -> list[str]:
    if not failures:
        return [f"{FAIL_MARK} {name}: every case matched the reference, but:", "  " + str(extra)]
    msgs = [f"{FAIL_MARK} {name}: {len(failures)} of {n} case(s) differ from the reference."]
    first = failures[0]
    msgs.append(f"  First failing input: {first.case.label}")
    msgs.append("    " + first.detail)
    hints: list[str] = [extra] if extra else []
    for f in failures:
        for h in [f.hint] if isinstance(f.hint, str) else (f.hint or []):
            if h and h not in hints:
                hints.append(h)
    for h in hints:
        msgs.append("  Hint: " + h)
    others = failures[1:]
    if others:
        listed = "; ".join(f.case.label for f in others[:_MAX_LISTED])
        more = f" and {len(others) - _MAX_LISTED} more" if len(others) > _MAX_LISTED else ""
        msgs.append(f"  Also failing: {listed}{more}.")
    return msgs


def seeds(seed: int, n: int) -> list[int]:
    """``n`` case seeds derived from ``seed`` (so a failing case can be named by its seed)."""
    return [seed * 1000 + i for i in range(n)]
