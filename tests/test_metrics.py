"""Metrics on hand-worked examples (README "Evaluation"), each expected value computed by hand in the comments."""

from __future__ import annotations

import pytest

from sphinx_x.eval import metrics as M
from sphinx_x.eval.vqa_normalize import normalize_vqa_answer


# ---- VQA normalisation (official rules) --------------------------------------------------------
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("two", "2"),
        ("Ten", "10"),
        ("none", "0"),
        ("a dog", "dog"),
        ("The cat", "cat"),
        ("an apple", "apple"),
        ("dont", "don't"),
        ("isnt it", "isn't it"),
        ("couldnt've", "couldn't've"),
        ("Dog.", "dog"),  # a period not followed by a digit goes
        ("yes!", "yes"),
        ("what?", "what"),
        ("1.5", "1.5"),  # a period before a digit stays
        ("1,000", "1000"),  # digit-comma-digit: marks are deleted, so the number stays one token
        ("black/white", "black white"),  # no space next to the mark and no number comma: mark -> space
        ("red, white", "red white"),  # ", " touches a space: deleted
        ("  Two\tDogs\n", "2 dogs"),
    ],
)
def test_vqa_normalisation(raw, expected):
    assert normalize_vqa_answer(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("10%", "10%"),  # '%' is not one of the official marks: it stays
        ("1.5.", "1.5"),  # the final period goes, the decimal point stays
        ("$1,000", "$1000"),
        ("1,000.50", "1000.50"),
        ("three dogs", "3 dogs"),
        ("twenty", "twenty"),  # only zero..ten (and "none") become digits
        ("Eleven", "eleven"),
        ("no one", "no 1"),
        ("2:30", "2:30"),  # ':' is not an official mark either
        ("3-4", "3 4"),
        ("-5", "5"),  # a leading minus is a hyphen to the official script
    ],
)
def test_vqa_number_normalisation_as_the_official_script(raw, expected):
    # Expected values are what GT-Vision-Lab's vqaEval.py (processPunctuation + processDigitArticle) returns.
    assert normalize_vqa_answer(raw) == expected


def test_vqa_normalisation_matches_across_forms():
    assert M.vqa_accuracy("two", ["2"]) == 1.0
    assert M.vqa_accuracy("a dog", ["dog"]) == 1.0
    assert M.vqa_accuracy("dont", ["don't"]) == 1.0
    assert M.vqa_accuracy("Dog.", ["dog"]) == 1.0
    assert M.vqa_accuracy("1000", ["1,000"]) == 1.0
    assert M.vqa_accuracy("cat", ["dog"]) == 0.0
    assert M.vqa_accuracy("1", ["1.5"]) == 0.0


@pytest.mark.parametrize(
    "matching, expected",
    [
        (0, 0.0),
        (1, 0.3),  # 1 subset without the match: 0; 9 subsets with 1 match: 1/3 -> 9/3/10
        (2, 0.6),  # 2 subsets with 1 match: 1/3; 8 subsets with 2: 2/3 -> (2/3 + 16/3)/10
        (3, 0.9),  # 3 subsets with 2 matches: 2/3; 7 with 3: 1 -> (2 + 7)/10
        (4, 1.0),  # every subset keeps >= 3 matches
        (10, 1.0),
    ],
)
def test_vqa_ten_answer_leave_one_out(matching, expected):
    answers = ["dog"] * matching + ["cat"] * (10 - matching)
    assert M.vqa_accuracy("dog", answers) == pytest.approx(expected)


def test_vqa_leave_one_out_over_fewer_answers_and_normalised_gt():
    # 4 answers, 1 match: leaving the match out gives 0, the 3 others give 1/3 each -> 1/4
    assert M.vqa_accuracy("Two", ["2", "3", "3", "3"]) == pytest.approx(0.25)
    # the ground truth is normalised too: "two" and "2" both match the prediction "2"
    assert M.vqa_accuracy("2", ["two", "2", "a 2"] + ["3"] * 7) == pytest.approx(0.9)


