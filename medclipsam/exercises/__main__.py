"""``python -m medclipsam.exercises grade SUBMISSIONS... [--out DIR] [--smoke] [--exercise NAME]``."""

from __future__ import annotations

import argparse
import ast
import os
import sys
import textwrap
from pathlib import Path

from .grading import EXERCISES, FEEDBACK_NOTE, grade_notebooks


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 when every notebook got full marks)."""
    parser = argparse.ArgumentParser(
        prog="python -m medclipsam.exercises", description="Grade submitted exercise notebooks."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="run notebooks and tabulate their checks")
    g.add_argument("paths", nargs="+", help="notebooks, or folders of notebooks")
    g.add_argument("--out", default=None, help="write grades.csv and executed/ notebooks here")
    g.add_argument("--smoke", action="store_true", help="run with SMOKE = True (quick)")
    g.add_argument(
        "--exercise",
        choices=list(EXERCISES),
        default=None,
        help="the exercise every notebook answers (default: from each file name, else its checks)",
    )
    g.add_argument(
        "-p",
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a parameter after the parameters cell (repeatable)",
    )
    g.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    g.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    args = parser.parse_args(argv)

    params: dict = {"SMOKE": True} if args.smoke else {}
    for item in args.parameter:
        if "=" not in item:
            parser.error(f"--parameter expects NAME=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        params[name.strip()] = _value(value.strip())
    try:
        rows = grade_notebooks(
            args.paths,
            parameters=params,
            timeout=args.timeout,
            kernel_name=args.kernel,
            out_dir=args.out,
            exercise=args.exercise,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    width = max(len(r["notebook"]) for r in rows)
    for r in rows:
        print(
            f"{r['notebook']:<{width}}  {r['exercise'] or '?'}  score {r['score']:.2f}  "
            f"({r['passed']} passed, {r['failed']} failed, {r['not_run']} not run)  {r['checks']}"
        )
        for field in ("notes", "errors"):
            if r[field]:
                text = r[field].replace("\n", "\n" + " " * (width + len(field) + 4))
                print(f"{'':<{width}}  {field}: {text}")
    print("\n" + textwrap.fill(FEEDBACK_NOTE, width=100))
    if args.out:
        out = Path(args.out)
        print(
            f"wrote {out / 'grades.csv'} and the executed notebooks in {out / 'executed'}{os.sep}"
        )
    return 0 if all(r["score"] == 1.0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
