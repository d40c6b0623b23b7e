"""Intent sets users define (model/intents.py): the shipped sets load, and every bad file is an error
that names the file, the line and the key."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import pytest

from model.config import MINTREC_LABELS
from model.errors import DataError
from model.intents import Intent, IntentSet, load_intent_set, topic_name

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "intents"
DATA = Path(__file__).resolve().parent / "data" / "intents"


def test_mintrec_set_matches_the_trained_head() -> None:
    intents = load_intent_set(CONFIGS / "mintrec.yaml")
    assert intents.names == MINTREC_LABELS
    assert all(intent.examples == () and intent.description.endswith(".") for intent in intents.intents)
    assert intents.reject_below is None
    assert intents.source == str(CONFIGS / "mintrec.yaml")


@pytest.mark.parametrize("name", ["kiosk", "lab"])
def test_unseen_sets_load_with_three_examples_each(name: str) -> None:
    intents = load_intent_set(CONFIGS / f"{name}.yaml")
    assert 6 <= len(intents) <= 10
    assert all(len(intent.examples) == 3 for intent in intents.intents)
    folded = {n.casefold() for n in MINTREC_LABELS}
    assert not [n for n in intents.names if n.casefold() in folded]


def test_kiosk_set_and_its_first_intent() -> None:
    intents = load_intent_set(CONFIGS / "kiosk.yaml")
    assert intents.intents[0] == Intent(
        name="Check in",
        description="The guest has arrived and wants to check in to the room they booked.",
        examples=(
            "I'd like to check in please.",
            "I have a reservation under the name Patel.",
            "We just arrived and need our room keys.",
        ),
    )
    assert isinstance(intents, IntentSet)


def test_kiosk_eval_holds_out_ten_per_intent_and_forty_off_topic() -> None:
    kiosk = load_intent_set(CONFIGS / "kiosk.yaml")
    with (DATA / "kiosk_eval.tsv").open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    counts: dict[str, int] = {}
    for row in rows:
        assert row["text"].strip()
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    assert counts == {**dict.fromkeys(kiosk.names, 10), "OOS": 40}
    examples = {e.casefold() for intent in kiosk.intents for e in intent.examples}
    texts = [row["text"].casefold() for row in rows]
    assert len(set(texts)) == len(texts)
    assert not examples & set(texts)


def test_text_is_taken_as_written_and_threshold_is_read() -> None:
    intents = load_intent_set(DATA / "yes_no.yaml")
    assert intents.names == ("Yes", "No")  # not booleans
    assert intents.intents[0].description == "The person agrees or confirms what was asked."
    assert intents.intents[1].examples == ()
    assert intents.reject_below == pytest.approx(0.4)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "set.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


GOOD_TAIL = """
  - name: Pay
    description: The customer wants to pay.