def test_vqa_rows_score_percent():
    rows = [
        {"prediction": "dog", "answers": ["dog"] * 2 + ["cat"] * 8},  # 0.6
        {"prediction": "Yes.", "answers": ["yes"] * 10},  # 1.0
    ]
    result = M.score_rows("vqa", rows)
    assert result.per_row == pytest.approx([0.6, 1.0])
    assert result.score == pytest.approx(80.0)


# ---- ANLS --------------------------------------------------------------------------------------
def test_anls_threshold():
    gt = "abcdefghij"  # 10 characters
    assert M.anls_score("abcdefghij", [gt]) == 1.0
    assert M.anls_score("XYZdefghij", [gt]) == pytest.approx(0.7)  # distance 3/10
    assert M.anls_score("XYZWefghij", [gt]) == pytest.approx(0.6)  # distance 4/10: kept
    # distance 5/10: similarity 0.5 is not below the threshold, so the official script keeps it
    assert M.anls_score("XYZWVfghij", [gt]) == pytest.approx(0.5)
    assert M.anls_score("XYZWVUghij", [gt]) == 0.0  # distance 0.6: similarity 0.4 < 0.5 -> 0
    long_gt = "a" * 100
    assert M.anls_score("b" * 49 + "a" * 51, [long_gt]) == pytest.approx(0.51)
    assert M.anls_score("b" * 50 + "a" * 50, [long_gt]) == pytest.approx(0.50)  # at the threshold: kept
    assert M.anls_score("b" * 51 + "a" * 49, [long_gt]) == 0.0  # just past it


def test_anls_case_whitespace_and_best_answer():
    assert M.anls_score("  Hello World ", ["hello world"]) == 1.0
    assert M.anls_score("hello   world", ["Hello World"]) == 1.0  # runs of whitespace collapse
    # closest of several answers wins: "invoice" vs "invoices" is 1/8 away
    assert M.anls_score("invoice", ["receipt", "invoices"]) == pytest.approx(1 - 1 / 8)
    result = M.score_rows("anls", [{"prediction": "abc", "answers": ["abd"]}, {"prediction": "x", "answers": ["y"]}])
    assert result.per_row == pytest.approx([2 / 3, 0.0])
    assert result.score == pytest.approx(100 / 3)


def test_anls_divides_by_the_unstripped_length_like_the_official_script():
    # The DocVQA script measures the distance on stripped text but divides by the longer text as given:
    # "abd" vs "abc  " (5 characters with its spaces) is 1 edit / 5 -> 0.8, not 1/3 -> 0.667.
    assert M.anls_score("abc  ", ["abd"]) == pytest.approx(0.8)
    assert M.anls_score("abc", ["abd"]) == pytest.approx(2 / 3)


# ---- relaxed accuracy (ChartQA) ----------------------------------------------------------------
def test_relaxed_within_five_percent_of_ground_truth():
    assert M.relaxed_match("104.9", "100")
    assert M.relaxed_match("95", "100")  # exactly 5% below
    assert not M.relaxed_match("106", "100")
    assert not M.relaxed_match("94.9", "100")
    # the reference compares in binary floating point without slack: |0.95 - 1.0| / 1.0 = 0.05000000000000004
    assert not M.relaxed_match("0.95", "1.0")


def test_relaxed_is_relative_to_ground_truth_not_prediction():
    # gt 100, pred 95.1: 4.9/100 = 4.9% -> right. Swapped (gt 95.1, pred 100): 4.9/95.1 = 5.15% -> wrong.
    assert M.relaxed_match(prediction="95.1", answer="100")
    assert not M.relaxed_match(prediction="100", answer="95.1")
    rows = [{"prediction": "95.1", "answer": "100"}, {"prediction": "100", "answer": "95.1"}]
    assert M.score_rows("relaxed", rows).per_row == [1.0, 0.0]


