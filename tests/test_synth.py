"""The generated corpus: deterministic, labelled, degraded as recorded, readable by extract."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from model.config import MINTREC_LABELS
from stream.media import decode_clip
from stream.synth import DEGRADATIONS, render_corpus
from tests.conftest import require_binary


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_binary("espeak-ng", "espeak-ng")
    out = tmp_path_factory.mktemp("corpus")
    render_corpus(out, per_intent=3, seed=7, text_source=None, degrade_share=0.6)
    return out


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "labels.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_every_intent_has_every_split_and_recorded_degradations(corpus: Path) -> None:
    rows = _rows(corpus)
    assert len(rows) == 3 * len(MINTREC_LABELS)
    for intent in MINTREC_LABELS:
        assert sorted(r["split"] for r in rows if r["label"] == intent) == ["dev", "test", "train"]
    assert {r["degradation"] for r in rows} <= {"none", *DEGRADATIONS}
    assert any(r["degradation"] != "none" for r in rows) and any(r["degradation"] == "none" for r in rows)
    for row in rows:
        clip = decode_clip(corpus / "clips" / row["clip"])
        assert len(clip.audio) > 16000 * 0.8
        assert (len(clip.frames) == 0) == (row["degradation"] == "no_camera")


def test_degradations_change_the_media_as_recorded(corpus: Path) -> None:
    rows = _rows(corpus)
    by_kind = {r["degradation"]: r for r in rows}
    if "dark" in by_kind:
        frames = decode_clip(corpus / "clips" / by_kind["dark"]["clip"]).frames
        assert np.mean([f.image.mean() for f in frames]) < 15
    if "frozen" in by_kind:
        frames = decode_clip(corpus / "clips" / by_kind["frozen"]["clip"]).frames
        assert max(np.abs(f.image.astype(int) - frames[0].image.astype(int)).mean() for f in frames) < 2


def test_same_seed_same_corpus(corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    render_corpus(again, per_intent=3, seed=7, text_source=None, degrade_share=0.6)
    assert (again / "labels.csv").read_text() == (corpus / "labels.csv").read_text()
    first = _rows(corpus)[5]["clip"]
    np.testing.assert_array_equal(
        decode_clip(again / "clips" / first).audio, decode_clip(corpus / "clips" / first).audio
    )
