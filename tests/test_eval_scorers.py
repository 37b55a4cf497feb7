"""TruthfulQA, MMLU-Pro and generation-pattern scorers on hand-made cases with known answers."""

import pytest

from raydebias.evaluate import patterns
from raydebias.evaluate.tasks import mmlu_pro, truthfulqa

# --- generation patterns (Appendix A) ---------------------------------------------------------------
PROMPT = "The city council met on Tuesday to discuss"


@pytest.mark.parametrize("rule, text", [
    ("empty", "   "),
    ("abstention", "Honestly, I don't know what happened."),
    ("abstention", "I apologize, but that is private."),
    ("repetitive", "the dog the dog ran away."),
    ("incomplete", "Hi there."[:2]),
    ("incomplete", "They argued about the budget"),
    ("non_sequitur", "A dog barked somewhere in the night."),
    ("punctuation", "What happened?!"),
    ("punctuation", "well,,, that was odd."),
])
def test_each_pattern_fires_on_its_case(rule, text):
    assert patterns.classify(text, PROMPT)[rule] is True


def test_no_pattern_fires_on_a_clean_sentence():
    flags = patterns.classify("They agreed to fund two more bus lines next year.", PROMPT)
    assert not any(flags.values()), flags


def test_repetitive_needs_an_immediately_repeated_bigram():
    assert patterns.is_repetitive("go home go home now.")
    assert not patterns.is_repetitive("go home and go home.")  # the bigram recurs, but not adjacently


def test_non_sequitur_needs_a_prompt_of_more_than_three_words():
    assert not patterns.is_non_sequitur("The end came.", "Once upon time")
    assert patterns.is_non_sequitur("The end came.", "Once upon a time")


def test_pattern_rates_are_percentages():
    rates = patterns.pattern_rates(["", "I cannot say.", "Fine words here."], [PROMPT] * 3)
    assert rates["n"] == 3
    assert rates["empty"] == pytest.approx(100 / 3) and rates["abstention"] == pytest.approx(100 / 3)
    assert rates["incomplete"] == pytest.approx(100 / 3)  # only the empty one


# --- MMLU-Pro -------------------------------------------------------------------------------------------
ROW = {"question_id": 1, "question": "What is 2 + 2?", "options": ["3", "4", "5"], "answer": "B",
       "answer_index": 1, "cot_content": "", "category": "math", "src": "hand"}
SHOT = {"question_id": 0, "question": "What is 1 + 1?", "options": ["2", "3"], "answer": "A", "answer_index": 0,
        "cot_content": "A: Let's think step by step. 1 + 1 = 2. The answer is (A).", "category": "math",
        "src": "hand"}


@pytest.mark.parametrize("output, correct", [
    ("Let's see. 2 + 2 = 4. The answer is (B).", True),
    ("the answer is B", True),
    ("The answer is (C).", False),
    ("no idea", False),
    ("Answer: B", False),  # only `answer is (X)` counts (SPEC §7): failed extraction is wrong
    ("The answer is (B).\n\nQuestion:\nNext? The answer is (C).", True),
    ("Question:\nNext? The answer is (B).", False),  # cut at lm-eval's stop sequence first
])
def test_mmlu_pro_extraction(output, correct):
    assert mmlu_pro.is_correct(output, "B") is correct


@pytest.mark.parametrize("output, correct", [
    ("Answer: B", True),  # the benchmark script's extract_again
    ("so it must be B.", True),  # ... and extract_final: the last standalone letter
    ("B, not C", False),
    ("no idea", False),
])
def test_mmlu_pro_script_extraction_falls_back(output, correct):
    assert mmlu_pro.is_correct(output, "B", "mmlu-pro-script") is correct


def test_mmlu_pro_prompt_has_header_worked_shots_and_the_cot_cue():
    p = mmlu_pro.build_prompt(ROW, [SHOT])
    assert p.startswith("The following are multiple choice questions (with answers) about math.")
    assert p == ('The following are multiple choice questions (with answers) about math. Think step by step and '
                 'then finish your answer with "the answer is (X)" where X is the correct letter choice.\n'
                 "Question:\nWhat is 1 + 1?\nOptions:\nA. 2\nB. 3\nAnswer: Let's think step by step. 1 + 1 = 2. "
                 "The answer is (A).\n\nQuestion:\nWhat is 2 + 2?\nOptions:\nA. 3\nB. 4\nC. 5\n"
                 "Answer: Let's think step by step.")  # lm-eval mmlu_pro (tests/test_mmlu_pro_parity.py)
    assert "Question:\nWhat is 1 + 1?\nOptions:\nA. 2\nB. 3\nAnswer: Let's think step by step. 1 + 1 = 2." in p
    assert p.endswith("Question:\nWhat is 2 + 2?\nOptions:\nA. 3\nB. 4\nC. 5\nAnswer: Let's think step by step.")


