"""`dfmq extract` on real rendered clips, then `dfmq train` and `dfmq eval` on what it wrote."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import pickle
from pathlib import Path

import pytest

from model.checkpoint import load_checkpoint
from model.data import FeatureStore, load_split
from model.features import FeatureOptions
from model.quality import RecogniserScores, recogniser_confidence
from stream import extract
from stream.asr import Recognised
from stream.cli import main
from stream.options import AsrOptions
from tests.conftest import render_clip

CLIPS = [
    # clip, label, text ('' = transcribe), split, degradation
    ("thank1.mp4", "Thank", "thank you so much", "train", None),
    ("thank2.mp4", "Thank", "thanks a lot for the help", "dev", None),
    ("greet1.mp4", "Greet", "hello there, good morning", "train", None),
    ("greet2.mp4", "Greet", "hi, how are you doing", "dev", "noise"),
    ("sorry1.mp4", "Apologise", "i am so sorry about that", "train", "dark"),
    ("sorry2.mp4", "Apologise", "sorry, my mistake", "dev", None),
    ("leave1.mp4", "Leave", "i have to go now, bye", "train", None),
    ("leave2.mp4", "Leave", "see you later, i am leaving", "test", None),
    ("ask1.mp4", "Ask for help", "", "test", None),  # no text: faster-whisper transcribes it
]
SPOKEN_WITHOUT_TEXT = "could you please help me with this box"


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("clips")
    for name, _, text, _, degradation in CLIPS:
        render_clip(
            folder / name,
            text or SPOKEN_WITHOUT_TEXT,
            snr_db=0.0 if degradation == "noise" else None,
            dark=degradation == "dark",
        )
    (folder / "broken.mp4").write_bytes(b"\x00not a video at all")
    labels = folder / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["clip", "label", "text", "split"])
        for name, label, text, split, _ in CLIPS:
            writer.writerow([name, label, text, split])
    return folder, labels


def test_extract_train_eval_round_trip(
    clip_folder: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, labels = clip_folder
    data = tmp_path / "data"
    assert main(["extract", "--clips", str(folder), "--labels", str(labels), "--out", str(data)]) == 0
    for name in (
        "train.tsv",
        "dev.tsv",
        "test.tsv",
        "audio_feats.pkl",
        "video_feats.pkl",
        "quality_stats.pkl",
        "features.json",
    ):
        assert (data / name).is_file(), name
    test_rows = (data / "test.tsv").read_text().splitlines()
    assert "help" in test_rows[-1].lower() and test_rows[-1].endswith("Ask for help")  # transcribed by Whisper
    with (data / "quality_stats.pkl").open("rb") as handle:
        stats = pickle.load(handle)
    keys = {clip: "X00_E00_" + str(i) for i, (clip, *_) in enumerate(CLIPS)}
    assert stats[keys["greet2.mp4"]]["audio"]["snr_db"] < stats[keys["greet1.mp4"]]["audio"]["snr_db"] - 10
    assert stats[keys["sorry1.mp4"]]["video"]["contrast"] < 0.2 * stats[keys["sorry2.mp4"]]["video"]["contrast"]
    # The recogniser ran on every clip, those whose text the labels give too, and its scores are kept;
    # the given text is still what the model reads.
    confidence = {}
    for clip, _, text, split, _ in CLIPS:
        scores = RecogniserScores(**stats[keys[clip]]["text"])
        confidence[clip] = recogniser_confidence(scores)
        if text:
            assert f"{keys[clip].replace('_', chr(9))}\t{text}\t" in (data / f"{split}.tsv").read_text()
    assert min(confidence[c] for c in ("thank1.mp4", "greet1.mp4", "leave1.mp4", "ask1.mp4")) > 0.3
    store = FeatureStore(data, 64, 256)
    train_samples = load_split("mintrec", data, "train", store)
    assert all(s.text_scores is not None for s in train_samples)

    # Second run: everything comes from the cache.
    assert main(["extract", "--clips", str(folder), "--labels", str(labels), "--out", str(data)]) == 0
    assert f"{len(CLIPS)} clips ({len(CLIPS)} from cache)" in capsys.readouterr().out

    config = tmp_path / "media.yaml"
    config.write_text(
        (Path(__file__).resolve().parent.parent / "configs" / "media.yaml")
        .read_text()
        .replace("batch_size: 16", "batch_size: 4")
    )
    ckpt = tmp_path / "ckpt"
    assert (
        main(
            [
                "train",
                "--dataset",
                "mintrec",
                "--data",
                str(data),
                "--out",
                str(ckpt),
                "--config",
                str(config),
                "--epochs",
                "2",
            ]
        )
        == 0
    )
    log = [json.loads(line) for line in (ckpt / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["loss"]["meta"] > 0
    model, _ = load_checkpoint(ckpt)
    assert model.config.feature_options == json.loads((data / "features.json").read_text())
    assert model.config.reference.video_contrast > 0

    out = tmp_path / "dev.json"
    assert main(["eval", "--ckpt", str(ckpt), "--dataset", "mintrec", "--data", str(data), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 3 and not metrics["text_only"]
    assert 0 < metrics["mean_quality"]["audio"] < 1 and 0 < metrics["mean_quality"]["video"] <= 1


def test_unreadable_clip_is_reported_and_the_rest_processed(
    clip_folder: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = clip_folder
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "clip,label,text\nbroken.mp4,Thank,thanks\nthank1.mp4,Thank,thank you so much\nmissing.mp4,Greet,hello\n"
    )
    data = tmp_path / "data"
    assert main(["extract", "--clips", str(folder), "--labels", str(labels), "--out", str(data)]) == 1
    printed = capsys.readouterr().out
    assert "skipped broken.mp4: cannot read media" in printed and "skipped missing.mp4" in printed
    errors = (data / "extract_errors.tsv").read_text()
    assert "broken.mp4" in errors and "missing.mp4" in errors
    assert "1 clips" in printed


def test_bad_labels_file_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("clip,label\na.mp4,Sulk\n")
    assert main(["extract", "--clips", str(tmp_path), "--labels", str(labels), "--out", str(tmp_path / "o")]) == 2
    assert "labels.csv:2: unknown label" in capsys.readouterr().err


def test_cache_key_covers_clip_features_recogniser_and_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"x" * 100)
    options, asr = FeatureOptions(), AsrOptions()
    key = extract.cache_key(clip, "a.mp4", options, asr)
    assert key is not None and key == extract.cache_key(clip, "a.mp4", options, asr)
    assert extract.cache_key(clip, "a.mp4", options, AsrOptions(cpu_threads=3)) == key  # same output
    for other_asr in (AsrOptions(beam_size=2), AsrOptions(compute_type="float32"), AsrOptions(language="de")):
        assert extract.cache_key(clip, "a.mp4", options, other_asr) != key, other_asr
    assert extract.cache_key(clip, "a.mp4", FeatureOptions(audio_quality="paper"), asr) != key
    assert extract.cache_key(clip, "b.mp4", options, asr) != key
    monkeypatch.setattr(extract, "CACHE_FORMAT", extract.CACHE_FORMAT + 1)
    assert extract.cache_key(clip, "a.mp4", options, asr) != key
    monkeypatch.undo()
    clip.write_bytes(b"y" * 101)  # re-rendered: another size (and modification time)
    assert extract.cache_key(clip, "a.mp4", options, asr) != key
    assert extract.cache_key(tmp_path / "missing.mp4", "missing.mp4", options, asr) is None


def test_recogniser_runs_on_labelled_clips_and_old_caches_are_not_reused(
    clip_folder: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = clip_folder
    heard: list[int] = []
    scores = RecogniserScores(avg_logprob=-0.6, no_speech_prob=0.1, compression_ratio=1.5)

    def fake_transcribe(samples: object, options: AsrOptions) -> Recognised:
        heard.append(options.beam_size)
        return Recognised("what the recogniser heard", scores)

    monkeypatch.setattr(extract, "transcribe", fake_transcribe)
    labels = tmp_path / "labels.csv"
    labels.write_text("clip,label,text,split\nthank1.mp4,Thank,thank you so much,train\nask1.mp4,Ask for help,,dev\n")
    data = tmp_path / "data"
    # A cache entry as the format before this one wrote it (text given, no recogniser scores).
    stale = data / ".extract_cache"
    stale.mkdir(parents=True)
    options_tag = hashlib.sha256(json.dumps(dataclasses.asdict(FeatureOptions()), sort_keys=True).encode())
    old_name = f"{hashlib.sha256(b'thank1.mp4').hexdigest()[:16]}-{options_tag.hexdigest()[:10]}.pkl"
    with (stale / old_name).open("wb") as handle:
        pickle.dump({"text": "stale", "audio": None, "video": None, "audio_stats": None, "video_stats": None}, handle)

    assert extract.run_extract(folder, labels, data, FeatureOptions(), AsrOptions()) == 0
    assert heard == [1, 1]  # both clips, the one whose text the labels give included
    with (data / "quality_stats.pkl").open("rb") as handle:
        stats = pickle.load(handle)
    assert stats["X00_E00_0"]["text"] == dataclasses.asdict(scores) == stats["X00_E00_1"]["text"]
    assert stats["X00_E00_0"]["audio"] is not None  # computed afresh, not the stale entry
    assert "\tthank you so much\tThank" in (data / "train.tsv").read_text()  # given text fed to the model
    assert "\twhat the recogniser heard\tAsk for help" in (data / "dev.tsv").read_text()

    assert extract.run_extract(folder, labels, data, FeatureOptions(), AsrOptions(cpu_threads=2)) == 0
    assert heard == [1, 1]  # all from the cache
    # Edited text in the labels is taken as it is now, from the same cache entry.
    labels.write_text("clip,label,text,split\nthank1.mp4,Thank,thanks ever so much,train\n")
    assert extract.run_extract(folder, labels, data, FeatureOptions(), AsrOptions()) == 0
    assert heard == [1, 1] and "\tthanks ever so much\tThank" in (data / "train.tsv").read_text()
    # Another recogniser setting gives other scores: not from the cache.
    assert extract.run_extract(folder, labels, data, FeatureOptions(), AsrOptions(beam_size=2)) == 0
    assert heard == [1, 1, 2]
