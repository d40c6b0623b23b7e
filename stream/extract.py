"""`dfmq extract`: a folder of labelled clips -> a dataset in the MIntRec layout with features.

Resumable: each clip's result is cached under `OUT/.extract_cache/` and reused on the next run
(keyed by the clip's name, size and modification time, the feature options, the recogniser's
options and the cache format). A clip that cannot be read is listed in `OUT/extract_errors.tsv`;
the others are still processed.

Text quality as live: the recogniser runs on every clip's audio, also when the labels give the
text (the model is then fed the given text, but its quality is still scored with the recogniser's
confidence in what it heard: `model.quality.recognised_text_quality`). Its scores go to
quality_stats.pkl under 'text'.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from model.config import MINTREC_LABELS
from model.data import FEATURE_OPTIONS_FILE, QUALITY_STATS_FILE
from model.errors import DataError
from model.features import FeatureOptions, extract_features
from stream.asr import transcribe
from stream.media import MediaError, decode_clip
from stream.options import AsrOptions

MEDIA_SUFFIXES = (".mp4", ".mkv", ".webm", ".wav", ".flac", ".mp3", ".mov", ".avi")
# Bumped whenever what a cached clip result holds changes. 2: the recogniser runs on every clip
# and its scores are kept (cache files of format 1 lack them and are never read again).
CACHE_FORMAT = 2
# Recogniser options that do not change what it outputs, left out of the cache key.
ASR_OPTIONS_NOT_IN_KEY = ("cpu_threads", "parallel_calls")
SPLIT_SHARES = (("train", 0.8), ("dev", 0.1), ("test", 0.1))


@dataclass
class LabelRow:
    clip: str
    label: str
    text: str | None
    split: str | None
    line: int


def read_labels(path: Path) -> list[LabelRow]:
    if not path.is_file():
        raise DataError("labels file is missing", path=path, expected="a CSV with columns clip,label[,text][,split]")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "clip" not in columns or "label" not in columns:
            raise DataError(
                "header lacks clip/label",
                path=path,
                line=1,
                expected="clip,label[,text][,split]",
                got=",".join(columns),
            )
        rows = []
        known = {label.lower(): label for label in MINTREC_LABELS}
        for line, raw in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            label = known.get(row["label"].lower())
            if label is None:
                raise DataError(
                    "unknown label",
                    path=path,
                    line=line,
                    expected=f"one of {list(MINTREC_LABELS)}",
                    got=repr(row["label"]),
                )
            split = row.get("split") or None
            if split is not None and split not in ("train", "dev", "test"):
                raise DataError("unknown split", path=path, line=line, expected="train, dev or test", got=repr(split))
            rows.append(LabelRow(row["clip"], label, row.get("text") or None, split, line))
    if not rows:
        raise DataError("labels file has no rows", path=path, expected="at least one clip")
    return rows


def assign_split(clip: str) -> str:
    """Deterministic 80/10/10 split by a hash of the clip name (stable across runs and machines)."""
    fraction = int(hashlib.sha256(clip.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for split, share in SPLIT_SHARES:
        edge += share
        if fraction <= edge:
            return split
    return "test"


def sample_key(index: int) -> tuple[str, str, str]:
    """MIntRec-style (season, episode, clip) fields; key 'X00_E00_<index>'."""
    return "X00", "E00", str(index)


def _clean_text(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def _extract_one(path: Path, options: FeatureOptions, asr: AsrOptions) -> dict[str, Any]:
    """Features, raw statistics and what the recogniser heard (text and scores) of one clip; the
    labels' text is not part of it, so that an edited labels file reuses the cache correctly."""
    clip = decode_clip(path)
    feats = extract_features(clip.audio, clip.frames, options)
    # No audio track: nothing to recognise, and the live pipeline would hear nothing either.
    heard = transcribe(clip.audio, asr) if len(clip.audio) else None
    return {
        "format": CACHE_FORMAT,
        "recognised": _clean_text(heard.text) if heard else "",
        "text_scores": dataclasses.asdict(heard.scores) if heard else None,
        "audio": feats.audio,
        "video": feats.video,
        "audio_stats": dataclasses.asdict(feats.audio_stats) if feats.audio_stats else None,
        "video_stats": dataclasses.asdict(feats.video_stats) if feats.video_stats else None,
    }