@pytest.mark.parametrize(
    "prediction, answer, right",
    [
        ("25%", "0.25", True),  # a trailing '%' is a fraction: 25% = 0.25
        ("0.25", "25%", True),
        ("12", "12%", False),  # 12 vs 0.12
        ("12%", "12", False),
        ("45%", "45", False),
        ("45", "46%", False),  # 45 vs 0.46
        ("45%", "46%", True),  # 0.45 vs 0.46: 2.2%
        ("45 %", "45%", True),  # float() ignores the space before the '%'
        ("1,000", "1000", False),  # no thousands separators: "1,000" is text, compared as text
        ("1,000", "1,000", True),
        ("1e3", "1000", True),  # whatever float() reads
        (" 7 ", "7", True),  # surrounding whitespace ignored
    ],
)
def test_relaxed_percent_is_a_fraction(prediction, answer, right):
    assert M.relaxed_match(prediction, answer) is right


def test_relaxed_zero_ground_truth_and_text():
    # a ground truth of 0 has no relative error: the reference compares the texts
    assert M.relaxed_match("0", "0")
    assert not M.relaxed_match("0.0", "0")
    assert not M.relaxed_match("0.001", "0")
    assert not M.relaxed_match("0%", "0")
    assert M.relaxed_match("Yes", "yes")  # not numbers: case-insensitive exact
    assert not M.relaxed_match("yes.", "yes")


def test_reference_examples_pix2struct():
    # pix2struct/metrics_test.py (test_pix2struct_metrics): its relaxed accuracy is 62.5 and its ANLS 47.5.
    predictions = ["abc", "abc", "Abc", "100%", "100%", "100%", "100%", "Don't"]
    targets = ["abc", "Abc", "abc", "96%", "94%", "0.96", "0.94", "Won't"]
    relaxed_rows = [{"prediction": p, "answer": t} for p, t in zip(predictions, targets)]
    relaxed_result = M.score_rows("relaxed", relaxed_rows)
    # 100% vs 0.96: 1.0 against 0.96 is 4.2% off -> right; 100% vs 0.94 (6.4%) and 94% -> wrong
    assert relaxed_result.per_row == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert relaxed_result.score == pytest.approx(62.5)
    anls_rows = [{"prediction": p, "answers": [t]} for p, t in zip(predictions, targets)]
    anls_result = M.score_rows("anls", anls_rows)
    assert anls_result.per_row == pytest.approx([1, 1, 1, 0, 0, 0, 0, 0.8])  # Don't/Won't: 1 edit in 5
    assert anls_result.score == pytest.approx(47.5)


# ---- exact and multiple choice -----------------------------------------------------------------
def test_exact_match_normalisation():
    rows = [
        {"prediction": "Dog.", "answer": "dog"},
        {"prediction": "  red   car ", "answer": "Red car"},
        {"prediction": "dogs", "answer": "dog"},
    ]
    result = M.score_rows("exact", rows)
    assert result.per_row == [1.0, 1.0, 0.0]
    assert result.score == pytest.approx(200 / 3)


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B)", "B"),
        ("The answer is B", "B"),
        ("The answer is (C).", "C"),
        ("Answer: D", "D"),
        ("B. cat", "B"),
        ("C dog", "C"),
        ("A", "A"),
        ("A. a cat", "A"),
        ("I think it is D", "D"),
        ("A cat", None),  # an article, not option A
        ("the answer is a cat", None),
        ("B or C", None),  # ambiguous
    ],
)
def test_choice_extraction(text, letter):
    assert M.extract_choice(text) == letter


def test_mc_rows_and_bad_answer():
    rows = [{"prediction": "The answer is B", "answer": "B"}, {"prediction": "(A)", "answer": "(C)"}]
    result = M.score_rows("mc", rows)
    assert result.per_row == [1.0, 0.0]
    assert result.score == 50.0
    with pytest.raises(M.RowError, match=r"row 1: field 'answer' must be an option letter"):
        M.score_rows("mc", [rows[0], {"prediction": "B", "answer": "cat"}])


# ---- yes/no, MME, POPE -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [("Yes", "yes"), ("no.", "no"), ("Yes, there is a dog.", "yes"), ("There is no dog.", "no"),
     ("It is not red.", "no"), ("There is a dog.", None)],
)  # fmt: skip
def test_yes_no_extraction(text, expected):
    assert M.extract_yes_no(text) == expected


