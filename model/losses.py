"""Training objectives: classification, supervised contrastive, text-anchored consistency, FOMAML."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import ReferenceStats
from model.dfmq import DFMQMC, ForwardOutput, GatedWeightPredictor, gated_weights, masked_weights
from model.features import FeatureOptions
from model.quality import audio_stats, quality_vector, raw_quality_vector, video_stats


def supervised_contrastive(features: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Khosla et al. SupCon on L2-normalised features; anchors without a positive are skipped."""
    z = F.normalize(features, dim=-1)
    sim = z @ z.T / temperature
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~self_mask
    counts = positives.sum(dim=1)
    has_pos = counts > 0
    if not bool(has_pos.any()):
        return features.sum() * 0.0
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)
    return -(pos_log_prob[has_pos] / counts[has_pos]).mean()


def consistency_loss(out: ForwardOutput) -> Tensor:
    """KL(p_t || p_a) + KL(p_t || p_v) with p_t detached: text pulls, it is never pulled."""
    p_text = torch.softmax(out.text_logits, dim=-1).detach()
    total = out.logits.sum() * 0.0
    for logits, present in (
        (out.audio_logits, out.encoded.presence[:, 0]),
        (out.video_logits, out.encoded.presence[:, 1]),
    ):
        keep = present > 0
        if bool(keep.any()):
            kl = F.kl_div(torch.log_softmax(logits[keep], dim=-1), p_text[keep], reduction="batchmean")
            total = total + kl
    return total