def cache_key(path: Path, clip: str, options: FeatureOptions, asr: AsrOptions) -> str | None:
    """What a cached result depends on: the clip file (name, size, modification time), the feature
    options, the recogniser's options and the cache format. None when the clip cannot be found."""
    try:
        stat = path.stat()
    except OSError:
        return None
    asr_key = {k: v for k, v in dataclasses.asdict(asr).items() if k not in ASR_OPTIONS_NOT_IN_KEY}
    identity = {
        "format": CACHE_FORMAT,
        "clip": clip,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "features": dataclasses.asdict(options),
        "asr": asr_key,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"{hashlib.sha256(clip.encode()).hexdigest()[:16]}-{digest[:16]}"


def run_extract(clips_dir: Path, labels_csv: Path, out_dir: Path, options: FeatureOptions, asr: AsrOptions) -> int:
    rows = read_labels(labels_csv)
    if not clips_dir.is_dir():
        raise DataError("clips folder is missing", path=clips_dir, expected="a folder of mp4/mkv/webm/wav clips")
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / ".extract_cache"
    cache.mkdir(exist_ok=True)
    results: dict[int, dict[str, Any]] = {}
    errors: list[tuple[str, str]] = []
    reused = 0
    for index, row in enumerate(tqdm(rows, desc="extract", unit="clip", disable=None)):
        path = clips_dir / row.clip
        key = cache_key(path, row.clip, options, asr)
        cached = cache / f"{key}.pkl" if key is not None else None
        if cached is not None and cached.is_file():
            with cached.open("rb") as handle:
                results[index] = pickle.load(handle)
            reused += 1
            continue
        if path.suffix.lower() not in MEDIA_SUFFIXES:
            errors.append((row.clip, f"unsupported file type {path.suffix!r}; expected one of {MEDIA_SUFFIXES}"))
            continue
        try:
            result = _extract_one(path, options, asr)
        except MediaError as exc:
            errors.append((row.clip, str(exc)))
            continue
        if cached is not None:
            tmp = cached.with_suffix(".tmp")
            with tmp.open("wb") as handle:
                pickle.dump(result, handle)
            tmp.replace(cached)
        results[index] = result

    splits: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    audio, video, quality = {}, {}, {}
    for index, result in results.items():
        row = rows[index]
        season, episode, clip_id = sample_key(index)
        key = f"{season}_{episode}_{clip_id}"
        # The labels' text when given (what was said), else what the recogniser heard.
        text = _clean_text(row.text) if row.text else result["recognised"]
        splits[row.split or assign_split(row.clip)].append(f"{season}\t{episode}\t{clip_id}\t{text}\t{row.label}")
        if result["audio"] is not None:
            audio[key] = result["audio"]
        if result["video"] is not None:
            video[key] = result["video"]
        quality[key] = {"audio": result["audio_stats"], "video": result["video_stats"], "text": result["text_scores"]}
    header = "season\tepisode\tclip\ttext\tlabel"
    for split, lines in splits.items():
        (out_dir / f"{split}.tsv").write_text("\n".join([header, *lines]) + "\n")
    for name, payload in (("audio_feats.pkl", audio), ("video_feats.pkl", video), (QUALITY_STATS_FILE, quality)):
        with (out_dir / name).open("wb") as handle:
            pickle.dump(payload, handle)
    (out_dir / FEATURE_OPTIONS_FILE).write_text(json.dumps(dataclasses.asdict(options), indent=2))
    (out_dir / "clips.tsv").write_text(
        "key\tclip\n" + "".join(f"{'_'.join(sample_key(i))}\t{rows[i].clip}\n" for i in sorted(results))
    )
    error_path = out_dir / "extract_errors.tsv"
    if errors:
        error_path.write_text("clip\terror\n" + "".join(f"{c}\t{e}\n" for c, e in errors))
    elif error_path.exists():
        error_path.unlink()
    counts = ", ".join(f"{split} {len(lines)}" for split, lines in splits.items())
    print(f"extract: {len(results)} clips ({reused} from cache) -> {out_dir} [{counts}]")
    for clip, problem in errors:
        print(f"extract: skipped {clip}: {problem}")
    return 1 if errors else 0
