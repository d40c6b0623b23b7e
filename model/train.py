"""`dfmq train`, `dfmq eval` and `dfmq calibrate`: the training loop with early stopping,
evaluation, and temperature scaling of the fused logits on a held-out split."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.checkpoint import (
    checkpoint_intent_set,
    load_checkpoint,
    new_model,
    save_checkpoint,
    update_checkpoint_config,
    write_calibration,
)
from model.config import DFMQConfig, ReferenceStats
from model.data import Batch, Collator, FeatureStore, Sample, dataset_labels, load_split, read_split, read_tsv
from model.dfmq import DFMQMC
from model.errors import ConfigError, DataError
from model.features import FeatureOptions
from model.intents import IntentSet, dataset_intent_set
from model.losses import consistency_loss, fomaml_loss, supervised_contrastive
from model.metrics import (
    ECE_BINS,
    calibration_summary,
    choose_temperature,
    classification_metrics,
    fit_temperature,
    save_confusion_matrix,
    save_reliability_diagram,
    softmax,
)
from model.quality import (
    audio_stats,
    batch_references,
    quality_vector,
    raw_batch_references,
    raw_quality_vector,
    video_stats,
)
from model.semantic import (
    IntentAnchors,
    build_anchors,
    coverage_threshold,
    description_anchors,
    embed_sentences,
    embed_utterances,
    fit_reject_below,
    offtopic_sentences,
    set_fit,
    triplet_loss,
)


@dataclass
class TrainOptions:
    epochs: int = 20
    batch_size: int = 16
    lr_text_encoder: float = 8e-5
    lr_heads: float = 1e-3
    # The weight predictor is tiny and its meta-gradient small; it gets its own learning rate.
    lr_predictor: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    patience_epochs: int = 6
    grad_clip_norm: float = 1.0
    seed: int = 0
    # Rows drawn afresh each epoch from an augmentation tsv (e.g. MIntRec's augment_train.tsv).
    augment_rows_per_epoch: int = 0
    label_smoothing: float = 0.0
    # Exponential moving average of the weights, evaluated and saved instead of the raw weights
    # (0 = off). It damps the epoch-to-epoch swings of fine-tuning on 1.3k sentences.
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.augment_rows_per_epoch < 0:
            raise ConfigError("augment_rows_per_epoch", "an integer >= 0", self.augment_rows_per_epoch)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("ema_decay", "a value in [0, 1)", self.ema_decay)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError("label_smoothing", "a value in [0, 1)", self.label_smoothing)
        for key in ("epochs", "batch_size", "patience_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(key, "a positive integer", getattr(self, key))
        for key in ("lr_text_encoder", "lr_heads", "lr_predictor"):
            if getattr(self, key) <= 0:
                raise ConfigError(key, "a learning rate > 0", getattr(self, key))
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("warmup_ratio", "a value in [0, 1)", self.warmup_ratio)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", "'cpu' on a machine without CUDA", name)
    if name not in ("cpu", "cuda"):
        raise ConfigError("--device", "'cpu' or 'cuda'", name)
    return torch.device(name)


def batch_quality(model: DFMQMC, batch: Batch, reference: ReferenceStats | None) -> tuple[torch.Tensor, ReferenceStats]:
    """Quality vector of a batch; `reference=None` means the batch mean (training, as the paper).

    Raw-signal statistics (folders from `dfmq extract`) are scored with the same formulas as the
    live pipeline; benchmark feature folders are scored on the features. Text quality uses the
    recogniser's scores where a sample has them (as live), token coverage otherwise.
    """
    cfg = model.config
    if batch.raw_audio is not None and batch.raw_video is not None and cfg.feature_options is not None:
        ref = reference if reference is not None else raw_batch_references(batch.raw_audio, batch.raw_video)
        options = FeatureOptions(**cfg.feature_options)
        q = raw_quality_vector(
            batch.attention_mask,
            cfg.text_max_len,
            batch.raw_audio,
            batch.raw_video,
            ref,
            options,
            text_scores=batch.text_scores,
        )
        return q, ref
    a_stats = audio_stats(batch.audio, batch.audio_mask)
    v_stats = video_stats(batch.video, batch.video_mask)
    ref = reference if reference is not None else batch_references(a_stats, v_stats)
    q = quality_vector(batch.attention_mask, cfg.text_max_len, a_stats, v_stats, ref, text_scores=batch.text_scores)
    return q, ref


def add_noise(batch: Batch, sigma: float, generator: torch.Generator) -> Batch:
    """Gaussian noise of std `sigma` on the valid audio and video frames (the robustness table)."""
    if sigma <= 0:
        return batch
    audio_noise = torch.randn(batch.audio.shape, generator=generator) * sigma
    video_noise = torch.randn(batch.video.shape, generator=generator) * sigma
    # Every other field is kept as it is: raw-signal statistics (data from `dfmq extract`) and
    # recogniser scores describe the recorded media, which this feature noise does not touch.
    return dataclasses.replace(
        batch,
        audio=batch.audio + audio_noise.to(batch.audio.device) * batch.audio_mask.unsqueeze(-1),
        video=batch.video + video_noise.to(batch.video.device) * batch.video_mask.unsqueeze(-1),
    )


class _ReferenceAccumulator:
    """Mean of the batch references over an epoch: the statistics stored in the checkpoint."""

    def __init__(self) -> None:
        self.sums = np.zeros(3)
        self.count = 0

    def add(self, ref: ReferenceStats) -> None:
        self.sums += (ref.audio_energy, ref.video_motion, ref.video_contrast)
        self.count += 1

    def mean(self) -> ReferenceStats:
        if not self.count:
            return ReferenceStats()
        e, m, c = (self.sums / self.count).tolist()
        return ReferenceStats(e, m, c)


def training_loss(
    model: DFMQMC,
    batch: Batch,
    generator: torch.Generator,
    label_smoothing: float = 0.0,
    anchors: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float], ReferenceStats]:
    """The total loss of one batch and its parts; `anchors` (C, D): the trained labels' description
    embeddings, needed when the config's lambda_ss > 0 (semantic synchronisation)."""
    cfg = model.config
    quality, ref = batch_quality(model, batch, None)
    out = model.forward_all(
        batch.input_ids, batch.attention_mask, batch.audio, batch.audio_mask, batch.video, batch.video_mask, quality
    )
    # The text head is supervised too: it is the anchor of the consistency loss, and an
    # unsupervised anchor would pull audio and video toward noise.
    l_cls = F.cross_entropy(out.logits, batch.labels, label_smoothing=label_smoothing) + F.cross_entropy(
        out.text_logits, batch.labels, label_smoothing=label_smoothing
    )
    l_supcon = supervised_contrastive(model.contrast_proj(out.fused), batch.labels, cfg.supcon_temperature)
    total = l_cls + cfg.lambda_supcon * l_supcon
    parts = {"cls": l_cls.item(), "supcon": l_supcon.item()}
    if cfg.fusion != "equal":
        l_meta = fomaml_loss(
            model,
            out,
            batch.audio,
            batch.audio_mask,
            batch.video,
            batch.video_mask,
            batch.attention_mask,
            batch.labels,
            ref,
            generator,
            raw_audio=batch.raw_audio if cfg.feature_options is not None else None,
            raw_video=batch.raw_video if cfg.feature_options is not None else None,
            text_scores=batch.text_scores,
        )
        total = total + cfg.lambda_meta * l_meta
        parts["meta"] = l_meta.item()
    if cfg.use_consistency:
        l_mc = consistency_loss(out)
        total = total + cfg.lambda_mc * l_mc
        parts["mc"] = l_mc.item()
    if cfg.lambda_ss > 0:
        if anchors is None:
            raise ValueError("lambda_ss > 0 needs the description anchors")
        l_ss = triplet_loss(out.embedding, anchors, batch.labels, cfg.ss_margin, cfg.ss_negatives)
        total = total + cfg.lambda_ss * l_ss
        parts["ss"] = l_ss.item()
    return total, parts, ref


