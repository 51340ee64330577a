"""The CocoER joint model: outputs, batching, the workspace inside the model, training,
the EmotionModel contract, losses, registry and checkpoints. Tiny sizes, toy backbones."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from emotion.checkpoint import load_checkpoint, save_checkpoint
from emotion.models.loading import load_model_from_checkpoint
from emotion.losses import CocoERCriterion
from emotion.models.joint.cocoer import CocoER
from emotion.models.joint.vocabulary import collect_embeddings, pretrain_projection, projection_loss
from emotion.models.protocol import EmotionModel
from emotion.models.registry import build_model, list_models, register_model
from emotion.models.settings import yaml_config
from emotion.weights import sha256_of

pytestmark = pytest.mark.unit

LABELS = ["Happiness", "Sadness", "Anger", "Fear", "Surprise", "Peace"]
SIZE = 32


def tiny_cfg(**overrides) -> dict:
    cfg = dict(labels=LABELS, multi_label=True, backbone="toy", vocab_backbone="toy", pretrained=False,
               input_size=SIZE, d_h=32, d=32, n_blocks=2, n_heads=4, d_ff=64, dropout=0.0, eta=0.1)
    cfg.update(overrides)
    return yaml_config("cocoer", cfg)


def tiny_model(seed: int = 0, **overrides) -> CocoER:
    torch.manual_seed(seed)
    return CocoER(tiny_cfg(**overrides))


def images(b: int, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, 3, SIZE, SIZE, generator=gen) for m in ("head", "body", "context")}


def state_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, p in module.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_forward_outputs_have_documented_shapes():
    model = tiny_model().eval()
    out = model(**images(5))
    k = len(LABELS)
    assert out["logits"].shape == (5, k)
    assert set(out["level_logits"]) == set(out["refined_level_logits"]) == {"head", "body", "context"}
    assert all(v.shape == (5, k) for v in out["level_logits"].values())
    assert out["vocab_logits"].shape == out["pseudo_label"].shape == (5, k)
    assert set(out["pseudo_label"].unique().tolist()) <= {0.0, 1.0}
    assert out["dropped_levels"].shape == (5, 2) and out["dropped_levels"].dtype == torch.long
    assert out["lambdas"].shape == (5, 2, 3)
    assert out["grad_distance"].shape == (5,)
    # The eliminated levels are the two with the largest pseudo-label loss, worst first.
    order = torch.argsort(out["level_losses"], dim=1, descending=True)[:, :2]
    assert torch.equal(out["dropped_levels"], order)


def test_batch_of_n_equals_n_batches_of_one():
    model = tiny_model().eval()
    x = images(6)
    with torch.no_grad():
        whole = model(**x)
        for i in range(6):
            one = model(**{m: t[i : i + 1] for m, t in x.items()})
            torch.testing.assert_close(one["logits"][0], whole["logits"][i], atol=1e-5, rtol=1e-5)
            for m in ("head", "body", "context"):
                torch.testing.assert_close(one["refined_level_logits"][m][0], whole["refined_level_logits"][m][i],
                                           atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(one["lambdas"][0], whole["lambdas"][i], atol=1e-5, rtol=1e-5)
            assert torch.equal(one["dropped_levels"][0], whole["dropped_levels"][i])
            assert torch.equal(one["pseudo_label"][0], whole["pseudo_label"][i])


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
def test_workspace_leaves_parameters_bit_identical(train_mode):
    model = tiny_model().train(train_mode)
    before = state_digest(model)
    out = model(**images(4))
    assert (out["grad_distance"] > 0).all()  # the refinement did move θ̃ ...
    assert state_digest(model) == before  # ... but never the module's own θ


@pytest.mark.parametrize("multi_label", [True, False], ids=["multi", "single"])
def test_refinement_moves_every_level_toward_the_pseudo_label(multi_label):
    model = tiny_model(multi_label=multi_label, eta=1e-3).eval()
    out = model(**images(16))
    assert (out["refined_losses"] < out["level_losses"]).all()


def test_workspace_off_skips_refinement():
    on = tiny_model().eval()
    off = tiny_model(workspace=False).eval()
    off.load_state_dict(on.state_dict())
    x = images(3)
    out_on, out_off = on(**x), off(**x)
    assert (out_off["dropped_levels"] == -1).all() and (out_off["grad_distance"] == 0).all()
    for m in ("head", "body", "context"):
        assert torch.equal(out_off["refined_level_logits"][m], out_off["level_logits"][m])
        torch.testing.assert_close(out_off["level_logits"][m], out_on["level_logits"][m])
    assert not torch.allclose(out_on["logits"], out_off["logits"])


def _train(model: CocoER, x: dict, targets: torch.Tensor, steps: int) -> list[float]:
    criterion = CocoERCriterion(model.multi_label)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    history = []
    model.train()
    for _ in range(steps):
        losses = criterion(model(**x), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(float(losses["loss"].detach()))
    return history


def _average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    aps = []
    for j in range(labels.shape[1]):
        if labels[:, j].sum() == 0:
            continue
        order = np.argsort(-scores[:, j])
        hits = labels[order, j]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum() / hits.sum()))
    return float(np.mean(aps))


def test_tiny_model_overfits_multi_label():
    model = tiny_model(seed=3)
    x = images(8, seed=4)
    gen = torch.Generator().manual_seed(5)
    targets = (torch.rand(8, len(LABELS), generator=gen) > 0.6).float()
    targets[targets.sum(1) == 0, 0] = 1.0
    frozen_before = state_digest(model.vocabulary.image_encoder) + state_digest(model.vocabulary.projection)
    history = _train(model, x, targets, steps=120)
    assert history[-1] < 0.25 * history[0]
    model.eval()
    with torch.no_grad():
        scores = torch.sigmoid(model(**x)["logits"]).numpy()
    assert _average_precision(scores, targets.numpy()) > 0.99
    # The vocabulary branch's encoder and ω stay frozen in the full model.
    assert state_digest(model.vocabulary.image_encoder) + state_digest(model.vocabulary.projection) == frozen_before


def test_tiny_model_overfits_single_label():
    model = tiny_model(seed=6, multi_label=False)
    x = images(8, seed=7)
    targets = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    history = _train(model, x, targets, steps=120)
    assert history[-1] < 0.25 * history[0]
    model.eval()
    with torch.no_grad():
        predicted = model(**x)["logits"].argmax(1)
    assert torch.equal(predicted, targets)


def test_criterion_terms_and_weighted_total():
    model = tiny_model()
    out = model(**images(4))
    targets = torch.zeros(4, len(LABELS))
    targets[:, 1] = 1
    criterion = CocoERCriterion(True, {"loss_grad_distance": 0.5})
    losses = criterion(out, targets)
    terms = {"loss_fused", "loss_head", "loss_body", "loss_context", "loss_vocab", "loss_grad_distance"}
    assert set(losses) == terms | {"loss"}
    assert criterion.weight_dict["loss_head"] == 0.2 and criterion.weight_dict["loss_grad_distance"] == 0.5
    total = sum(criterion.weight_dict[t] * losses[t] for t in terms)
    torch.testing.assert_close(losses["loss"], total)
    torch.testing.assert_close(losses["loss_grad_distance"], out["grad_distance"].mean())
    # The gradient-distance term trains the level heads (it is differentiable).
    model.zero_grad()
    losses["loss_grad_distance"].backward()
    assert model.heads["head"].hidden[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown loss terms"):
        CocoERCriterion(True, {"loss_typo": 1.0})


def test_pretrain_projection_pulls_images_to_their_label_prototypes():
    model = tiny_model()
    vocab = model.vocabulary
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, SIZE, SIZE, generator=gen)
    labels = torch.arange(48) % len(LABELS)
    embeddings, multi_hot = collect_embeddings(vocab, [(x[i : i + 16], labels[i : i + 16]) for i in range(0, 48, 16)])
    torch.testing.assert_close(embeddings, vocab.embed_images(x))
    assert torch.equal(multi_hot.argmax(1), labels)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(48), atol=1e-5)
    before = float(projection_loss(vocab.projection(embeddings), torch.eye(len(LABELS))[labels], vocab.prototypes))
    history = pretrain_projection(vocab, embeddings, labels, steps=200, lr=5e-2, batch_size=48,
                                  weight_decay=0.0, seed=0)
    after = float(projection_loss(vocab.projection(embeddings), torch.eye(len(LABELS))[labels], vocab.prototypes))
    assert after < 0.5 * before and history[-1] < history[0]
    assert not vocab.projection.weight.requires_grad  # frozen again for the main training
    # Nearest prototype of each projected image is its own label for most images.
    nearest = (vocab.projection(embeddings) @ vocab.prototypes.T).argmax(1)
    assert (nearest == labels).float().mean() > 0.8


def test_predict_satisfies_the_emotion_model_protocol():
    model = tiny_model()
    assert isinstance(model, EmotionModel)
    assert model.name == "cocoer" and model.input_levels == ("head", "body", "context")
    rng = np.random.default_rng(0)
    crops = {m: rng.integers(0, 256, size=(3, SIZE, SIZE, 3), dtype=np.uint8) for m in model.input_levels}
    out = model.predict(crops)
    k = len(LABELS)
    assert out["scores"].shape == (3, k) and out["scores"].dtype == np.float32
    assert ((out["scores"] >= 0) & (out["scores"] <= 1)).all()
    assert out["level_scores"].shape == (3, 4, k) and out["level_names"] == ["head", "body", "context", "vocabulary"]
    assert out["dropped_levels"].dtype == np.int8 and out["dropped_levels"].shape == (3, 2)
    assert out["refined"].dtype == bool and out["refined"].all()
    assert model.training  # predict restores the mode it found
    # predict == forward on the same normalised pixels.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = {m: (torch.from_numpy(c).permute(0, 3, 1, 2).float() / 255 - mean) / std for m, c in crops.items()}
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(**x)["logits"]).numpy()
    np.testing.assert_allclose(out["scores"], expected, atol=1e-6)
    assert model.predict({m: c[:0] for m, c in crops.items()})["scores"].shape == (0, k)


def test_predict_rejects_bad_crops_clearly():
    model = tiny_model()
    good = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    with pytest.raises(KeyError, match="missing \\['context'\\]"):
        model.predict({"head": good, "body": good})
    with pytest.raises(ValueError, match="crop 'body' must be uint8"):
        model.predict({"head": good, "body": good.astype(np.float32), "context": good})
    with pytest.raises(ValueError, match="must be uint8 \\[B, 32, 32, 3\\]"):
        model.predict({"head": good, "body": good, "context": np.zeros((2, 16, 16, 3), np.uint8)})


def test_vocab_level_chooses_the_window_of_the_pseudo_label():
    x = images(4)
    on_context, on_body = tiny_model(vocab_level="context").eval(), tiny_model(vocab_level="body").eval()
    out_context, out_body = on_context(**x), on_body(**x)
    # Same weights: each branch equals the vocabulary module applied to its own window.
    assert torch.allclose(out_context["vocab_logits"], on_context.vocabulary(x["context"])["vocab_logits"])
    assert torch.allclose(out_body["vocab_logits"], on_body.vocabulary(x["body"])["vocab_logits"])
    assert not torch.allclose(out_context["vocab_logits"], out_body["vocab_logits"])
    # Changing only the context image leaves a body-level pseudo label unchanged.
    other = dict(x, context=torch.zeros_like(x["context"]))
    assert torch.equal(on_body(**other)["vocab_logits"], out_body["vocab_logits"])


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="model.vocab_level='scene': Input should be 'head', 'body' or 'context'"):
        CocoER(tiny_cfg(vocab_level="scene"))
    with pytest.raises(ValueError, match="cocoer needs `labels`"):
        CocoER(tiny_cfg(labels=None))
    with pytest.raises(ValueError, match="model.d_model: unknown key"):
        CocoER(tiny_cfg(d_model=3))
    with pytest.raises(KeyError, match="unknown backbone 'resnet18'"):
        CocoER(tiny_cfg(backbone="resnet18"))


def test_registry_builds_cocoer_and_guards_names():
    assert "cocoer" in list_models()
    model = build_model("cocoer", tiny_cfg())
    assert isinstance(model, CocoER)
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        build_model("nope", {})
    with pytest.raises(ValueError, match="already registered"):
        register_model("cocoer")(lambda cfg: None)


def test_checkpoint_round_trip(tmp_path):
    model = tiny_model(seed=2).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = tmp_path / "ckpt" / "cocoer.pt"
    save_checkpoint(path, model_name="cocoer", model_cfg=model.config, state_dict=model.state_dict(),
                    labels=model.labels, epoch=3, optimizer_state=optimizer.state_dict(),
                    metrics={"mAP": np.float32(0.5)}, extra={"note": "tiny"})
    raw = torch.load(path, weights_only=True)  # the safe unpickler accepts the file
    assert raw["model_name"] == "cocoer" and isinstance(raw["model_cfg_json"], str)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["metrics"] == {"mAP": 0.5} and ckpt["extra"] == {"note": "tiny"}
    assert ckpt["model_cfg"]["labels"] == LABELS and ckpt["sha256"] == sha256_of(path)
    loaded = load_model_from_checkpoint(path)
    assert loaded.checkpoint_hash == sha256_of(path) and not loaded.training
    torch.testing.assert_close(loaded.vocabulary.prototypes, model.vocabulary.prototypes)
    x = images(3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x)["logits"], model(**x)["logits"])


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt: not a readable checkpoint"):
        load_checkpoint(bad)


def test_checkpoint_round_trip_through_s3(tmp_path):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    from emotion.storage import S3Config

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3Config(endpoint_url=f"http://{host}:{port}", region="us-east-1",
                      access_key_id="testing", secret_access_key="testing")
        boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="models")
        model = tiny_model(seed=4).eval()
        uri = "s3://models/runs/cocoer.pt"
        save_checkpoint(uri, model_name="cocoer", model_cfg=model.config, state_dict=model.state_dict(),
                        labels=model.labels, s3=s3)
        loaded = load_model_from_checkpoint(uri, s3=s3)
        assert len(loaded.checkpoint_hash) == 64
        x = images(2)
        with torch.no_grad():
            torch.testing.assert_close(loaded(**x)["logits"], model(**x)["logits"])
    finally:
        server.stop()


def test_default_model_uses_real_weights_and_text_prototypes(sample_photos):
    """The shipped default: mobilenet_v2 ImageNet backbones, MiniLM class prototypes, 224 px."""
    from PIL import Image

    from emotion.labels import EMOTIC_CATEGORIES
    from emotion.weights import WeightsNotFoundError

    torch.manual_seed(0)
    try:
        model = CocoER(yaml_config("cocoer", {"labels": list(EMOTIC_CATEGORIES)}))
    except WeightsNotFoundError as exc:
        pytest.skip(str(exc))
    assert model.input_size == 224 and model.config["eta"] == 0.1
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"backbones", "patch_embed", "encoder", "heads", "vocabulary", "fusion"}
    assert not any(p.requires_grad for p in model.vocabulary.image_encoder.parameters())
    assert not model.vocabulary.projection.weight.requires_grad
    protos = model.vocabulary.prototypes
    torch.testing.assert_close(protos.norm(dim=1), torch.ones(26), atol=1e-5, rtol=0)
    happiness, pleasure, anger = (EMOTIC_CATEGORIES.index(c) for c in ("Happiness", "Pleasure", "Anger"))
    assert protos[happiness] @ protos[pleasure] > protos[happiness] @ protos[anger]
    photo = np.array(Image.open(sample_photos["obama"]).convert("RGB").resize((224, 224)))[None]
    out = model.predict({m: photo for m in model.input_levels})
    assert out["scores"].shape == (1, 26) and np.isfinite(out["scores"]).all()
