"""Check results for the grader, in a channel that printed text cannot reach.

When :func:`~medclipsam.exercises.grade_notebooks` runs a submission it writes a *session file*
(a fresh random key and the path of a results file, in a private temporary folder) and starts
the kernel with :data:`SESSION_ENV` naming it. The first cell it runs, before any of the
student's, imports this module, which reads the session file, **deletes it** and takes the
variable out of ``os.environ`` (so a later subprocess does not inherit it); the key is then held
only in a closure. From then on every check (:func:`medclipsam.exercises._core.run_check`)
appends one line per call to the results file: the check's name, whether it passed, how many
cases it ran, whether the functions it checked are the package's own, and a sequence number,
signed with an HMAC-SHA256 under the key. The grader keeps only lines whose signature verifies.
A line is written only when the writer is called by :func:`write_record`, called by
``run_check``, called by a check function of this package (the call stack says so), so calling
either from a notebook cell writes nothing.

Outside a grading run (a student running the notebook) there is no session and nothing is
written. Printing ``[PASS] check_x``, or a ``check_x`` redefined in the notebook, writes no
signed line, so neither counts. What this cannot stop is code that digs the key out of the
kernel's memory or calls the package's private machinery with made-up arguments: the student's
code and the checks share one Python process (see the guide, *What the grader cannot detect*).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import sys
from collections.abc import Callable
from types import FrameType

__all__ = ["SESSION_ENV", "sign", "write_record"]

#: Environment variable naming the session file of a grading run.
SESSION_ENV = "MEDCLIPSAM_GRADING_SESSION"


def sign(key: bytes, body: str) -> str:
    """The HMAC-SHA256 (hex) of ``body`` under ``key``: what a results line carries."""
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


_HERE = os.path.dirname(os.path.abspath(__file__))


def _in_package(frame: FrameType) -> bool:
    return os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _HERE


def _called_by_a_check() -> bool:
    """Whether the writer was called by :func:`write_record`, called by ``run_check``, called
    by a check of this package (and not by code in a notebook)."""
    try:
        # 0: this function, 1: the writer (no comprehension here: it adds a frame before 3.12)
        frames = [sys._getframe(2), sys._getframe(3), sys._getframe(4)]
    except ValueError:
        return False
    names = [f.f_code.co_name for f in frames[:2]]
    return names == ["write_record", "run_check"] and all(_in_package(f) for f in frames)


def _open_session() -> Callable[[dict], None] | None:
    """The writer of this kernel's grading session, or None outside a grading run."""
    path = os.environ.pop(SESSION_ENV, None)
    if not path:
        return None
    try:
        with open(path) as fh:
            session = json.load(fh)
        os.unlink(path)
        key, results = bytes.fromhex(session["key"]), str(session["results"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    seq = itertools.count()

    def write(record: dict) -> None:
        if not _called_by_a_check():
            return
        body = json.dumps({**record, "seq": next(seq)}, sort_keys=True)
        with open(results, "a") as fh:
            fh.write(json.dumps({"record": body, "mac": sign(key, body)}) + "\n")

    return write


_write = _open_session()


def write_record(name: str, passed: bool, n_cases: int, package_code: bool) -> None:
    """Record one check's result for the grader (nothing outside a grading run, nothing when
    not called by ``run_check`` inside a check of this package)."""
    if _write is not None:
        _write(
            {
                "check": name,
                "passed": bool(passed),
                "n_cases": int(n_cases),
                "package_code": bool(package_code),
            }
        )
