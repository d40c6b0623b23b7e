"""`dfmq adapt`: a copy of the sentence encoder fine-tuned on one intent set, used for its
classification only (model/adapt.py)."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from model.adapt import (
    AdaptOptions,
    adapt,
    adapt_encoder,
    contrastive_pairs,
    encode_texts,
    load_adaptation,
)
from model.checkpoint import STARTER_DIR, load_checkpoint
from model.dfmq import DFMQMC
from model.intents import load_intent_set
from model.openset import classify_texts, load_intent_scoring
from model.semantic import build_anchors, embed_sentences
from stream.cli import main

REPO = Path(__file__).resolve().parent.parent
KIOSK = REPO / "configs" / "intents" / "kiosk.yaml"
# Sentences none of the kiosk set's examples say; the last is off-topic.
SENTENCES = [
    "Could someone bring a towel up to room four twelve?",
    "I'm leaving today, here is my key card.",
    "What time does the swimming pool open?",
    "My grandmother was born in the spring of nineteen fifty.",
]


@pytest.fixture(scope="module")
def starter() -> tuple[DFMQMC, object]:
    return load_checkpoint(STARTER_DIR)


@pytest.fixture(scope="module")
def adapted_kiosk(starter: tuple[DFMQMC, object], tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tokenizer = starter
    out = tmp_path_factory.mktemp("adapted") / "kiosk"
    adapt(model, tokenizer, load_intent_set(KIOSK), out, AdaptOptions(pairs_per_sentence=3), progress=False)
    return out


def test_pairs_join_each_text_to_its_own_intent_and_to_another() -> None:
    owner = [0, 0, 0, 1, 1, 2]  # intent 2 has its description alone: no pair of its own kind
    pairs = contrastive_pairs(owner, 4, random.Random(0))
    same = [(i, j) for i, j, target in pairs if target == 1.0]
    other = [(i, j) for i, j, target in pairs if target == 0.0]
    assert all(owner[i] == owner[j] and i != j for i, j in same)
    assert all(owner[i] != owner[j] for i, j in other)
    assert len(other) == 4 * len(owner) and len(same) == 4 * 5
    assert not any(i == 5 for i, _ in same)


def test_adaptation_pulls_each_intents_texts_together(starter: tuple[DFMQMC, object]) -> None:
    model, tokenizer = starter
    intent_set = load_intent_set(KIOSK)
    texts, owner = intent_set.texts()
    same = np.equal.outer(owner, owner) & ~np.eye(len(owner), dtype=bool)
    before = embed_sentences(model, tokenizer, texts)
    encoder = adapt_encoder(model, tokenizer, intent_set, AdaptOptions(pairs_per_sentence=3), progress=False)
    with torch.no_grad():
        after = encode_texts(encoder, tokenizer, texts).numpy()
    margin_before = (before @ before.T)[same].mean() - (before @ before.T)[~same].mean()
    margin_after = (after @ after.T)[same].mean() - (after @ after.T)[~same].mean()
    assert margin_after > margin_before + 0.05, (margin_before, margin_after)
    # The model's own encoder is left as it was.
    assert np.allclose(embed_sentences(model, tokenizer, texts), before, atol=1e-6)


def test_an_adapted_set_changes_classification_not_scope(starter: tuple[DFMQMC, object], adapted_kiosk: Path) -> None:
    model, tokenizer = starter
    _, _, intent_set, frozen = load_intent_scoring(STARTER_DIR, KIOSK)
    _, _, _, adapted = load_intent_scoring(STARTER_DIR, KIOSK, adapted=adapted_kiosk)
    assert adapted.adaptation is not None and frozen.adaptation is None
    plain = classify_texts(model, tokenizer, frozen, SENTENCES)
    mixed = classify_texts(model, tokenizer, adapted, SENTENCES)
    assert [d.scope for d in mixed] == pytest.approx([d.scope for d in plain], abs=1e-6)
    assert adapted.reject_below == pytest.approx(frozen.reject_below)
    assert not np.allclose([list(d.probs.values()) for d in plain], [list(d.probs.values()) for d in mixed], atol=1e-3)
    # The mean of the two spaces' centroid cosines, computed here from its parts.
    sentences = embed_sentences(model, tokenizer, SENTENCES)
    expected = 0.5 * (frozen.similarities(sentences) + adapted.adaptation.similarities(SENTENCES))
    assert np.allclose(adapted.score_transcripts(SENTENCES, sentences, sentences).similarities, expected, atol=1e-5)
    record = json.loads((adapted_kiosk / "dfmq_adaptation.json").read_text())
    assert record["intents"] == list(intent_set.names) and record["options"]["pairs_per_sentence"] == 3


def test_a_set_edited_since_is_scored_without_the_adaptation(
    starter: tuple[DFMQMC, object], adapted_kiosk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Adding an intent and restarting takes seconds: the stale adaptation is left out, with a warning."""
    model, _ = starter
    edited = tmp_path / "kiosk.yaml"
    edited.write_text(
        KIOSK.read_text() + "  - name: Lost property\n    description: The guest has lost something and asks if "
        "it was found.\n"
    )
    intent_set = load_intent_set(edited)
    with caplog.at_level(logging.WARNING, logger="dfmq.intents"):
        assert load_adaptation(adapted_kiosk, model, intent_set) is None
    assert "its intents are not those" in caplog.text and f"dfmq adapt --intents {edited}" in caplog.text
    anchors = build_anchors(model, starter[1], intent_set, adaptation=None)
    assert "Lost property" in anchors.names


def test_adapt_command_writes_a_folder_classify_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kiosk-adapted"
    assert main(["adapt", "--intents", str(KIOSK), "--out", str(out), "--pairs", "1"]) == 0
    assert "--adapted" in capsys.readouterr().out
    assert (out / "config.json").is_file() and (out / "dfmq_adaptation.json").is_file()
    argv = ["classify", "--json", "--intents", str(KIOSK), "--adapted", str(out), SENTENCES[1], SENTENCES[3]]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["intent"] == "Check out" and lines[1]["intent"] is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["classify", "--intents", str(KIOSK), "--adapted", "{tmp}/nothing", "hi"], "a folder written by `dfmq adapt`"),
        (["classify", "--adapted", "{adapted}", "hi"], "an intent set the model was not trained on"),
        (
            ["classify", "--intents", str(KIOSK), "--adapted", "{adapted}", "--sentence-encoder", "{encoder}", "hi"],
            "no --sentence-encoder with it",
        ),
        (["adapt", "--intents", "{home}", "--out", "{tmp}/out"], "at least 8 examples"),
        (["adapt", "--intents", str(KIOSK), "--out", "{tmp}/out", "--pairs", "0"], "'--pairs' expected an integer"),
        (["adapt", "--intents", str(KIOSK), "--out", "{home}"], "'--out' expected a folder"),
    ],
    ids=["not-an-adaptation", "trained-set", "with-sentence-encoder", "too-few-examples", "no-pairs", "out-a-file"],
)
def test_adapt_errors_exit_2_with_one_line(
    argv: list[str], expected: str, adapted_kiosk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model.checkpoint import default_text_encoder_folder

    home = tmp_path / "home.yaml"
    home.write_text(
        "intents:\n  - name: Lights\n    description: Lights on or off.\n    examples: [Lamp on.]\n"
        "  - name: Music\n    description: Music played or stopped.\n"
    )
    values = {"tmp": str(tmp_path), "adapted": str(adapted_kiosk), "encoder": str(default_text_encoder_folder())}
    values["home"] = str(home)
    assert main([a.format(**values) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
