"""`dfmq extract`: a folder of labelled clips -> a dataset in the MIntRec layout with features.

Resumable: each clip's result is cached under `OUT/.extract_cache/` and reused on the next run.
A clip that cannot be read is listed in `OUT/extract_errors.tsv`; the others are still processed.
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


def _extract_one(path: Path, row: LabelRow, options: FeatureOptions, asr: AsrOptions) -> dict[str, Any]:
    clip = decode_clip(path)
    feats = extract_features(clip.audio, clip.frames, options)
    text = row.text if row.text else transcribe(clip.audio, asr).text
    return {
        "text": _clean_text(text),
        "audio": feats.audio,
        "video": feats.video,
        "audio_stats": dataclasses.asdict(feats.audio_stats) if feats.audio_stats else None,
        "video_stats": dataclasses.asdict(feats.video_stats) if feats.video_stats else None,
        "transcribed": not row.text,
    }


def run_extract(clips_dir: Path, labels_csv: Path, out_dir: Path, options: FeatureOptions, asr: AsrOptions) -> int:
    rows = read_labels(labels_csv)
    if not clips_dir.is_dir():
        raise DataError("clips folder is missing", path=clips_dir, expected="a folder of mp4/mkv/webm/wav clips")
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / ".extract_cache"
    cache.mkdir(exist_ok=True)
    options_tag = hashlib.sha256(json.dumps(dataclasses.asdict(options), sort_keys=True).encode()).hexdigest()[:10]
    results: dict[int, dict[str, Any]] = {}
    errors: list[tuple[str, str]] = []
    reused = 0
    for index, row in enumerate(tqdm(rows, desc="extract", unit="clip", disable=None)):
        path = clips_dir / row.clip
        cached = cache / f"{hashlib.sha256(row.clip.encode()).hexdigest()[:16]}-{options_tag}.pkl"
        if cached.is_file():
            with cached.open("rb") as handle:
                results[index] = pickle.load(handle)
            reused += 1
            continue
        if path.suffix.lower() not in MEDIA_SUFFIXES:
            errors.append((row.clip, f"unsupported file type {path.suffix!r}; expected one of {MEDIA_SUFFIXES}"))
            continue
        try:
            result = _extract_one(path, row, options, asr)
        except MediaError as exc:
            errors.append((row.clip, str(exc)))
            continue
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
        splits[row.split or assign_split(row.clip)].append(
            f"{season}\t{episode}\t{clip_id}\t{result['text']}\t{row.label}"
        )
        if result["audio"] is not None:
            audio[key] = result["audio"]
        if result["video"] is not None:
            video[key] = result["video"]
        quality[key] = {"audio": result["audio_stats"], "video": result["video_stats"]}
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