# The model's forward signature, (input_ids, attention_mask, audio, audio_mask, video, video_mask,
# quality) -> (logits, probs, weights, embedding, sentence): an inference engine can stand in for it.
ModelForward = Callable[..., tuple[torch.Tensor, ...]]


@torch.no_grad()
def predict(
    model: DFMQMC,
    loader: Iterable[Batch],
    device: torch.device,
    reference: ReferenceStats,
    noise_sigma: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    forward: ModelForward | None = None,
) -> dict[str, np.ndarray]:
    model.eval()
    run = forward or model
    generator = torch.Generator().manual_seed(seed)
    keys: list[str] = []
    labels, preds, weights, qualities, all_logits, embeddings, sentences = [], [], [], [], [], [], []
    for batch in tqdm(loader, desc="eval", leave=False, disable=None if progress else True):
        batch = add_noise(batch, noise_sigma, generator).to(device)
        quality, _ = batch_quality(model, batch, reference)
        logits, _, w, embedding, sentence = run(
            batch.input_ids, batch.attention_mask, batch.audio, batch.audio_mask, batch.video, batch.video_mask, quality
        )
        embeddings.append(embedding.float().cpu().numpy())
        sentences.append(sentence.float().cpu().numpy())
        keys += batch.keys
        labels.append(batch.labels.cpu().numpy())
        preds.append(logits.argmax(dim=-1).cpu().numpy())
        all_logits.append(logits.float().cpu().numpy())
        weights.append(w.cpu().numpy())
        qualities.append(quality.cpu().numpy())
    logits_np = np.concatenate(all_logits)
    return {
        "keys": np.array(keys),
        "logits": logits_np,  # fused, before temperature scaling
        # The model's calibrated probability of its prediction: softmax(logits / temperature).
        "confidence": softmax(logits_np, model.config.temperature).max(axis=-1),
        "labels": np.concatenate(labels),
        "preds": np.concatenate(preds),
        "weights": np.concatenate(weights),
        "quality": np.concatenate(qualities),
        "embedding": np.concatenate(embeddings),
        "sentence": np.concatenate(sentences),
    }


