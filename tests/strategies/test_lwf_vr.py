"""LwF-VR: CLIP LwF against a random virtual vocabulary (ZSCL's released virtual_vocab)."""

import copy
from types import SimpleNamespace

import torch
from avalanche.training.plugins import EvaluationPlugin

from avalanche_mm.strategies import LwFVR, LwFVRPlugin
from avalanche_mm.strategies.finetune import find_backbone
from avalanche_mm.strategies.lwf_vr import virtual_vocabulary


def test_virtual_vocabulary_layout(setup):
    _, model = setup
    bb = find_backbone(model)
    ids = virtual_vocabulary(bb, n_sentences=50, length=10, seed=3)
    assert ids.shape == (50, bb.context_length)
    assert (ids[:, 0] == bb.sot_token_id).all() and (ids[:, 11] == bb.eot_token_id).all()
    assert (ids[:, 12:] == bb.pad_token_id).all()
    assert int(ids[:, 1:11].max()) < bb.text_token_embedding.num_embeddings
    assert torch.equal(ids, virtual_vocabulary(bb, n_sentences=50, length=10, seed=3))


def test_lwf_vr_distils_against_the_random_sentences(setup):
    bundle, model = setup
    exp = bundle.scenario.train_stream[1]
    m = copy.deepcopy(model)
    plug = LwFVRPlugin(n_sentences=30, length=5)
    strat = SimpleNamespace(model=m, device=torch.device("cpu"), experience=exp, train_mb_size=8)
    plug.before_training_exp(strat)
    assert plug._teacher_text.shape[0] == 30
    teacher = copy.deepcopy(find_backbone(m))
    bb = find_backbone(m)
    with torch.no_grad():
        for p in bb.tower_parameters("vision"):
            p.add_(0.05 * torch.randn_like(p))
    images = plug.next_reference_images(strat)
    loss = plug.penalty(strat, images)
    with torch.no_grad():
        text = teacher.encode_text(virtual_vocabulary(teacher, n_sentences=30, length=5, seed=0))
        t = bb.logit_scale_value() * teacher.encode_image(images) @ text.t()
    s = bb.logit_scale_value() * bb.encode_image(images) @ text.t()

    def kd(a, b):
        return torch.nn.functional.cross_entropy(b / 2, torch.softmax(a / 2, 1)) * 4

    assert torch.allclose(loss, kd(t, s) + kd(t.t(), s.t()), rtol=1e-5)
    # as a strategy
    m2 = copy.deepcopy(model)
    st = LwFVR(model=m2, optimizer=torch.optim.AdamW([p for p in m2.parameters() if p.requires_grad], lr=1e-3),
               n_sentences=20, iterations=2, train_mb_size=8, evaluator=EvaluationPlugin())
    st.train(exp)
    assert st.lwf_plugin.last_loss is not None
