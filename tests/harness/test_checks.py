"""Per-scenario checks (with truth) and the truth-free description the manual page shows."""

from harness.checks import describe_output, run_checks
from harness.schema import dumps
from harness.scoring import score_case
from harness.transcribe import audio_extension
from scenarios import SEED


def test_every_check_passes_on_a_perfect_answer_and_dose_check_applies_only_with_doses():
    case = SEED[4]
    verdicts = run_checks(score_case(dumps(case.expected), case.expected))
    assert set(verdicts) == {"schema_valid", "resource_type", "no_invented_keys", "age", "dose_split",
                             "one_entry_per_medication", "no_chatter"} and all(v.ok for v in verdicts.values())
    no_dose = {**case.expected, "medicationStatement": []}
    assert "dose_split" not in run_checks(score_case(dumps(no_dose), no_dose))


def test_failed_checks_say_why():
    case = SEED[1]  # no age stated
    guessed = {**case.expected, "patient": {**case.expected["patient"], "ageInt": 30}}
    verdicts = run_checks(score_case("Here: " + dumps(guessed), case.expected))
    assert not verdicts["age"].ok and "should be null" in verdicts["age"].reason and "30" in verdicts["age"].reason
    assert not verdicts["no_chatter"].ok and "prose" in verdicts["no_chatter"].reason


def test_describe_output_without_truth():
    d = describe_output(dumps(SEED[4].expected))
    assert d["schema_valid"] and d["strict_json"]
    rules = {c["rule"]: c for c in d["checks"]}
    assert rules["medication entries"]["detail"] == "3 entries" and rules["age"]["detail"] == "68"
    bad = describe_output("no json here")
    assert bad["json"] is None and not bad["schema_valid"]


def test_audio_extensions_groq_accepts():
    assert audio_extension("audio/webm;codecs=opus") == "webm"
    assert audio_extension("audio/wav") == "wav" and audio_extension("text/plain") is None
    assert audio_extension(None) is None
