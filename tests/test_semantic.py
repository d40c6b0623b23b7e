"""The semantic space: triplet loss, intent sets scored from descriptions, out-of-scope rejection,
`dfmq classify` and `dfmq eval --intents --tsv` on the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import STARTER_DIR, checkpoint_intent_set, load_checkpoint
from model.config import DFMQConfig
from model.dfmq import DFMQMC
from model.intents import load_intent_set
from model.semantic import IntentAnchors, build_anchors, fit_reject_below, triplet_loss
from stream.cli import main
from tests.conftest import Mosquitto, cls_pooled_minilm, render_clip, tiny_text_encoder, wait_until
from tests.test_pipeline import Subscriber

REPO = Path(__file__).resolve().parent.parent
KIOSK = REPO / "configs" / "intents" / "kiosk.yaml"
KIOSK_EVAL = REPO / "tests" / "data" / "intents" / "kiosk_eval.tsv"
HOME_SET = """\
intents:
  - name: Lights
    description: The person wants a lamp or the lights in a room switched on, off or dimmed.
  - name: Music
    description: The person wants music played, stopped, skipped or made louder or quieter.
  - name: Timer
    description: The person wants a timer or an alarm set for some minutes or a time of day.
"""


@pytest.fixture(scope="module")
def starter() -> tuple[DFMQMC, object]:
    return load_checkpoint(STARTER_DIR)


def _inputs(model: DFMQMC, batch: int = 4) -> dict[str, torch.Tensor]:
    cfg = model.config
    return {
        "input_ids": torch.randint(1, 100, (batch, 6)),
        "attention_mask": torch.ones(batch, 6, dtype=torch.long),
        "audio": torch.randn(batch, 5, cfg.audio_dim),
        "audio_mask": torch.ones(batch, 5, dtype=torch.bool),
        "video": torch.randn(batch, 3, cfg.video_dim),
        "video_mask": torch.ones(batch, 3, dtype=torch.bool),
        "quality": torch.full((batch, 3), 0.9),
    }


def test_triplet_loss_reaches_the_fused_representation_and_never_the_anchors(tiny_model_config: DFMQConfig) -> None:
    model = DFMQMC(tiny_model_config, tiny_text_encoder(32))
    # semantic_proj starts at zero (the embedding is the sentence's); move it so gradients flow on.
    torch.nn.init.normal_(model.semantic_proj.weight, std=0.1)  # type: ignore[union-attr]
    out = model.forward_all(**_inputs(model))
    anchors = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1).requires_grad_(True)
    loss = triplet_loss(out.embedding, anchors, torch.tensor([0, 1, 2, 3]), margin=0.5, negatives="all")
    loss.backward()
    assert loss.item() > 0
    assert anchors.grad is None  # the anchors are constants of the loss
    assert model.semantic_proj.weight.grad.abs().sum() > 0  # type: ignore[union-attr]
    # ... and through the fused representation into the encoders it is made of.
    for encoder in (model.text_encoder, model.audio_encoder, model.video_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    assert all(p.grad is None for p in model.semantic_encoder.parameters())  # type: ignore[union-attr]


def test_triplet_loss_values_for_hardest_and_all_negatives() -> None:
    anchors = torch.eye(3)
    embedding = torch.nn.functional.normalize(torch.tensor([[1.0, 0.5, 0.0]]), dim=-1)
    pos, neg1 = embedding[0, 0].item(), embedding[0, 1].item()
    label = torch.tensor([0])
    hardest = triplet_loss(embedding, anchors, label, margin=0.8, negatives="hardest").item()
    every = triplet_loss(embedding, anchors, label, margin=0.8, negatives="all").item()
    assert hardest == pytest.approx(max(0.0, 0.8 - pos + neg1))
    assert every == pytest.approx((max(0.0, 0.8 - pos + neg1) + max(0.0, 0.8 - pos)) / 2)


def test_a_fresh_model_embeds_utterances_as_its_sentence_encoder_does(tiny_model_config: DFMQConfig) -> None:
    model = DFMQMC(tiny_model_config, tiny_text_encoder(32)).eval()
    _, _, _, embedding, sentence = model(**_inputs(model))
    assert torch.allclose(embedding, sentence, atol=1e-6)
    assert torch.allclose(sentence.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_the_threshold_rule_maximises_the_mean_of_both_f1() -> None:
    scopes = np.array([0.95, 0.9, 0.85, 0.84, 0.8, 0.3, 0.5, 0.82, 0.1])
    in_scope = np.array([True] * 5 + [False] * 4)
    rule = fit_reject_below(scopes, in_scope)
    # Cutting at 0.83 loses one in-scope utterance and keeps out every off-topic one: F1 8/9 each,
    # better than 0.51-0.80 (all in-scope kept, 0.82 let in: 10/11 and 6/7).
    assert rule["reject_below"] == pytest.approx(0.83)
    assert rule["f1_in_scope"] == pytest.approx(8 / 9) and rule["f1_oos"] == pytest.approx(8 / 9)
    assert (rule["coverage"], rule["oos_recall"]) == (0.8, 1.0)


def test_scope_is_the_continuous_share_of_background_sentences_fitting_worse() -> None:
    anchors = IntentAnchors(
        names=("a", "b"),
        prototypes=np.eye(2, dtype=np.float32),
        owner=np.array([0, 1]),
        is_description=np.array([True, True]),
        background=np.array([0.1, 0.2, 0.3, 0.4]),
        trained=False,
        reject_below=0.75,
        reject_below_source="test",
        similarity_temperature=0.05,
        head_mix=0.3,
    )
    utterances = np.array([[0.25, 0.0], [0.0, 0.9], [0.05, 0.05], [0.0, 0.8]], dtype=np.float32)
    scores = anchors.score(utterances, utterances)
    # Background fits sit at shares 1/8, 3/8, 5/8, 7/8; linear between them, to 0 at -1 and 1 at 1.
    expected = [0.5, 0.875 + 0.125 * 0.5 / 0.6, 0.125 * 1.05 / 1.1, 0.875 + 0.125 * 0.4 / 0.6]
    assert scores.scope == pytest.approx(expected)
    # Both fit better than every background sentence and keep their order (a step count gave both 1.0).
    assert scores.scope[1] > scores.scope[3] > 0.875
    assert scores.in_scope.tolist() == [False, True, False, True]
    assert scores.probs.argmax(axis=1).tolist() == [0, 1, 0, 1]
    assert np.allclose(scores.probs.sum(axis=1), 1.0)


def test_the_shipped_model_knows_its_intent_set(starter: tuple[DFMQMC, object]) -> None:
    model, _ = starter
    assert model.config.semantic_space and model.config.lambda_ss > 0
    shipped = checkpoint_intent_set(STARTER_DIR, model.config.labels)
    written = load_intent_set(REPO / "configs" / "intents" / "mintrec.yaml")
    assert shipped.intents == written.intents


def test_a_new_intent_set_zero_shot_from_descriptions_with_off_topic_rejected(
    starter: tuple[DFMQMC, object], tmp_path: Path
) -> None:
    from model.openset import classify_texts

    path = tmp_path / "home.yaml"
    path.write_text(HOME_SET)
    model, tokenizer = starter
    anchors = build_anchors(model, tokenizer, load_intent_set(path))
    assert not anchors.trained
    in_scope = {
        "turn off the lights in the kitchen": "Lights",
        "could you dim the bedroom lamp": "Lights",
        "play some jazz": "Music",
        "skip this song": "Music",
        "wake me up at seven tomorrow": "Timer",
        "set a timer for ten minutes": "Timer",
    }
    off_topic = ["the capital of peru is lima", "my brother bought a new bicycle", "place blue at f two now"]
    decisions = classify_texts(model, tokenizer, anchors, [*in_scope, *off_topic])
    assert [d.intent for d in decisions[: len(in_scope)]] == list(in_scope.values())
    assert [d.intent for d in decisions[len(in_scope) :]] == [None] * len(off_topic)
    assert all(d.scope < anchors.reject_below for d in decisions[len(in_scope) :])


def test_classify_prints_the_decision_and_scores(capsys: pytest.CaptureFixture[str]) -> None:
    texts = ["Can I pay with my card?", "The moon orbits the earth."]
    assert main(["classify", "--ckpt", "default", "--intents", str(KIOSK), "--json", *texts]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["intent"] for line in lines] == ["Pay", None]
    assert lines[0]["probability"] > 0.5 and lines[0]["scope"] > lines[1]["scope"]
    assert next(iter(lines[0]["probs"])) == "Pay"  # best first
    kiosk = load_intent_set(KIOSK)
    assert set(lines[0]["probs"]) == set(kiosk.names) and sum(lines[0]["probs"].values()) == pytest.approx(1.0)


def test_eval_intents_tsv_writes_the_open_set_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kiosk.json"
    argv = ["eval", "--ckpt", "default", "--intents", str(KIOSK), "--tsv", str(KIOSK_EVAL), "--json", str(out)]
    assert main(argv) == 0
    metrics = json.loads(out.read_text())
    for key in ("in_scope_acc", "closed_acc", "coverage", "oos_recall", "f1_is", "f1_oos", "auroc"):
        assert 0.0 <= metrics[key] <= 100.0, key
    assert (metrics["n_in_scope"], metrics["n_oos"]) == (80, 40)
    assert Path(metrics["confusion_png"]).stat().st_size > 10_000
    assert metrics["in_scope_acc"] <= metrics["closed_acc"]  # rejections count as errors
    assert metrics["auroc"] > 90.0  # off-topic sentences fit the kiosk set far worse than its own
    assert metrics["in_scope_acc"] >= 88.0  # 92.5 measured (docs/results/zero_shot.md)
    rows = (tmp_path / "kiosk.predictions.tsv").read_text().splitlines()
    assert len(rows) == 121 and rows[0].startswith("label\tpredicted")
    assert '"auroc"' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("yaml", "counts", "in_scope_acc", "closed_acc", "auroc", "oos_recall"),
    # Measured (docs/results/zero_shot.md): in-scope / closed-set accuracy, AUROC, OOS recall: lab
    # 76.4 / 83.3 / 92.0 / 82.4, home 84.7 / 94.4 / 92.9 / 82.9, car (written blind) 80.6 / 84.7 /
    # 92.2 / 75.0; about three sentences of margin each.
    [
        (REPO / "configs" / "intents" / "lab.yaml", (72, 34), 72.0, 79.0, 88.0, 73.0),
        (REPO / "configs" / "intents" / "home.yaml", (72, 35), 80.0, 90.0, 89.0, 74.0),
        (REPO / "tests" / "data" / "intents" / "car.yaml", (72, 36), 76.0, 80.0, 88.0, 66.0),
        # Written blind and scored once the method was fixed: 73.6 / 76.4 / 97.7 / 91.7, 75.0 / 80.6 /
        # 97.4 / 88.9, 88.9 / 88.9 / 93.2 / 61.1.
        (REPO / "tests" / "data" / "intents" / "restaurant.yaml", (72, 36), 69.0, 72.0, 94.0, 83.0),
        (REPO / "tests" / "data" / "intents" / "clinic.yaml", (72, 36), 70.0, 76.0, 94.0, 80.0),
        (REPO / "tests" / "data" / "intents" / "museum.yaml", (72, 36), 84.0, 84.0, 89.0, 52.0),
        # A second blind batch, scored once at the end: 83.3 / 86.1 / 98.1 / 91.7, 76.4 / 83.3 / 93.2 /
        # 91.7, 80.6 / 91.7 / 97.3 / 94.4.
        (REPO / "tests" / "data" / "intents" / "bank.yaml", (72, 36), 79.0, 82.0, 95.0, 83.0),
        (REPO / "tests" / "data" / "intents" / "airport.yaml", (72, 36), 72.0, 79.0, 90.0, 83.0),
        (REPO / "tests" / "data" / "intents" / "helpdesk.yaml", (72, 36), 76.0, 87.0, 94.0, 86.0),
        # A third blind batch, scored once: 79.2 / 81.9 / 98.7 / 97.2, 84.7 / 86.1 / 91.8 / 25.0 (one odd
        # example sets the threshold at 0.35), 75.0 / 75.0 / 96.1 / 55.6.
        (REPO / "tests" / "data" / "intents" / "pharmacy.yaml", (72, 36), 75.0, 78.0, 95.0, 88.0),
        (REPO / "tests" / "data" / "intents" / "gym.yaml", (72, 36), 80.0, 82.0, 88.0, 16.0),
        (REPO / "tests" / "data" / "intents" / "library.yaml", (72, 36), 71.0, 71.0, 92.0, 47.0),
        # A fourth, scored once: 76.4 / 83.3 / 96.1 / 83.3, 76.4 / 81.9 / 93.6 / 83.3, 77.8 / 77.8 / 96.2 / 77.8.
        (REPO / "tests" / "data" / "intents" / "cinema.yaml", (72, 36), 72.0, 79.0, 93.0, 75.0),
        (REPO / "tests" / "data" / "intents" / "garage.yaml", (72, 36), 72.0, 77.0, 90.0, 75.0),
        (REPO / "tests" / "data" / "intents" / "school.yaml", (72, 36), 73.0, 73.0, 93.0, 69.0),
        # A fifth, scored once: 77.8 / 80.6 / 98.0 / 83.3, 83.3 / 84.7 / 96.8 / 72.2, 90.3 / 91.7 / 97.4 / 66.7.
        (REPO / "tests" / "data" / "intents" / "postoffice.yaml", (72, 36), 73.0, 76.0, 94.0, 75.0),
        (REPO / "tests" / "data" / "intents" / "supermarket.yaml", (72, 36), 79.0, 80.0, 93.0, 64.0),
        (REPO / "tests" / "data" / "intents" / "townhall.yaml", (72, 36), 86.0, 87.0, 94.0, 58.0),
        # A sixth, scored once: 73.6 / 73.6 / 96.3 / 69.4, 66.7 / 79.2 / 89.4 / 83.3 (coverage 81.9),
        # 77.8 / 90.3 / 96.4 / 97.2 (coverage 83.3).
        (REPO / "tests" / "data" / "intents" / "trainstation.yaml", (72, 36), 69.0, 69.0, 93.0, 61.0),
        (REPO / "tests" / "data" / "intents" / "vet.yaml", (72, 36), 62.0, 75.0, 86.0, 75.0),
        (REPO / "tests" / "data" / "intents" / "hotelroom.yaml", (72, 36), 73.0, 86.0, 93.0, 88.0),
        # A seventh, scored once: 75.0 / 75.0 / 94.9 / 75.0, 72.2 / 79.2 / 94.7 / 88.9, 88.9 / 91.7 / 93.9 / 69.4.
        (REPO / "tests" / "data" / "intents" / "dentist.yaml", (72, 36), 70.0, 70.0, 91.0, 66.0),
        (REPO / "tests" / "data" / "intents" / "charging.yaml", (72, 36), 68.0, 75.0, 91.0, 80.0),
        (REPO / "tests" / "data" / "intents" / "skiresort.yaml", (72, 36), 84.0, 87.0, 90.0, 61.0),
    ],
    ids=[
        "lab",
        "home",
        "car",
        "restaurant",
        "clinic",
        "museum",
        "bank",
        "airport",
        "helpdesk",
        "pharmacy",
        "gym",
        "library",
        "cinema",
        "garage",
        "school",
        "postoffice",
        "supermarket",
        "townhall",
        "trainstation",
        "vet",
        "hotelroom",
        "dentist",
        "charging",
        "skiresort",
    ],
)
def test_never_seen_sets_score_their_held_out_sentences(
    starter: tuple[DFMQMC, object],
    tmp_path: Path,
    yaml: Path,
    counts: tuple[int, int],
    in_scope_acc: float,
    closed_acc: float,
    auroc: float,
    oos_recall: float,
) -> None:
    from model.openset import evaluate_intent_tsv

    model, tokenizer = starter
    intent_set = load_intent_set(yaml)
    anchors = build_anchors(model, tokenizer, intent_set)
    assert not anchors.trained and "24 examples" in anchors.reject_below_source
    assert anchors.negatives is not None and 0 < len(anchors.negatives) < 300
    tsv = REPO / "tests" / "data" / "intents" / f"{yaml.stem}_eval.tsv"
    metrics = evaluate_intent_tsv(model, tokenizer, anchors, intent_set, tsv, tmp_path / f"{yaml.stem}.json")
    assert (metrics["n_in_scope"], metrics["n_oos"]) == counts
    assert metrics["in_scope_acc"] >= in_scope_acc and metrics["closed_acc"] >= closed_acc
    assert metrics["auroc"] >= auroc and metrics["oos_recall"] >= oos_recall and metrics["coverage"] >= 80.0


def test_requests_of_the_sets_own_domain_are_not_negatives() -> None:
    from model.semantic import command_negatives

    # Intent a: description at 0 deg, examples at 10 and 20; intent b: description at 90, examples at
    # 80 and 100. Leave-one-out example fits are all above cos 15 deg; a request at 5 deg fits the set
    # like its own examples and is kept out of the negatives, one at 45 deg (between the intents) and
    # one at 180 deg stay.
    angles = np.radians([0, 10, 20, 90, 80, 100])
    prototypes = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    owner = np.array([0, 0, 0, 1, 1, 1])
    examples = np.array([False, True, True, False, True, True])
    requests = np.radians([5, 45, 180])
    negatives = command_negatives(np.stack([np.cos(requests), np.sin(requests)], axis=1), prototypes, owner, examples)
    assert np.degrees(np.arctan2(negatives[:, 1], negatives[:, 0])).round().tolist() == [45.0, 180.0]


def test_a_request_like_the_negatives_fits_the_set_worse() -> None:
    from model.semantic import COMMAND_WEIGHT, set_fit

    prototypes = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    owner, is_description = np.array([0, 0]), np.array([True, False])
    negatives = np.array([[0.0, 1.0, 0.0]])
    # Same cosine to the set (0.6); the second is also close to a request of another domain.
    utterances = np.array([[0.6, 0.0, 0.8], [0.6, 0.8, 0.0]])
    plain = set_fit(utterances, prototypes, owner, is_description, trained=False)
    with_negatives = set_fit(utterances, prototypes, owner, is_description, trained=False, negatives=negatives)
    assert plain == pytest.approx([0.6, 0.6])
    assert with_negatives == pytest.approx([0.6, 0.6 - COMMAND_WEIGHT * 0.8])


@pytest.mark.parametrize(
    ("tsv", "message"),
    [
        ("label\ttext\nCheck out\tbye\nCheckout\tbye now\n", "kiosk_bad.tsv:3: label is not in the intent set"),
        ("intent\ttext\nPay\tcard\n", "kiosk_bad.tsv:1: bad header"),
        ("label\ttext\nPay\n", "kiosk_bad.tsv:2: bad row"),
        ("", "kiosk_bad.tsv:1: file is empty"),
    ],
)
def test_eval_tsv_errors_name_file_and_line(
    tmp_path: Path, tsv: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "kiosk_bad.tsv"
    bad.write_text(tsv)
    argv = ["eval", "--ckpt", "default", "--intents", str(KIOSK), "--tsv", str(bad), "--json", str(tmp_path / "x")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_tsv_saved_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    from model.openset import read_labelled_tsv

    exported = tmp_path / "from_a_spreadsheet.tsv"
    exported.write_text("label\ttext\nPay\tCan I pay by card?\nOOS\tNice weather.\n", encoding="utf-8-sig")
    assert exported.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_labelled_tsv(exported, load_intent_set(KIOSK)) == (
        ["Pay", "OOS"],
        ["Can I pay by card?", "Nice weather."],
    )


def test_reject_below_override_must_be_a_fraction(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "--reject-below", "1.5", "hello"]) == 2
    assert "option '--reject-below' expected a fraction in [0, 1], got 1.5" in capsys.readouterr().err


@pytest.mark.broker
def test_train_on_a_users_intent_set_then_score_it_as_the_trained_set(
    tmp_path: Path, tiny_config_yaml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dfmq train --dataset intents --intents FILE --data DIR`: the head learns the set's names,
    the checkpoint keeps the set, and scoring that set mixes the head in (anchors.trained)."""
    ckpt = tmp_path / "kiosk"
    data = REPO / "configs" / "intents" / "kiosk_data"
    argv = ["train", "--dataset", "intents", "--intents", str(KIOSK), "--data", str(data), "--out", str(ckpt)]
    assert main([*argv, "--config", str(tiny_config_yaml), "--epochs", "1"]) == 0
    model, tokenizer = load_checkpoint(ckpt)
    kiosk = load_intent_set(KIOSK)
    assert model.config.labels == list(kiosk.names)
    assert checkpoint_intent_set(ckpt, model.config.labels).intents == kiosk.intents
    assert build_anchors(model, tokenizer, kiosk).trained
    # Eight intents and 16 dev sentences are too few to learn the out-of-scope rule: the default stays.
    saved = json.loads((ckpt / "config.json").read_text())
    assert "not learnt" in saved["semantic"]["rule"]["note"] and model.config.reject_below == 0.81
    out = tmp_path / "eval.json"
    assert main(["eval", "--ckpt", str(ckpt), "--tsv", str(KIOSK_EVAL), "--json", str(out)]) == 0  # its own set
    assert json.loads(out.read_text())["n"] == 120
    bad = ["train", "--dataset", "intents", "--data", str(data), "--out", str(tmp_path / "x")]
    assert main(bad) == 2
    assert "the intents layout needs an intent set" in capsys.readouterr().err
    # Trained on transcripts alone, it runs live on them alone: a real run into a real Mosquitto.
    assert model.config.text_only
    clip = render_clip(tmp_path / "pay.mp4", "can i pay by card please")
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker.port)
    try:
        argv = ["run", "--ckpt", str(ckpt), "--input", str(clip), "--pace", "fast", "--engine", "torch"]
        assert main([*argv, "--broker", f"mqtt://127.0.0.1:{broker.port}", "--stream-id", "kiosk"]) == 0
        wait_until(lambda: len(sub.events()) == 1, 5.0, "the event")
    finally:
        sub.stop()
        broker.stop()
    event = sub.events()[0]
    assert event["intent"] in (*kiosk.names, None) and "card" in str(event["text"]).lower()
    assert event["weights"] == {"audio": 0.0, "video": 0.0}  # no audio or video reached the model


