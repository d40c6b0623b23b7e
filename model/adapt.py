"""Adapting a copy of the semantic encoder to one intent set (`dfmq adapt`), and reading it back.

A set the model was not trained on is classified by the centroid cosine of its descriptions and
examples in the frozen encoder's space. `dfmq adapt` fine-tunes a copy of that encoder on the set's
own descriptions and examples only (contrastive pairs: same intent -> cosine 1, another -> 0, mean
squared error; Tunstall et al. 2022, "Efficient Few-Shot Learning Without Prompts"), and the set is
then classified on the mean of the two centroid cosines, frozen and adapted (`Adaptation`). Only
classification changes: how well an utterance fits the set, its scope and the out-of-scope
threshold stay in the frozen space, since a threshold taken from examples the encoder was trained on
would say nothing about unseen speech.

Why the mean and not the adapted space alone: over sixteen never-seen sets the adapted space alone
got 964 of 1,160 in-scope sentences right against 929, but lost up to three on three sets and
nothing on a blind batch; the mean lost more than one on none (tools/setfit_probe.py,
docs/results/zero_shot.md, update 8).

The folder `dfmq adapt` writes is a sentence-transformers-style encoder (config.json, weights,
tokenizer) with `dfmq_adaptation.json` saying which frozen encoder and which intents it was adapted
from. An intent set edited since (an intent added, an example changed) is scored without it, with a
warning: a restart stays seconds, and `dfmq adapt` again brings the adaptation back.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.checkpoint import hash_state
from model.dfmq import DFMQMC, mean_pool
from model.errors import ConfigError
from model.intents import IntentSet
from model.semantic import (
    ANCHOR_MAX_TOKENS,
    MIN_EXAMPLES,
    Adaptation,
    SentenceEncoder,
    membership,
    require_semantic_space,
)

log = logging.getLogger("dfmq.intents")

ADAPTATION_FILE = "dfmq_adaptation.json"
ADAPTATION_FORMAT = 1


@dataclass(frozen=True)
class AdaptOptions:
    """How the copy of the encoder is fine-tuned (the probe's settings are the defaults)."""

    pairs_per_sentence: int = 20  # of each kind (same intent, another intent) per description or example
    batch_pairs: int = 16
    learning_rate: float = 2e-5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.pairs_per_sentence <= 1000:
            raise ConfigError("--pairs", "an integer in [1, 1000]", self.pairs_per_sentence)
        if not 1 <= self.batch_pairs <= 1024:
            raise ConfigError("batch_pairs", "an integer in [1, 1024]", self.batch_pairs)
        if not 0.0 < self.learning_rate <= 1e-2:
            raise ConfigError("--learning-rate", "a number in (0, 0.01]", self.learning_rate)


def encoder_digest(encoder: nn.Module) -> str:
    digest = hashlib.sha256()
    hash_state(digest, encoder)
    return digest.hexdigest()[:16]


def contrastive_pairs(
    owner: Sequence[int], pairs_per_sentence: int, rng: random.Random
) -> list[tuple[int, int, float]]:
    """(i, j, target cosine): for each text, pairs with a text of its own intent (1) and of another (0).
    An intent with its description alone has no pair of its own kind."""
    by_intent: dict[int, list[int]] = {}
    for i, k in enumerate(owner):
        by_intent.setdefault(k, []).append(i)
    pairs: list[tuple[int, int, float]] = []
    for _ in range(pairs_per_sentence):
        for i, k in enumerate(owner):
            same = [j for j in by_intent[k] if j != i]
            if same:
                pairs.append((i, rng.choice(same), 1.0))
            pairs.append((i, rng.choice([j for j in range(len(owner)) if owner[j] != k]), 0.0))
    rng.shuffle(pairs)
    return pairs


def encode_texts(encoder: nn.Module, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    tokens = tokenizer(texts, padding="longest", truncation=True, max_length=ANCHOR_MAX_TOKENS, return_tensors="pt")
    device = next(encoder.parameters()).device
    return F.normalize(mean_pool(encoder, tokens["input_ids"].to(device), tokens["attention_mask"].to(device)), dim=-1)


def adapt_encoder(
    model: DFMQMC, tokenizer: Any, intent_set: IntentSet, options: AdaptOptions, progress: bool = True
) -> nn.Module:
    """A copy of the model's frozen semantic encoder fine-tuned on the set's descriptions and examples."""
    require_semantic_space(model)
    if list(intent_set.names) == list(model.config.labels):
        raise ConfigError(
            "--intents",
            "an intent set the model was not trained on (its trained labels have their head)",
            intent_set.source,
        )
    texts, owner = intent_set.texts()
    n_examples = len(texts) - len(intent_set)
    if n_examples < MIN_EXAMPLES:
        raise ConfigError(
            "--intents",
            f"a set with at least {MIN_EXAMPLES} examples to adapt to",
            f"{intent_set.source}: {n_examples}",
        )
    from tqdm import tqdm

    assert model.semantic_encoder is not None  # require_semantic_space
    rng = random.Random(options.seed)
    torch.manual_seed(options.seed)
    pairs = contrastive_pairs(owner, options.pairs_per_sentence, rng)
    encoder = copy.deepcopy(model.semantic_encoder)
    # The word embeddings are shared with every word the set does not use: left as they are.
    trainable = [p for name, p in encoder.named_parameters() if not name.startswith("embeddings.word_embeddings")]
    for p in encoder.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(trainable, lr=options.learning_rate)
    encoder.train()
    steps = range(0, len(pairs), options.batch_pairs)
    for start in tqdm(steps, desc="adapt", unit="step", disable=None if progress else True):
        batch = pairs[start : start + options.batch_pairs]
        left = encode_texts(encoder, tokenizer, [texts[i] for i, _, _ in batch])
        right = encode_texts(encoder, tokenizer, [texts[j] for _, j, _ in batch])
        target = torch.tensor([t for _, _, t in batch], device=left.device)
        loss = F.mse_loss((left * right).sum(dim=-1), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return encoder.eval()


def write_adaptation(
    out_dir: Path,
    encoder: nn.Module,
    tokenizer: Any,
    model: DFMQMC,
    intent_set: IntentSet,
    options: AdaptOptions,
    seconds: float,
) -> None:
    assert model.semantic_encoder is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(str(out_dir))  # type: ignore[operator]
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    record = {
        "format": ADAPTATION_FORMAT,
        "intents_file": intent_set.source,
        "intents": list(intent_set.names),
        "intent_set_digest": intent_set.digest(),
        "frozen_encoder_digest": encoder_digest(model.semantic_encoder),
        "options": asdict(options),
        "seconds": round(seconds, 1),
    }
    (out_dir / ADAPTATION_FILE).write_text(json.dumps(record, indent=2))


def adapt(
    model: DFMQMC, tokenizer: Any, intent_set: IntentSet, out_dir: Path, options: AdaptOptions, progress: bool = True
) -> float:
    """`dfmq adapt`: fine-tune, write the folder; returns the seconds the fine-tuning took."""
    if out_dir.exists() and not out_dir.is_dir():  # before the training, not after it
        raise ConfigError("--out", "a folder to write the adapted encoder to", str(out_dir))
    started = time.perf_counter()
    encoder = adapt_encoder(model, tokenizer, intent_set, options, progress)
    seconds = time.perf_counter() - started
    write_adaptation(out_dir, encoder, tokenizer, model, intent_set, options, seconds)
    return seconds


def load_adaptation(folder: Path, model: DFMQMC, intent_set: IntentSet, device: str = "cpu") -> Adaptation | None:
    """The adaptation in `folder` for `intent_set`, or None (with a warning) when the set was edited
    since it was adapted. A folder that is not an adaptation, or one of another model's encoder, is an
    error."""
    record_file = Path(folder) / ADAPTATION_FILE
    expected = f"a folder written by `dfmq adapt` (with {ADAPTATION_FILE})"
    if not record_file.is_file():
        raise ConfigError("--adapted", expected, str(folder))
    try:
        record = json.loads(record_file.read_text())
        format_version, frozen, digest = record["format"], record["frozen_encoder_digest"], record["intent_set_digest"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError("--adapted", f"{expected}; {record_file.name} unreadable ({exc})", str(folder)) from exc
    if format_version != ADAPTATION_FORMAT:
        raise ConfigError(
            "--adapted", f"{expected} of format {ADAPTATION_FORMAT}", f"{folder}: format {format_version}"
        )
    require_semantic_space(model)
    assert model.semantic_encoder is not None
    if list(intent_set.names) == list(model.config.labels):
        raise ConfigError("--adapted", "an intent set the model was not trained on (--intents)", str(folder))
    if frozen != encoder_digest(model.semantic_encoder):
        raise ConfigError(
            "--adapted", "an adaptation of this checkpoint's sentence encoder (run `dfmq adapt` with it)", str(folder)
        )
    if digest != intent_set.digest():
        log.warning(
            "%s: its intents are not those %s was adapted to (from %s, edited since or another set), so it is "
            "scored without the adaptation; `dfmq adapt --intents %s --out DIR` adapts to it",
            intent_set.source,
            folder,
            record.get("intents_file", "?"),
            intent_set.source,
        )
        return None
    encoder = SentenceEncoder(Path(folder), device)
    texts, owner = intent_set.texts()
    prototypes = encoder(texts)
    sums = membership(np.asarray(owner), len(intent_set)) @ prototypes
    return Adaptation(
        encoder=encoder, centroids=sums / np.linalg.norm(sums, axis=1, keepdims=True), folder=Path(folder)
    )
