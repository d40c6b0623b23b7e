"""`dfmq train` + `dfmq eval` through the command line, on tiny real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint, write_calibration
from stream.cli import main


def test_two_epoch_train_then_eval_round_trip(
    tmp_path: Path,
    tiny_mintrec: Path,
    tiny_config_yaml: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("model.train.RULE_MIN_SAMPLES", 1)  # learn the out-of-scope rule on the tiny dev
    ckpt = tmp_path / "ckpt"
    rc = main(
        [
            "train",
            "--dataset",
            "mintrec",
            "--data",
            str(tiny_mintrec),
            "--out",
            str(ckpt),
            "--config",
            str(tiny_config_yaml),
            "--epochs",
            "2",
            "--seed",
            "1",
        ]
    )
    assert rc == 0
    log = [json.loads(line) for line in (ckpt / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log[:-2]] == [1, 2]
    assert log[0]["loss"]["meta"] > 0 and log[0]["loss"]["mc"] > 0 and log[0]["loss"]["ss"] > 0
    # Training ends with temperature scaling on dev, then the intent scoring's fit (similarity
    # temperature, out-of-scope rule): recorded in the log and in the checkpoint.
    calibration = log[-2]["calibration"]
    semantic = log[-1]["semantic"]
    assert semantic["rule"]["held_out_intents"] == 5 and semantic["rule"]["draws"] == 16
    assert 0.5 <= semantic["rule"]["reject_below"] <= 1.0 and 0.0 <= semantic["head_mix"] <= 1.0
    assert calibration["split"] == "dev" and calibration["bins"] == 15 and calibration["n"] == 12
    assert calibration["temperature_before"] == 1.0 and calibration["temperature"] > 0
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-9
    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["model"]["temperature"] == calibration["temperature"] and saved["calibration"] == calibration
    assert saved["model"]["reject_below"] == semantic["rule"]["reject_below"] and saved["semantic"] == semantic
    # 12 dev samples are too few to fit the trained labels' own threshold: the default stays.
    assert "kept" in semantic["trained_rule"]["note"] and saved["model"]["reject_below_trained"] == 0.15
    assert "intents.yaml" in {p.name for p in ckpt.iterdir()}
    assert "ECE" in capsys.readouterr().out
    for name in ("config.json", "weights.pt", "text_encoder/config.json", "text_encoder/tokenizer.json"):
        assert (ckpt / name).exists(), name

    out_json = tmp_path / "eval" / "dev.json"
    rc = main(
        [
            "eval",
            "--ckpt",
            str(ckpt),
            "--dataset",
            "mintrec",
            "--data",
            str(tiny_mintrec),
            "--split",
            "dev",
            "--json",
            str(out_json),
        ]
    )
    assert rc == 0
    metrics = json.loads(out_json.read_text())
    for key in (
        "acc",
        "f1_macro",
        "precision_macro",
        "recall_macro",
        "f1_weighted",
        "precision_weighted",
        "recall_weighted",
    ):
        assert 0.0 <= metrics[key] <= 100.0, key
    assert metrics["n"] == 12
    assert set(metrics["per_class"]) >= {"Thank", "Greet", "Apologise", "Leave"}
    assert out_json.with_suffix(".png").stat().st_size > 10_000
    best = json.loads((ckpt / "config.json").read_text())["dev"]
    assert metrics["acc"] == pytest.approx(best["acc"])  # the reloaded model is the saved one
    # Calibration of the model's own (temperature-scaled) confidence, on the split it was fitted on.
    assert metrics["ece"] == pytest.approx(calibration["ece_after"])
    assert metrics["nll"] == pytest.approx(calibration["nll_after"])
    assert metrics["temperature"] == calibration["temperature"] and metrics["ece_bins"] == 15
    assert Path(metrics["reliability_png"]) == out_json.with_suffix(".reliability.png")
    assert out_json.with_suffix(".reliability.png").stat().st_size > 10_000
    assert "reliability diagram" in capsys.readouterr().out

    # dfmq calibrate refits on any checkpoint: from a deliberately wrong temperature back to the fit.
    write_calibration(ckpt, 40.0, {})
    assert main(["calibrate", "--ckpt", str(ckpt), "--dataset", "mintrec", "--data", str(tiny_mintrec)]) == 0
    printed = capsys.readouterr().out
    assert "temperature 40.000 ->" in printed and "ECE" in printed and "NLL" in printed
    refit = json.loads((ckpt / "config.json").read_text())
    assert refit["model"]["temperature"] == pytest.approx(calibration["temperature"], rel=1e-6)
    assert refit["calibration"]["nll_after"] < refit["calibration"]["nll_before"]

    noisy_json = tmp_path / "eval" / "noisy.json"
    assert (
        main(
            [
                "eval",
                "--ckpt",
                str(ckpt),
                "--dataset",
                "mintrec",
                "--data",
                str(tiny_mintrec),
                "--json",
                str(noisy_json),
                "--noise",
                "0.7",
            ]
        )
        == 0
    )
    assert json.loads(noisy_json.read_text())["noise_sigma"] == 0.7

    model, _ = load_checkpoint(ckpt)
    assert model.config.audio_dim == 16 and model.config.reference.audio_energy > 0
    assert not model.training and isinstance(model.classifier, torch.nn.Linear)


def test_ablation_switches_reach_the_saved_config(tmp_path: Path, tiny_mintrec: Path, tiny_config_yaml: Path) -> None:
    ckpt = tmp_path / "ablation"
    rc = main(
        [
            "train",
            "--dataset",
            "mintrec",
            "--data",
            str(tiny_mintrec),
            "--out",
            str(ckpt),
            "--config",
            str(tiny_config_yaml),
            "--epochs",
            "1",
            "--fusion",
            "equal",
            "--no-quality",
            "--no-consistency",
            "--no-semantic-sync",
        ]
    )
    assert rc == 0
    saved = json.loads((ckpt / "config.json").read_text())["model"]
    assert (saved["fusion"], saved["use_quality"], saved["use_consistency"]) == ("equal", False, False)
    assert saved["lambda_ss"] == 0.0
    log = json.loads((ckpt / "train_log.jsonl").read_text().splitlines()[0])
    assert "meta" not in log["loss"] and "mc" not in log["loss"] and "ss" not in log["loss"]
    assert log["mean_weights"] == pytest.approx([0.5, 0.5 * 10 / 12])  # equal weights where present


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "--dataset", "mintrec", "--data", "{tmp}/nowhere", "--out", "{tmp}/o"],
            "train.tsv: split file is missing",
        ),
        (
            ["eval", "--ckpt", "{tmp}/none", "--dataset", "mintrec", "--data", "{tmp}", "--json", "{tmp}/x.json"],
            "no config.json",
        ),
        (
            ["calibrate", "--ckpt", "{tmp}/none", "--dataset", "mintrec", "--data", "{tmp}"],
            "no config.json",
        ),
        (
            ["calibrate", "--ckpt", "default", "--dataset", "mintrec", "--data", "{tmp}"],
            "option '--ckpt' expected a checkpoint folder to rewrite",
        ),
        (
            ["train", "--dataset", "mintrec", "--data", "{tmp}", "--out", "{tmp}/o", "--config", "{tmp}/bad.yaml"],
            "option 'epochz' expected one of",
        ),
        (["run", "--config", "{tmp}/broken.yaml", "--input", "{tmp}/e.tsv"], "valid YAML (line 2, column 4: expected"),
        (
            ["run", "--config", "{tmp}/flat.yaml", "--input", "{tmp}/e.tsv"],
            "flat.yaml [asr]: option 'asr' expected a mapping of options",
        ),
        (["run", "--config", "{tmp}/binary.yaml", "--input", "{tmp}/e.tsv"], "expected a UTF-8 text file"),
        (
            ["run", "--config", "{tmp}/twice.yaml", "--input", "{tmp}/e.tsv"],
            "option 'beam_size' expected each key once in its section (first on line 2), got 'again on line 3'",
        ),
        (["demo", "--out", "{tmp}/e.tsv"], "option '--out' expected a folder for the demo's record and report"),
        (["classify", "hello", " "], "option 'text' expected a sentence to classify (not an empty string), got ' '"),
        (
            [
                "train",
                "--dataset",
                "mintrec",
                "--data",
                "{tmp}",
                "--out",
                "{tmp}/o",
                "--config",
                "{tmp}/flat_model.yaml",
            ],
            "option 'model' expected a mapping of options",
        ),
        (
            ["train", "--dataset", "mintrec", "--data", "{tmp}", "--out", "{tmp}/o", "--config", "{tmp}/drop.yaml"],
            "drop.yaml [model]: option 'dropout' expected a value in [0, 1), got 1.7",
        ),
        (["run", "--video", "7", "--audio", "none", "--broker", "mqtt://127.0.0.1:1"], "option '--video' expected a"),
        (
            ["train", "--dataset", "mintrec", "--data", "{tmp}", "--out", "{tmp}/o", "--epochs", "-1"],
            "'--epochs' expected",
        ),
        # A bad flag is named as typed, not by the option field it sets.
        (["run", "--asr-threads", "-1", "--input", "{tmp}/e.tsv"], "option '--asr-threads' expected a whole number"),
        (["run", "--metrics-port", "99999", "--input", "{tmp}/e.tsv"], "option '--metrics-port' expected a port"),
        # The metrics file would overwrite the sentences it scores, or its own confusion matrix.
        (
            ["eval", "--ckpt", "default", "--tsv", "{tmp}/e.tsv", "--json", "{tmp}/e.tsv"],
            "a new file, not an input it would overwrite",
        ),
        (["eval", "--ckpt", "default", "--tsv", "{tmp}/e.tsv", "--json", "{tmp}/m.png"], "beside it are other files"),
        (["eval", "--ckpt", "default", "--tsv", "{tmp}/e.tsv", "--json", "{tmp}"], "a file to write, not a folder"),
        (
            ["eval", "--ckpt", "default", "--tsv", "{tmp}/e.tsv", "--json", "{tmp}/m.json", "--noise", "0.5"],
            "only with --dataset",
        ),
        (
            ["bench", "--ckpt", "default", "--engines", "torch,foo", "--json", "{tmp}/b.json"],
            "option '--engines' expected comma-separated",
        ),
        # Outputs and sizes are checked before any work (a bench or an export runs for a while).
        (
            ["bench", "--ckpt", "default", "--iters", "0", "--json", "{tmp}/b.json"],
            "expected an integer in [1, 100000]",
        ),
        (["bench", "--ckpt", "default", "--json", "{tmp}"], "option '--json' expected a file to write, not a folder"),
        (
            ["bench", "--ckpt", "default", "--json", "/proc/b.json"],
            "option '--json' expected a file that can be written",
        ),
        (["export", "--ckpt", "default", "--out", "{tmp}/x.txt"], "option '--out' expected a file ending in .onnx"),
        (["export", "--ckpt", "default", "--out", "{tmp}/e.onnx"], "e.json is another file"),
        (
            ["train", "--dataset", "mintrec", "--data", "{tmp}", "--out", "{tmp}/e.tsv"],
            "option '--out' expected a folder for the checkpoint, not an existing file",
        ),
        (
            ["train", "--dataset", "mintrec", "--data", "{tmp}", "--out", "{tmp}/o", "--augment", "{tmp}/no.tsv"],
            "no.tsv: augmentation file is missing",
        ),
    ],
)
def test_bad_inputs_exit_2_with_a_clear_message(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.yaml").write_text("train:\n  epochz: 3\n")
    (tmp_path / "broken.yaml").write_text("asr: [1, 2\nfoo: {\n")
    (tmp_path / "flat.yaml").write_text("asr: 5\n")
    (tmp_path / "flat_model.yaml").write_text("model: 3\n")
    (tmp_path / "twice.yaml").write_text("asr:\n  beam_size: 2\n  beam_size: 3\n")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    (tmp_path / "drop.yaml").write_text("model:\n  dropout: 1.7\n")
    (tmp_path / "e.tsv").write_text("label\ttext\nPay\tcard please\n")
    (tmp_path / "e.json").write_text('{"my": "results"}')  # a user's file where an export's sidecar would go
    try:
        code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    except SystemExit as exc:  # argparse's own checks (a flag's type)
        code = int(exc.code or 0)
    assert code == 2
    assert not (tmp_path / "o").exists()  # a failed train leaves no empty checkpoint folder
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_live_yaml_lists_exactly_the_built_in_defaults() -> None:
    from stream.options import LiveOptions, load_live_options

    shipped = load_live_options(Path(__file__).parents[1] / "configs/live.yaml")
    assert shipped == LiveOptions()


def test_run_config_flags_override_the_file_and_bad_keys_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream.cli import _overridden
    from stream.options import load_live_options

    config = tmp_path / "live.yaml"
    config.write_text("asr:\n  encoder_min_window_s: 15.0\nsegmenter:\n  min_silence_ms: 300.0\n")
    live = load_live_options(config)
    assert (live.asr.encoder_min_window_s, live.segmenter.min_silence_ms) == (15.0, 300.0)
    assert live.asr.cpu_threads == 1  # what the file leaves out keeps its default
    seg = _overridden(live.segmenter, min_silence_ms=500.0, max_utterance_s=None)
    assert (seg.min_silence_ms, seg.max_utterance_s) == (500.0, 12.0)

    config.write_text("segmenter:\n  min_silence: 300\n")
    assert main(["run", "--config", str(config), "--input", "x.mp4"]) == 2
    err = capsys.readouterr().err
    assert "min_silence" in err and "live.yaml [segmenter]" in err and "min_silence_ms" in err
    config.write_text("vad:\n  threshold: 0.4\n")
    assert main(["run", "--config", str(config), "--input", "x.mp4"]) == 2
    assert "'vad'" in capsys.readouterr().err