def test_mme_acc_plus_hand_example():
    def row(pred, ans, cat, img):
        return {"prediction": pred, "answer": ans, "category": cat, "image_id": img}

    rows = [
        row("Yes", "yes", "existence", 1),  # image 1: both right
        row("No", "no", "existence", 1),
        row("Yes", "yes", "existence", 2),  # image 2: one right, one wrong
        row("Yes", "no", "existence", 2),
        row("No", "no", "commonsense_reasoning", "a"),  # image a: one right, one wrong
        row("No", "yes", "commonsense_reasoning", "a"),
    ]
    result = M.score_rows("mme", rows)
    # existence: acc 3/4 = 75, acc+ 1/2 images = 50 -> 125; commonsense: acc 50, acc+ 0 -> 50
    cats = result.details["categories"]
    assert (cats["existence"]["acc"], cats["existence"]["acc_plus"]) == (75.0, 50.0)
    assert (cats["commonsense_reasoning"]["acc"], cats["commonsense_reasoning"]["acc_plus"]) == (50.0, 0.0)
    assert result.details["perception"] == 125.0
    assert result.details["cognition"] == 50.0
    assert result.score == 175.0
    assert result.per_row == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert "unknown_categories" not in result.details


def test_mme_unknown_category_counts_as_perception_with_note():
    rows = [{"prediction": "yes", "answer": "yes", "category": "my_task", "image_id": 1}]
    result = M.score_rows("mme", rows)
    assert result.details["perception"] == 200.0
    assert result.details["unknown_categories"] == ["my_task"]
    assert "perception" in result.details["note"]


def test_pope_hand_confusion_matrix():
    yes = [{"prediction": "Yes", "answer": "yes"}] * 3  # TP 3
    fp = [{"prediction": "Yes, there is.", "answer": "no"}]  # FP 1
    tn = [{"prediction": "No", "answer": "no"}] * 4  # TN 4
    fn = [{"prediction": "No, there is not.", "answer": "yes"}, {"prediction": "A cat.", "answer": "yes"}]  # FN 2
    result = M.score_rows("pope", yes + fp + tn + fn)
    d = result.details
    assert (d["tp"], d["fp"], d["tn"], d["fn"], d["unparsed"]) == (3, 1, 4, 2, 1)
    assert d["accuracy"] == pytest.approx(70.0)  # 7/10
    assert d["precision"] == pytest.approx(75.0)  # 3/4
    assert d["recall"] == pytest.approx(60.0)  # 3/5
    assert d["f1"] == pytest.approx(100 * 2 * 0.75 * 0.6 / 1.35)  # 66.67
    assert d["yes_ratio"] == pytest.approx(40.0)  # 4 of 10 answers are yes
    assert result.score == pytest.approx(70.0)  # score = accuracy
    assert sum(result.per_row) == 7


# ---- REC ---------------------------------------------------------------------------------------
def test_rec_anchor_changes_pixel_box():
    # 200x100 image: canvas side 200; centred anchoring pads 50 px above. [0.25, 0.30, 0.75, 0.45]:
    #   top-left -> [50, 60, 150, 90];  center -> y - 50 -> [50, 10, 150, 40]
    pred = "<p>the cat</p> [0.25, 0.30, 0.75, 0.45]"
    assert M.predicted_box_pixels(pred, 200, 100, "top-left") == pytest.approx([50, 60, 150, 90])
    assert M.predicted_box_pixels(pred, 200, 100, "center") == pytest.approx([50, 10, 150, 40])
    # gt [50, 15, 150, 45]: vs centre box overlap 100x25 = 2500, union 3000 + 3000 - 2500 -> IoU 5/7;
    # vs top-left box no overlap -> IoU 0
    rows = [{"prediction": pred, "gt_box": [50, 15, 150, 45], "width": 200, "height": 100}]
    top_left = M.score_rows("rec", rows, anchor="top-left")
    center = M.score_rows("rec", rows, anchor="center")
    assert (top_left.score, top_left.details["mean_iou"]) == (0.0, 0.0)
    assert center.score == 100.0
    assert center.details["mean_iou"] == pytest.approx(5 / 7)


