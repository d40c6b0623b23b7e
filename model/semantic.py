"""The semantic space: intent sets scored by similarity to their descriptions and examples,
semantic synchronisation (our reading of A-MESS), and out-of-scope rejection.

Only the A-MESS abstract can be read (Shen, Lin, Fan: "Anchor based Multimodal Embedding with
Semantic Synchronization for Multimodal Intent Recognition"), so this is our reading of it:

- Anchors. Each intent's description (and each example, when the set gives some) is embedded by a
  frozen copy of the pretrained text encoder (`DFMQMC.embed_sentences`; all-MiniLM-L6-v2 for the
  bundled encoder: mean pooled, unit norm). Frozen because a new intent set must land in the same
  space without training, and because fine-tuning the encoder on 20 intents was measured to destroy
  its sentence similarity (README, "Intent sets").
- Utterance embedding. `normalize(sentence + semantic_proj(fused))`: the transcript's embedding by
  the same frozen encoder, moved by what the fused multimodal representation adds. It scores the
  trained labels only: the shift is learnt toward the trained descriptions, and against a set the
  model has never seen it was measured to cost accuracy (kiosk set 85 % -> 74 % after one epoch),
  so a new set is scored on the transcript's embedding alone (`IntentAnchors.fused` false).
- Semantic synchronisation. `triplet_loss` pulls each training sample's utterance embedding toward
  its intent's description anchor and pushes it from the others (cosine, margin `ss_margin`,
  negatives 'hardest' or 'all', weight `lambda_ss`). The anchors are constants (no gradient); the
  gradient reaches the fused representation through `semantic_proj`.
- Classification. For a set the model was not trained on, the similarity of the utterance to
  intent k is its cosine to the normalised sum of k's unit-norm prototypes (description, examples:
  the class mean of prototypical networks, Snell et al. 2017); for the trained labels, the highest
  cosine to any of k's prototypes. Probabilities are softmax(similarity / T_sim); for the trained
  labels the linear head is mixed in: p = (1 - head_mix) * p_head + head_mix * p_sim. The centroid
  was measured against the nearest prototype on three never-seen sets (tools/zero_shot_bench.py,
  docs/results/zero_shot.md): closed-set accuracy up on each (kiosk 85.0 -> 92.5 %, lab 77.8 ->
  83.3 %, home 87.5 -> 94.4 %): one example sharing a word with an utterance no longer decides.
  With `dfmq adapt` (`Adaptation`, model/adapt.py) the centroid cosine is averaged with the one in
  a copy of the encoder fine-tuned on the set's own descriptions and examples.
- Out of scope. How well an utterance fits the set (`IntentAnchors.fit`) is, for a set the model
  was not trained on, the best over intents of the mean of the description's cosine and the best
  example's cosine (the description alone where an intent has no examples): a short generic
  example ("Stop!", "Call Mum.") no longer admits whatever resembles it unless the description
  fits too (AUROC and OOS recall at 90 % coverage up on all three sets; the centroid separates
  as well, but its leave-one-out threshold saturated at scope 1.0 on one set and rejected 18 % of
  its in-scope sentences). For the trained labels the fit is the best prototype cosine.
- Negatives. A set with at least `MIN_EXAMPLES` examples is also scored against requests of 30
  other domains (model/commands.txt, written blind to every set and evaluation file): its fit is
  lowered by `COMMAND_WEIGHT` times the mean cosine to the `COMMAND_NEIGHBOURS` nearest of them, and
  the requests that fit the set like its own examples are left out first (`command_negatives`).
  Off-topic chatter was already easy to reject; requests of other domains ("Lock the front door."
  to a lab robot) fit any set of requests as well as its own sentences do. With them, AUROC rose on
  lab, home and a set written blind (84.7 -> 92.0, 90.5 -> 92.9, 90.2 -> 92.2; kiosk 99.8 -> 99.6).
  `scope` is the fraction of off-topic background sentences (model/offtopic.txt, first half) whose
  fit to the set is below the utterance's, made continuous (`scope_of`): a number in [0, 1] that
  means the same for any set, whatever its size and wording. An utterance with scope below
  `reject_below` is out of scope. Where it comes from, first found: the caller (`--reject-below`),
  the set file; for a set the model was not trained on with at least `MIN_EXAMPLES` examples, the
  scope of its weakest example, each scored against the rest of the set (leave-one-out: in-scope
  data the user gave, no out-of-scope data needed); otherwise the
  checkpoint's, learnt once (`fit_reject_below`, at the end of `dfmq train`). The learnt one comes
  from MIntRec, whose utterances fit their descriptions barely better than off-topic text does, and
  is lax for task-like sets: kiosk set, OOS recall 65 % at 100 % coverage against 87.5 % at 96 %
  with the examples' threshold (README, "Intent sets").
  The trained labels are scored on the utterance embedding (fused shift included), whose scope is
  not on the same footing as the transcript embedding's the rule was learnt on: applying it there
  rejected 45 % of MIntRec dev. Their threshold (`reject_below_trained`) keeps `TRAINED_COVERAGE`
  of the held-out split instead; on TV dialogue the scope separates in-set from off-topic text
  weakly (AUROC about 0.7), so a strict threshold there would mostly reject in-set speech.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.dfmq import DFMQMC, masked_mean
from model.errors import CheckpointError, ConfigError
from model.intents import IntentSet

log = logging.getLogger("dfmq.intents")

OFFTOPIC_FILE = Path(__file__).resolve().parent / "offtopic.txt"
COMMANDS_FILE = Path(__file__).resolve().parent / "commands.txt"
ANCHOR_MAX_TOKENS = 128  # descriptions are longer than transcripts (`text_max_len`)
MIN_EXAMPLES = 8  # fewer examples in a set: its threshold is the checkpoint's
# A set whose examples give a threshold this far under the checkpoint's learnt rule is warned about,
# naming its weakest example (thirteen never-seen sets: 0.35-0.57 on the three that let 39-75 % of
# off-topic sentences through, 0.76-0.96 elsewhere; docs/results/zero_shot.md).
LAX_THRESHOLD_MARGIN = 0.1
# Negatives for a set with examples (`command_negatives`): the fit is lowered by COMMAND_WEIGHT times
# the mean cosine to the COMMAND_NEIGHBOURS nearest requests of other domains.
COMMAND_WEIGHT = 0.5
COMMAND_NEIGHBOURS = 3
# A request fitting the set at least as well as this share of its own examples (leave-one-out) is
# taken to belong to the set's domain and is not used as a negative.
COMMAND_IN_DOMAIN_SHARE = 0.10
TRAINED_COVERAGE = 0.95  # share of the trained labels' held-out utterances their threshold keeps
OUT_OF_SCOPE = "out_of_scope"


def _sentences(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def offtopic_sentences() -> tuple[list[str], list[str]]:
    """(background, rule) halves of the shipped off-topic sentences: the background calibrates every
    intent set's scope score; the rule half is the off-topic class when `reject_below` is learnt."""
    sentences = _sentences(OFFTOPIC_FILE)
    half = len(sentences) // 2
    return sentences[:half], sentences[half:]


