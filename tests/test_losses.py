"""The meta loss really trains the weight predictor; the consistency loss never moves text."""

from __future__ import annotations

import copy

import pytest
import torch

from model.config import DFMQConfig, ReferenceStats
from model.dfmq import DFMQMC, ForwardOutput
from model.losses import consistency_loss, fomaml_loss, supervised_contrastive
from model.quality import audio_stats, batch_references, quality_vector, video_stats
from tests.conftest import tiny_text_encoder


def _inputs(batch: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    audio_mask = torch.ones(batch, 12, dtype=torch.bool)
    video_mask = torch.ones(batch, 5, dtype=torch.bool)
    video_mask[0] = False  # one sample without camera
    return {
        "input_ids": torch.randint(1, 100, (batch, 7), generator=g),
        "attention_mask": torch.ones(batch, 7, dtype=torch.long),
        "audio": torch.randn(batch, 12, 16, generator=g),
        "audio_mask": audio_mask,
        "video": torch.randn(batch, 5, 8, generator=g),
        "video_mask": video_mask,
    }


def _quality(model: DFMQMC, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ReferenceStats]:
    a, v = audio_stats(x["audio"], x["audio_mask"]), video_stats(x["video"], x["video_mask"])
    ref = batch_references(a, v)
    return quality_vector(x["attention_mask"], model.config.text_max_len, a, v, ref), ref


def _meta_loss(
    model: DFMQMC,
    out: ForwardOutput,
    x: dict[str, torch.Tensor],
    labels: torch.Tensor,
    ref: ReferenceStats,
    generator: torch.Generator,
    **extra: torch.Tensor,
) -> torch.Tensor:
    return fomaml_loss(
        model,
        out,
        x["audio"],
        x["audio_mask"],
        x["video"],
        x["video_mask"],
        x["attention_mask"],
        labels,
        ref,
        generator,
        **extra,
    )


@pytest.fixture(params=["gated", "paper"])
def model(tiny_model_config: DFMQConfig, request: pytest.FixtureRequest) -> DFMQMC:
    torch.manual_seed(0)
    tiny_model_config.fusion_weights = request.param
    return DFMQMC(tiny_model_config, tiny_text_encoder(32))


def test_meta_loss_changes_only_the_weight_predictor(model: DFMQMC) -> None:
    x = _inputs()
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    q, ref = _quality(model, x)
    out = model.forward_all(quality=q, **x)
    loss = _meta_loss(model, out, x, labels, ref, torch.Generator().manual_seed(1))
    assert loss.item() > 0
    loss.backward()
    predictor_grads = [p.grad for p in model.predictor.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in predictor_grads)
    others = [p for n, p in model.named_parameters() if not n.startswith("predictor.")]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in others)

    before = copy.deepcopy(model.predictor.state_dict())
    torch.optim.SGD(model.predictor.parameters(), lr=0.1).step()
    after = model.predictor.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_meta_training_learns_to_trust_the_informative_modality(model: DFMQMC) -> None:
    """Audio carries the label and video is noise: meta steps alone must shift weight to audio."""
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(8) % 4
    x = _inputs(batch=8, seed=3)
    x["video_mask"][:] = True
    with torch.no_grad():
        # Make the classifier read the label off the audio representation only.
        h_audio = model.audio_encoder(x["audio"], x["audio_mask"])
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        for label in range(4):
            model.classifier.weight[label] = h_audio[labels == label].mean(0) * 5
    optimizer = torch.optim.Adam(model.predictor.parameters(), lr=0.05)
    q, ref = _quality(model, x)

    def audio_lead() -> float:
        # Gated weights need not sum to 1: what must grow is audio's lead over video.
        w = model.fusion_weights(q, torch.ones(8, 2))
        return (w[:, 0] - w[:, 1]).mean().item()

    start = audio_lead()
    for _ in range(30):
        out = model.forward_all(quality=q, **x)
        loss = _meta_loss(model, out, x, labels, ref, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = audio_lead()
    assert end > start + 0.2, (start, end)


def test_consistency_loss_sends_no_gradient_into_the_text_branch(model: DFMQMC) -> None:
    x = _inputs()
    q, _ = _quality(model, x)
    out = model.forward_all(quality=q, **x)
    loss = consistency_loss(out)
    assert loss.item() > 0
    loss.backward()
    text_params = list(model.text_encoder.parameters()) + list(model.text_head.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in text_params)
    assert model.audio_head.weight.grad is not None and model.audio_head.weight.grad.abs().sum() > 0
    assert model.video_head.weight.grad is not None and model.video_head.weight.grad.abs().sum() > 0


def test_missing_modalities_get_no_weight_and_equal_fusion_is_half(tiny_model_config: DFMQConfig) -> None:
    tiny_model_config.fusion_weights = "paper"
    model = DFMQMC(tiny_model_config, tiny_text_encoder(32))
    x = _inputs()
    x["audio_mask"][1] = False
    x["video_mask"][1] = False
    q, _ = _quality(model, x)
    _, probs, weights, _, _ = model(quality=q, **x)
    assert weights[0].tolist() == pytest.approx([1.0, 0.0])  # no camera: all weight on audio
    assert weights[1].tolist() == [0.0, 0.0]
    assert torch.allclose(weights[2:].sum(-1), torch.ones(4))
    assert torch.allclose(probs.sum(-1), torch.ones(6))
    equal_cfg = copy.deepcopy(tiny_model_config)
    equal_cfg.fusion = "equal"
    equal = DFMQMC(equal_cfg, tiny_text_encoder(32))
    _, _, w_equal, _, _ = equal(quality=q, **x)
    assert w_equal[2:].flatten().tolist() == [0.5] * 8
    assert w_equal[0].tolist() == [0.5, 0.0]


def test_no_quality_ablation_ignores_the_scores(tiny_model_config: DFMQConfig) -> None:
    tiny_model_config.use_quality = False
    m = DFMQMC(tiny_model_config, tiny_text_encoder(32))
    presence = torch.ones(2, 2)
    w = m.fusion_weights(torch.tensor([[1.0, 0.9, 0.1], [0.2, 0.1, 0.9]]), presence)
    assert torch.allclose(w[0], w[1])


def test_supervised_contrastive_prefers_clustered_classes() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    assert supervised_contrastive(clustered, labels, 0.1) < supervised_contrastive(mixed, labels, 0.1)


@pytest.mark.parametrize("init", ["random", "monotone"])
def test_gated_weights_keep_their_promises_over_a_quality_grid(tiny_model_config: DFMQConfig, init: str) -> None:
    """Below the floor a channel gets <= 0.02; a weight never falls as its own quality rises and
    never moves when another channel's quality (text included) changes."""
    tiny_model_config.predictor_init = init
    torch.manual_seed(1)
    model = DFMQMC(tiny_model_config, tiny_text_encoder(32))
    assert_gated_weight_properties(model)


def assert_gated_weight_properties(model: DFMQMC, steps: int = 21) -> None:
    """The three properties of the gated weights, checked on `model`'s predictor over a grid of
    (q_text, q_audio, q_video); shared with the test of the shipped checkpoint."""
    grid = torch.linspace(0, 1, steps)
    qt, qa, qv = torch.meshgrid(grid, grid, grid, indexing="ij")
    quality = torch.stack([qt, qa, qv], -1).reshape(-1, 3)
    with torch.no_grad():
        w = model.fusion_weights(quality, torch.ones(len(quality), 2)).reshape(steps, steps, steps, 2)
    floor = model.config.quality_floor
    below = grid < floor
    assert w[:, below, :, 0].max() <= 0.02 and w[:, :, below, 1].max() <= 0.02
    assert (w[:, 1:, :, 0] - w[:, :-1, :, 0]).min() >= -1e-6  # audio weight non-decreasing in q_a
    assert (w[:, :, 1:, 1] - w[:, :, :-1, 1]).min() >= -1e-6  # video weight non-decreasing in q_v
    # Independent of the other scores: the audio weight is the same whatever q_t and q_v are.
    assert (w[..., 0] - w[:1, :, :1, 0]).abs().max() <= 1e-6
    assert (w[..., 1] - w[:1, :1, :, 1]).abs().max() <= 1e-6
    with torch.no_grad():
        absent = model.fusion_weights(torch.ones(2, 3), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert absent[0, 0] == 0 and absent[1, 1] == 0  # a missing channel gets nothing


def test_the_paper_weights_let_a_dead_camera_gain_when_audio_degrades(tiny_model_config: DFMQConfig) -> None:
    """Why the gated weights exist: with the softmax over (audio, video), lowering q_a raises w_v
    even when q_v is 0."""
    tiny_model_config.fusion_weights = "paper"
    tiny_model_config.predictor_init = "monotone"
    model = DFMQMC(tiny_model_config, tiny_text_encoder(32))
    with torch.no_grad():
        w = model.fusion_weights(torch.tensor([[0.5, 0.9, 0.0], [0.5, 0.1, 0.0]]), torch.ones(2, 2))
    assert w[1, 1] > w[0, 1] + 0.2 and w[1, 1] > 0.4


def test_meta_copies_score_text_with_the_recogniser_scores(model: DFMQMC, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each FOMAML copy of a sample gets that sample's recogniser scores: its q_text is the one
    the main forward (and the live pipeline) used, not token coverage alone."""
    import model.losses as losses
    from model.quality import sample_text_quality

    x = _inputs(4)
    labels = torch.tensor([0, 1, 2, 3])
    nan = float("nan")
    scores = torch.tensor(
        [[-0.2, 0.01, 1.3], [nan, nan, nan], [-0.7, 0.25, 2.05], [-1.4, 0.9, 2.6]], dtype=torch.float64
    )
    q, ref = _quality(model, x)
    out = model.forward_all(quality=q, **x)
    seen: list[torch.Tensor] = []
    real = losses.quality_vector

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(result)
        return result

    monkeypatch.setattr(losses, "quality_vector", spy)
    loss = _meta_loss(model, out, x, labels, ref, torch.Generator().manual_seed(1), text_scores=scores)
    assert loss.item() > 0
    copies = model.config.maml_support_size + model.config.maml_query_size
    expected = sample_text_quality(x["attention_mask"], model.config.text_max_len, scores).repeat_interleave(copies)
    assert torch.equal(seen[0][:, 0], expected)
    assert expected[copies * 3] == 0.0 and expected[copies] == 7 / model.config.text_max_len  # failing; no scores


def test_darkened_meta_copies_lose_their_face_video_quality() -> None:
    """On data with the face statistics, a darkened copy scores as a black camera does."""
    import numpy as np

    from model.features import FeatureOptions, score_video_table
    from model.losses import perturb_raw_stats

    # motion, contrast, face_ratio, sharpness, brightness, clipped of a lit talking face
    lit = torch.tensor([[0.01, 0.2, 1.0, 0.6, 0.45, 0.0]] * 2, dtype=torch.float64)
    audio = torch.tensor([[-1.5, 0.5, 20.0]] * 2, dtype=torch.float64)
    _, video = perturb_raw_stats(audio, lit, torch.tensor([0, 0]), torch.tensor([0, 4]))
    q = score_video_table(video.numpy(), 0.3, 0.16, FeatureOptions(video_quality="face"))
    assert q[0] > 0.6 and q[1] == 0.0
    assert video.shape == (2, 6) and np.isclose(float(video[1, 5]), 1.0)


def test_the_shipped_models_weights_keep_their_promises() -> None:
    """The properties on the predictor of the checkpoint users run (`--ckpt default`)."""
    from model.checkpoint import load_checkpoint, resolve_ckpt

    shipped, _ = load_checkpoint(resolve_ckpt("default"))
    assert shipped.config.fusion_weights == "gated"
    assert_gated_weight_properties(shipped.eval())


def test_anchor_fusion_runs_exports_shapes_and_ignores_missing_channels(tiny_model_config: DFMQConfig) -> None:
    """`fusion: anchor` (A-ME): the same outputs as the default fusion; a channel without frames
    contributes nothing, and gradients reach the anchors."""
    cfg = copy.deepcopy(tiny_model_config)
    cfg.fusion = "anchor"
    model = DFMQMC(cfg, tiny_text_encoder(32))
    x = _inputs()  # sample 0 has no video
    q, ref = _quality(model, x)
    out = model.forward_all(quality=q, **x)
    assert out.logits.shape == (6, len(cfg.labels)) and out.weights.shape == (6, 2)
    assert torch.all(out.encoded.video[0] == 0) and out.encoded.video[1:].abs().sum() > 0
    assert out.weights[0, 1] == 0
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    meta = _meta_loss(model, out, x, labels, ref, torch.Generator().manual_seed(1))
    (out.logits.sum() + meta).backward()
    anchors = model.anchor_embedding.anchors  # type: ignore[union-attr]
    assert anchors.grad is not None and anchors.grad.abs().sum() > 0