def test_rec_threshold_first_box_and_unparsable():
    # gt [0, 0, 100, 100] on 100x100; answer box [0, 0, 100, 45] -> IoU 0.45 (< 0.5); [0, 0, 100, 55] -> 0.55
    def row(pred):
        return {"prediction": pred, "gt_box": [0, 0, 100, 100], "width": 100, "height": 100}

    rows = [row("[0.00, 0.00, 1.00, 0.45]"), row("[0.00, 0.00, 1.00, 0.55] and [0.5, 0.5, 0.6, 0.6]"), row("no box")]
    result = M.score_rows("rec", rows)
    assert result.per_row == [0.0, 1.0, 0.0]
    assert result.details["unparsed"] == 1
    assert result.details["mean_iou"] == pytest.approx((0.45 + 0.55 + 0) / 3)
    assert M.box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    with pytest.raises(ValueError, match="anchor"):
        M.score_rows("rec", rows, anchor="bottom")


def test_rec_iou_of_exactly_one_half_counts():
    # Acc@0.5 counts IoU >= 0.5 (lmms-eval's refcoco compute_accuracy): [0, 0, 100, 50] in [0, 0, 100, 100]
    # is 5000 / 10000 = 0.5 exactly -> right; [0, 0, 100, 49] -> 0.49 -> wrong.
    def row(pred):
        return {"prediction": pred, "gt_box": [0, 0, 100, 100], "width": 100, "height": 100}

    result = M.score_rows("rec", [row("[0.00, 0.00, 1.00, 0.50]"), row("[0.00, 0.00, 1.00, 0.49]")])
    assert result.per_row == [1.0, 0.0]
    assert M.box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges: no overlap
    assert M.box_iou([0, 0, 10, 10], [5, 5, 5, 9]) == 0.0  # a box with no area


def test_rec_pixel_coordinates_option():
    rows = [{"prediction": "[50, 15, 150, 45]", "gt_box": [50, 15, 150, 45], "width": 200, "height": 100}]
    assert M.score_rows("rec", rows, coords="pixels").score == 100.0


# ---- registry and validation -------------------------------------------------------------------
def test_registry_and_row_validation():
    assert set(M.METRICS) == {"vqa", "anls", "relaxed", "exact", "mc", "mme", "pope", "rec"}
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        M.score_rows("bleu", [{"prediction": "a", "answer": "a"}])
    with pytest.raises(ValueError, match="no rows"):
        M.score_rows("exact", [])
    with pytest.raises(M.RowError, match=r"row 1: missing field 'answers'"):
        M.score_rows("vqa", [{"prediction": "a", "answers": ["a"]}, {"prediction": "a", "answer": "a"}])
    with pytest.raises(M.RowError, match=r"field 'gt_box' must have x2 > x1"):
        M.score_rows("rec", [{"prediction": "", "gt_box": [10, 0, 5, 5], "width": 20, "height": 20}])
    with pytest.raises(M.RowError, match=r"field 'width' must be a positive number"):
        M.score_rows("rec", [{"prediction": "", "gt_box": [0, 0, 5, 5], "width": 0, "height": 20}])
    with pytest.raises(M.RowError, match=r"field 'answer' must be 'yes' or 'no'"):
        M.score_rows("pope", [{"prediction": "yes", "answer": "maybe"}])
    assert M.score_rows("exact", [{"prediction": "a", "answer": "a"}]).as_dict("exact") == {
        "metric": "exact",
        "score": 100.0,
        "per_row": [1.0],
        "details": {"rows": 1},
    }


def test_pope_per_category_breakdown():
    rows = [
        {"prediction": "yes", "answer": "yes", "category": "random"},
        {"prediction": "yes", "answer": "no", "category": "adversarial"},
        {"prediction": "no", "answer": "no", "category": "adversarial"},
    ]
    cats = M.score_rows("pope", rows).details["categories"]
    assert cats["random"]["accuracy"] == 100.0
    assert (cats["adversarial"]["accuracy"], cats["adversarial"]["fp"], cats["adversarial"]["tn"]) == (50.0, 1, 1)
    assert cats["adversarial"]["yes_ratio"] == 50.0
