"""Per-scenario checks (with truth) and the truth-free description the manual page shows."""

from harness.checks import describe_output, run_checks
from harness.schema import dumps
from harness.scoring import score_case
from harness.transcribe import audio_extension
from scenarios import SEED


def test_every_check_passes_on_a_perfect_answer_and_dose_check_applies_only_with_doses():
    case = SEED[4]
    verdicts = run_checks(score_case(dumps(case.expected), case.expected, case.note))
    assert set(verdicts) == {"schema_valid", "resource_type", "no_invented_keys", "age", "dose_split",
                             "one_entry_per_medication", "no_chatter", "grounded"}
    assert all(v.ok for v in verdicts.values())
    assert "grounded" not in run_checks(score_case(dumps(case.expected), case.expected))  # no note: not judged
    no_dose = {**case.expected, "medicationStatement": []}
    assert "dose_split" not in run_checks(score_case(dumps(no_dose), no_dose))


def test_failed_checks_say_why():
    case = SEED[1]  # no age stated
    guessed = {**case.expected, "patient": {**case.expected["patient"], "ageInt": 30}}
    verdicts = run_checks(score_case("Here: " + dumps(guessed), case.expected))
    assert not verdicts["age"].ok and "should be null" in verdicts["age"].reason and "30" in verdicts["age"].reason
    assert not verdicts["no_chatter"].ok and "prose" in verdicts["no_chatter"].reason


def test_grounded_check_names_each_invented_value():
    case = SEED[0]  # "Pt John Doe, 55y, history of T2DM. Meds: Metformin 500mg."
    invented = {**case.expected, "medicationStatement": [{"medication": "Metformine", "dose": {"value": 850,
                                                                                                "unit": "mg"}}]}
    verdict = run_checks(score_case(dumps(invented), case.expected, case.note))["grounded"]
    assert not verdict.ok and verdict.reason == ('not in the note: medicationStatement[0].medication: "Metformine"; '
                                                 "medicationStatement[0].dose.value: 850")
    assert not run_checks(score_case("no JSON", case.expected, case.note))["grounded"].ok


def test_describe_output_without_truth():
    d = describe_output(dumps(SEED[4].expected), SEED[4].note)
    assert d["schema_valid"] and d["strict_json"] and d["grounded"]
    rules = {c["rule"]: c for c in d["checks"]}
    assert rules["medication entries"]["detail"] == "3 entries" and rules["age"]["detail"] == "68"
    assert rules["every value is in the note"]["ok"]
    assert "".join(s["text"] for s in d["note_segments"]) == SEED[4].note
    marked = {s["text"]: s["paths"] for s in d["note_segments"] if s["paths"]}
    assert marked["Pete Jones"] == ["patient.name"] and marked["omprazol"] == ["medicationStatement[2].medication"]
    bad = describe_output("no json here", SEED[4].note)
    assert bad["json"] is None and not bad["schema_valid"] and not bad["grounded"]


def test_audio_extensions_groq_accepts():
    assert audio_extension("audio/webm;codecs=opus") == "webm"
    assert audio_extension("audio/wav") == "wav" and audio_extension("text/plain") is None
    assert audio_extension(None) is None