def command_sentences() -> list[str]:
    """The shipped requests of 30 domains (model/commands.txt), the negatives of sets with examples."""
    return _sentences(COMMANDS_FILE)


def triplet_loss(embedding: Tensor, anchors: Tensor, labels: Tensor, margin: float, negatives: str) -> Tensor:
    """Cosine triplet loss of unit-norm embeddings (B, D) against constant anchors (C, D):
    relu(margin - cos(e, a_y) + cos(e, a_neg)), over the hardest negative or averaged over all."""
    sims = embedding @ anchors.detach().T  # (B, C)
    positive = sims.gather(1, labels[:, None])
    wrong = torch.ones_like(sims, dtype=torch.bool).scatter_(1, labels[:, None], False)
    hinge = F.relu(margin - positive + sims)
    if negatives == "hardest":
        return hinge.masked_fill(~wrong, float("-inf")).max(dim=1).values.mean()
    return (hinge * wrong).sum(dim=1).div(wrong.sum(dim=1)).mean()


@torch.no_grad()
def embed_sentences(model: DFMQMC, tokenizer: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Anchors: unit-norm embeddings (N, D) of the frozen semantic encoder."""
    require_semantic_space(model)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(
            list(texts[start : start + batch_size]),
            padding="longest",
            truncation=True,
            max_length=ANCHOR_MAX_TOKENS,
            return_tensors="pt",
        ).to(device)
        out.append(model.embed_sentences(tokens["input_ids"], tokens["attention_mask"]).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.text_width), np.float32)


@torch.no_grad()
def text_outputs(
    model: DFMQMC, tokenizer: Any, texts: Sequence[str], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head probabilities (N, C), utterance and transcript embeddings (N, D) of transcripts alone
    (no audio, no video), as the live pipeline computes them for a text-only window."""
    cfg = model.config
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs, embeddings, sentences = [], [], []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        tokens = tokenizer(chunk, padding="longest", truncation=True, max_length=cfg.text_max_len, return_tensors="pt")
        n = len(chunk)
        absent = torch.zeros(n, 1, dtype=torch.bool, device=device)
        _, p, _, e, s = model(
            tokens["input_ids"].to(device),
            tokens["attention_mask"].to(device),
            torch.zeros(n, 1, cfg.audio_dim, device=device),
            absent,
            torch.zeros(n, 1, cfg.video_dim, device=device),
            absent,
            torch.zeros(n, 3, device=device),
        )
        probs.append(p.float().cpu().numpy())
        embeddings.append(e.float().cpu().numpy())
        sentences.append(s.float().cpu().numpy())
    model.train(was_training)
    if not texts:
        empty = np.zeros((0, cfg.text_width), np.float32)
        return np.zeros((0, cfg.num_labels), np.float32), empty, empty
    return np.concatenate(probs), np.concatenate(embeddings), np.concatenate(sentences)


class SentenceEncoder:
    """A sentence-transformers model folder the user provides (config.json, tokenizer, weights;
    `1_Pooling/config.json` says CLS or mean pooling, mean when absent) that embeds the descriptions,
    examples and transcripts of a set the model was not trained on, in place of the bundled
    all-MiniLM-L6-v2: a bigger encoder separates intents better (all-mpnet-base-v2 met the targets on
    five of ten never-seen sets, MiniLM on one; docs/results/zero_shot.md) but none can be installed
    cleanly from the package index. The trained labels stay in the model's own space."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        if not (folder / "config.json").is_file():
            expected = "a sentence-transformers model folder (config.json, tokenizer, weights)"
            raise ConfigError("--sentence-encoder", expected, str(folder))
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ConfigError("--sentence-encoder", f"a loadable model folder ({exc})", str(folder)) from exc
        self.folder = folder
        self.device = device
        self.cls_pooling = _pooling_is_cls(folder)
        self.max_tokens = _max_tokens(folder)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-norm embeddings (N, D)."""
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding="longest",
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**tokens).last_hidden_state
            pooled = hidden[:, 0] if self.cls_pooling else masked_mean(hidden, tokens["attention_mask"])
            out.append(F.normalize(pooled, dim=-1).float().cpu().numpy())
        width = int(self.model.config.hidden_size)
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)


