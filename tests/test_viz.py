"""What a reader of the figures sees: one colour legend for every lesson, and everything drawn
visible on the black frame of an ultrasound picture."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from medclipsam.viz import (  # noqa: E402
    COLOURS,
    PROMPT_LEGEND,
    SALIENCY_LABEL,
    draw_points,
    legend_handles,
    overlay,
    result_figure,
    sample_grid,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _legend_labels(fig) -> list[str]:
    return [t.get_text() for lg in fig.legends for t in lg.get_texts()]


def _result(h=64, w=64):
    mask = np.zeros((h, w), bool)
    mask[20:40, 20:40] = True
    return SimpleNamespace(
        coarse_mask=mask, mask=mask, saliency=np.linspace(0, 1, h * w).reshape(h, w),
        boxes=np.array([[18.0, 18.0, 42.0, 42.0]]), points=np.array([[[30.0, 30.0], [5.0, 5.0]]]),
        point_labels=np.array([[1, 0]]), prompt="a finding", sam_score=0.9, flags=(),
    )


def test_a_coarse_mask_on_a_black_frame_is_bright_and_not_the_sam_mask_colour():
    black = np.zeros((64, 64), np.uint8)
    region = np.zeros((64, 64), bool)
    region[8:56, 8:40] = True
    drawn = overlay(black, coarse=region).astype(int)
    # the hatch and the outline draw the legend's colour itself, not a dark tint of it
    assert (np.abs(drawn[region] - COLOURS["coarse mask"]).sum(axis=1) == 0).mean() > 0.25
    assert not drawn[~region].any()  # nothing outside the mask
    sam = overlay(black, region).astype(int)
    assert not np.array_equal(sam, drawn)


def test_points_are_drawn_in_their_legend_colours_with_a_black_rim():
    img = np.full((64, 64, 3), 255, np.uint8)
    draw_points(img, [(20, 20), (40, 40), (10, 50)], [1, 0, -1])
    assert tuple(img[20, 20]) == COLOURS["positive point"]
    assert tuple(img[40, 40]) == COLOURS["negative point"]
    assert tuple(img[20 - 2, 20]) == (0, 0, 0)  # the rim
    assert tuple(img[50, 10]) == (255, 255, 255)  # label -1: padding, not drawn


def test_the_result_figure_shows_the_one_legend_and_a_labelled_colour_bar():
    image = np.full((64, 64), 128, np.uint8)
    fig = result_figure(image, _result(), gt=_result().mask)
    assert _legend_labels(fig) == list(PROMPT_LEGEND)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert SALIENCY_LABEL in labels
    # without a ground truth, the legend does not explain an outline that is not drawn
    fig = result_figure(image, _result())
    assert "ground truth (outline)" not in _legend_labels(fig)


def test_a_legend_item_can_rename_a_colour_and_unknown_names_are_refused():
    handles = legend_handles([("pseudo-label (SAM mask)", "SAM mask"), "coarse mask"])
    assert [h.get_label() for h in handles] == ["pseudo-label (SAM mask)", "coarse mask"]
    assert handles[1].get_hatch()  # drawn hatched, as overlay draws a coarse mask
    with pytest.raises(ValueError, match="unknown legend entry"):
        legend_handles(["sam mask"])


def test_a_missing_panel_is_an_empty_cell_with_its_title_and_the_colour_bar_can_say_where():
    img = np.zeros((8, 8, 3), np.uint8)
    fig = sample_grid([img, None], ["image", "m2ib: not run"], ncols=2, colorbar="saliency (left)")
    first, second = fig.axes[:2]
    assert first.images and not second.images  # no copy of another panel
    assert [t.get_text() for t in second.texts] == ["m2ib: not run"]  # short: one line
    assert "saliency (left)" in [ax.get_ylabel() for ax in fig.axes]


def _timing_rows(sam3_seconds: float) -> list[dict]:
    row = {"dice": 0.5, "dice_ci": (0.4, 0.6)}
    return [
        {**row, "backend": "LiteMedSAM", "method": "MedCLIP-SAM + LiteMedSAM",
         "s_per_image": 1.4, "s_segmenter": 1.0},
        # the whole time is the segmenter's: per-image means may differ in the last digit
        {**row, "backend": "SAM 3", "method": "SAM 3, text only",
         "s_per_image": sam3_seconds, "s_segmenter": sam3_seconds * (1 + 1e-9)},
    ]


def test_the_fastest_row_keeps_its_bar_on_the_log_time_axis_and_zero_is_written():
    from medclipsam.compare import comparison_figure

    fig = comparison_figure(_timing_rows(0.0199))
    time_ax = fig.axes[1]
    lo, hi = time_ax.get_xlim()
    widths = [p.get_x() + p.get_width() for p in time_ax.patches if p.get_y() < 1 < p.get_y() + p.get_height()]
    assert max(widths) == pytest.approx(0.0199) and lo < 0.0199 < hi  # the SAM 3 row's bar is there
    assert all(p.get_width() >= 0 for p in time_ax.patches)
    texts = [t.get_text() for t in time_ax.texts]
    assert texts == ["1.40 s", "0.02 s"]

    fig = comparison_figure(_timing_rows(0.0))
    assert [t.get_text() for t in fig.axes[1].texts] == ["1.40 s", "0 s"]
    assert "segmenter (SAM 3, text only: no saliency)" in _legend_labels(fig)


def test_a_title_keeps_its_own_line_breaks_and_long_lines_wrap_to_the_cell():
    img = np.zeros((8, 8, 3), np.uint8)
    long = "per_component, 2 component(s): 2 box(es) and some more words to wrap"
    fig = sample_grid([img, img], ["largest\nDice 0.70", long], ncols=2, cell_size=2.0)
    first, second = (ax.get_title() for ax in fig.axes[:2])
    assert first == "largest\nDice 0.70"
    assert all(len(line) <= 26 for line in second.split("\n")) and second.count("\n") >= 2