def perturb(seq: Tensor, mask: Tensor, kind: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Degrade non-verbal sequences per sample; `kind` (N,) picks the perturbation of each row.

    0 clean, 1 Gaussian noise, 2 temporal blur (frozen-looking), 3 dropped frames, 4 silence/darkness.
    Same label, different quality: the raw material of the per-sample meta tasks.
    """
    scale = seq.std(dim=(1, 2), keepdim=True).clamp(min=1e-3)
    noise = torch.randn(seq.shape, generator=generator, device=seq.device) * scale * 1.5
    blurred = seq.mean(dim=1, keepdim=True).expand_as(seq) + 0.02 * (seq - seq.mean(dim=1, keepdim=True))
    keep = torch.rand(mask.shape, generator=generator, device=seq.device) > 0.6
    k = kind.view(-1, 1, 1)
    out = torch.where(k == 1, seq + noise, seq)
    out = torch.where(k == 2, blurred, out)
    out = torch.where(k == 4, seq * 0.02, out)
    new_mask = torch.where(kind.view(-1, 1) == 3, mask & keep, mask)
    return out, new_mask


def perturb_raw_stats(raw_audio: Tensor, raw_video: Tensor, kind_a: Tensor, kind_v: Tensor) -> tuple[Tensor, Tensor]:
    """What each `perturb` kind does to raw-signal statistics, for data that carries them.

    Raw samples are not kept for training, so the statistics of a perturbed copy are moved the
    way the real degradation moves them (measured in tests/test_features.py): noise raises energy
    and entropy and lowers the SNR; blur and freezing stop motion; silence and darkness take
    energy, SNR, contrast and motion away.
    """
    energy, entropy, snr = raw_audio.unbind(-1)
    motion, contrast, *face = raw_video.unbind(-1)
    energy = torch.where(kind_a == 1, energy + 0.5, torch.where(kind_a == 4, energy - 3.0, energy))
    entropy = torch.where(kind_a == 1, entropy + 0.6 * (1 - entropy), entropy)
    entropy = torch.where(kind_a == 2, entropy + 0.3 * (1 - entropy), torch.where(kind_a == 4, 1.0, entropy))
    snr = torch.where(kind_a == 1, snr.clamp(max=6.0), torch.where(kind_a == 3, snr - 6.0, snr))
    snr = torch.where(kind_a == 4, torch.zeros_like(snr), snr)
    motion = torch.where(kind_v == 1, motion * 3.0, torch.where(kind_v == 2, motion * 0.02, motion))
    motion = torch.where(kind_v == 3, motion * 1.5, torch.where(kind_v == 4, motion * 0.05, motion))
    contrast = torch.where(kind_v == 1, contrast * 1.1, torch.where(kind_v == 4, contrast * 0.05, contrast))
    video = [motion, contrast]
    if face:
        # The face statistics ('face' video quality; measured on the GRID clips by
        # tools/video_quality_table.py): darkness loses the face, the light and half the sharpness
        # and clips every pixel; pixel noise doubles the Laplacian's sharpness.
        face_ratio, sharpness, brightness, clipped = face
        dark = kind_v == 4
        face_ratio = torch.where(dark, torch.zeros_like(face_ratio), face_ratio)
        sharpness = torch.where(dark, sharpness * 0.5, torch.where(kind_v == 1, sharpness * 2.0, sharpness))
        brightness = torch.where(dark, brightness * 0.02, brightness)
        clipped = torch.where(dark, torch.ones_like(clipped), clipped)
        video += [face_ratio, sharpness, brightness, clipped]
    return torch.stack([energy, entropy, snr], -1), torch.stack(video, -1)


def _batched_predictor(params: list[Tensor], quality: Tensor) -> Tensor:
    """The weight predictor with one parameter set per task: quality (B, K, 3) -> logits (B, K, 2)."""
    w1, b1, w2, b2 = params
    hidden = F.relu(torch.einsum("bkq,bhq->bkh", quality, w1) + b1.unsqueeze(1))
    return torch.einsum("bkh,boh->bko", hidden, w2) + b2.unsqueeze(1)


def fomaml_loss(
    model: DFMQMC,
    out: ForwardOutput,
    audio: Tensor,
    audio_mask: Tensor,
    video: Tensor,
    video_mask: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    reference: ReferenceStats,
    generator: torch.Generator | None = None,
    raw_audio: Tensor | None = None,
    raw_video: Tensor | None = None,
    text_scores: Tensor | None = None,
) -> Tensor:
    """First-order MAML for the weight predictor, each training sample its own task.

    Support and query sets are perturbed copies of the sample's audio/video (same label, other
    qualities). A per-task copy of the predictor takes `maml_inner_steps` SGD steps on the support
    loss; the query loss is then evaluated at the adapted weights written as
    `init + (adapted - init).detach()`, so its gradient reaches the shared initialisation as the
    gradient at the adapted point, with no second derivatives (first order).
    """
    cfg = model.config
    presence = out.encoded.presence
    if cfg.fusion == "equal" or not bool(presence.any()):
        return out.logits.sum() * 0.0
    batch = labels.shape[0]
    n_support, n_query = cfg.maml_support_size, cfg.maml_query_size
    copies = n_support + n_query
    device = audio.device

    # Perturbed copies: encoders are not trained by the meta loss, so no graph is kept for them.
    with torch.no_grad():
        kinds_a = torch.randint(0, 5, (batch * copies,), generator=generator, device=device)
        # Video copies use only the degradations the video score can see (blur/freeze, dropped
        # frames, darkness): pixel noise raises motion and contrast, so it would teach the
        # predictor that a higher score means a worse channel.
        video_kinds = torch.tensor([0, 2, 3, 4], device=device)
        kinds_v = video_kinds[torch.randint(0, 4, (batch * copies,), generator=generator, device=device)]
        rep_a, rep_am = audio.repeat_interleave(copies, 0), audio_mask.repeat_interleave(copies, 0)
        rep_v, rep_vm = video.repeat_interleave(copies, 0), video_mask.repeat_interleave(copies, 0)
        pa, pam = perturb(rep_a, rep_am, kinds_a, generator)
        pv, pvm = perturb(rep_v, rep_vm, kinds_v, generator)
        h_audio = model.embed_audio(pa, pam).view(batch, copies, -1)
        h_video = model.embed_video(pv, pvm).view(batch, copies, -1)
        # Recogniser scores describe the transcript, which the perturbations leave alone: repeated as is.
        rep_scores = text_scores.repeat_interleave(copies, 0) if text_scores is not None else None
        if raw_audio is not None and raw_video is not None and cfg.feature_options is not None:
            ra, rv = perturb_raw_stats(
                raw_audio.repeat_interleave(copies, 0), raw_video.repeat_interleave(copies, 0), kinds_a, kinds_v
            )
            q = raw_quality_vector(
                attention_mask.repeat_interleave(copies, 0),
                cfg.text_max_len,
                ra,
                rv,
                reference,
                FeatureOptions(**cfg.feature_options),
                text_scores=rep_scores,
            ).view(batch, copies, 3)
        else:
            q = quality_vector(
                attention_mask.repeat_interleave(copies, 0),
                cfg.text_max_len,
                audio_stats(pa, pam),
                video_stats(pv, pvm),
                reference,
                text_scores=rep_scores,
            ).view(batch, copies, 3)
        if not cfg.use_quality:
            q = torch.ones_like(q)
        copy_presence = presence.unsqueeze(1).expand(batch, copies, 2)
    h_text = out.encoded.text.detach().unsqueeze(1)
    cls_w, cls_b = model.classifier.weight.detach(), model.classifier.bias.detach()
    task_labels = labels.unsqueeze(1).expand(batch, copies)

    predictor = model.predictor

    def task_loss(params: list[Tensor], part: slice) -> Tensor:
        if isinstance(predictor, GatedWeightPredictor):
            weights = gated_weights(params, q[:, part], copy_presence[:, part], predictor.floor, predictor.floor_ramp)
        else:
            weights = masked_weights(_batched_predictor(params, q[:, part]), copy_presence[:, part])
        fused = h_text + weights[..., :1] * h_audio[:, part] + weights[..., 1:] * h_video[:, part]
        logits = F.linear(fused, cls_w, cls_b)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), task_labels[:, part].reshape(-1), reduction="sum")

    if isinstance(predictor, GatedWeightPredictor):
        init = predictor.parameter_list()
    else:
        init = [predictor.fc1.weight, predictor.fc1.bias, predictor.fc2.weight, predictor.fc2.bias]
    fast = [p.detach().unsqueeze(0).repeat(batch, *([1] * p.dim())) for p in init]
    support = slice(0, n_support)
    for _ in range(cfg.maml_inner_steps):
        fast = [f.requires_grad_(True) for f in fast]
        # Each task's loss depends only on its own parameter copy, so one backward of the sum
        # yields every task's own gradient.
        grads = torch.autograd.grad(task_loss(fast, support) / n_support, fast)
        fast = [(f - cfg.maml_inner_lr * g).detach() for f, g in zip(fast, grads)]
    adapted = [p.unsqueeze(0) + (f - p.unsqueeze(0)).detach() for p, f in zip(init, fast)]
    return task_loss(adapted, slice(n_support, copies)) / (batch * n_query)