def _pooling_is_cls(folder: Path) -> bool:
    config = folder / "1_Pooling" / "config.json"
    if not config.is_file():
        return False
    return bool(json.loads(config.read_text()).get("pooling_mode_cls_token", False))


def _max_tokens(folder: Path) -> int:
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length", ANCHOR_MAX_TOKENS))
    return ANCHOR_MAX_TOKENS


def embed_utterances(model: DFMQMC, tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Utterance embeddings (N, D) of transcripts alone: the background of the trained set."""
    require_semantic_space(model)
    return text_outputs(model, tokenizer, texts)[1]


def require_semantic_space(model: DFMQMC) -> None:
    if not model.config.semantic_space:
        raise CheckpointError(
            "semantic_space",
            "this checkpoint predates the semantic space and can score only its trained labels; "
            "retrain it with this dfmq (`dfmq train`) or use --ckpt default",
        )


@dataclass(frozen=True)
class Adaptation:
    """A copy of the semantic encoder fine-tuned on one set's descriptions and examples
    (`model.adapt`): the set's intents are classified on the mean of the frozen and the adapted
    centroid cosines."""

    encoder: Callable[[Sequence[str]], np.ndarray]  # texts -> unit-norm rows in the adapted space
    centroids: np.ndarray  # (K, D) unit-norm: each intent's prototypes summed in the adapted space
    folder: Path

    def similarities(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) texts -> (N, K) cosine to each intent's adapted centroid."""
        return self.encoder(texts) @ self.centroids.T


@dataclass(frozen=True)
class IntentAnchors:
    """An intent set placed in a model's semantic space, ready to score utterance embeddings."""

    names: tuple[str, ...]
    prototypes: np.ndarray  # (P, D) unit-norm: every description and example
    owner: np.ndarray  # (P,) index of the intent each prototype belongs to
    is_description: np.ndarray  # (P,) bool: the prototype is its intent's description, not an example
    background: np.ndarray  # (Nb,) sorted best similarity of each background sentence to the set
    # The names are the linear head's labels, in order: the head is mixed in and the utterance
    # embedding (with its fused shift) is scored; otherwise the transcript embedding alone.
    trained: bool
    reject_below: float  # scope below this is out of scope
    reject_below_source: str  # where `reject_below` came from, for logs and `dfmq classify`
    similarity_temperature: float
    head_mix: float
    # (Nc, D) unit-norm requests of other domains that lower the fit (`command_negatives`); None: the
    # trained labels, and sets with too few examples to tell their domain's requests from others.
    negatives: np.ndarray | None = None
    # The user's encoder (`SentenceEncoder`) the set was embedded with; None: the model's frozen one,
    # whose transcript embedding is the engine's `sentence` output.
    encoder: Callable[[Sequence[str]], np.ndarray] | None = None
    # `dfmq adapt`'s encoder for this set (classification only); None: the frozen space alone.
    adaptation: Adaptation | None = None

    @property
    def needs_transcripts(self) -> bool:
        """Scoring needs the transcripts' text (a forward pass of another encoder: `score_transcripts`)."""
        return self.encoder is not None or self.adaptation is not None

    def score_transcripts(
        self, texts: Sequence[str], embeddings: np.ndarray, sentences: np.ndarray, head_probs: np.ndarray | None = None
    ) -> IntentScores:
        """`score`, re-embedding the transcripts where the set needs it (user's encoder, adaptation)."""
        adapted = None if self.adaptation is None else self.adaptation.similarities(texts)
        return self.score(embeddings, self.transcript_embeddings(texts, sentences), head_probs, adapted)

    def transcript_embeddings(self, texts: Sequence[str], sentences: np.ndarray) -> np.ndarray:
        """What the set scores transcripts on: the engine's `sentence` output (N, D), or the
        transcripts re-embedded by the encoder the set was embedded with."""
        return sentences if self.encoder is None else self.encoder(texts)

    def similarities(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, K) the probabilities come from: the trained labels, the highest cosine to any
        of each intent's prototypes; another set, the cosine to each intent's prototype centroid."""
        embeddings = np.atleast_2d(embeddings)
        if self.trained:
            return nearest_prototype(embeddings @ self.prototypes.T, self.owner, len(self.names))
        sums = self.membership() @ self.prototypes
        return embeddings @ (sums / np.linalg.norm(sums, axis=1, keepdims=True)).T

    def membership(self) -> np.ndarray:
        """(K, P): 1 where prototype p belongs to intent k (a product with it sums each intent's)."""
        return membership(self.owner, len(self.names)).astype(self.prototypes.dtype)

    def fit(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,): how well each utterance fits the set, the score `scope` ranks."""
        return set_fit(
            np.atleast_2d(embeddings), self.prototypes, self.owner, self.is_description, self.trained, self.negatives
        )

    def scope(self, fit: np.ndarray) -> np.ndarray:
        """Fraction of background sentences that fit the set worse than each utterance does (`scope_of`)."""
        return scope_of(self.background, fit, fit_bound(self.negatives))

    def score(
        self,
        embeddings: np.ndarray,
        sentences: np.ndarray,
        head_probs: np.ndarray | None = None,
        adapted: np.ndarray | None = None,
    ) -> IntentScores:
        """Scores of utterances from the model's `embedding` and `sentence` outputs (N, D) and, for
        the trained set, its calibrated head probabilities (N, C); with an adaptation, its
        similarities (N, K) (`Adaptation.similarities`: `score_transcripts` computes them)."""
        sims = self.similarities(embeddings if self.trained else sentences)
        if self.adaptation is not None:
            if adapted is None:
                raise ValueError("an adapted intent set is scored with its transcripts (score_transcripts)")
            sims = 0.5 * (sims + adapted)
        z = sims / self.similarity_temperature
        z -= z.max(axis=1, keepdims=True)
        probs = np.exp(z)
        probs /= probs.sum(axis=1, keepdims=True)
        if self.trained and head_probs is not None:
            probs = (1.0 - self.head_mix) * np.atleast_2d(head_probs) + self.head_mix * probs
        scope = self.scope(self.fit(embeddings if self.trained else sentences))
        return IntentScores(probs=probs, similarities=sims, scope=scope, in_scope=scope >= self.reject_below)


@dataclass(frozen=True)
class IntentScores:
    probs: np.ndarray  # (N, K) over the set's intents
    similarities: np.ndarray  # (N, K) cosine per intent (`IntentAnchors.similarities`)
    scope: np.ndarray  # (N,) in [0, 1]: how much better than off-topic text the utterance fits the set
    in_scope: np.ndarray  # (N,) bool


def build_anchors(
    model: DFMQMC,
    tokenizer: Any,
    intent_set: IntentSet,
    reject_below: float | None = None,
    encoder: Callable[[Sequence[str]], np.ndarray] | None = None,
    adaptation: Adaptation | None = None,
) -> IntentAnchors:
    """Embed an intent set's descriptions and examples and its off-topic background. The threshold
    is, first found: `reject_below` given here, the set file's, the checkpoint's learnt one.
    `encoder` (texts -> unit-norm rows, e.g. a `SentenceEncoder`) stands in for the frozen semantic
    encoder on a set the model was not trained on; the anchors keep it, and score transcripts
    re-embedded by it (`IntentAnchors.transcript_embeddings`). The trained labels refuse it: they
    are scored in the model's own space. `adaptation` (`model.adapt.load_adaptation`) is kept for
    classification; it belongs to the frozen encoder's space, so not with another `encoder`."""
    require_semantic_space(model)
    if adaptation is not None and encoder is not None:
        raise ConfigError(
            "--adapted", "no --sentence-encoder with it (it adapts the model's own encoder)", str(adaptation.folder)
        )
    cfg = model.config
    texts, owner = intent_set.texts()
    # Each intent's description comes first: an example is a text whose intent has appeared before.
    is_example = [i > 0 and owner[i - 1] == k for i, k in enumerate(owner)]
    trained = list(intent_set.names) == list(cfg.labels)
    if trained and encoder is not None:
        raise ConfigError(
            "--sentence-encoder",
            "an intent set the model was not trained on (--intents): its trained labels are scored in its own space",
            str(getattr(encoder, "folder", encoder)),
        )
    sentences = encoder if encoder is not None and not trained else partial(embed_sentences, model, tokenizer)
    prototypes = sentences(texts)
    background_texts, _ = offtopic_sentences()
    examples = np.array(is_example)
    owners = np.asarray(owner)
    negatives = None
    if not trained and examples.sum() >= MIN_EXAMPLES:
        negatives = command_negatives(sentences(command_sentences()), prototypes, owners, examples)
    background_embeddings = (
        embed_utterances(model, tokenizer, background_texts) if trained else sentences(background_texts)
    )
    background = np.sort(set_fit(background_embeddings, prototypes, owners, ~examples, trained, negatives))
    if reject_below is not None:
        threshold, source = float(reject_below), "given"
    elif intent_set.reject_below is not None:
        threshold, source = intent_set.reject_below, "the set file"
    elif trained:
        threshold = cfg.reject_below_trained
        source = f"the checkpoint (trained labels: keeps {100 * TRAINED_COVERAGE:.0f} % of the held-out split)"
    elif examples.sum() >= MIN_EXAMPLES:
        threshold, weakest = weakest_example(prototypes, owners, examples, background, negatives)
        source = f"the set's {int(examples.sum())} examples (its weakest, each scored against the rest)"
        # The learnt rule is a scope in the model's own encoder's space: no yardstick for another's.
        if encoder is None and threshold < cfg.reject_below - LAX_THRESHOLD_MARGIN:
            example = int(np.flatnonzero(examples)[weakest])
            log.warning(
                "%s: the example %r (%s) fits the rest of the set worst, and the out-of-scope threshold comes "
                "from it: %.2f, well below the model's own %.2f, so off-topic speech that fits as loosely "
                "will pass. Rewrite or drop that example, or set reject_below in the file.",
                intent_set.source,
                texts[example],
                intent_set.names[owners[example]],
                threshold,
                cfg.reject_below,
            )
    elif encoder is not None:
        # The checkpoint's rule was learnt in its own encoder's space: it means nothing in another.
        raise ConfigError(
            "--sentence-encoder",
            f"a set with at least {MIN_EXAMPLES} examples (its threshold comes from them) or a reject_below "
            f"(--reject-below, or in the set file); {intent_set.source} has {int(examples.sum())} examples",
            str(getattr(encoder, "folder", encoder)),
        )
    else:
        threshold, source = cfg.reject_below, "the checkpoint (learnt at training)"
    return IntentAnchors(
        names=intent_set.names,
        prototypes=prototypes,
        owner=owners,
        is_description=~examples,
        background=background,
        trained=trained,
        reject_below=threshold,
        reject_below_source=source,
        similarity_temperature=cfg.similarity_temperature,
        head_mix=cfg.head_mix,
        negatives=negatives,
        encoder=None if trained else encoder,
        adaptation=None if trained else adaptation,
    )


def membership(owner: np.ndarray, n_intents: int) -> np.ndarray:
    """(K, P): 1 where prototype p belongs to intent k, from each prototype's intent index `owner`."""
    return (owner[None, :] == np.arange(n_intents)[:, None]).astype(np.float32)


def nearest_prototype(cos: np.ndarray, owner: np.ndarray, n_intents: int) -> np.ndarray:
    """(N, P) cosines -> (N, K): per intent, the highest cosine to any of its prototypes (-inf where
    the row has none: a masked cosine is -inf)."""
    return np.stack([cos[:, owner == k].max(axis=1) for k in range(n_intents)], axis=1)


def description_and_example(cos: np.ndarray, owner: np.ndarray, is_description: np.ndarray) -> np.ndarray:
    """(N, P) cosines -> (N, K): per intent, the mean of its description's cosine and its best
    example's; the description's alone where the intent has no example (or the row none left:
    masked cosines are -inf)."""
    n_intents = int(owner.max()) + 1
    described = np.full(n_intents, -1)
    described[owner[is_description]] = np.flatnonzero(is_description)
    description = cos[:, described]
    example_cos = np.where(is_description[None, :], -np.inf, cos)
    best_example = nearest_prototype(example_cos, owner, n_intents)
    return np.where(np.isfinite(best_example), (description + best_example) / 2, description)


def set_fit(
    embeddings: np.ndarray,
    prototypes: np.ndarray,
    owner: np.ndarray,
    is_description: np.ndarray,
    trained: bool,
    negatives: np.ndarray | None = None,
) -> np.ndarray:
    """(N, D) -> (N,): how well each utterance fits the set, best over its intents (see the module
    docstring): the trained labels, the nearest prototype; another set, description and best example,
    less `COMMAND_WEIGHT` times its similarity to the requests of other domains when it has some."""
    cos = embeddings @ prototypes.T
    if trained:
        return nearest_prototype(cos, owner, int(owner.max()) + 1).max(axis=1)
    return description_and_example(cos, owner, is_description).max(axis=1) - negative_pull(embeddings, negatives)


def negative_pull(embeddings: np.ndarray, negatives: np.ndarray | None) -> np.ndarray:
    """COMMAND_WEIGHT times the mean cosine of each row to its COMMAND_NEIGHBOURS nearest negatives."""
    if negatives is None or len(negatives) == 0:
        return np.zeros(len(embeddings), dtype=embeddings.dtype)
    k = min(COMMAND_NEIGHBOURS, len(negatives))
    nearest = -np.partition(-(embeddings @ negatives.T), k - 1, axis=1)[:, :k]
    return COMMAND_WEIGHT * nearest.mean(axis=1)


def fit_bound(negatives: np.ndarray | None) -> float:
    """The largest fit there can be (cosines are at most 1; negatives can add COMMAND_WEIGHT)."""
    return 1.0 if negatives is None else 1.0 + COMMAND_WEIGHT


def leave_one_out_fits(
    prototypes: np.ndarray, owner: np.ndarray, examples: np.ndarray, negatives: np.ndarray | None
) -> np.ndarray:
    """Each example's fit, computed as a new utterance's is, against the set without that example
    (its own intent's description and other examples included)."""
    cos = prototypes[examples] @ prototypes.T  # (E, P)
    cos[np.arange(len(cos)), np.flatnonzero(examples)] = -np.inf  # not against itself
    fits = description_and_example(cos, owner, ~examples).max(axis=1)
    return fits - negative_pull(prototypes[examples], negatives)


def example_threshold(
    prototypes: np.ndarray,
    owner: np.ndarray,
    examples: np.ndarray,
    background: np.ndarray,
    negatives: np.ndarray | None = None,
) -> float:
    """The scope of the set's weakest example, each scored leave-one-out. Examples fit the rest of
    their set better than new sentences do (they were written together): the scope below which 10 %
    of them fell kept only 79-88 % of held-out in-scope sentences on three sets, against the 90 % the
    out-of-scope target is stated at (docs/results/zero_shot.md)."""
    return weakest_example(prototypes, owner, examples, background, negatives)[0]


def weakest_example(
    prototypes: np.ndarray,
    owner: np.ndarray,
    examples: np.ndarray,
    background: np.ndarray,
    negatives: np.ndarray | None = None,
) -> tuple[float, int]:
    """(scope, index among the examples) of the example that fits the rest of its set worst."""
    scopes = scope_of(background, leave_one_out_fits(prototypes, owner, examples, negatives), fit_bound(negatives))
    weakest = int(scopes.argmin())
    return float(scopes[weakest]), weakest


def command_negatives(
    commands: np.ndarray, prototypes: np.ndarray, owner: np.ndarray, examples: np.ndarray
) -> np.ndarray:
    """The requests of other domains a set with examples is scored against: the shipped ones that fit
    the set worse than all but `COMMAND_IN_DOMAIN_SHARE` of its own examples do. Off-topic chatter is
    easy to reject; a request of another domain ("lock the front door" to a lab robot) fits any set of
    requests about as well as the set's own sentences do, and only something like it can tell them
    apart. The set's own kind of request ("turn on the lights" for a home set) is left out."""
    limit = np.quantile(leave_one_out_fits(prototypes, owner, examples, None), COMMAND_IN_DOMAIN_SHARE, method="lower")
    return commands[set_fit(commands, prototypes, owner, ~examples, trained=False) < limit]


def scope_of(background: np.ndarray, fit: np.ndarray, bound: float = 1.0) -> np.ndarray:
    """The share of the sorted background fits below each fit, made continuous: linear between
    neighbouring background fits (the i-th of n at (i + 0.5) / n) and on to 0 at -bound and 1 at
    bound. A step count saturated: every utterance fitting better than the best background
    sentence had scope 1.0, in scope or not, so their order was lost (AUROC and the examples'
    threshold both suffered; docs/results/zero_shot.md)."""
    n = len(background)
    fits = np.concatenate([[-bound], background, [bound]])
    shares = np.concatenate([[0.0], (np.arange(n) + 0.5) / n, [1.0]])
    return np.interp(fit, fits, shares)


def coverage_threshold(scopes: np.ndarray, coverage: float = TRAINED_COVERAGE) -> float:
    """The scope that keeps `coverage` of these in-scope utterances."""
    return float(np.quantile(scopes, 1.0 - coverage, method="lower"))


def description_anchors(model: DFMQMC, tokenizer: Any, intent_set: IntentSet) -> Tensor:
    """(C, D) description embeddings in the head's label order: the triplet loss's anchors."""
    by_name = {intent.name: intent.description for intent in intent_set.intents}
    vectors = embed_sentences(model, tokenizer, [by_name[name] for name in model.config.labels])
    return torch.from_numpy(vectors)


def binary_f1(positive_true: np.ndarray, positive_pred: np.ndarray) -> float:
    tp = float(np.sum(positive_true & positive_pred))
    denom = float(np.sum(positive_true) + np.sum(positive_pred))
    return 0.0 if denom == 0 else 2.0 * tp / denom


def fit_reject_below(scopes: np.ndarray, in_scope: np.ndarray, grid: Sequence[float] | None = None) -> dict[str, Any]:
    """The scope threshold that maximises the mean of the in-scope and out-of-scope F1 (the
    open-set detection F1, both classes weighted alike) on pooled rule-learning data."""
    candidates = np.round(np.arange(0.5, 1.0001, 0.01), 2) if grid is None else np.asarray(grid)
    best: dict[str, Any] = {}
    for threshold in candidates:
        accepted = scopes >= threshold
        f1_is = binary_f1(in_scope, accepted)
        f1_oos = binary_f1(~in_scope, ~accepted)
        score = (f1_is + f1_oos) / 2
        if not best or score > best["mean_f1"]:
            best = {
                "reject_below": float(threshold),
                "mean_f1": score,
                "f1_in_scope": f1_is,
                "f1_oos": f1_oos,
                "coverage": float(accepted[in_scope].mean()),
                "oos_recall": float((~accepted[~in_scope]).mean()),
            }
    return best
