"""What the benchmark tools share: process CPU time, a throwaway Mosquitto, a timing subscriber, the
JSON report."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from stream.broker import free_port
from stream.options import SegmenterOptions

# The benches' names for the segmenter's endpointing settings: "silence+asr" is silence endpointing
# with `asr_in_pause` (the default: Whisper hears the utterance in its pause, the hang-over still
# ends it), "silence" without (Whisper after the hang-over).
ENDPOINTING_MODES = ("silence+asr", "silence", "speculative")
DEFAULT_ENDPOINTING = "silence+asr"


def segmenter_options(mode: str, **fields: Any) -> SegmenterOptions:
    if mode not in ENDPOINTING_MODES:
        bad_argument("--endpointing", mode, f"one of {', '.join(ENDPOINTING_MODES)}")
    endpointing, _, ahead = mode.partition("+")
    return SegmenterOptions(endpointing=endpointing, asr_in_pause=bool(ahead), **fields)


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def mosquitto() -> Iterator[int]:
    """A Mosquitto on a free local port for the duration; yields the port."""
    binary = shutil.which("mosquitto")
    if binary is None:
        raise SystemExit("mosquitto not found: apt-get install mosquitto")
    port = free_port()
    broker = subprocess.Popen([binary, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # until it listens
        yield port
    finally:
        broker.terminate()
        broker.wait(5.0)


@contextmanager
def received_events(port: int, topic: str, client_id: str) -> Iterator[list[tuple[float, dict[str, Any]]]]:
    """A real MQTT subscriber on the local broker for the duration: yields the list it fills with
    (wall time of receipt, decoded JSON payload) for every message on `topic`."""
    import paho.mqtt.client as mqtt

    received: list[tuple[float, dict[str, Any]]] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    sub.on_message = lambda c, u, m: received.append((time.time(), json.loads(m.payload)))
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    try:
        yield received
    finally:
        sub.loop_stop()
        sub.disconnect()


def write_report(report: Mapping[str, object], path: Path | None) -> None:
    """Print the figures; also write them to `path` when given."""
    print(json.dumps(report, indent=2))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance: substitutions, insertions and deletions (the WER numerator)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1]


ROOT = Path(__file__).resolve().parent.parent
# The intent sets no checkpoint was trained on, each with its held-out `_eval.tsv` (three shipped
# with the configs, the rest written blind for the tests: configs/intents/README.md).
SHIPPED_SETS = ("kiosk", "lab", "home")
NEVER_SEEN_SETS = (
    *SHIPPED_SETS,
    *("car", "restaurant", "clinic", "museum", "bank", "airport", "helpdesk"),
    *("pharmacy", "gym", "library", "cinema", "garage", "school"),
    *("postoffice", "supermarket", "townhall", "trainstation", "vet", "hotelroom"),
    *("dentist", "charging", "skiresort"),
)


def intent_set_files(names: tuple[str, ...] = NEVER_SEEN_SETS) -> dict[str, tuple[Path, Path]]:
    """name -> (intent set YAML, its held-out tsv)."""
    data = ROOT / "tests" / "data" / "intents"
    return {
        name: (
            (ROOT / "configs" / "intents" if name in SHIPPED_SETS else data) / f"{name}.yaml",
            data / f"{name}_eval.tsv",
        )
        for name in names
    }


@dataclass
class EvalSet:
    """A never-seen intent set and its held-out sentences, embedded and scored as shipped."""

    anchors: Any  # model.semantic.IntentAnchors
    sentences: Any  # (N, D) transcript embeddings
    truth: Any  # (N,) the intent's index, -1 for an off-topic sentence
    scores: Any  # model.semantic.IntentScores

    @property
    def known(self) -> Any:
        return self.truth >= 0


def embedded_eval_set(model: Any, tokenizer: Any, yaml: Path, tsv: Path) -> EvalSet:
    import numpy as np

    from model.intents import load_intent_set
    from model.openset import OOS_LABEL, read_labelled_tsv
    from model.semantic import build_anchors, embed_sentences

    intent_set = load_intent_set(yaml)
    anchors = build_anchors(model, tokenizer, intent_set)
    labels, texts = read_labelled_tsv(tsv, intent_set)
    sentences = embed_sentences(model, tokenizer, texts)
    truth = np.array([anchors.names.index(label) if label != OOS_LABEL else -1 for label in labels])
    return EvalSet(anchors, sentences, truth, anchors.score(sentences, sentences))


def chosen_sets(argument: str, named: Mapping[str, tuple[Path, Path]]) -> dict[str, tuple[Path, Path]]:
    """`--sets`: comma-separated names of `named`, or PATH.yaml:PATH.tsv pairs; keyed by the YAML's stem."""
    chosen = {}
    for item in argument.split(","):
        paths = named.get(item) or tuple(Path(p) for p in item.split(":"))
        if len(paths) != 2 or not all(Path(p).is_file() for p in paths):
            bad_argument("--sets", item, f"one of {', '.join(named)} or PATH.yaml:PATH.tsv of two files")
        yaml, tsv = paths
        chosen[Path(yaml).stem] = (Path(yaml), Path(tsv))
    return chosen


def bad_argument(flag: str, value: str, expected: str) -> NoReturn:
    """One line naming the bad value and what was expected, exit 2 (as the dfmq commands do)."""
    print(f"{flag}: expected {expected}, got {value!r}", file=sys.stderr)
    raise SystemExit(2)