def test_a_set_with_examples_sets_its_threshold_from_them_leaving_each_out() -> None:
    from model.semantic import example_threshold

    # Two intents, a description and two examples each, unit vectors in a plane; background: 10
    # off-topic fits 0.0 .. 0.9. Each example is scored as an utterance is, against the set without it.
    angles = np.radians([0, 10, 20, 90, 100, 150])
    prototypes = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    owner = np.array([0, 0, 0, 1, 1, 1])
    examples = np.array([False, True, True, False, True, True])
    background = np.linspace(0.0, 0.9, 10)
    threshold = example_threshold(prototypes, owner, examples, background)
    # Fits (mean of own description and best remaining example): 10 deg: (cos 10 + cos 10) / 2 = 0.98,
    # 20 deg: (cos 20 + cos 10) / 2 = 0.96, 100 deg: (cos 10 + cos 50) / 2 = 0.81, 150 deg:
    # (cos 60 + cos 50) / 2 = 0.571. Background fit 0.5 sits at share 0.55, 0.6 at 0.65, so the lowest
    # fit's scope is 0.55 + 0.1 * (0.571 - 0.5) / 0.1, and the 10 % quantile (lower) of four is the lowest.
    lowest_fit = (np.cos(np.radians(60)) + np.cos(np.radians(50))) / 2
    assert threshold == pytest.approx(0.55 + (lowest_fit - 0.5), abs=1e-6)


