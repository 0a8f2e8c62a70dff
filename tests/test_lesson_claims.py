"""The lessons tell the truth: every sentence stating a measured outcome is computed from the
lesson's own table (medclipsam.teaching) and checked against its numbers.

The lessons themselves run once, in tests/test_notebooks.py, which applies
:func:`lesson_claims.claims_problems` to each run; here: the helper, the lesson sources (they call
it, and they no longer carry the hand-written outcomes that their tables contradicted), and the
executed copies in docs/lessons/ where they exist."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
from lesson_claims import LESSONS_WITH_CLAIMS, claims_problems

from medclipsam import teaching

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py"))
COPIES = sorted((ROOT / "docs" / "lessons").glob("[0-9][0-9]_*.ipynb"))

#: Hand-written outcomes the lessons used to state, each contradicted by a table (issue 13).
RETIRED = [
    r"most reliable prompt",
    r"errors are\s+(#\s*)?\*?\*?independent",
    r"drifts to whatever is bright",
    r"about a second per image",
    r"k-means on the\s+(#\s*)?map",
]


def test_compare_names_the_best_and_its_margin_without_a_verdict_from_estimates():
    c = teaching.compare(
        {"a": {"mean": 0.7, "ci_low": 0.6, "ci_high": 0.8}, "b": (0.65, 0.55, 0.75), "c": 0.1}
    )
    assert c["winner"] == "a" and c["runner_up"] == "b" and abs(c["margin"] - 0.05) < 1e-12
    assert c["paired"] is None and "no test of the difference" in c["text"] and "overlap" not in c["text"]
    assert teaching.check_claim(c) == []
    low = teaching.compare({"x": 3.0, "y": 5.0}, what="seconds", higher_is_better=False)
    assert low["winner"] == "x" and "lowest seconds" in low["text"]
    assert "tie" in teaching.compare({"x": 0.5, "y": 0.5})["text"]
    with pytest.raises(ValueError):
        teaching.compare({"only": 1.0})
    with pytest.raises(ValueError, match="same images"):
        teaching.compare({"a": [0.1, 0.2, 0.3, 0.4], "b": [0.1, 0.2]}, paired=True)


def test_compare_on_the_same_images_uses_the_paired_difference():
    # b wins on every image by a little, but the two separate intervals overlap widely: the paired
    # difference tells them apart, where the overlap rule could not
    rng = np.random.default_rng(0)
    a = rng.uniform(0.2, 0.9, 30)
    b = a + rng.uniform(0.01, 0.03, 30)
    c = teaching.compare({"a": a, "b": b})
    assert c["winner"] == "b" and c["paired"]["wins"] == 30 and c["paired"]["n"] == 30
    assert abs(c["paired"]["mean"] - float(np.mean(b - a))) < 1e-12
    assert c["paired"]["ci_low"] > 0 and "lies above 0" in c["text"]
    assert c["results"]["a"]["high"] > c["results"]["b"]["low"]  # the separate intervals overlap
    assert teaching.check_claim(c) == []
    noise = teaching.compare({"a": a, "b": a + rng.normal(0, 0.05, 30)})
    assert noise["paired"]["ci_low"] < 0 < noise["paired"]["ci_high"] and "cannot tell" in noise["text"]
    # lower is better: the winner's improvement is positive
    t = teaching.compare({"fast": b - 0.5, "slow": b}, what="seconds", higher_is_better=False)
    assert t["winner"] == "fast" and t["paired"]["mean"] > 0 and teaching.check_claim(t) == []
    forged = dict(c, text=c["text"].replace("lies above 0", "includes 0"))
    assert any("verdict" in p for p in teaching.check_claim(forged))


def test_versus_paper_lists_every_pair_the_toy_orders_differently():
    paper = {"m2ib": 77.6, "gscorecam": 60.5, "gradcam": 30.1}
    same = teaching.versus_paper({"m2ib": 0.8, "gscorecam": 0.7, "gradcam": 0.1}, paper)
    assert same["agrees"] and "the toy agrees with the paper" in same["text"]
    flipped = teaching.versus_paper({"m2ib": 0.5, "gscorecam": 0.4, "gradcam": 0.9}, paper)
    assert not flipped["agrees"]
    assert sorted(map(tuple, flipped["flipped"])) == [("gscorecam", "gradcam"), ("m2ib", "gradcam")]
    assert "disagrees" in flipped["text"] and teaching.check_claim(flipped) == []


def test_check_claim_catches_a_claim_its_numbers_contradict():
    c = teaching.compare({"a": (0.9, 0.85, 0.95), "b": (0.2, 0.1, 0.3)})
    c["results"]["b"]["mean"] = 0.99  # the table changed, the sentence did not
    assert any("scores better" in p for p in teaching.check_claim(c))
    v = teaching.versus_paper({"a": 1.0, "b": 0.0}, {"a": 2.0, "b": 1.0})
    v["toy"]["b"] = 5.0
    assert teaching.check_claim(v)
    s = teaching.share(3, 20, of="images")
    assert s["text"].startswith("3 of 20 (15 %)") and teaching.check_claim(s) == []
    with pytest.raises(AssertionError, match="contradicts"):
        teaching.state(c)


def test_state_records_the_claims_in_the_output_for_the_tests():
    c = teaching.compare({"a": 0.5, "b": 0.25})
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x")]
    nb.cells[0].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="a 0.500\nb 0.250\n"),
        nbformat.v4.new_output(
            "display_data", data={"text/plain": c["text"], teaching.MIME: {"claims": [c]}}
        ),
    ]
    nbformat.validate(nb)
    assert teaching.claims_in(nb) == [c]
    assert claims_problems(nb, "03_x") == []
    nb.cells[0].outputs[0]["text"] = "a 0.500\n"  # b's number never printed
    assert any("0.250" in p for p in claims_problems(nb, "03_x"))
    nb.cells[0].outputs = []
    assert claims_problems(nb, "03_x") == ["03_x: states no computed take-away (medclipsam.teaching.state)"]


@pytest.mark.parametrize("path", SOURCES, ids=[p.stem for p in SOURCES])
def test_lesson_sources_compute_their_take_aways(path):
    text = path.read_text()
    for pattern in RETIRED:
        assert not re.search(pattern, text, flags=re.I), f"{path.name}: says {pattern!r}"
    if path.name.startswith(LESSONS_WITH_CLAIMS):
        assert "state(" in text, f"{path.name}: its take-aways are not computed (teaching.state)"


@pytest.mark.parametrize("path", COPIES, ids=[p.stem for p in COPIES])
def test_executed_copies_state_only_what_their_outputs_show(path):
    nb = nbformat.read(path, as_version=4)
    if not teaching.claims_in(nb) and path.name.startswith(LESSONS_WITH_CLAIMS):
        pytest.skip(f"{path.name} predates the computed take-aways (rerun scripts/execute_lessons.py)")
    assert claims_problems(nb, path.stem) == []