def _loader(samples: list[Sample], collate: Collator, batch_size: int, shuffle: bool, seed: int) -> DataLoader[Any]:
    return DataLoader(
        samples,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )


def train(
    dataset: str,
    data_dir: Path,
    out_dir: Path,
    config: DFMQConfig,
    opts: TrainOptions,
    device_name: str = "cpu",
    augment_tsv: Path | None = None,
    intent_set: IntentSet | None = None,
) -> dict[str, Any]:
    """Train with early stopping on dev macro F1; the best epoch is saved to `out_dir`.

    With `augment_tsv`, each epoch adds `opts.augment_rows_per_epoch` rows drawn afresh from it.
    `intent_set` describes the dataset's labels (default: `dataset_intent_set(dataset)`); it is
    saved in the checkpoint and its descriptions are the semantic synchronisation's anchors.
    """
    intent_set = intent_set if intent_set is not None else dataset_intent_set(dataset)
    if sorted(intent_set.names) != sorted(config.labels):
        raise DataError(
            "the intent set does not name the dataset's labels",
            path=Path(intent_set.source),
            expected=str(sorted(config.labels)),
            got=str(sorted(intent_set.names)),
        )
    device = resolve_device(device_name)
    generator = seed_everything(opts.seed)
    features = FeatureStore(Path(data_dir), config.audio_dim, config.video_dim)
    # The options that made the features travel with the checkpoint, so live extraction matches.
    config.feature_options = features.feature_options
    config.text_only = features.text_only
    train_samples = load_split(dataset, data_dir, "train", features, config.labels)
    dev_samples = load_split(dataset, data_dir, "dev", features, config.labels)
    augment: list[Sample] = []
    if augment_tsv is not None:
        if opts.augment_rows_per_epoch == 0:
            raise ConfigError("augment_rows_per_epoch", "> 0 when an augmentation tsv is given", 0)
        augment = [Sample(k, t, y, None, None) for k, t, y in read_tsv(dataset, Path(augment_tsv), config.labels)]
    augment_rng = random.Random(opts.seed)
    model, tokenizer = new_model(config)
    model.to(device)
    anchors = description_anchors(model, tokenizer, intent_set).to(device) if config.lambda_ss > 0 else None
    collate = Collator(
        tokenizer, config.text_max_len, config.audio_dim, config.audio_max_len, config.video_dim, config.video_max_len
    )

    def epoch_loader(epoch: int) -> DataLoader[Any]:
        extra = augment_rng.sample(augment, min(opts.augment_rows_per_epoch, len(augment))) if augment else []
        return _loader(train_samples + extra, collate, opts.batch_size, True, opts.seed + epoch)

    train_loader = epoch_loader(0)
    dev_loader = _loader(dev_samples, collate, 64, False, opts.seed)

    encoder_params = [p for p in model.text_encoder.parameters() if p.requires_grad]
    predictor_params = list(model.predictor.parameters())
    grouped = {id(p) for p in model.text_encoder.parameters()} | {id(p) for p in predictor_params}
    head_params = [p for p in model.parameters() if id(p) not in grouped]
    optimizer = torch.optim.AdamW(
        [
            {"params": encoder_params, "lr": opts.lr_text_encoder},
            {"params": head_params, "lr": opts.lr_heads},
            {"params": predictor_params, "lr": opts.lr_predictor, "weight_decay": 0.0},
        ],
        weight_decay=opts.weight_decay,
    )
    total_steps = opts.epochs * len(train_loader)
    warmup = max(1, int(opts.warmup_ratio * total_steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "train_log.jsonl"
    log_path.write_text("")
    modality = (
        "text-only (no feature pickles found)"
        if features.text_only
        else (f"audio={features.audio_path}, video={features.video_path}")
    )
    extra_note = f" + {len(train_loader.dataset) - len(train_samples)} augmented/epoch" if augment else ""  # type: ignore[arg-type]
    print(
        f"train: {len(train_samples)} samples{extra_note}, dev: {len(dev_samples)}, {modality}, device {device}",
        flush=True,
    )

    ema = copy.deepcopy(model) if opts.ema_decay > 0 else None
    scored = ema if ema is not None else model
    best_f1, best_epoch, stale = -1.0, 0, 0
    started = time.monotonic()
    history = []
    for epoch in range(1, opts.epochs + 1):
        if epoch > 1 and augment:
            train_loader = epoch_loader(epoch)
        model.train()
        refs = _ReferenceAccumulator()
        sums: dict[str, float] = {}
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{opts.epochs}", leave=False, disable=None)
        for batch in bar:
            batch = batch.to(device)
            loss, parts, ref = training_loss(model, batch, generator, opts.label_smoothing, anchors)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                with torch.no_grad():
                    for shadow, live in zip(ema.parameters(), model.parameters()):
                        shadow.lerp_(live, 1.0 - opts.ema_decay)
            refs.add(ref)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{loss.item():.3f}")
        model.config.reference = scored.config.reference = refs.mean()
        result = predict(scored, dev_loader, device, scored.config.reference)
        metrics = classification_metrics(result["labels"], result["preds"], config.labels)
        record = {
            "epoch": epoch,
            "elapsed_s": round(time.monotonic() - started, 1),
            "loss": {k: v / len(train_loader) for k, v in sums.items()},
            "dev_acc": metrics["acc"],
            "dev_f1_macro": metrics["f1_macro"],
            "mean_weights": result["weights"].mean(axis=0).tolist(),
        }
        history.append(record)
        with log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        improved = metrics["f1_macro"] > best_f1
        print(
            f"epoch {epoch:2d}  loss {sum(record['loss'].values()):.3f}  dev acc {metrics['acc']:.2f}  "
            f"macro F1 {metrics['f1_macro']:.2f}  {record['elapsed_s']:.0f}s" + ("  *best" if improved else ""),
            flush=True,
        )
        if improved:
            best_f1, best_epoch, stale = metrics["f1_macro"], epoch, 0
            save_checkpoint(
                scored,
                tokenizer,
                out_dir,
                {"dataset": dataset, "train_options": asdict(opts), "best_epoch": epoch, "dev": metrics},
                intent_set,
            )
        else:
            stale += 1
            if stale >= opts.patience_epochs:
                print(f"early stop: no dev macro-F1 gain for {stale} epochs")
                break
    print(f"best epoch {best_epoch}: dev macro F1 {best_f1:.2f}; checkpoint in {out_dir}")
    # Temperature scaling of the saved (best) model on dev; the record also ends train_log.jsonl.
    best, _ = load_checkpoint(out_dir, str(device))
    # One pass over dev serves both fits: the temperature changes no logit and no embedding.
    dev_result = predict(best, dev_loader, device, best.config.reference)
    calibration = fit_calibration(best, dev_result, "dev")
    write_calibration(out_dir, calibration["temperature"], calibration)
    with log_path.open("a") as handle:
        handle.write(json.dumps({"calibration": calibration}) + "\n")
    print(format_calibration(calibration), flush=True)
    semantic: dict[str, Any] | None = None
    if best.config.semantic_space:
        best.config.temperature = calibration["temperature"]
        examples = texts_by_label((s.text, s.label) for s in train_samples)
        semantic = fit_semantic(best, tokenizer, dev_result, intent_set, examples, opts.seed)
        update_checkpoint_config(out_dir, semantic["fitted"], "semantic", semantic)
        with log_path.open("a") as handle:
            handle.write(json.dumps({"semantic": semantic}) + "\n")
        print(format_semantic(semantic), flush=True)
    return {
        "best_epoch": best_epoch,
        "best_dev_f1_macro": best_f1,
        "epochs_run": len(history),
        "elapsed_s": round(time.monotonic() - started, 1),
        "calibration": calibration,
        "semantic": semantic,
    }


HELD_OUT_INTENTS = 5  # intents held out as unknown when the out-of-scope rule is learnt
RULE_SPLITS = 8  # random held-out draws pooled
RULE_EXAMPLES = 3  # examples per known intent in the draws that have examples
# Fewer held-out samples (or, for the rule, fewer than 2 x HELD_OUT_INTENTS labels): nothing is
# fitted, the config's head_mix and reject_below stay.
RULE_MIN_SAMPLES = 100
TRAINED_MIN_SAMPLES = 40  # fewer held-out samples: the trained labels keep the config's threshold


def fit_semantic(
    model: DFMQMC,
    tokenizer: Any,
    result: dict[str, np.ndarray],
    intent_set: IntentSet,
    train_texts: dict[int, list[str]],
    seed: int,
) -> dict[str, Any]:
    """Fit the intent scoring on a held-out split's `predict` result (model/semantic.py).

    - `similarity_temperature`: NLL of softmax(similarity / T) over the trained labels' descriptions.
    - `reject_below`, learnt once: `RULE_SPLITS` draws of the split, each with `HELD_OUT_INTENTS`
      labels held out as unknown, scored as a never-seen set is (the transcript embedding against
      the known labels' descriptions), once with descriptions alone and once with `RULE_EXAMPLES`
      training sentences per known label as examples (`train_texts`: label index -> sentences);
      the off-topic rule sentences are out of scope in every draw. The threshold maximises the mean
      of the in-scope and out-of-scope F1 over all draws pooled.
    - `head_mix`: the split's best accuracy over 0, 0.1, ..., 1 (ties to the smaller mix: the head
      is what was early-stopped on); below `RULE_MIN_SAMPLES` held-out samples the config's stays.
    - `reject_below_trained`: `fit_trained_threshold`.
    """
    cfg = model.config
    labels, embeddings, sentences = result["labels"], result["embedding"], result["sentence"]
    by_name = {intent.name: intent for intent in intent_set.intents}
    descriptions = embed_sentences(model, tokenizer, [by_name[name].description for name in cfg.labels])
    sims = embeddings @ descriptions.T
    temperature = fit_temperature(sims, labels, bounds=(0.005, 10.0))
    head_probs = softmax(result["logits"], cfg.temperature)
    sim_probs = softmax(sims, temperature)
    mixes = [round(0.1 * step, 1) for step in range(11)]
    mix_acc = {
        f"{mix:.1f}": float(100.0 * np.mean(((1 - mix) * head_probs + mix * sim_probs).argmax(axis=1) == labels))
        for mix in mixes
    }
    head_mix = max(mixes, key=lambda mix: (mix_acc[f"{mix:.1f}"], -mix))
    if len(labels) < RULE_MIN_SAMPLES:
        head_mix = cfg.head_mix  # a handful of dev sentences ties most mixes: keep the default
    trained_rule = fit_trained_threshold(model, tokenizer, intent_set, embeddings)
    fitted: dict[str, float] = {
        "similarity_temperature": temperature,
        "head_mix": head_mix,
        "reject_below_trained": trained_rule["reject_below_trained"],
    }
    record = {
        "n": len(labels),
        "similarity_temperature": temperature,
        "accuracy_by_head_mix": mix_acc,
        "head_mix": head_mix,
        "trained_rule": trained_rule,
    }
    if len(cfg.labels) < 2 * HELD_OUT_INTENTS or len(labels) < RULE_MIN_SAMPLES:
        # Holding 5 of a handful of intents out says nothing general; the config's threshold (the
        # one learnt for the starter on MIntRec) stays.
        why = f"not learnt: {len(cfg.labels)} labels, {len(labels)} held-out samples"
        return {"fitted": fitted, **record, "rule": {"reject_below": cfg.reject_below, "note": why}}
    background_texts, rule_texts = offtopic_sentences()
    background = embed_sentences(model, tokenizer, background_texts)
    offtopic = embed_sentences(model, tokenizer, rule_texts)
    examples = {k: embed_sentences(model, tokenizer, texts) for k, texts in train_texts.items() if texts}
    rng = np.random.default_rng(seed)
    scopes, in_scope = [], []
    for draw in range(2 * RULE_SPLITS):
        held = rng.choice(len(cfg.labels), size=HELD_OUT_INTENTS, replace=False)
        known = np.setdiff1d(np.arange(len(cfg.labels)), held)
        prototypes, owner = [], []
        for j, k in enumerate(known):
            prototypes.append(descriptions[k : k + 1])
            owner.append(j)
            if draw % 2 and k in examples:
                picked = rng.choice(len(examples[k]), size=min(RULE_EXAMPLES, len(examples[k])), replace=False)
                prototypes.append(examples[k][picked])
                owner += [j] * len(picked)
        stacked = np.concatenate(prototypes)
        owners = np.asarray(owner)
        is_description = np.r_[True, owners[1:] != owners[:-1]]  # each intent's first prototype
        anchors = IntentAnchors(
            names=tuple(cfg.labels[k] for k in known),
            prototypes=stacked,
            owner=owners,
            is_description=is_description,
            background=np.sort(set_fit(background, stacked, owners, is_description, trained=False)),
            trained=False,
            reject_below=0.0,
            reject_below_source="fit",
            similarity_temperature=temperature,
            head_mix=0.0,
        )
        utterances = np.concatenate([sentences, offtopic])
        scopes.append(anchors.score(utterances, utterances).scope)
        in_scope.append(np.concatenate([np.isin(labels, known), np.zeros(len(offtopic), bool)]))
    rule = fit_reject_below(np.concatenate(scopes), np.concatenate(in_scope))
    return {
        "fitted": {**fitted, "reject_below": rule["reject_below"]},
        **record,
        "rule": {
            "held_out_intents": HELD_OUT_INTENTS,
            "draws": 2 * RULE_SPLITS,
            "examples_per_intent": RULE_EXAMPLES,
            "offtopic": len(rule_texts),
            **rule,
        },
    }


def fit_trained_threshold(
    model: DFMQMC, tokenizer: Any, intent_set: IntentSet, embeddings: np.ndarray
) -> dict[str, Any]:
    """The trained labels' out-of-scope threshold: the scope that keeps `TRAINED_COVERAGE` of the
    held-out split's utterance embeddings, scored as a live run scores the trained set; with the
    share of the off-topic rule sentences it rejects."""
    cfg = model.config
    if len(embeddings) < TRAINED_MIN_SAMPLES or list(intent_set.names) != list(cfg.labels):
        return {"reject_below_trained": cfg.reject_below_trained, "note": f"kept: {len(embeddings)} held-out samples"}
    anchors = build_anchors(model, tokenizer, intent_set, reject_below=0.0)
    scopes = anchors.score(embeddings, embeddings).scope
    threshold = coverage_threshold(scopes)
    _, rule_texts = offtopic_sentences()
    offtopic = embed_utterances(model, tokenizer, rule_texts)
    offtopic_scopes = anchors.score(offtopic, offtopic).scope
    return {
        "reject_below_trained": threshold,
        "coverage": float(np.mean(scopes >= threshold)),
        "offtopic_rejected": float(np.mean(offtopic_scopes < threshold)),
        "offtopic": len(rule_texts),
    }


def texts_by_label(rows: Iterable[tuple[str, int]]) -> dict[int, list[str]]:
    """(text, label index) rows -> label index -> its texts."""
    out: dict[int, list[str]] = {}
    for text, label in rows:
        out.setdefault(label, []).append(text)
    return out


def format_semantic(record: dict[str, Any]) -> str:
    rule, trained = record["rule"], record["trained_rule"]
    trained_text = (
        f"; trained labels reject below {trained['reject_below_trained']:.2f} ({trained['note']})"
        if "note" in trained
        else f"; trained labels reject below {trained['reject_below_trained']:.2f} (coverage "
        f"{trained['coverage']:.2f}, {trained['offtopic_rejected']:.2f} of {trained['offtopic']} off-topic "
        "sentences rejected)"
    )
    return _format_rule(record, rule) + trained_text


def _format_rule(record: dict[str, Any], rule: dict[str, Any]) -> str:
    if "note" in rule:
        return (
            f"semantic space on {record['n']} held-out samples: similarity temperature "
            f"{record['similarity_temperature']:.4f}; head_mix {record['head_mix']:.1f}; out-of-scope rule "
            f"reject_below {rule['reject_below']:.2f} kept ({rule['note']})"
        )
    return (
        f"semantic space on {record['n']} held-out samples: similarity temperature "
        f"{record['similarity_temperature']:.4f}; head_mix {record['head_mix']:.1f} (accuracy by head_mix "
        f"{ {k: round(v, 2) for k, v in record['accuracy_by_head_mix'].items()} }); "
        f"out-of-scope rule reject_below {rule['reject_below']:.2f} (coverage {rule['coverage']:.2f}, "
        f"OOS recall {rule['oos_recall']:.2f} with {rule['held_out_intents']} intents held out, "
        f"{rule['draws']} draws, + {rule['offtopic']} off-topic sentences)"
    )


def fit_calibration(model: DFMQMC, result: dict[str, np.ndarray], split: str) -> dict[str, Any]:
    """Fit the temperature of the fused logits on a held-out split's `predict` result: NLL
    minimised over one scalar T > 0. Returns the record kept in the checkpoint: T before and after,
    with the ECE (percent, 15 bins) and NLL at each. The model itself is not changed."""
    logits, labels = result["logits"], result["labels"]
    old = model.config.temperature
    temperature, note = choose_temperature(logits, labels, old)
    before = calibration_summary(logits, labels, old)
    after = calibration_summary(logits, labels, temperature)
    return {
        "split": split,
        "n": len(labels),
        "bins": ECE_BINS,
        "temperature_before": old,
        "temperature": temperature,
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "nll_before": before["nll"],
        "nll_after": after["nll"],
        "note": note,
    }


def format_calibration(record: dict[str, Any]) -> str:
    return (
        f"calibration on {record['split']} ({record['n']} samples): temperature {record['temperature_before']:.3f} "
        f"-> {record['temperature']:.3f}; ECE {record['ece_before']:.2f}% -> {record['ece_after']:.2f}% "
        f"({record['bins']} bins); NLL {record['nll_before']:.4f} -> {record['nll_after']:.4f}"
        + (f" ({record['note']})" if record.get("note") else "")
    )


def _split_loader(
    model: DFMQMC, tokenizer: Any, dataset: str, data_dir: Path, split: str, seed: int
) -> tuple[DataLoader[Any], bool]:
    """A checkpoint's data: labels and feature options checked against it; (loader, text_only)."""
    cfg = model.config
    if dataset != "intents" and cfg.labels != dataset_labels(dataset):
        raise DataError(
            f"checkpoint labels do not match dataset {dataset!r}",
            expected=str(dataset_labels(dataset)),
            got=str(cfg.labels),
        )
    features = FeatureStore(Path(data_dir), cfg.audio_dim, cfg.video_dim)
    if not features.text_only and features.feature_options != cfg.feature_options:
        raise DataError(
            "the data folder's features were made with other options than the checkpoint's",
            path=Path(data_dir) / "features.json",
            expected=str(cfg.feature_options),
            got=str(features.feature_options),
        )
    samples = load_split(dataset, data_dir, split, features, cfg.labels)
    collate = Collator(tokenizer, cfg.text_max_len, cfg.audio_dim, cfg.audio_max_len, cfg.video_dim, cfg.video_max_len)
    return _loader(samples, collate, 64, False, seed), features.text_only


def evaluate(
    ckpt_dir: Path,
    dataset: str,
    data_dir: Path,
    split: str,
    json_out: Path,
    noise_sigma: float = 0.0,
    device_name: str = "cpu",
    seed: int = 0,
    forward_for: Callable[[DFMQMC, Any], tuple[str, ModelForward]] | None = None,
) -> dict[str, Any]:
    """Score a split; `forward_for(model, tokenizer)` -> (engine name, forward) runs it on an engine
    instead of eager torch (`dfmq eval --engine`)."""
    if noise_sigma < 0 or not math.isfinite(noise_sigma):
        raise ConfigError("--noise", "a standard deviation >= 0", noise_sigma)
    device = resolve_device(device_name)
    model, tokenizer = load_checkpoint(ckpt_dir, str(device))
    cfg = model.config
    loader, text_only = _split_loader(model, tokenizer, dataset, data_dir, split, seed)
    engine_name, forward = forward_for(model, tokenizer) if forward_for is not None else (f"torch-{device.type}", None)
    result = predict(model, loader, device, cfg.reference, noise_sigma, seed, progress=True, forward=forward)
    metrics = classification_metrics(result["labels"], result["preds"], cfg.labels)
    if cfg.semantic_space:
        # What a live decision on the trained set uses: the head mixed with the description scores
        # (head_mix), rejections aside (out of scope is not a label of a closed dataset).
        anchors = build_anchors(model, tokenizer, checkpoint_intent_set(ckpt_dir, cfg.labels))
        scores = anchors.score(result["embedding"], result["sentence"], softmax(result["logits"], cfg.temperature))
        mixed = classification_metrics(result["labels"], scores.probs.argmax(axis=1), cfg.labels)
        metrics["acc_with_descriptions"] = mixed["acc"]
        metrics["f1_macro_with_descriptions"] = mixed["f1_macro"]
        metrics["head_mix"] = cfg.head_mix
    calibration = calibration_summary(result["logits"], result["labels"], cfg.temperature)
    metrics.update(
        {
            "split": split,
            "dataset": dataset,
            "engine": engine_name,
            "noise_sigma": noise_sigma,
            "text_only": text_only,
            # Of the probabilities the model outputs, softmax(logits / temperature).
            "ece": calibration["ece"],
            "ece_bins": ECE_BINS,
            "nll": calibration["nll"],
            "temperature": cfg.temperature,
            "mean_quality": dict(zip(("text", "audio", "video"), result["quality"].mean(axis=0).tolist())),
            "mean_weights": dict(zip(("audio", "video"), result["weights"].mean(axis=0).tolist())),
        }
    )
    json_out = Path(json_out)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    rows = ["key\tlabel\tpredicted\tconfidence\tq_text\tq_audio\tq_video\tw_audio\tw_video"]
    for i, key in enumerate(result["keys"]):
        q, w = result["quality"][i], result["weights"][i]
        rows.append(
            f"{key}\t{cfg.labels[result['labels'][i]]}\t{cfg.labels[result['preds'][i]]}\t"
            f"{result['confidence'][i]:.4f}\t{q[0]:.4f}\t{q[1]:.4f}\t{q[2]:.4f}\t{w[0]:.4f}\t{w[1]:.4f}"
        )
    json_out.with_suffix(".predictions.tsv").write_text("\n".join(rows) + "\n")
    png = json_out.with_suffix(".png")
    title = f"{dataset} {split}: acc {metrics['acc']:.2f}, macro F1 {metrics['f1_macro']:.2f}"
    save_confusion_matrix(result["labels"], result["preds"], cfg.labels, png, title)
    metrics["confusion_png"] = str(png)
    reliability = json_out.with_suffix(".reliability.png")
    save_reliability_diagram(
        softmax(result["logits"], cfg.temperature),
        result["labels"],
        reliability,
        f"{dataset} {split}: ECE {calibration['ece']:.2f}% ({ECE_BINS} bins), temperature {cfg.temperature:.3f}",
    )
    metrics["reliability_png"] = str(reliability)
    json_out.write_text(json.dumps(metrics, indent=2))  # the figures' paths included
    return metrics


def calibrate(
    ckpt_dir: Path, dataset: str, data_dir: Path, split: str = "dev", device_name: str = "cpu", seed: int = 0
) -> dict[str, Any]:
    """Refit the temperature of a checkpoint on a held-out split and, when it has a semantic space,
    the intent scoring (`fit_semantic`, examples from the data's train split); rewrite config.json."""
    device = resolve_device(device_name)
    model, tokenizer = load_checkpoint(ckpt_dir, str(device))
    loader, _ = _split_loader(model, tokenizer, dataset, data_dir, split, seed)
    result = predict(model, loader, device, model.config.reference)
    record = fit_calibration(model, result, split)
    write_calibration(ckpt_dir, record["temperature"], record)
    if model.config.semantic_space:
        model.config.temperature = record["temperature"]
        intent_set = checkpoint_intent_set(ckpt_dir, model.config.labels)
        train_split = read_split(dataset, Path(data_dir), "train", model.config.labels)
        examples = texts_by_label((text, label) for _, text, label in train_split)
        semantic = fit_semantic(model, tokenizer, result, intent_set, examples, seed)
        update_checkpoint_config(ckpt_dir, semantic["fitted"], "semantic", semantic)
        record["semantic"] = semantic
    return record