def _plane_anchors(trained: bool) -> IntentAnchors:
    """Intent a: description at 0 deg, examples at 20 and 40; intent b: description at 90, an
    outlying example at 60 and two at 120 and 150."""
    angles = np.radians([0, 20, 40, 90, 60, 120, 150])
    return IntentAnchors(
        names=("a", "b"),
        prototypes=np.stack([np.cos(angles), np.sin(angles)], axis=1),
        owner=np.array([0, 0, 0, 1, 1, 1, 1]),
        is_description=np.array([True, False, False, True, False, False, False]),
        background=np.linspace(0.0, 0.9, 10),
        trained=trained,
        reject_below=0.5,
        reject_below_source="test",
        similarity_temperature=0.05,
        head_mix=0.0,
    )


def test_a_new_set_is_classified_by_prototype_centroids_and_fits_by_description_and_example() -> None:
    utterance = np.array([[np.cos(np.radians(55)), np.sin(np.radians(55))]])
    new_set, trained = _plane_anchors(trained=False), _plane_anchors(trained=True)
    # b's outlying example (5 deg away) is the nearest prototype, but a's centroid (20 deg) is closer
    # than b's (about 105 deg): a new set says a, the trained set keeps the nearest prototype.
    assert new_set.score(utterance, utterance).probs.argmax() == 0
    assert trained.score(utterance, utterance).probs.argmax() == 1
    # Fit: b's description (35 deg) and best example (5 deg) averaged, against the nearest prototype.
    cos = np.cos(np.radians([35, 5]))
    assert new_set.fit(utterance)[0] == pytest.approx(cos.mean())
    assert trained.fit(utterance)[0] == pytest.approx(cos[1])


