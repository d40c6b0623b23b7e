"""The `dfmq` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from model.errors import ConfigError, DataError, DfmqError
from model.paths import config_file

T = TypeVar("T")


# engines.select.ENGINE_NAMES, spelt out so that `dfmq --help` does not import torch.
ENGINE_CHOICES = ["auto", "torch", "onnxruntime", "onnxruntime-int8", "tensorrt"]
DATASET_HELP = "layout and label set of --data; intents: train/dev.tsv of label<TAB>text, labels from --intents"
OWN_LABELS_HELP = (
    "layout of --data, scored on the labels the checkpoint was trained on (intents: a split of label<TAB>text "
    "over its own set); a set it was not trained on: dfmq eval --tsv with --intents"
)
SENTENCE_ENCODER_HELP = (
    "a sentence-transformers model folder that embeds the descriptions, examples and transcripts of a set "
    "the model was not trained on, in place of the bundled all-MiniLM-L6-v2 (the set needs 8+ examples or a "
    "reject_below)"
)
ADAPTED_HELP = (
    "with --intents: the folder `dfmq adapt` wrote for that set (its intents classified on the mean of the frozen "
    "and the adapted encoder's cosines; scored without it, with a warning, if the set changed since)"
)


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train DFMQ-MC on a MIntRec- or MELD-DA-layout folder",
        description="Train DFMQ-MC with early stopping on dev macro F1; the best epoch is saved.",
    )
    p.add_argument("--dataset", required=True, choices=["mintrec", "meld-da", "intents"], help=DATASET_HELP)
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="folder with train.tsv/dev.tsv and optional audio/video feature pickles",
    )
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write (created if missing)")
    p.add_argument(
        "--config",
        type=Path,
        default=config_file("default.yaml"),
        help="YAML with 'model' and 'train' sections (default: configs/default.yaml)",
    )
    p.add_argument("--epochs", type=int, help="maximum epochs (overrides the config)")
    p.add_argument("--seed", type=int, help="random seed (overrides the config)")
    p.add_argument("--batch-size", type=int, help="training batch size (overrides the config)")
    p.add_argument(
        "--fusion",
        choices=["dynamic", "anchor", "equal"],
        help="dynamic = quality-driven weights (default); anchor = the same weights over A-ME anchor embeddings; "
        "equal = the ablation with w_a = w_v = 0.5 and no predictor",
    )
    p.add_argument(
        "--fusion-weights",
        choices=["gated", "paper"],
        help="gated = one gate per channel from its own quality, zero below the floor (default); "
        "paper = the paper's softmax over (audio, video)",
    )
    p.add_argument("--no-quality", action="store_true", help="ablation: the predictor sees a constant")
    p.add_argument("--no-consistency", action="store_true", help="ablation: drop the text-anchored KL loss")
    p.add_argument("--text-encoder", help="'minilm' (bundled, default) or a BERT-family model folder")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="training device (default cpu)")
    p.add_argument(
        "--augment",
        type=Path,
        help="extra training tsv in the same layout (e.g. augment_train.tsv); "
        "each epoch draws train.augment_rows_per_epoch rows from it",
    )
    p.add_argument("--augment-rows", type=int, help="rows drawn from --augment per epoch (overrides the config)")
    p.add_argument(
        "--intents",
        type=Path,
        help="intent set YAML naming the dataset's labels, whose descriptions anchor the semantic "
        "synchronisation; saved in the checkpoint (default: configs/intents/mintrec.yaml for mintrec)",
    )
    p.add_argument(
        "--no-semantic-sync",
        action="store_true",
        help="ablation: no triplet loss toward the description anchors (lambda_ss = 0)",
    )


def _add_eval(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on a split",
        description="Write metrics (percent; ece: expected calibration error of the model's calibrated "
        "confidence, 15 bins) as JSON, with a confusion-matrix PNG beside it, and with --dataset a reliability "
        "diagram (OUT.reliability.png for --json OUT.json); with --tsv, per-sentence predictions "
        "(OUT.predictions.tsv).",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint folder written by `dfmq train`, or 'default'")
    p.add_argument("--dataset", choices=["mintrec", "meld-da", "intents"], help=OWN_LABELS_HELP)
    p.add_argument("--data", type=Path, help="dataset folder (with --dataset)")
    p.add_argument("--split", default="dev", choices=["train", "dev", "test"], help="split to score (default dev)")
    p.add_argument(
        "--tsv",
        type=Path,
        help="instead of --dataset/--data: a label<TAB>text file scored against --intents (label OOS: "
        "an off-topic sentence); writes in_scope_acc, coverage, oos_recall, f1_is, f1_oos, auroc (percent)",
    )
    p.add_argument("--intents", type=Path, help="intent set YAML for --tsv (default: the checkpoint's own)")
    p.add_argument(
        "--descriptions-only", action="store_true", help="with --tsv: ignore the set's examples (the zero-shot figure)"
    )
    p.add_argument("--reject-below", type=float, help="with --tsv: out-of-scope threshold in [0, 1] for this run")
    p.add_argument(
        "--sentence-encoder", type=Path, metavar="DIR", help="with --tsv and --intents: " + SENTENCE_ENCODER_HELP
    )
    p.add_argument("--adapted", type=Path, metavar="DIR", help="with --tsv: " + ADAPTED_HELP)
    p.add_argument(
        "--noise",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="add Gaussian noise of this std to audio and video inputs (robustness table)",
    )
    p.add_argument("--json", required=True, type=Path, help="metrics file to write; the PNG goes beside it")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the injected noise")
    p.add_argument(
        "--engine",
        default="torch",
        choices=ENGINE_CHOICES,
        help="backend that scores the split (default torch, eager; auto: what `dfmq run` would pick)",
    )


def _add_classify(sub: Any) -> None:
    p = sub.add_parser(
        "classify",
        help="classify sentences against an intent set (text only) and print the decision and scores",
        description="Each sentence is scored against the set's descriptions and examples (and the trained head "
        "when the set is the checkpoint's own); prints the intent or 'out of scope', its probability, the "
        "scope score (fraction of off-topic sentences that fit the set worse) and the top scores.",
    )
    p.add_argument("text", nargs="+", help="sentence(s) to classify")
    p.add_argument("--ckpt", default="default", help="checkpoint folder, or 'default' (the starter model)")
    p.add_argument("--intents", type=Path, help="intent set YAML (default: the checkpoint's own)")
    p.add_argument("--reject-below", type=float, help="out-of-scope threshold in [0, 1] for this run")
    p.add_argument("--sentence-encoder", type=Path, metavar="DIR", help="with --intents: " + SENTENCE_ENCODER_HELP)
    p.add_argument("--adapted", type=Path, metavar="DIR", help=ADAPTED_HELP)
    p.add_argument(
        "--json", action="store_true", help="one JSON object per sentence instead of text (every intent's probability)"
    )


def _add_calibrate(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="refit a checkpoint's confidence temperature (and intent scoring) on a held-out split",
        description="Temperature scaling: the T > 0 minimising the NLL of softmax(logits / T) on the split, "
        "written into the checkpoint's config.json (nothing else changes; no backup is kept). Prints ECE "
        "(15 bins) and NLL before and after. `dfmq train` already does this on dev at its end.",
    )
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint folder written by `dfmq train` (rewritten)")
    p.add_argument("--dataset", required=True, choices=["mintrec", "meld-da", "intents"], help=OWN_LABELS_HELP)
    p.add_argument("--data", required=True, type=Path, help="dataset folder")
    p.add_argument(
        "--split", default="dev", choices=["train", "dev", "test"], help="held-out split to fit on (default dev)"
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default cpu)")


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the sample clip through the whole pipeline on the embedded broker, events printed live",
        description="Runs data/demo/demo.mp4 (sentences with a face; loud after a third, dark too after two "
        "thirds) through dfmq run on the embedded broker; a subscriber prints one line per intent event and a summary.",
    )
    p.add_argument("--clip", type=Path, help="another clip to run instead of the sample")
    p.add_argument("--pace", default="realtime", choices=["realtime", "fast"], help="replay speed (default realtime)")
    p.add_argument("--ckpt", default="default", help="checkpoint (default: the shipped starter model)")
    p.add_argument(
        "--out",
        type=Path,
        help="folder for the session record and its report (default: runs/demo-<date>-<time> here)",
    )


def _add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="draw a session recorded with `dfmq run --record`: timeline, quality, weights, latency, counts",
        description="Reads FILE.jsonl and its rotated parts (FILE.jsonl.1, .2, ...) and writes one PNG figure "
        "(utterances with their intents on a timeline, not-recognized marked with the reason, quality and "
        "fusion weights per channel over time, latency distribution, counts per intent), or a self-contained "
        "HTML page with that figure and tables of the run, counts and events.",
    )
    p.add_argument("record", type=Path, help="session record written by `dfmq run --record FILE.jsonl`")
    p.add_argument("--out", required=True, type=Path, help="FILE.png or FILE.html to write")
    p.add_argument("--stream-id", help="the stream to draw, when the record holds several")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text!r}")
        return value

    return parse


def _output_file(flag: str, path: Path, suffixes: Sequence[str] = ()) -> None:
    """A file the command will write, checked before any work: its suffix, not a folder, and a
    folder it can be created in (made if missing), so that a long run does not end in an errno."""
    if suffixes and path.suffix.lower() not in suffixes:
        raise ConfigError(flag, f"a file ending in {' or '.join(suffixes)}", str(path))
    if path.is_dir():
        raise ConfigError(flag, "a file to write, not a folder", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with path.open("a"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        raise ConfigError(flag, f"a file that can be written ({exc.strerror or exc})", str(path)) from exc


def _output_folder(flag: str, path: Path, holds: str) -> bool:
    """A folder the command will write into, made now if missing (checked before any work);
    returns whether it was made here."""
    if path.exists() and not path.is_dir():
        raise ConfigError(flag, f"a folder for {holds}, not an existing file", str(path))
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(flag, f"a folder that can be made ({exc.strerror or exc})", str(path)) from exc
    return created


def _add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export the whole DFMQ-MC forward to ONNX or a TensorRT plan",
        description="ONNX with a dynamic batch axis (checked with the ONNX checker), or a strongly typed "
        "TensorRT plan built from it.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint folder, or 'default' for the shipped starter model")
    p.add_argument("--format", default="onnx", choices=["onnx", "tensorrt"], help="output format (default onnx)")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "int8"],
        help="precision of the export (int8: ONNX only, dynamic quantisation checked against fp32; see README Engines)",
    )
    p.add_argument("--out", required=True, type=Path, help="file to write (.onnx or .plan)")


def _add_bench(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="throughput, latency, memory and parity of the engines, side by side",
        description="Windows/s, p50/p99 latency per batch size, peak memory, parameters and logit parity "
        "against torch, measured in one run, printed beside the paper's efficiency row.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint folder, or 'default' for the shipped starter model")
    p.add_argument(
        "--engines",
        default="torch,onnxruntime",
        help="comma-separated backends, each optionally ':fp16' (torch, onnxruntime, onnxruntime-int8, tensorrt)",
    )
    p.add_argument("--batch-sizes", type=_int_list, default=[1, 8, 32], help="comma-separated (default 1,8,32)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present, else cpu")
    p.add_argument("--iters", type=_int_in(1, 100_000), default=30, help="timed calls per batch size (default 30)")
    p.add_argument(
        "--text-len", type=_int_in(1, 512), default=30, help="tokens per window, at most the encoder's (default 30)"
    )
    p.add_argument(
        "--audio-frames", type=_int_in(1, 100_000), default=480, help="audio frames per window (default 480)"
    )
    p.add_argument(
        "--video-frames", type=_int_in(1, 100_000), default=230, help="video frames per window (default 230)"
    )
    p.add_argument("--json", required=True, type=Path, help="report file to write")


def _add_extract(sub: Any) -> None:
    p = sub.add_parser(
        "extract",
        help="turn a folder of labelled clips into a training set (MIntRec layout + features)",
        description="Decode each clip (PyAV), compute the features and raw quality statistics the live "
        "pipeline computes, run the recogniser (faster-whisper) on every clip's audio, and write "
        "train/dev/test.tsv with audio_feats.pkl, video_feats.pkl, quality_stats.pkl and features.json. The text "
        "is the labels' when given, else the transcript; the recogniser's scores (quality_stats.pkl, 'text') "
        "make training text quality the live one either way. Resumable; unreadable clips are listed in "
        "extract_errors.tsv and the exit code is 1.",
    )
    p.add_argument("--clips", required=True, type=Path, help="folder of mp4/mkv/webm/wav clips")
    p.add_argument("--labels", required=True, type=Path, help="CSV with columns clip,label[,text][,split]")
    p.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    p.add_argument(
        "--asr-model",
        default="tiny.en",
        help="'tiny.en' (bundled), 'base' (asr-base extra) or a CTranslate2 Whisper folder: the one `dfmq run` uses",
    )
    p.add_argument("--audio-quality", default="snr", choices=["snr", "paper"], help="audio quality formula")
    p.add_argument(
        "--video-quality", default="face", choices=["face", "relative", "paper"], help="video quality formula"
    )


def _add_synth(sub: Any) -> None:
    p = sub.add_parser(
        "synth",
        help="render a labelled multimodal corpus (espeak-ng speech + drawn faces) for the 20 intents",
        description="Writes OUT/clips/*.mp4 and OUT/labels.csv (clip,label,text,split,degradation,family,voice); "
        "feed it to `dfmq extract --clips OUT/clips --labels OUT/labels.csv`.",
    )
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--per-intent", type=int, default=30, help="clips per intent (default 30; 70/15/15 split)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the corpus is deterministic for a seed")
    p.add_argument("--text-source", type=Path, help="MIntRec-layout tsv whose sentences join the written ones")
    p.add_argument("--degrade-share", type=float, default=0.5, help="share of clips with one degradation")


def _add_source_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", help="one file or URL with both tracks")
    p.add_argument("--audio", help="'default', a microphone name or index, a FILE or URL, or 'none'")
    p.add_argument("--video", help="camera index (0), /dev/videoN, a FILE or URL, or 'none'")
    p.add_argument("--pace", default="realtime", choices=["realtime", "fast"], help="file replay speed")


def _add_login_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--username", help="MQTT user name")
    p.add_argument("--password", help="MQTT password")
    p.add_argument("--cert-file", help="client TLS certificate (mqtts://)")
    p.add_argument("--key-file", help="its private key, when not inside --cert-file")
    p.add_argument("--ca-file", help="CA certificate for mqtts://")


def _add_capture_flags(p: argparse.ArgumentParser) -> None:
    """What the capture side of a run decides: the stream id, transcripts, outputs, segmentation."""
    p.add_argument("--stream-id", help="the <stream-id> in the topics (default cam0)")
    p.add_argument("--no-transcripts", action="store_true", help="leave the transcript out of intent events")
    p.add_argument(
        "--hermes",
        action="store_true",
        help="also publish Rhasspy Hermes: hermes/asr/textCaptured, hermes/intent/<IntentName>, "
        "hermes/nlu/intentNotRecognized",
    )
    p.add_argument("--show", action="store_true", help="open a window with the video, quality bars and last intent")
    p.add_argument("--min-silence-ms", type=float, help="a pause this long ends an utterance (default 400)")
    p.add_argument("--max-utterance-s", type=float, help="longer speech is split here (default 12)")


def _add_decider_flags(p: argparse.ArgumentParser) -> None:
    """What the deciding side of a run takes: the engine and Whisper."""
    p.add_argument("--engine", default="auto", choices=ENGINE_CHOICES, help="backend")
    p.add_argument("--device", choices=["cpu", "cuda"], help="engine device (default: fastest available)")
    p.add_argument(
        "--asr-model", help="'tiny.en' (bundled, default), 'base' (asr-base extra) or a CTranslate2 Whisper folder"
    )
    p.add_argument("--asr-device", choices=["cpu", "cuda"], help="faster-whisper device (default cpu)")
    p.add_argument("--asr-compute-type", help="faster-whisper compute type (int8, the default; float16, ...)")
    p.add_argument("--asr-threads", type=int, help="CTranslate2 threads (default 1; 0: its own default)")


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="live or recorded audio/video -> one intent event per utterance on MQTT",
        description="Capture, VAD, faster-whisper, features and running quality, DFMQ-MC, MQTT. Topics: "
        "dfmq/<stream-id>/intent (QoS 1), dfmq/<stream-id>/quality, dfmq/<stream-id>/status (retained, last will).",
    )
    p.add_argument("--ckpt", default="default", help="checkpoint folder or 'default' (the shipped starter model)")
    p.add_argument(
        "--intents",
        type=Path,
        help="intent set YAML to recognise (default: the checkpoint's own, configs/intents/mintrec.yaml for the "
        "starter); a new set needs no training, a restart picks up an edited file",
    )
    p.add_argument("--sentence-encoder", type=Path, metavar="DIR", help="with --intents: " + SENTENCE_ENCODER_HELP)
    p.add_argument("--adapted", type=Path, metavar="DIR", help=ADAPTED_HELP)
    _add_source_flags(p)
    p.add_argument(
        "--streams",
        type=Path,
        help="YAML file with the key 'streams': a list of streams (each an id, and input or audio/video) run in "
        "this one process, sharing Whisper and the model; instead of --input/--audio/--video/--stream-id",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="YAML with sections asr, segmenter, pipeline, broker (configs/live.yaml lists them all with their "
        "defaults); the flags below override it",
    )
    p.add_argument("--broker", help="'embedded' (default) or mqtt://HOST:PORT / mqtts://HOST:PORT")
    p.add_argument("--embedded-port", type=int, default=1883, help="port of the embedded broker (default 1883)")
    _add_login_flags(p)
    _add_capture_flags(p)
    p.add_argument(
        "--partials",
        action="store_true",
        help="also publish provisional intents while a person speaks, on dfmq/<stream-id>/partial (QoS 0)",
    )
    p.add_argument(
        "--endpointing",
        choices=["speculative", "silence"],
        help="speculative: publish at a short pause when the transcript reads as a finished sentence and the "
        "voice fell; silence: wait for --min-silence-ms of silence (default from the config: silence)",
    )
    p.add_argument(
        "--record",
        metavar="FILE.jsonl",
        help="keep the session (intent events, quality, status; never media) in this JSON Lines file, "
        "for `dfmq report`",
    )
    p.add_argument("--record-max-mb", type=float, help="size of one record file before it rotates (default 50)")
    p.add_argument("--record-keep-files", type=int, help="rotated record parts kept beside it (default 4)")
    p.add_argument(
        "--homeassistant",
        nargs="?",
        const="homeassistant",
        metavar="PREFIX",
        help="announce the stream to Home Assistant by MQTT discovery under PREFIX (default homeassistant): "
        "an Intent event entity and quality and weight sensors",
    )
    p.add_argument(
        "--homeassistant-remove",
        action="store_true",
        help="remove the stream's Home Assistant entities (empty retained configs on --broker) and exit",
    )
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (default: off)")
    p.add_argument("--metrics-host", help="address the metrics endpoint binds (default 127.0.0.1)")
    _add_decider_flags(p)
    p.add_argument(
        "--asr-min-window-s",
        type=float,
        help="Whisper encoder window: the utterance plus 1 s, at least this (default 10; 30 = stock Whisper)",
    )


def _add_broker(sub: Any) -> None:
    p = sub.add_parser(
        "broker",
        help="run the embedded MQTT broker alone (Ctrl-C stops it)",
        description="The embedded MQTT broker (amqtt). Anonymous on loopback; on any other address it needs "
        "--username/--password, or --allow-anonymous to let anyone who reaches it publish and subscribe.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="port (default 1883)")
    p.add_argument("--username", help="the one user allowed to connect (with --password)")
    p.add_argument("--password", help="that user's password (kept in memory as an Argon2 hash)")
    p.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="accept clients without credentials on a non-loopback --host (prints a warning)",
    )


def _add_broker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT of an MQTT 5 broker (Mosquitto 2, EMQX)"
    )
    _add_login_flags(p)
    p.add_argument(
        "--config", type=Path, help="YAML with the sections of configs/live.yaml (scaleout among them); flags win"
    )
    p.add_argument("--group", help="worker group: the shared subscription $share/<group>/... (default dfmq)")
    p.add_argument("--ckpt", default="default", help="checkpoint folder or 'default'; the same on capture and workers")


def _add_capture(sub: Any) -> None:
    p = sub.add_parser(
        "capture",
        help="scale-out: sources, VAD and features here; utterances to `dfmq worker`s through the broker",
        description="The capture half of `dfmq run`: each utterance goes, with its features, to "
        "dfmq-internal/work/<stream-id> (QoS 1) for a worker; the results come back and are published here, "
        "once each and in order, on dfmq/<stream-id>/intent. Utterance audio travels only on dfmq-internal/.",
    )
    _add_source_flags(p)
    _add_broker_flags(p)
    _add_capture_flags(p)
    p.add_argument("--work-timeout-s", type=float, help="send an unanswered utterance again after this (default 15)")
    p.add_argument("--max-attempts", type=int, help="sends before it is published as worker_timeout (default 3)")
    p.add_argument("--max-in-flight", type=int, help="utterances sent and not yet answered (default 8)")


def _add_worker(sub: Any) -> None:
    p = sub.add_parser(
        "worker",
        help="scale-out: Whisper and the model for the utterances of `dfmq capture` nodes, until Ctrl-C",
        description="Takes work items from the MQTT 5 shared subscription $share/<group>/dfmq-internal/work/+ "
        "(each item goes to one worker of the group: another worker adds capacity), decides them and publishes "
        "the result to the capture node on dfmq-internal/result/<stream-id>.",
    )
    _add_broker_flags(p)
    p.add_argument("--worker-id", help="this worker's name in results and logs (default HOST-PID)")
    p.add_argument("--intents", type=Path, help="intent set YAML (default: the checkpoint's own)")
    p.add_argument("--sentence-encoder", type=Path, metavar="DIR", help="with --intents: " + SENTENCE_ENCODER_HELP)
    p.add_argument("--adapted", type=Path, metavar="DIR", help=ADAPTED_HELP)
    _add_decider_flags(p)


def _add_adapt(sub: Any) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt a copy of the sentence encoder to an intent set's descriptions and examples (seconds to a minute)",
        description="Fine-tunes a copy of the checkpoint's frozen sentence encoder on contrastive pairs of the set's "
        "own descriptions and examples (same intent / another intent) and writes it to --out; give that folder to "
        "`dfmq run/eval/classify/worker --intents FILE --adapted DIR`. Classification uses the mean of the frozen "
        "and adapted cosines; the out-of-scope decision stays the frozen encoder's. Needs 8+ examples in the set.",
    )
    p.add_argument("--ckpt", default="default", help="checkpoint folder, or 'default' (the starter model)")
    p.add_argument("--intents", required=True, type=Path, help="intent set YAML with examples")
    p.add_argument("--out", required=True, type=Path, help="folder to write (an encoder and dfmq_adaptation.json)")
    p.add_argument("--pairs", type=int, default=20, help="pairs of each kind per description or example (default 20)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default cpu)")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other bad input (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dfmq", description="Live multimodal intent recognition (DFMQ-MC).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    _add_classify(sub)
    _add_adapt(sub)
    _add_calibrate(sub)
    _add_demo(sub)
    _add_report(sub)
    _add_export(sub)
    _add_bench(sub)
    _add_extract(sub)
    _add_synth(sub)
    _add_run(sub)
    _add_broker(sub)
    _add_capture(sub)
    _add_worker(sub)
    sub.add_parser("devices", help="list microphones and cameras")
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from model.config import DFMQConfig
    from model.data import dataset_labels
    from model.intents import load_intent_set
    from model.train import TrainOptions, train
    from stream.options import from_mapping, load_yaml

    raw = load_yaml(args.config)
    for name in ("model", "train"):
        if not isinstance(raw.get(name) or {}, dict):
            raise ConfigError(name, "a mapping of options (key: value lines under it)", raw[name], str(args.config))
    model_section = dict(raw.get("model") or {})
    train_section = dict(raw.get("train") or {})
    intent_set = load_intent_set(args.intents) if args.intents is not None else None
    model_section["labels"] = dataset_labels(args.dataset, intent_set.names if intent_set is not None else None)
    if args.fusion:
        model_section["fusion"] = args.fusion
    if args.fusion_weights:
        model_section["fusion_weights"] = args.fusion_weights
    if args.no_quality:
        model_section["use_quality"] = False
    if args.no_consistency:
        model_section["use_consistency"] = False
    if args.text_encoder:
        model_section["text_encoder"] = args.text_encoder
    if args.no_semantic_sync:
        model_section["lambda_ss"] = 0.0
    flagged: dict[str, str] = {}  # option key -> the flag that set it
    for flag, key in (
        ("epochs", "epochs"),
        ("seed", "seed"),
        ("batch_size", "batch_size"),
        ("augment_rows", "augment_rows_per_epoch"),
    ):
        if getattr(args, flag) is not None:
            train_section[key] = getattr(args, flag)
            flagged[key] = "--" + flag.replace("_", "-")
    config = DFMQConfig.from_dict(model_section, source=f"{args.config} [model]")
    try:
        opts = from_mapping(TrainOptions, train_section, f"{args.config} [train]")
    except ConfigError as exc:
        if exc.key not in flagged:
            raise
        raise ConfigError(flagged[exc.key], exc.expected, exc.got) from exc
    if args.augment is not None and not Path(args.augment).is_file():
        raise DataError("augmentation file is missing", path=args.augment, expected="a tsv of label<TAB>text rows")
    if args.augment is not None and opts.augment_rows_per_epoch == 0:
        raise ConfigError(
            "--augment-rows", "rows drawn per epoch > 0 with --augment (or train.augment_rows_per_epoch)", 0
        )
    out = Path(args.out)
    created = _output_folder("--out", out, "the checkpoint")
    try:
        train(args.dataset, args.data, args.out, config, opts, args.device, args.augment, intent_set)
    except BaseException:
        if created and not any(out.iterdir()):  # made only to check it could be: not left behind empty
            out.rmdir()
        raise
    return 0


# What `dfmq eval --json OUT` writes beside OUT.
EVAL_OUTPUTS = (".png", ".predictions.tsv", ".reliability.png")


def _check_json_out(out: Path, inputs: Sequence[Path | None]) -> None:
    """`--json OUT`: a file that can be written, whose companions are other files, none of them an input."""
    written = [out, *(out.with_suffix(suffix) for suffix in EVAL_OUTPUTS)]
    resolved = [path.resolve() for path in written]
    _output_file("--json", out)
    if len(set(resolved)) < len(resolved):
        expected = f"a path whose {', '.join(EVAL_OUTPUTS)} beside it are other files (for example out.json)"
        raise ConfigError("--json", expected, str(out))
    for given in inputs:
        if given is not None and given.resolve() in resolved:
            raise ConfigError("--json", f"a new file, not an input it would overwrite ({given})", str(out))


def _cmd_eval(args: argparse.Namespace) -> int:
    from model.checkpoint import resolve_ckpt
    from model.train import evaluate

    _check_json_out(args.json, [args.tsv, args.intents, args.data])
    if args.tsv is not None:
        if args.dataset or args.data:
            raise ConfigError(
                "--tsv", "either --tsv (with --intents) or --dataset with --data, not both", str(args.tsv)
            )
        dataset_only = {"--noise": args.noise or None, "--engine": None if args.engine == "torch" else args.engine}
        for flag, value in dataset_only.items():
            if value is not None:
                raise ConfigError(flag, "only with --dataset (--tsv scores transcripts with the torch model)", value)
        return _eval_intent_tsv(args)
    if not (args.dataset and args.data):
        given = "only --dataset" if args.dataset else "only --data" if args.data else "neither"
        raise ConfigError("--dataset/--data", "both, or --tsv with --intents", given)
    tsv_only = {
        "--intents": None if args.intents is None else str(args.intents),
        "--descriptions-only": args.descriptions_only or None,
        "--reject-below": args.reject_below,
        "--sentence-encoder": None if args.sentence_encoder is None else str(args.sentence_encoder),
        "--adapted": None if args.adapted is None else str(args.adapted),
    }
    for flag, value in tsv_only.items():
        if value is not None:
            raise ConfigError(
                flag, "only with --tsv (a dataset split is scored on the labels the checkpoint was trained on)", value
            )
    forward = None
    if args.engine != "torch":
        from engines.forward import forward_for

        forward = forward_for(args.engine, args.device)
    metrics = evaluate(
        resolve_ckpt(args.ckpt),
        args.dataset,
        args.data,
        args.split,
        args.json,
        args.noise,
        args.device,
        args.seed,
        forward_for=forward,
    )
    shown = {k: round(v, 2) for k, v in metrics.items() if isinstance(v, float)}
    print(json.dumps({"split": args.split, "engine": metrics["engine"], **shown, "n": metrics["n"]}))
    print(
        f"metrics: {args.json}  confusion matrix: {metrics['confusion_png']}  "
        f"reliability diagram: {metrics['reliability_png']}"
    )
    return 0


def _eval_intent_tsv(args: argparse.Namespace) -> int:
    from model.checkpoint import resolve_ckpt
    from model.openset import evaluate_intent_tsv, load_intent_scoring

    model, tokenizer, intent_set, anchors = load_intent_scoring(
        resolve_ckpt(args.ckpt),
        args.intents,
        args.reject_below,
        args.descriptions_only,
        args.device,
        args.sentence_encoder,
        args.adapted,
    )
    metrics = evaluate_intent_tsv(model, tokenizer, anchors, intent_set, args.tsv, args.json)
    keys = ("n", "in_scope_acc", "coverage", "oos_recall", "f1_is", "f1_oos", "auroc", "reject_below")
    print(json.dumps({k: metrics[k] for k in keys}))
    print(f"metrics: {args.json}  confusion matrix: {metrics['confusion_png']}")
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from model.checkpoint import resolve_ckpt
    from model.openset import classify_texts, load_intent_scoring

    for text in args.text:
        if not text.strip():
            raise ConfigError("text", "a sentence to classify (not an empty string)", text)
    model, tokenizer, _, anchors = load_intent_scoring(
        resolve_ckpt(args.ckpt),
        args.intents,
        args.reject_below,
        sentence_encoder=args.sentence_encoder,
        adapted=args.adapted,
    )
    if not args.json:
        print(
            f"out of scope below scope {anchors.reject_below:.2f}, from {anchors.reject_below_source}", file=sys.stderr
        )
    for decision in classify_texts(model, tokenizer, anchors, args.text):
        ranked = sorted(decision.probs.items(), key=lambda kv: -kv[1])
        top = ranked[:3]
        if args.json:  # every intent's probability, best first: a program reading it may want them all
            print(json.dumps({**dataclasses.asdict(decision), "probs": dict(ranked)}))
            continue
        verdict = decision.intent if decision.intent is not None else "out of scope"
        scores = ", ".join(f"{name} {p:.2f}" for name, p in top)
        print(
            f"{verdict}\tp {decision.probability:.2f}\tscope {decision.scope:.2f} (reject below "
            f"{anchors.reject_below:.2f})\ttop: {scores}\t{decision.text!r}"
        )
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    from model.adapt import AdaptOptions, adapt
    from model.checkpoint import load_checkpoint, resolve_ckpt
    from model.intents import load_intent_set

    options = AdaptOptions(pairs_per_sentence=args.pairs)
    intent_set = load_intent_set(args.intents)
    model, tokenizer = load_checkpoint(resolve_ckpt(args.ckpt), args.device)
    seconds = adapt(model, tokenizer, intent_set, args.out, options)
    print(f"adapted to {intent_set.source} ({len(intent_set)} intents) in {seconds:.0f} s: {args.out}")
    print(f"use it: dfmq run --intents {args.intents} --adapted {args.out}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from model.train import calibrate, format_calibration, format_semantic

    if str(args.ckpt) == "default":
        raise ConfigError("--ckpt", "a checkpoint folder to rewrite (copy model/starter somewhere first)", "default")
    record = calibrate(args.ckpt, args.dataset, args.data, args.split, args.device)
    print(format_calibration(record))
    if "semantic" in record:
        print(format_semantic(record["semantic"]))
    print(f"temperature {record['temperature']:.4f} written to {args.ckpt / 'config.json'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from stream.demo import DEMO_CLIP, default_out, run_demo

    out = (args.out or default_out()).resolve()
    _output_folder("--out", out, "the demo's record and report (new or existing)")
    return run_demo(args.clip or DEMO_CLIP, args.pace, args.ckpt, out)


def _cmd_report(args: argparse.Namespace) -> int:
    from stream.report import write_report

    session = write_report(args.record, args.out, args.stream_id)
    for warning in session.warnings:
        print(f"dfmq report: warning: {warning}", file=sys.stderr)
    print(
        f"dfmq report: {len(session.intents)} utterances of stream '{session.stream_id}' from "
        f"{len(session.parts)} file(s): {args.out}"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from engines.export import export_onnx
    from model.checkpoint import load_checkpoint, resolve_ckpt

    if args.format == "tensorrt" and args.precision == "int8":
        raise ConfigError("--precision", "fp32 or fp16 with --format tensorrt (int8 is an ONNX Runtime graph)", "int8")
    out = Path(args.out)
    _output_file("--out", out, (".onnx",) if args.format == "onnx" else (".plan",))
    sidecar = out.with_suffix(".json")
    if sidecar.exists() and not _is_export_sidecar(sidecar):
        raise ConfigError(
            "--out",
            f"a path whose .json beside it is free or an earlier export's ({sidecar} is another file)",
            str(out),
        )
    model, tokenizer = load_checkpoint(resolve_ckpt(args.ckpt))
    if args.format == "onnx" and args.precision == "int8":
        # Built in the engine cache, where `--engine auto` looks for it, and copied to --out.
        from engines.select import onnx_for

        cached = onnx_for(model, "int8", tokenizer=tokenizer)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, args.out)
        shutil.copyfile(cached.with_suffix(".json"), Path(args.out).with_suffix(".json"))
        print(f"wrote {args.out} ({cached.stat().st_size / 2**20:.1f} MB, cached as {cached}); ONNX checker: ok")
        print(_int8_summary(Path(args.out)))
        return 0
    if args.format == "onnx":
        path = export_onnx(model, args.out, args.precision, tokenizer=tokenizer)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB) and {path.with_suffix('.json')}; ONNX checker: ok")
        return 0
    from engines.select import ensure_plan

    plan, key, _ = ensure_plan(model, args.precision, plan_path=args.out)
    print(f"wrote {plan} (TensorRT {key.tensorrt_version}, {key.gpu_name}, {key.precision}) and its .json")
    return 0


def _is_export_sidecar(path: Path) -> bool:
    """Whether `path` is the .json `dfmq export` writes beside its graph (then it may be replaced)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "precision" in meta and ("fingerprint" in meta or "model_fingerprint" in meta)


