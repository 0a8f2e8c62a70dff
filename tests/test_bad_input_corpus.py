"""The bad-input corpus (``tests/bad_inputs.py``) through the library: every case is read,
refused clearly or flagged; none is unclear, skipped in silence, wrong or hung. The command-line
half is ``benchmarks/bad_input_corpus.py`` (minutes: it loads models)."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
from bad_inputs import FAILING, OUTCOMES, classify_library, write_corpus

LIBRARY_GROUPS = ("images", "masks", "pairs", "dicom", "nifti", "captions", "sam", "litemedsam",
                  "clip", "clip_dir", "archives")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "c", quick=True)


def test_the_corpus_covers_every_group(corpus):
    groups = Counter(c.group for c in corpus)
    assert set(groups) == set(LIBRARY_GROUPS)
    assert len(corpus) >= 100 and len({c.name for c in corpus}) == len(corpus)


def test_the_library_is_never_unclear_or_silent_on_the_corpus(corpus):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcomes = [classify_library(c, timeout=120) for c in corpus]
    counts = Counter(o.outcome for o in outcomes)
    bad = [f"{o.case}: {o.outcome}: {o.detail}" for o in outcomes if o.outcome in FAILING]
    assert not bad, "\n".join(bad)
    assert set(counts) <= set(OUTCOMES)
    assert counts["ok"] > 20 and counts["clear error"] > 50 and counts["flagged"] >= 3