def test_where_the_threshold_comes_from(
    starter: tuple[DFMQMC, object], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, tokenizer = starter
    kiosk = build_anchors(model, tokenizer, load_intent_set(KIOSK))
    assert "24 examples" in kiosk.reject_below_source and kiosk.reject_below > model.config.reject_below
    assert not [r for r in caplog.records if r.name == "dfmq.intents"]  # its weakest example fits well enough
    gym = build_anchors(model, tokenizer, load_intent_set(REPO / "tests" / "data" / "intents" / "gym.yaml"))
    assert gym.reject_below < model.config.reject_below
    (warning,) = [r for r in caplog.records if r.name == "dfmq.intents"]  # names the example to fix
    assert "changing room are cold again" in warning.getMessage() and "reject_below" in warning.getMessage()
    yes_no = build_anchors(model, tokenizer, load_intent_set(REPO / "tests" / "data" / "intents" / "yes_no.yaml"))
    assert (yes_no.reject_below, yes_no.reject_below_source) == (0.4, "the set file")
    path = tmp_path / "home.yaml"
    path.write_text(HOME_SET)  # no examples: the checkpoint's learnt threshold
    home = build_anchors(model, tokenizer, load_intent_set(path))
    assert home.reject_below == model.config.reject_below and "checkpoint" in home.reject_below_source
    given = build_anchors(model, tokenizer, load_intent_set(KIOSK), reject_below=0.5)
    assert (given.reject_below, given.reject_below_source) == (0.5, "given")
    trained = build_anchors(model, tokenizer, checkpoint_intent_set(STARTER_DIR, model.config.labels))
    assert trained.trained and trained.reject_below == model.config.reject_below_trained
    assert "trained labels" in trained.reject_below_source


def test_the_trained_labels_threshold_keeps_its_share_of_held_out_utterances(starter: tuple[DFMQMC, object]) -> None:
    """Fitted on MIntRec-like held-out transcripts (the shipped set's own examples stand in for a
    dev split here): the threshold keeps TRAINED_COVERAGE of them, and the record says how many
    off-topic sentences it rejects."""
    from model.semantic import TRAINED_COVERAGE, embed_utterances
    from model.train import fit_trained_threshold

    model, tokenizer = starter
    intent_set = checkpoint_intent_set(STARTER_DIR, model.config.labels)
    held_out = [text for intent in intent_set.intents for text in (intent.description, *intent.examples)] * 2
    embeddings = embed_utterances(model, tokenizer, held_out)
    rule = fit_trained_threshold(model, tokenizer, intent_set, embeddings)
    anchors = build_anchors(model, tokenizer, intent_set, reject_below=rule["reject_below_trained"])
    kept = anchors.score(embeddings, embeddings).in_scope.mean()
    assert kept >= TRAINED_COVERAGE and rule["coverage"] == pytest.approx(kept)
    assert 0.0 <= rule["offtopic_rejected"] <= 1.0 and rule["offtopic"] > 40
    few = fit_trained_threshold(model, tokenizer, intent_set, embeddings[:10])
    assert few["reject_below_trained"] == model.config.reject_below_trained and "kept" in few["note"]


def test_a_users_sentence_encoder_scores_a_new_set_in_its_own_space(
    starter: tuple[DFMQMC, object], tmp_path: Path
) -> None:
    """--sentence-encoder: the set and the transcripts are embedded by the user's folder. The bundled
    folder itself (mean pooled) must reproduce the frozen encoder's scores; a differently pooled one
    must not, and the transcripts must go through it too (its own scores, whatever the engine says)."""
    from model.checkpoint import default_text_encoder_folder
    from model.openset import classify_texts, load_intent_scoring

    texts = ["Can I pay with my card?", "Where are the toilets?", "The moon orbits the earth."]
    _, _, _, shipped = load_intent_scoring(STARTER_DIR, KIOSK)
    model, tokenizer, _, same = load_intent_scoring(STARTER_DIR, KIOSK, sentence_encoder=default_text_encoder_folder())
    _, _, _, other = load_intent_scoring(STARTER_DIR, KIOSK, sentence_encoder=cls_pooled_minilm(tmp_path))
    assert shipped.encoder is None and same.encoder is not None
    baseline = classify_texts(model, tokenizer, shipped, texts)
    through_folder = classify_texts(model, tokenizer, same, texts)
    assert np.allclose([d.scope for d in baseline], [d.scope for d in through_folder], atol=1e-4)
    assert [d.intent for d in baseline] == [d.intent for d in through_folder]
    cls_scored = classify_texts(model, tokenizer, other, texts)
    assert not np.allclose([d.scope for d in baseline], [d.scope for d in cls_scored], atol=1e-3)
    assert other.reject_below != pytest.approx(shipped.reject_below)  # its threshold from its own examples
    direct = other.score(np.zeros((3, 1)), other.encoder(texts))  # type: ignore[misc]
    assert np.allclose(direct.scope, [d.scope for d in cls_scored], atol=1e-6)


@pytest.mark.parametrize(
    ("intents", "folder", "expected"),
    [
        ("kiosk", "missing", "a sentence-transformers model folder"),
        (None, "bundled", "an intent set the model was not trained on"),
        ("home", "bundled", "a set with at least 8 examples"),
    ],
    ids=["no-folder", "trained-set", "too-few-examples"],
)
def test_sentence_encoder_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], intents: str | None, folder: str, expected: str
) -> None:
    from model.checkpoint import default_text_encoder_folder

    argv = ["classify", "--ckpt", "default", "Hello there."]
    if intents == "kiosk":
        argv += ["--intents", str(KIOSK)]
    elif intents == "home":
        home = tmp_path / "home.yaml"
        home.write_text(HOME_SET)
        argv += ["--intents", str(home)]
    encoder = tmp_path / "nothing-here" if folder == "missing" else default_text_encoder_folder()
    assert main([*argv, "--sentence-encoder", str(encoder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sentence-encoder" in err[0] and expected in err[0], err
