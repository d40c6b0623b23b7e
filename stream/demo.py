"""`dfmq demo`: the most useful real job the repository can do on its own, until the live
pipeline lands: train DFMQ-MC on the bundled MIntRec text, score the dev split, then read a few
sentences and show the intent the model hears in each."""

from __future__ import annotations

from pathlib import Path

import torch

from model.checkpoint import CONFIG_FILE, load_checkpoint
from model.config import DFMQConfig
from model.data import Collator, Sample, dataset_labels
from model.quality import audio_stats, quality_vector, video_stats
from model.train import TrainOptions, evaluate, train
from stream.options import from_mapping, load_yaml

REPO = Path(__file__).resolve().parent.parent
BUNDLED_MINTREC = REPO / "data" / "mintrec"
EXAMPLES = (
    "thank you so much for covering my shift",
    "i'm really sorry, i didn't mean to break it",
    "could you help me carry these boxes to the back",
    "that's a great idea, let's do it",
    "hi everyone, welcome to cloud nine",
    "you should put the sale signs by the entrance",
    "well, i have to go now, see you tomorrow",
)


def classify_texts(ckpt: Path, texts: tuple[str, ...], top_k: int = 3) -> list[list[tuple[str, float]]]:
    model, tokenizer = load_checkpoint(ckpt)
    cfg = model.config
    collate = Collator(tokenizer, cfg.text_max_len, cfg.audio_dim, cfg.audio_max_len, cfg.video_dim, cfg.video_max_len)
    batch = collate([Sample(f"example{i}", text, 0, None, None) for i, text in enumerate(texts)])
    a_stats = audio_stats(batch.audio, batch.audio_mask)
    v_stats = video_stats(batch.video, batch.video_mask)
    quality = quality_vector(batch.attention_mask, cfg.text_max_len, a_stats, v_stats, cfg.reference)
    with torch.no_grad():
        _, probs, _ = model(
            batch.input_ids, batch.attention_mask, batch.audio, batch.audio_mask, batch.video, batch.video_mask, quality
        )
    values, indices = probs.topk(top_k, dim=-1)
    return [[(cfg.labels[int(i)], float(v)) for v, i in zip(row_v, row_i)] for row_v, row_i in zip(values, indices)]


DEMO_EPOCHS = 8  # about 4 minutes on 2 CPU cores; `dfmq train` runs the full 20


def run_demo(out_dir: Path, config_path: Path, retrain: bool = False) -> int:
    ckpt = out_dir / "checkpoint"
    if retrain or not (ckpt / CONFIG_FILE).is_file():
        raw = load_yaml(config_path)
        model_section = dict(raw.get("model") or {})
        model_section["labels"] = dataset_labels("mintrec")
        config = DFMQConfig.from_dict(model_section, source=f"{config_path} [model]")
        opts = from_mapping(TrainOptions, {**(raw.get("train") or {}), "epochs": DEMO_EPOCHS}, f"{config_path} [train]")
        print(f"[demo] training DFMQ-MC (text-only) on the bundled MIntRec text -> {ckpt}", flush=True)
        train("mintrec", BUNDLED_MINTREC, ckpt, config, opts)
    else:
        print(f"[demo] reusing the checkpoint in {ckpt} (pass --retrain to train again)")
    metrics = evaluate(ckpt, "mintrec", BUNDLED_MINTREC, "dev", out_dir / "dev.json")
    print(
        f"[demo] MIntRec dev: accuracy {metrics['acc']:.2f}%  macro F1 {metrics['f1_macro']:.2f}%  "
        f"(n={metrics['n']}); confusion matrix: {metrics['confusion_png']}"
    )
    print("[demo] what the model hears in a few sentences:")
    for text, ranked in zip(EXAMPLES, classify_texts(ckpt, EXAMPLES)):
        best, conf = ranked[0]
        rest = ", ".join(f"{label} {p:.2f}" for label, p in ranked[1:])
        bar = "█" * round(conf * 20)
        print(f'  {best:<12} {conf:4.2f} {bar:<20}  "{text}"  (next: {rest})')
    print("[demo] the live pipeline (webcam + microphone -> MQTT) is not built yet; this demo is text-only.")
    return 0
