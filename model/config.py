"""The whole model configuration: one dataclass saved beside the weights.

A checkpoint folder holds `config.json` (this dataclass), `weights.pt` and `text_encoder/`
(tokenizer + encoder config), so `load_checkpoint` rebuilds exactly the trained model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from model.errors import ConfigError

# 'dynamic': the paper's residual fusion of pooled encodings with quality weights; 'anchor': the
# same weights over A-ME anchor embeddings (model/dfmq.py AnchorEmbedding); 'equal': the ablation.
FUSION_MODES = ("dynamic", "anchor", "equal")
# 'gated': one gate per channel from its own quality, zero below `quality_floor` (the default);
# 'paper': the paper's softmax over (audio, video), whose weights sum to 1.
FUSION_WEIGHTS = ("gated", "paper")
# Which negatives the semantic-synchronisation triplet loss uses: the closest wrong description of
# each sample ('hardest') or every wrong description, averaged ('all').
SS_NEGATIVES = ("hardest", "all")

MINTREC_LABELS = (
    "Complain",
    "Praise",
    "Apologise",
    "Thank",
    "Criticize",
    "Agree",
    "Taunt",
    "Flaunt",
    "Joke",
    "Oppose",
    "Comfort",
    "Care",
    "Inform",
    "Advise",
    "Arrange",
    "Introduce",
    "Leave",
    "Prevent",
    "Greet",
    "Ask for help",
)

MELD_DA_LABELS = {
    "g": "Greeting",
    "q": "Question",
    "ans": "Answer",
    "o": "Statement Opinion",
    "s": "Statement Non Opinion",
    "ap": "Apology",
    "c": "Command",
    "ag": "Agreement",
    "dag": "Disagreement",
    "a": "Acknowledge",
    "b": "Backchannel",
    "oth": "Others",
}


@dataclass
class ReferenceStats:
    """Training means of the raw quality statistics; live references start from these."""

    audio_energy: float = 0.0
    video_motion: float = 0.0
    video_contrast: float = 0.0


@dataclass
class DFMQConfig:
    labels: list[str]
    text_encoder: str = "minilm"
    text_width: int = 384
    text_max_len: int = 30
    # Bottom text-encoder layers (and the embeddings) kept at their pretrained values. With the
    # bundled base encoder, checkpoints then store only the trained part (see model/checkpoint.py).
    frozen_text_layers: int = 0
    audio_dim: int = 768
    audio_max_len: int = 480
    video_dim: int = 256
    video_max_len: int = 230
    # Width inside the audio/video encoders (None: the text width); their output is always
    # projected to the text width for the residual fusion.
    nonverbal_width: int | None = None
    nonverbal_layers: int = 1
    nonverbal_heads: int = 4
    predictor_hidden: int = 16
    predictor_init: str = "random"  # or "monotone": start from weights that follow quality
    dropout: float = 0.1
    fusion: str = "dynamic"
    anchor_count: int = 8  # learnable anchors of `fusion: anchor`
    fusion_weights: str = "gated"
    quality_floor: float = 0.15  # a channel scoring below this gets weight 0 (gated weights)
    quality_floor_ramp: float = 0.1  # the gate opens linearly over this much quality above the floor
    use_quality: bool = True
    use_consistency: bool = True
    lambda_supcon: float = 1.0
    lambda_meta: float = 0.1
    lambda_mc: float = 0.1
    supcon_temperature: float = 0.1
    maml_inner_steps: int = 1
    maml_inner_lr: float = 0.5
    maml_support_size: int = 2
    maml_query_size: int = 2
    reference: ReferenceStats = field(default_factory=ReferenceStats)
    # FeatureOptions of the media features the model was trained on (None: benchmark features,
    # quality from the features themselves). Live extraction must use the same options.
    feature_options: dict[str, Any] | None = None
    # Trained on transcripts alone (a data folder without feature files): its audio and video
    # encoders never learnt anything, so live runs give it the transcript only.
    text_only: bool = False
    # Temperature scaling of the fused logits: probabilities are softmax(logits / temperature),
    # T fitted on a held-out split (`dfmq train` at its end, `dfmq calibrate` on any checkpoint).
    # 1.0: uncalibrated (checkpoints from before calibration load with it).
    temperature: float = 1.0
    # The semantic space (model/semantic.py): a frozen copy of the pretrained text encoder embeds
    # intent descriptions and examples (the anchors) and the transcript; `semantic_proj(fused)` is
    # added to the transcript's embedding so the utterance's embedding sees audio and video.
    # False only for checkpoints from before it (they classify their trained labels only).
    semantic_space: bool = True
    # Semantic synchronisation (our reading of A-MESS): a triplet loss pulling each sample's
    # utterance embedding toward its intent's description anchor and away from the others.
    lambda_ss: float = 0.5
    ss_margin: float = 0.2
    ss_negatives: str = "hardest"
    # Intent scoring (both fitted on dev at the end of `dfmq train`): probabilities over an intent
    # set are softmax(similarity / similarity_temperature); for the trained labels they are mixed
    # with the linear head's as (1 - head_mix) * head + head_mix * similarity.
    similarity_temperature: float = 0.05
    head_mix: float = 0.3
    # Out-of-scope rule: reject when the utterance fits the intent set no better than this fraction
    # of the off-topic background sentences (model/offtopic.txt) do. Learnt at the end of training
    # where the data allow it; the default is what the starter learnt on MIntRec.
    reject_below: float = 0.81
    # The same rule for the trained labels, whose utterance embedding carries the fused shift and
    # so scores differently: the scope that keeps `TRAINED_COVERAGE` of the held-out split's
    # utterances (model/semantic.py). Fitted at the end of training; the default is the starter's.
    reject_below_trained: float = 0.15

    def __post_init__(self) -> None:
        if isinstance(self.reference, dict):
            self.reference = ReferenceStats(**self.reference)
        if self.predictor_init not in ("random", "monotone"):
            raise ConfigError("predictor_init", "'random' or 'monotone'", self.predictor_init)
        if self.fusion not in FUSION_MODES:
            raise ConfigError("fusion", f"one of {FUSION_MODES}", self.fusion)
        if self.fusion_weights not in FUSION_WEIGHTS:
            raise ConfigError("fusion_weights", f"one of {FUSION_WEIGHTS}", self.fusion_weights)
        if not 0.0 <= self.quality_floor < 1.0:
            raise ConfigError("quality_floor", "a quality in [0, 1)", self.quality_floor)
        if not 0.0 < self.quality_floor_ramp <= 1.0:
            raise ConfigError("quality_floor_ramp", "a quality width in (0, 1]", self.quality_floor_ramp)
        if len(self.labels) < 2:
            raise ConfigError("labels", "at least 2 labels", self.labels)
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError("labels", "distinct labels", self.labels)
        for key in (
            "text_max_len",
            "audio_dim",
            "audio_max_len",
            "video_dim",
            "video_max_len",
            "predictor_hidden",
            "nonverbal_layers",
            "nonverbal_heads",
            "maml_support_size",
            "maml_query_size",
            "anchor_count",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(key, "a positive integer", value)
        if self.frozen_text_layers < 0:
            raise ConfigError("frozen_text_layers", "an integer >= 0", self.frozen_text_layers)
        if self.maml_inner_steps < 0:
            raise ConfigError("maml_inner_steps", "an integer >= 0", self.maml_inner_steps)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", "a value in [0, 1)", self.dropout)
        if self.supcon_temperature <= 0:
            raise ConfigError("supcon_temperature", "a value > 0", self.supcon_temperature)
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, int | float)
            or not math.isfinite(self.temperature)
            or self.temperature <= 0
        ):
            raise ConfigError("temperature", "a finite value > 0", self.temperature)
        self.temperature = float(self.temperature)
        if self.ss_negatives not in SS_NEGATIVES:
            raise ConfigError("ss_negatives", f"one of {SS_NEGATIVES}", self.ss_negatives)
        if self.lambda_ss < 0:
            raise ConfigError("lambda_ss", "a weight >= 0", self.lambda_ss)
        if not 0.0 <= self.ss_margin <= 2.0:
            raise ConfigError("ss_margin", "a cosine margin in [0, 2]", self.ss_margin)
        if self.lambda_ss > 0 and not self.semantic_space:
            raise ConfigError("lambda_ss", "0 when semantic_space is false", self.lambda_ss)
        if not 0.0 < self.similarity_temperature <= 10.0:
            raise ConfigError("similarity_temperature", "a value in (0, 10]", self.similarity_temperature)
        if not 0.0 <= self.head_mix <= 1.0:
            raise ConfigError("head_mix", "a value in [0, 1]", self.head_mix)
        if not 0.0 <= self.reject_below <= 1.0:
            raise ConfigError("reject_below", "a fraction in [0, 1]", self.reject_below)
        if not 0.0 <= self.reject_below_trained <= 1.0:
            raise ConfigError("reject_below_trained", "a fraction in [0, 1]", self.reject_below_trained)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> DFMQConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"one of {sorted(known)}", unknown[0], source)
        try:
            return cls(**data)
        except ConfigError as exc:
            raise exc.sourced(source) from None