"""

BAD = {
    "duplicate name": (
        """
        intents:
          - name: Check in
            description: Arrived.
          - name: Pay
            description: Wants to pay.
          - name: check IN
            description: Again.
        """,
        6,
        "intents[2].name",
        "already on line 2",
    ),
    "name differing in spaces only": (
        """
        intents:
          - name: Check in
            description: Arrived.
          - name: Checkin
            description: Arrived too.
        """,
        4,
        "intents[1].name",
        "differ ignoring case and spaces",
    ),
    "topic wildcard in a name": (
        """
        intents:
          - name: "Rent #1"
            description: Wants bike one.
          - name: Pay
            description: Wants to pay.
        """,
        2,
        "intents[0].name: bad name",
        "it becomes an MQTT topic level",
    ),
    "topic separator in a name": (
        """
        intents:
          - name: Pay
            description: Wants to pay.
          - name: Rent/Unlock
            description: Wants a bike.
        """,
        4,
        "intents[1].name: bad name",
        "got 'Rent/Unlock'",
    ),
    "reserved name": (
        """
        intents:
          - name: Pay
            description: Wants to pay.
          - name: OOS
            description: Anything else.
        """,
        4,
        "intents[1].name: reserved name",
        "they mark off-topic speech",
    ),
    "same description twice": (
        """
        intents:
          - name: Check in
            description: The guest wants their room.
          - name: Key
            description: The guest wants their room.
        """,
        5,
        "intents[1].description",
        "already given on line 3, under 'Check in'",
    ),
    "empty description": (
        """
        intents:
          - name: Check in
            description: "   "
          - name: Pay
            description: Wants to pay.
        """,
        3,
        "intents[0].description",
        "description is empty",
    ),
    "missing description value": (
        """
        intents:
          - name: Pay
            description: Wants to pay.
          - name: Check in
            description:
        """,
        5,
        "intents[1].description",
        "description is empty",
    ),
    "unknown key": (
        """
        intents:
          - name: Check in
            description: Arrived.
            exmples:
              - hi
          - name: Pay
            description: Wants to pay.
        """,
        4,
        "intents[0].exmples",
        "did you mean 'examples'?",
    ),
    "unknown top-level key": (
        """
        name: kiosk
        intents:
          - name: Check in
            description: Arrived.
        """,
        1,
        "name: unknown key",
        "only intents, reject_below",
    ),
    "intents not a list": (
        """
        intents:
          name: Check in
          description: Arrived.
        """,
        1,
        "intents: not a list",
        "got a mapping",
    ),
    "one intent only": (
        """
        intents:
          - name: Check in
            description: Arrived.
        """,
        1,
        "intents: too few intents",
        "at least 2 intents, got 1",
    ),
    "intent not a mapping": (
        """
        intents:
          - Check in
          - Pay
        """,
        2,
        "intents[0]",
        "got 'Check in'",
    ),
    "examples not a list": (
        """
        intents:
          - name: Check in
            description: Arrived.
            examples: I'd like to check in.
          - name: Pay
            description: Wants to pay.
        """,
        4,
        "intents[0].examples: not a list",
        'got "I\'d like to check in."',
    ),
    "empty example": (
        """
        intents:
          - name: Check in
            description: Arrived.
            examples:
              - I'd like to check in.
              -
          - name: Pay
            description: Wants to pay.
        """,
        6,
        "intents[0].examples[1]",
        "example is empty",
    ),
    "example under two intents": (
        """
        intents:
          - name: Check in
            description: Arrived.
            examples: [Hello there]
          - name: Pay
            description: Wants to pay.
            examples: [hello there]
        """,
        7,
        "intents[1].examples[0]",
        "already given on line 4, under 'Check in'",
    ),
    "missing name": (
        """
        intents:
          - name: Check in
            description: Arrived.
          - description: Wants to pay.
            examples: [Card please]
        """,
        4,
        "intents[1].name: missing key",
        "got keys description, examples",
    ),
    "name is a list": (
        """
        intents:
          - name: [Check, in]
            description: Arrived.
          - name: Pay
            description: Wants to pay.
        """,
        2,
        "intents[0].name",
        "got a list of 2",
    ),
    "key given twice": (
        """
        intents:
          - name: Check in
            description: Arrived.
            name: Pay
          - name: Pay
            description: Wants to pay.
        """,
        4,
        "intents[0].name: key given twice (first on line 2)",
        "",
    ),
    "not YAML": (
        """
        intents:
          - name: Check in
            description: [Arrived
          - name: Pay
        """,
        4,
        "not valid YAML",
        "(started on line 3)",
    ),
    "not a mapping": (
        """
        - Check in
        - Pay
        """,
        1,
        "top level: not a mapping",
        "got a list of 2",
    ),
    "no intents key": (
        """
        reject_below: 0.5
        """,
        1,
        "intents: missing key",
        "got keys reject_below",
    ),
    "threshold out of range": (
        """
        reject_below: 1.5
        intents:
          - name: Check in
            description: Arrived.
          - name: Pay
            description: Wants to pay.
        """,
        1,
        "reject_below",
        "a number from 0 to 1, got float '1.5'",
    ),
    "threshold not a number": (
        """
        reject_below: yes
        intents: []
        """,
        1,
        "reject_below",
        "got bool 'yes'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_names_line_and_key(tmp_path: Path, case: str) -> None:
    text, line, key, detail = BAD[case]
    path = _write(tmp_path, text)
    with pytest.raises(DataError) as caught:
        load_intent_set(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert key in message, message
    assert detail in message, message
    assert caught.value.line == line
    assert caught.value.path == path


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(DataError, match=r"empty\.yaml:1: file is empty"):
        load_intent_set(empty)
    with pytest.raises(DataError, match="intent set file is missing"):
        load_intent_set(tmp_path / "absent.yaml")
    with pytest.raises(DataError, match="cannot read intent set"):
        load_intent_set(tmp_path)


def test_unreadable_yaml_names_the_line(tmp_path: Path) -> None:
    for text, line, detail in (
        (
            "intents:\n  - name: A\x01\n",
            2,
            r"special characters are not allowed \(expected printable text, got U\+0001\)",
        ),
        ("intents:\n\t- name: A\n", 2, "found character '.t' that cannot start any token"),
    ):
        path = _write(tmp_path, text)
        with pytest.raises(DataError, match=rf"set\.yaml:{line}: not valid YAML: .*{detail}"):
            load_intent_set(path)


def test_threshold_bounds_and_yaml_spellings(tmp_path: Path) -> None:
    for written, value in (("0", 0.0), ("1", 1.0), ("1e-1", 0.1), (".25", 0.25)):
        path = _write(tmp_path, f"reject_below: {written}\nintents:\n  - name: A\n    description: a.\n" + GOOD_TAIL)
        assert load_intent_set(path).reject_below == pytest.approx(value)
    for written in ("-0.1", ".nan", "'half'", "[0.5]"):
        path = _write(tmp_path, f"reject_below: {written}\nintents:\n  - name: A\n    description: a.\n" + GOOD_TAIL)
        with pytest.raises(DataError, match=r"set\.yaml:1: reject_below"):
            load_intent_set(path)


@pytest.mark.parametrize(
    ("name", "topic"),
    [
        ("Check in", "CheckIn"),
        ("Ask for help", "AskForHelp"),
        ("Turn on TV", "TurnOnTV"),
        ("thank-you note", "Thank-youNote"),
    ],
)
def test_an_intent_name_as_one_topic_level_raises_only_each_words_first_letter(name: str, topic: str) -> None:
    assert topic_name(name) == topic
