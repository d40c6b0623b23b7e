"""`dfmq extract` on real rendered clips, then `dfmq train` and `dfmq eval` on what it wrote."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import pytest

from model.checkpoint import load_checkpoint
from stream.cli import main
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
    assert 0 < metrics["mean_quality"]["audio"] < 1 and 0 < metrics["mean_quality"]["video"] < 1


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