def _int8_summary(path: Path) -> str:
    from engines.export import read_meta

    meta = read_meta(path)
    parity = meta["parity"]
    verdict = "clears" if parity["passed"] else "misses"
    return (
        f"int8 level {meta['quantization']['level']}: on {parity['sentences']} sentences argmax agreement "
        f"{parity['argmax_agreement']:.3f}, max |dlogit| {parity['max_abs_dlogit']:.3f}, min cosine embedding "
        f"{parity['min_cosine_embedding']:.4f} sentence {parity['min_cosine_sentence']:.4f}; {verdict} the gate "
        f"{parity['gate']} (--engine auto uses it only when it clears)"
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from engines.bench import BenchShape, format_report, run_bench, write_report
    from model.checkpoint import load_checkpoint, resolve_ckpt

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    known = [name for name in ENGINE_CHOICES if name != "auto"]
    for engine in engines:
        name, _, precision = engine.partition(":")
        if name not in known or precision not in ("", "fp16"):
            raise ConfigError(
                "--engines", f"comma-separated names of {', '.join(known)}, each optionally :fp16", engine
            )
    if not engines:
        raise ConfigError("--engines", f"comma-separated names of {', '.join(known)}", args.engines)
    _output_file("--json", args.json)
    if args.device == "cuda":
        from engines.select import torch_cuda_available

        if not torch_cuda_available():
            raise ConfigError("--device", "'cpu' on a machine without CUDA", "cuda")
    model, tokenizer = load_checkpoint(resolve_ckpt(args.ckpt))
    positions = int(getattr(model.text_encoder.config, "max_position_embeddings", 512))
    if args.text_len > positions:
        raise ConfigError("--text-len", f"at most the text encoder's {positions} positions", args.text_len)
    shape = BenchShape(args.text_len, args.audio_frames, args.video_frames, iters=args.iters)
    report = run_bench(model, engines, args.batch_sizes, shape, args.device, tokenizer)
    write_report(report, args.json)
    print(format_report(report, args.batch_sizes))
    print(f"report: {args.json}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from model.features import FeatureOptions
    from stream.extract import run_extract
    from stream.options import AsrOptions

    options = FeatureOptions(audio_quality=args.audio_quality, video_quality=args.video_quality)
    return run_extract(args.clips, args.labels, args.out, options, AsrOptions(model=args.asr_model))


def _cmd_synth(args: argparse.Namespace) -> int:
    from stream.synth import render_corpus

    plan = render_corpus(args.out, args.per_intent, args.seed, args.text_source, args.degrade_share)
    degraded = sum(c.degradation != "none" for c in plan)
    print(f"synth: {len(plan)} clips ({degraded} degraded) in {args.out / 'clips'}; labels: {args.out / 'labels.csv'}")
    return 0


# Option fields whose flag is not `--` + the field's name with dashes.
FLAG_OF_FIELD = {
    "prefix": "--homeassistant",
    "port": "--metrics-port",
    "host": "--metrics-host",
    "url": "--broker",
    "model": "--asr-model",
    "device": "--asr-device",
    "compute_type": "--asr-compute-type",
    "cpu_threads": "--asr-threads",
    "encoder_min_window_s": "--asr-min-window-s",
}


def _overridden(options: T, **flags: Any) -> T:
    """`options` with the flags the user gave (not None) in place of its values; a bad value is
    named by the flag it came in with."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return dataclasses.replace(options, **given)  # type: ignore[type-var]
    except ConfigError as exc:
        if exc.key not in given:
            raise
        flag = FLAG_OF_FIELD.get(exc.key, "--" + exc.key.replace("_", "-"))
        raise ConfigError(flag, exc.expected, exc.got) from exc


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from model.intents import load_intent_set
    from stream.options import load_live_options

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    live = load_live_options(args.config)
    asr = _asr_options(live, args)
    broker = _broker_options(live, args)
    pipe = _overridden(
        live.pipeline,
        stream_id=args.stream_id,
        publish_transcripts=False if args.no_transcripts else None,
        hermes=args.hermes or None,
        show=args.show or None,
        record=args.record,
        record_max_mb=args.record_max_mb,
        record_keep_files=args.record_keep_files,
        partials=args.partials or None,
    )
    seg = _overridden(
        live.segmenter,
        min_silence_ms=args.min_silence_ms,
        max_utterance_s=args.max_utterance_s,
        endpointing=args.endpointing,
    )
    streams = None
    if args.streams is not None:
        from stream.streams import load_streams

        singles = {"--input": args.input, "--audio": args.audio, "--video": args.video, "--stream-id": args.stream_id}
        for flag, value in singles.items():
            if value is not None:
                raise ConfigError(flag, "nothing with --streams: its file names every source and stream id", value)
        streams = load_streams(args.streams)
    homeassistant = _overridden(
        live.homeassistant, enabled=args.homeassistant is not None or None, prefix=args.homeassistant
    )
    metrics = _overridden(live.metrics, port=args.metrics_port, host=args.metrics_host)
    if args.metrics_host is not None and metrics.port is None:
        raise ConfigError("--metrics-host", "--metrics-port (or metrics.port in the config)", args.metrics_host)
    if args.homeassistant_remove:
        for flag, value in {"--input": args.input, "--audio": args.audio, "--video": args.video}.items():
            if value is not None:
                raise ConfigError(
                    flag, "nothing with --homeassistant-remove (it removes entities, runs no stream)", value
                )
        ids = [spec.id for spec in streams] if streams is not None else [pipe.stream_id]
        return _remove_homeassistant(broker, ids, homeassistant.prefix)
    # Imported once every option is checked: a bad value fails before torch loads.
    from stream.run import RunRequest, run_pipeline, run_streams

    req = RunRequest(
        ckpt=args.ckpt,
        input=args.input,
        audio=args.audio,
        video=args.video,
        pace=args.pace,
        engine=args.engine,
        device=args.device,
        asr=asr,
        decision=live.decision,
        embedded_port=args.embedded_port,
        intents=load_intent_set(args.intents) if args.intents is not None else None,
        sentence_encoder=args.sentence_encoder,
        adapted=args.adapted,
        homeassistant=homeassistant,
        metrics=metrics,
    )
    if streams is None:
        stats = asyncio.run(run_pipeline(req, broker, pipe, seg))
        print(f"dfmq run: {_summary(stats)}")
        return 0
    outcomes = asyncio.run(run_streams(req, streams, broker, pipe, seg))
    for outcome in outcomes:
        ended = "" if outcome.error is None else f"; ended with an error: {outcome.error}"
        print(f"dfmq run: stream {outcome.stream_id}: {_summary(outcome.stats)}{ended}")
    failed = [outcome.stream_id for outcome in outcomes if outcome.error is not None]
    if failed:
        print(f"dfmq run: error: {len(failed)} of {len(outcomes)} streams failed: {', '.join(failed)}", file=sys.stderr)
        return 2
    return 0


def _summary(stats: Any) -> str:
    return (
        f"{stats.events} intent events from {stats.utterances} utterances; dropped "
        f"{stats.dropped_utterances} utterances, {stats.dropped_items} capture items"
    )


def _remove_homeassistant(broker: Any, stream_ids: list[str], prefix: str) -> int:
    import asyncio

    from stream.homeassistant import remove_entities
    from stream.publisher import Publisher, parse_broker_url

    if broker.url == "embedded":
        raise ConfigError(
            "--homeassistant-remove",
            "--broker mqtt://HOST:PORT (the embedded broker keeps nothing after a run)",
            "embedded",
        )
    host, port, tls = parse_broker_url(broker.url)
    for stream_id in stream_ids:
        topics = asyncio.run(remove_entities(Publisher(broker, stream_id, host, port, tls), prefix))
        # An empty retained config removes the entity in Home Assistant; for a stream never
        # announced there was nothing to remove, which the broker cannot tell us.
        print(
            f"dfmq run: cleared the retained discovery configs of the {len(topics)} Home Assistant entities of "
            f"stream {stream_id} under {prefix}/ (Home Assistant removes the entities it had)"
        )
    return 0


def _broker_options(live: Any, args: argparse.Namespace) -> Any:
    """The broker section of the config with the command line's flags in place."""
    return _overridden(
        live.broker,
        url=args.broker,
        username=args.username,
        password=args.password,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
    )


def _asr_options(live: Any, args: argparse.Namespace) -> Any:
    """The asr section with the flags in place (`dfmq worker` has no --asr-min-window-s)."""
    return _overridden(
        live.asr,
        model=args.asr_model,
        device=args.asr_device,
        compute_type=args.asr_compute_type,
        cpu_threads=args.asr_threads,
        encoder_min_window_s=getattr(args, "asr_min_window_s", None),
    )


def _scaleout_options(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(live options, broker options, scale-out options) of `dfmq capture` and `dfmq worker`."""
    from stream.distributed import external_broker
    from stream.options import load_live_options

    live = load_live_options(args.config)
    broker = _broker_options(live, args)
    external_broker(broker.url)
    scale = _overridden(
        live.scaleout,
        group=args.group,
        work_timeout_s=getattr(args, "work_timeout_s", None),
        max_attempts=getattr(args, "max_attempts", None),
        max_in_flight=getattr(args, "max_in_flight", None),
    )
    return live, broker, scale


def _cmd_capture(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    live, broker, scale = _scaleout_options(args)
    pipe = _overridden(
        live.pipeline,
        stream_id=args.stream_id,
        publish_transcripts=False if args.no_transcripts else None,
        hermes=args.hermes or None,
        show=args.show or None,
    )
    seg = _overridden(live.segmenter, min_silence_ms=args.min_silence_ms, max_utterance_s=args.max_utterance_s)
    from stream.distributed import run_capture
    from stream.run import RunRequest

    req = RunRequest(ckpt=args.ckpt, input=args.input, audio=args.audio, video=args.video, pace=args.pace)
    stats = asyncio.run(run_capture(req, broker, pipe, seg, scale))
    served = ", ".join(f"{worker} {count}" for worker, count in sorted(stats.served_by.items())) or "none"
    print(
        f"dfmq capture: {stats.events} intent events from {stats.utterances} utterances; re-sent {stats.resent}, "
        f"gave up on {stats.given_up}, dropped {stats.duplicates} duplicate results, {stats.dropped_utterances} "
        f"utterances, {stats.dropped_items} capture items; served by: {served}"
    )
    if stats.utterances and not stats.served_by:
        print(
            "dfmq capture: warning: no worker decided any utterance (every one went out as recognized false, "
            "worker_timeout or worker_error): start `dfmq worker` with the same --ckpt on this broker",
            file=sys.stderr,
        )
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from model.intents import load_intent_set

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    live, broker, scale = _scaleout_options(args)
    asr = _asr_options(live, args)
    from stream.distributed import default_worker_id, run_worker
    from stream.run import RunRequest

    req = RunRequest(
        ckpt=args.ckpt,
        engine=args.engine,
        device=args.device,
        asr=asr,
        decision=live.decision,
        intents=load_intent_set(args.intents) if args.intents is not None else None,
        sentence_encoder=args.sentence_encoder,
        adapted=args.adapted,
    )
    worker_id = args.worker_id or default_worker_id()
    stats = asyncio.run(run_worker(req, broker, scale, worker_id))
    print(f"dfmq worker {worker_id}: served {stats.served}, errors {stats.errors}, stale {stats.stale}")
    return 0


def _cmd_broker(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import signal

    from stream.broker import EmbeddedBroker, is_loopback

    broker = EmbeddedBroker(args.host, args.port, args.username, args.password, args.allow_anonymous)
    if broker.anonymous and not is_loopback(args.host):
        print(
            f"dfmq broker: warning: anonymous on {args.host}:{args.port}: anyone who can reach it can publish "
            "and subscribe (--username/--password to require a login)",
            file=sys.stderr,
            flush=True,
        )

    async def serve() -> None:
        await broker.start()
        login = "anonymous" if broker.anonymous else f"user {args.username}"
        print(f"embedded MQTT broker on {args.host}:{args.port}, {login} (Ctrl-C stops it)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            await broker.stop()

    asyncio.run(serve())
    return 0


def _cmd_devices(args: argparse.Namespace) -> int:
    from stream.sources import list_devices

    print("\n".join(list_devices()))
    return 0


COMMANDS = {
    "adapt": _cmd_adapt,
    "train": _cmd_train,
    "eval": _cmd_eval,
    "classify": _cmd_classify,
    "calibrate": _cmd_calibrate,
    "demo": _cmd_demo,
    "report": _cmd_report,
    "export": _cmd_export,
    "bench": _cmd_bench,
    "extract": _cmd_extract,
    "synth": _cmd_synth,
    "run": _cmd_run,
    "broker": _cmd_broker,
    "capture": _cmd_capture,
    "worker": _cmd_worker,
    "devices": _cmd_devices,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except DfmqError as exc:
        print(f"dfmq {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dfmq {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the machine, not the input: a full disk, a file that cannot be written
        print(f"dfmq {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
