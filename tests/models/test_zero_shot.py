import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from avalanche_mm.data import MultimodalBatch
from avalanche_mm.models import (
    ContrastiveRetrievalLoss,
    MultiTaskZeroShotClassifier,
    RetrievalHead,
    ZeroShotClassifier,
)

NAMES = ["cat", "dog", "red circle", "blue square", "tree"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


def _exp(classes, task=0):
    return SimpleNamespace(classes_in_this_experience=list(classes), task_labels=[task],
                           current_experience=0)


def _count_encode_text(backbone):
    calls = {"n": 0}
    original = backbone.encode_text

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    backbone.encode_text = counting
    return calls


def test_logits_match_hand_computation(backbone, images):
    clf = ZeroShotClassifier(backbone=backbone, class_names=NAMES, templates=TEMPLATES).eval()
    with torch.no_grad():
        logits = clf(images)
        prompts = [t.format(n) for n in NAMES for t in TEMPLATES]
        txt = backbone.encode_text(backbone.tokenize(prompts)).view(5, 2, -1)
        w = F.normalize(txt.mean(1), dim=-1)
        expected = backbone.logit_scale.exp() * backbone.encode_image(images) @ w.t()
    assert logits.shape == (4, 5)
    assert torch.allclose(logits, expected, atol=1e-4)


def test_text_encoder_calls_scale_with_classes_not_batches(backbone, images):
    calls = _count_encode_text(backbone)
    try:
        clf = ZeroShotClassifier(
            backbone=backbone, class_names=NAMES, templates=TEMPLATES, text_batch_size=4
        ).eval()
        with torch.no_grad():
            for _ in range(12):  # twelve evaluation batches
                clf(images)
        per_pass = math.ceil(len(NAMES) * len(TEMPLATES) / 4)
        assert calls["n"] == per_pass == clf.embedding_cache.num_text_encoder_calls
        # an image-tower update does not invalidate the class embeddings
        with torch.no_grad():
            backbone.tower_parameters("vision")[0].mul_(1.1)
            clf(images)
        assert calls["n"] == per_pass
        # a text-tower update does, exactly once
        with torch.no_grad():
            backbone.tower_parameters("text")[-1].mul_(1.1)
            for _ in range(3):
                clf(images)
        assert calls["n"] == 2 * per_pass
        # more classes -> more calls per pass
        clf.set_class_names(NAMES + ["car", "boat", "bird"])
        with torch.no_grad():
            clf(images)
        assert calls["n"] == 2 * per_pass + math.ceil(8 * 2 / 4)
    finally:
        del backbone.encode_text


def test_trainable_text_tower_gets_gradient_and_fresh_embeddings(backbone, images):
    clf = ZeroShotClassifier(backbone=backbone, class_names=NAMES, templates=TEMPLATES).train()
    loss = F.cross_entropy(clf(images), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in backbone.tower_parameters("text")[-2:])
    # frozen text tower: cached embeddings, no text gradient
    backbone.zero_grad()
    backbone.freeze("text")
    calls_before = clf.embedding_cache.num_text_encoder_calls
    for _ in range(3):
        clf(images).sum().backward()
    assert clf.embedding_cache.num_text_encoder_calls == calls_before + 1
    assert all(p.grad is None for p in backbone.tower_parameters("text"))
    assert backbone.tower_parameters("vision")[0].grad is not None


def test_mask_unseen_grows_with_training_experiences(backbone, images):
    clf = ZeroShotClassifier(backbone=backbone, class_names=NAMES, mask_unseen=True).eval()
    with torch.no_grad():
        assert (clf(images) > -1e3).all()  # nothing seen yet: pure zero-shot
        clf.train()
        clf.adaptation(_exp([0, 1]))
        clf.eval()
        clf.adaptation(_exp([2, 3]))  # evaluation experiences do not count as seen
        out = clf(images)
    assert clf.active_classes == [0, 1]
    assert (out[:, 2:] == -1e4).all() and (out[:, :2] > -1e3).all()
    clf.set_active_classes([4])
    with torch.no_grad():
        assert (clf(images)[:, :4] == -1e4).all()
    with pytest.raises(ValueError, match="outside"):
        clf.set_active_classes([9])
    clf.train()
    with pytest.raises(ValueError, match="class names"):
        clf.adaptation(_exp([7]))


def test_batch_input_feature_key_and_missing_images(backbone, images):
    clf = ZeroShotClassifier(backbone=backbone, class_names=NAMES).eval()
    present = torch.tensor([True, False, True, True])
    batch = MultimodalBatch({"image": images}, present={"image": present})
    with torch.no_grad():
        plain = clf(images)
        out = clf(batch)
        feats = backbone.encode_image(images)
        cached = clf(MultimodalBatch({"image_features": feats}))
    assert torch.allclose(out[present], plain[present], atol=1e-5)
    assert (out[1] == 0).all()
    assert torch.allclose(cached, plain, atol=1e-4)
    with pytest.raises(KeyError, match="image_key"):
        clf(MultimodalBatch({"audio": images}))


def test_multitask_per_dataset_names_mtil(backbone, images):
    names = {0: ["cat", "dog"], 1: ["digit zero", "digit one", "digit two"]}
    clf = MultiTaskZeroShotClassifier(
        backbone=backbone, class_names=names,
        templates={0: ["a photo of a {}."], 1: ["a photo of the number: {}."]},
    ).eval()
    with torch.no_grad():
        t1 = clf(images, 1)
        assert t1.shape == (4, 3)
        mixed = clf(images, torch.tensor([0, 1, 0, 1]))
        assert mixed.shape == (4, 3)
        assert torch.allclose(mixed[1], t1[1]) and torch.allclose(mixed[3], t1[3])
        assert (mixed[[0, 2], 2] == -1e4).all()
        assert torch.allclose(mixed[0, :2], clf(images, 0)[0])
        every = clf(images, None)
        assert set(every) == {0, 1} and every[0].shape == (4, 2)
    with pytest.raises(KeyError, match="add_task"):
        clf(images, 5)
    clf.add_task(5, ["car", "plane"], templates=["a photo of a {}, a vehicle."])
    with torch.no_grad():
        assert clf(images, 5).shape == (4, 2)


def test_multitask_global_labels_learn_task_classes(backbone, images):
    clf = MultiTaskZeroShotClassifier(backbone=backbone, class_names=NAMES)
    clf.train()
    clf.adaptation(_exp([0, 1], task=0))
    clf.eval()
    clf.adaptation(_exp([3, 4], task=1))  # task sets are learned from eval experiences too
    with torch.no_grad():
        out = clf(images, torch.tensor([0, 0, 1, 1]))
    assert out.shape == (4, 5)
    assert (out[:2, 2:] == -1e4).all() and (out[2:, :3] == -1e4).all()
    assert (out[:2, :2] > -1e3).all() and (out[2:, 3:] > -1e3).all()


def test_retrieval_head_and_contrastive_loss(backbone, images):
    head = RetrievalHead(backbone=backbone)
    ids = backbone.tokenize(["a cat", "a dog", "a tree", "a car"])
    sim = head(MultimodalBatch({"image": images, "text": ids}))
    assert sim.shape == (4, 4)
    expected = backbone.logit_scale.exp() * backbone.encode_image(images) @ backbone.encode_text(ids).t()
    assert torch.allclose(sim, expected, atol=1e-4)
    loss = ContrastiveRetrievalLoss()(sim, torch.tensor([10, 11, 12, 13]))
    manual = 0.5 * (F.cross_entropy(sim, torch.arange(4)) + F.cross_entropy(sim.t(), torch.arange(4)))
    assert torch.allclose(loss, manual)
    loss.backward()
    assert backbone.tower_parameters("text")[0].grad is not None
    with pytest.raises(ValueError, match="square"):
        ContrastiveRetrievalLoss()(sim[:, :3])
