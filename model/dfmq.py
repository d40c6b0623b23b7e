"""The DFMQ-MC network: encoders, quality-driven weight predictor, residual text fusion, heads."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import DFMQConfig


@dataclass
class Encoded:
    text: Tensor  # (B, W) pooled text representation
    audio: Tensor  # (B, W) zero where the sample has no audio
    video: Tensor  # (B, W) zero where the sample has no video
    presence: Tensor  # (B, 2) float: audio present, video present
    sentence: Tensor | None  # (B, W) the frozen semantic encoder's unit-norm transcript embedding


@dataclass
class ForwardOutput:
    logits: Tensor  # (B, C) fused classifier
    weights: Tensor  # (B, 2) audio, video fusion weights
    fused: Tensor  # (B, W) fused representation
    text_logits: Tensor
    audio_logits: Tensor
    video_logits: Tensor
    encoded: Encoded
    embedding: Tensor  # (B, W) unit-norm utterance embedding in the semantic space (zeros without one)


# Multi-head attention on packed (B, S, W) queries, (B, L, W) keys and values and a (B, L) bool mask
# of the keys that count; heads and dropout probability last. One signature for the encoder layers
# and the anchors, so that the ONNX export can swap in a form that exports to plain ops.
Attention = Callable[[Tensor, Tensor, Tensor, Tensor, int, float], Tensor]


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, heads: int, dropout_p: float = 0.0) -> Tensor:
    def split(t: Tensor) -> Tensor:
        return t.unflatten(-1, (heads, t.shape[-1] // heads)).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        split(q), split(k), split(v), attn_mask=keep[:, None, None, :], dropout_p=dropout_p
    )
    return out.transpose(1, 2).flatten(2)


class EncoderLayer(nn.Module):
    """Pre-norm self-attention block written with shape-free reshapes.

    nn.TransformerEncoderLayer is not used because its ONNX export bakes the export batch size
    into a reshape, so the exported engine fails on any other batch size.
    """

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.ff = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * width, width)
        )
        self.dropout = nn.Dropout(dropout)
        self.attention: Attention = sdpa_attention

    def forward(self, x: Tensor, attend: Tensor) -> Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, -1)
        drop = self.dropout.p if self.training else 0.0
        x = x + self.dropout(self.proj(self.attention(q, k, v, attend, self.heads, drop)))
        return x + self.dropout(self.ff(self.norm2(x)))


class SequenceEncoder(nn.Module):
    """A padded feature sequence -> one vector of the text width (masked mean of a transformer)."""

    def __init__(self, in_dim: int, width: int, out_width: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, width))
        self.layers = nn.ModuleList(EncoderLayer(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_width)

    def hidden(self, seq: Tensor, mask: Tensor) -> Tensor:
        # An all-padding row makes attention softmax NaN, so position 0 always stays visible;
        # what such a row yields is zeroed by the callers through the real mask.
        attend = mask | first_position(seq)
        hidden = self.inp(seq)
        for layer in self.layers:
            hidden = layer(hidden, attend)
        return self.norm(hidden)

    def forward(self, seq: Tensor, mask: Tensor) -> Tensor:
        hidden = self.hidden(seq, mask)
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.out(pooled) * mask.any(dim=1, keepdim=True).to(hidden.dtype)

    def tokens(self, seq: Tensor, mask: Tensor) -> Tensor:
        """Per-position states at the output width (B, T, W), for the anchor fusion."""
        return self.out(self.hidden(seq, mask))


def first_position(seq: Tensor) -> Tensor:
    return torch.arange(seq.shape[1], device=seq.device).unsqueeze(0) == 0


class AnchorEmbedding(nn.Module):
    """A-ME, in our reading of the A-MESS abstract (only the abstract is public): `count` learnable
    anchors, shared by the three modalities, read each modality's token sequence by cross-attention
    (anchors as queries); the modality's embedding is the mean of its anchor read-outs. Shared
    anchors put text, audio and video into one anchored space before the quality-weighted sum."""

    def __init__(self, width: int, count: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.anchors = nn.Parameter(torch.randn(count, width) * 0.02)
        self.norm = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.attention: Attention = sdpa_attention

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        q = self.q(self.anchors).expand(tokens.shape[0], -1, -1)  # (B, K, W)
        k, v = self.kv(self.norm(tokens)).chunk(2, -1)
        drop = self.dropout.p if self.training else 0.0
        read = self.attention(q, k, v, mask | first_position(tokens), self.heads, drop)  # (B, K, W)
        pooled = self.out(read.mean(dim=1))
        return pooled * mask.any(dim=1, keepdim=True).to(pooled.dtype)


class WeightPredictor(nn.Module):
    """Quality vector (3) -> hidden -> 2 logits; softmax over (audio, video) happens at fusion."""

    def __init__(self, hidden: int, init: str = "random", prior_slope: float = 4.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, hidden)
        self.fc2 = nn.Linear(hidden, 2)
        if init == "monotone":
            # Start from w = softmax(slope * q_a, slope * q_v): a cleaner channel weighs more.
            # Meta-training then moves it wherever the per-sample tasks say; the other hidden
            # units start silent (zero output weights) and join in through their gradients.
            with torch.no_grad():
                self.fc1.weight[:2].zero_()
                self.fc1.bias[:2].zero_()
                self.fc1.weight[0, 1] = 1.0
                self.fc1.weight[1, 2] = 1.0
                self.fc2.weight.zero_()
                self.fc2.bias.zero_()
                self.fc2.weight[0, 0] = prior_slope
                self.fc2.weight[1, 1] = prior_slope

    def forward(self, quality: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(quality)))


class GatedWeightPredictor(nn.Module):
    """Weights a dead channel cannot win: one gate per channel, each a function of that channel's
    own quality only, non-decreasing in it, and zero below the quality floor.

    Per channel m (audio: q_a, video: q_v): `h = relu(softplus(W1_m) q_m + b1_m)`,
    `w_m = sigmoid(softplus(W2_m) . h + b2_m) * ramp(q_m)`, with
    `ramp(q) = clamp((q - floor) / floor_ramp, 0, 1)`. Non-negative slopes make each weight
    non-decreasing in its own quality; no other channel's score enters, so a black camera can never
    gain weight because the room got loud (the paper's softmax over (audio, video) does exactly
    that: its two weights sum to 1). Both weights may fall together; text, the fusion's backbone,
    always keeps weight 1. Same size as the paper's predictor: two layers of `hidden` units.
    """

    def __init__(self, hidden: int, floor: float, floor_ramp: float, init: str = "random", prior_slope: float = 6.0):
        super().__init__()
        self.floor, self.floor_ramp = floor, floor_ramp
        self.w1 = nn.Parameter(torch.randn(2, hidden) * 0.5)
        self.b1 = nn.Parameter(torch.zeros(2, hidden))
        self.w2 = nn.Parameter(torch.randn(2, hidden) * 0.5)
        self.b2 = nn.Parameter(torch.zeros(2))
        if init == "monotone":
            # Start from w_m = sigmoid(slope (q_m - 0.5)) above the floor: one unit carries q_m
            # through, the others start silent (softplus(-12) ~ 6e-6) and join in by their gradients.
            with torch.no_grad():
                self.w1.fill_(-12.0)
                self.w1[:, 0] = math.log(math.e - 1.0)  # softplus^-1(1)
                self.b1.zero_()
                self.w2.fill_(-12.0)
                self.w2[:, 0] = prior_slope + math.log(-math.expm1(-prior_slope))  # softplus^-1(slope)
                self.b2.fill_(-prior_slope / 2)

    def parameter_list(self) -> list[Tensor]:
        return [self.w1, self.b1, self.w2, self.b2]

    def forward(self, quality: Tensor, presence: Tensor) -> Tensor:
        params = [p.unsqueeze(0) for p in self.parameter_list()]
        return gated_weights(params, quality.unsqueeze(0), presence.unsqueeze(0), self.floor, self.floor_ramp)[0]


def gated_weights(params: list[Tensor], quality: Tensor, presence: Tensor, floor: float, floor_ramp: float) -> Tensor:
    """`GatedWeightPredictor` with one parameter set per task: params (T, 2, H) ... (T, 2),
    quality (T, K, 3), presence (T, K, 2) -> weights (T, K, 2). Shared with the FOMAML loss."""
    w1, b1, w2, b2 = params
    own = quality[..., 1:3].unsqueeze(-1)  # (T, K, 2, 1): each channel sees its own score only
    hidden = F.relu(F.softplus(w1).unsqueeze(1) * own + b1.unsqueeze(1))  # (T, K, 2, H)
    logits = (F.softplus(w2).unsqueeze(1) * hidden).sum(-1) + b2.unsqueeze(1)  # (T, K, 2)
    ramp = ((quality[..., 1:3] - floor) / floor_ramp).clamp(0.0, 1.0)
    return torch.sigmoid(logits) * ramp * presence


def masked_weights(logits: Tensor, presence: Tensor) -> Tensor:
    """Softmax over the present modalities; a missing modality gets weight 0 (both missing: 0, 0)."""
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    expo = torch.exp(shifted) * presence
    return expo / expo.sum(dim=-1, keepdim=True).clamp(min=1e-12)


class DFMQMC(nn.Module):
    def __init__(self, config: DFMQConfig, text_encoder: nn.Module) -> None:
        super().__init__()
        self.config = config
        width = config.text_width
        inner = config.nonverbal_width or width
        self.text_encoder = text_encoder
        # The semantic space's encoder: a frozen copy of the text encoder as it is now (pretrained,
        # before any fine-tuning), so descriptions written for a new intent set land where the
        # pretrained sentence encoder puts them. Fine-tuning the text encoder on 20 intents was
        # measured to wreck that: kiosk intents zero-shot 85 % -> 54 % (README, "Intent sets").
        self.semantic_encoder = copy.deepcopy(text_encoder) if config.semantic_space else None
        self.audio_encoder = SequenceEncoder(
            config.audio_dim, inner, width, config.nonverbal_layers, config.nonverbal_heads, config.dropout
        )
        self.video_encoder = SequenceEncoder(
            config.video_dim, inner, width, config.nonverbal_layers, config.nonverbal_heads, config.dropout
        )
        self.anchor_embedding = (
            AnchorEmbedding(width, config.anchor_count, config.nonverbal_heads, config.dropout)
            if config.fusion == "anchor"
            else None
        )
        self.predictor: WeightPredictor | GatedWeightPredictor
        if config.fusion_weights == "paper":
            self.predictor = WeightPredictor(config.predictor_hidden, config.predictor_init)
        else:
            self.predictor = GatedWeightPredictor(
                config.predictor_hidden, config.quality_floor, config.quality_floor_ramp, config.predictor_init
            )
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(width, config.num_labels)
        self.text_head = nn.Linear(width, config.num_labels)
        self.audio_head = nn.Linear(width, config.num_labels)
        self.video_head = nn.Linear(width, config.num_labels)
        self.contrast_proj = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 128))
        # What audio, video and the fine-tuned text add to the transcript's semantic embedding;
        # zero at the start, so an untrained model's utterance embedding is the sentence embedding.
        self.semantic_proj = nn.Linear(width, width) if config.semantic_space else None
        if self.semantic_proj is not None:
            nn.init.zeros_(self.semantic_proj.weight)
            nn.init.zeros_(self.semantic_proj.bias)

    def use_attention(self, attention: Attention) -> None:
        """Compute the audio, video and anchor attention with `attention` (the ONNX export's form)."""
        for module in self.modules():
            if isinstance(module, EncoderLayer | AnchorEmbedding):
                module.attention = attention

    def frozen_parameter_names(self) -> set[str]:
        """Text-encoder parameters that training leaves at their pretrained values (the whole
        semantic encoder among them)."""
        n = self.config.frozen_text_layers
        prefixes = ["semantic_encoder."]
        if n:
            prefixes += ["text_encoder.embeddings.", "text_encoder.pooler."]
            prefixes += [f"text_encoder.encoder.layer.{i}." for i in range(n)]
        return {name for name, _ in self.named_parameters() if any(name.startswith(p) for p in prefixes)}

    def freeze_text_layers(self) -> None:
        frozen = self.frozen_parameter_names()
        for name, param in self.named_parameters():
            if name in frozen:
                param.requires_grad_(False)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if self.anchor_embedding is None:
            return mean_pool(self.text_encoder, input_ids, attention_mask)
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # The pooled sentence stays the backbone; the anchors add their reading of the tokens.
        return masked_mean(hidden, attention_mask) + self.anchor_embedding(hidden, attention_mask.bool())

    def embed_audio(self, audio: Tensor, audio_mask: Tensor) -> Tensor:
        if self.anchor_embedding is None:
            return self.audio_encoder(audio, audio_mask)
        return self.anchor_embedding(self.audio_encoder.tokens(audio, audio_mask), audio_mask)

    def embed_video(self, video: Tensor, video_mask: Tensor) -> Tensor:
        if self.anchor_embedding is None:
            return self.video_encoder(video, video_mask)
        return self.anchor_embedding(self.video_encoder.tokens(video, video_mask), video_mask)

    def embed_sentences(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Unit-norm sentence embeddings of the frozen semantic encoder (anchors and transcripts)."""
        if self.semantic_encoder is None:
            raise RuntimeError("this model has no semantic space (semantic_space is false)")
        with torch.no_grad():
            return F.normalize(mean_pool(self.semantic_encoder, input_ids, attention_mask), dim=-1)

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        audio: Tensor,
        audio_mask: Tensor,
        video: Tensor,
        video_mask: Tensor,
    ) -> Encoded:
        presence = torch.stack([audio_mask.any(dim=1), video_mask.any(dim=1)], dim=1).to(audio.dtype)
        return Encoded(
            text=self.encode_text(input_ids, attention_mask),
            audio=self.embed_audio(audio, audio_mask),
            video=self.embed_video(video, video_mask),
            presence=presence,
            sentence=self.embed_sentences(input_ids, attention_mask) if self.semantic_encoder is not None else None,
        )

    def fusion_weights(self, quality: Tensor, presence: Tensor) -> Tensor:
        if self.config.fusion == "equal":
            return 0.5 * presence
        if not self.config.use_quality:
            # The ablation: the predictor still runs, but on a constant instead of the scores.
            quality = torch.ones_like(quality)
        if isinstance(self.predictor, GatedWeightPredictor):
            return self.predictor(quality, presence)
        return masked_weights(self.predictor(quality), presence)

    def fuse(self, encoded: Encoded, weights: Tensor) -> Tensor:
        return encoded.text + weights[:, :1] * encoded.audio + weights[:, 1:] * encoded.video

    def utterance_embedding(self, encoded: Encoded, fused: Tensor) -> Tensor:
        """normalize(sentence + semantic_proj(fused)): where the utterance lies among the anchors.
        Gradients reach `fused` (and through it every encoder); the sentence part is frozen."""
        if encoded.sentence is None or self.semantic_proj is None:
            return torch.zeros_like(fused)
        return F.normalize(encoded.sentence + self.semantic_proj(fused), dim=-1)

    def forward_all(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        audio: Tensor,
        audio_mask: Tensor,
        video: Tensor,
        video_mask: Tensor,
        quality: Tensor,
    ) -> ForwardOutput:
        encoded = self.encode(input_ids, attention_mask, audio, audio_mask, video, video_mask)
        weights = self.fusion_weights(quality, encoded.presence)
        fused = self.fuse(encoded, weights)
        return ForwardOutput(
            logits=self.classifier(self.dropout(fused)),
            weights=weights,
            fused=fused,
            text_logits=self.text_head(self.dropout(encoded.text)),
            audio_logits=self.audio_head(self.dropout(encoded.audio)),
            video_logits=self.video_head(self.dropout(encoded.video)),
            encoded=encoded,
            embedding=self.utterance_embedding(encoded, fused),
        )

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        audio: Tensor,
        audio_mask: Tensor,
        video: Tensor,
        video_mask: Tensor,
        quality: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Inference signature shared by every engine: logits, calibrated probabilities (the
        checkpoint's temperature), fusion weights, utterance embedding, transcript embedding."""
        out = self.forward_all(input_ids, attention_mask, audio, audio_mask, video, video_mask, quality)
        probs = torch.softmax(out.logits / self.config.temperature, dim=-1)
        sentence = out.encoded.sentence if out.encoded.sentence is not None else torch.zeros_like(out.embedding)
        return out.logits, probs, out.weights, out.embedding, sentence


def mean_pool(encoder: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    return masked_mean(encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, attention_mask)


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def build_text_encoder(folder: Path, pretrained: bool) -> tuple[nn.Module, int]:
    """A BERT-family encoder from a local folder; `pretrained=False` rebuilds only its shape."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a bar per load on stderr, above our one-line errors
    if pretrained:
        encoder = AutoModel.from_pretrained(str(folder), local_files_only=True)
    else:
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(folder), local_files_only=True))
    return encoder, int(encoder.config.hidden_size)