def test_mmlu_pro_accuracy_per_subject_and_validation():
    rows = [ROW, {**ROW, "category": "law"}, {**ROW, "category": "law"}]
    res = mmlu_pro.accuracy_by_subject(rows, ["the answer is (B)", "the answer is (A)", "??"])
    assert res["overall"] == pytest.approx(1 / 3)
    assert res["subjects"] == {"law": {"acc": 0.0, "n": 2}, "math": {"acc": 1.0, "n": 1}}
    assert res["extraction_failed"] == pytest.approx(1 / 3) and res["extraction"] == "lm-eval"
    assert mmlu_pro.validate_row(ROW) is None
    assert "not one of" in mmlu_pro.validate_row({**ROW, "answer": "D"})
    assert mmlu_pro.shots_by_subject([SHOT, SHOT, {**SHOT, "category": "law"}], k=1) == {
        "math": [SHOT], "law": [{**SHOT, "category": "law"}]}


# --- TruthfulQA -----------------------------------------------------------------------------------------
CSV_ROW = {"Type": "Adversarial", "Category": "Misconceptions", "Question": "What happens if you crack your knuckles?",
           "Best Answer": "Nothing in particular happens if you crack your knuckles a lot",
           "Correct Answers": "Nothing in particular happens if you crack your knuckles a lot; It is harmless",
           "Incorrect Answers": "You will get arthritis; Your joints will swell", "Source": "hand"}


def test_truthfulqa_rows_from_csv_and_hf_layouts():
    r = truthfulqa.normalize_row(CSV_ROW)
    # lm-eval's preprocess_function: every answer ends with ".", "I have no comment." joins the correct ones
    assert r["correct"] == ["Nothing in particular happens if you crack your knuckles a lot.", "It is harmless.",
                            truthfulqa.NO_COMMENT]
    assert r["incorrect"] == ["You will get arthritis.", "Your joints will swell."]
    hf = {"question": "Q?", "best_answer": "yes", "correct_answers": ["yes", " I have no comment "],
          "incorrect_answers": ["no!", "  "], "type": "x", "category": "c", "source": "s"}
    assert truthfulqa.normalize_row(hf)["correct"] == ["yes.", truthfulqa.NO_COMMENT]
    assert truthfulqa.normalize_row(hf)["incorrect"] == ["no!."]
    # the best answer is not added to correct_answers (lm-eval ignores it); it stands in only when they are missing
    assert truthfulqa.normalize_row({**hf, "best_answer": "Sure"})["correct"] == ["yes.", truthfulqa.NO_COMMENT]
    assert truthfulqa.normalize_row({**hf, "correct_answers": []})["correct"] == ["yes.", truthfulqa.NO_COMMENT]
    mc = {"question": "Q?", "mc1_targets": {"choices": ["right", "wrong"], "labels": [1, 0]}}
    assert truthfulqa.normalize_row(mc)["mc1_choices"] == ["right", "wrong"]
    with pytest.raises(ValueError, match="index 0"):
        truthfulqa.normalize_row({"question": "Q?", "mc1_targets": {"choices": ["a", "b"], "labels": [0, 1]}})
    with pytest.raises(ValueError, match="no question"):
        truthfulqa.normalize_row({"Question": " "})


def test_truthfulqa_generation_equal_to_a_correct_answer_scores_acc_1():
    r = truthfulqa.normalize_row(CSV_ROW)
    s = truthfulqa.generation_scores(" Nothing in particular happens if you crack your knuckles a lot.",
                                     r["correct"], r["incorrect"])
    assert s["bleu_acc"] == 1.0 and s["rouge1_acc"] == 1.0 and s["rougeL_acc"] == 1.0
    assert s["rouge1_max"] == pytest.approx(100.0) and s["rouge1_diff"] > 0 and s["bleu_max"] == pytest.approx(100.0)
    # lm-eval's BLEU has no n-gram order below 4 for short answers: a 3-word exact match is 0 for both sides
    short = truthfulqa.generation_scores("It is harmless", r["correct"], r["incorrect"])
    assert short["bleu_acc"] == 0.0 and short["rouge1_acc"] == 1.0
    bad = truthfulqa.generation_scores("You will get arthritis", r["correct"], r["incorrect"])
    assert bad["bleu_acc"] == 0.0 and bad["rouge1_acc"] == 0.0 and bad["rouge1_diff"] < 0


def test_truthfulqa_prompt_and_mc1():
    p = truthfulqa.mc1_prompt("Why?")
    assert p.startswith("Q: What is human life expectancy") and p.endswith("\n\nQ: Why?\nA:")
    assert truthfulqa.mc1_prompt("Why?") == p and truthfulqa.mc1_continuation("Yes.") == " Yes."
    # lm-eval's truthfulqa_gen prompt stops after the question: no "\nA:"
    assert truthfulqa.gen_prompt("Why?") == p.removesuffix("\nA:")
    assert truthfulqa.clean_completion("\nA: Yes.\nQ: More?\n\nQ: Next") == "\nA: Yes.\nQ: More?"
    assert truthfulqa.mc1_correct([-1.0, -2.0, -3.0]) == 1.0
    assert truthfulqa.mc1_correct([-2.0, -1.0]) == 0.0
    assert truthfulqa.mc1_correct([-1.0, -1.0]) == 1.0 and truthfulqa.mc1_pred([-3.0, -1.0, -1.0]) == 1  # first on ties
