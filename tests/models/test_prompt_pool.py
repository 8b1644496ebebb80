"""The shared prompt-pool component: per-row prompts/prefixes, key selection, CODA components."""

import pytest
import torch
import torch.nn.functional as F

from avalanche_mm.models.attach.prompt_pool import (
    CodaPromptPool,
    PromptPool,
    VisionPromptInjector,
    _attention_module,
    frozen_image_query,
    prefixed_attention,
)


def test_injector_prepend_is_per_row_and_inert_when_cleared(backbone, images):
    base = {n: p.detach().clone() for n, p in backbone.named_base_parameters()}
    ref = backbone.encode_image(images)
    inj = VisionPromptInjector(backbone=backbone).attach(backbone, name="inj")
    assert torch.allclose(backbone.encode_image(images), ref, atol=1e-6)  # nothing set: frozen model
    d = backbone.width("vision")
    prompts = torch.randn(4, 3, d, requires_grad=True)
    with inj.using(prepend=prompts):
        out = backbone.encode_image(images)
    assert out.shape == ref.shape and not torch.allclose(out, ref, atol=1e-4)
    with inj.using(prepend=prompts[2:3]):  # row 2 alone gives the same as in the batch
        alone = backbone.encode_image(images[2:3])
    assert torch.allclose(alone, out[2:3], atol=1e-5)
    out.sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    assert torch.allclose(backbone.encode_image(images), ref, atol=1e-6)  # cleared after the context
    assert all(torch.equal(base[n], p) for n, p in backbone.named_base_parameters())
    with pytest.raises(ValueError, match="set for 2 images"):
        with inj.using(prepend=prompts[:2].detach()):
            backbone.encode_image(images)


def test_prefix_equals_attention_over_prefixed_keys_and_values(backbone):
    """A prefix that is the projection of tokens z gives the attention of x over [z; x]."""
    torch.manual_seed(0)
    attn = _attention_module(backbone.blocks("vision")[0])
    d = backbone.width("vision")
    x, z = torch.randn(2, 5, d), torch.randn(2, 3, d)
    if isinstance(attn, torch.nn.MultiheadAttention):
        w, b = attn.in_proj_weight, attn.in_proj_bias
        pk, pv = F.linear(z, w[d : 2 * d], b[d : 2 * d]), F.linear(z, w[2 * d :], b[2 * d :])
        kv = torch.cat([z, x], dim=1)
        if attn.batch_first:
            ref = attn(x, kv, kv, need_weights=False)[0]
        else:
            ref = attn(x.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), need_weights=False)[0].transpose(0, 1)
    else:
        pk, pv = attn.k_proj(z), attn.v_proj(z)
        q = attn.q_proj(x).view(2, 5, attn.num_heads, -1).transpose(1, 2)
        kv = torch.cat([z, x], dim=1)
        k = attn.k_proj(kv).view(2, 8, attn.num_heads, -1).transpose(1, 2)
        v = attn.v_proj(kv).view(2, 8, attn.num_heads, -1).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1) @ v
        ref = attn.out_proj(a.transpose(1, 2).reshape(2, 5, d))
    with torch.no_grad():
        assert torch.allclose(prefixed_attention(attn, x, pk, pv), ref, atol=1e-5)


def test_injector_prefix_changes_only_prefixed_layers(backbone, images):
    ref = backbone.encode_image(images)
    inj = VisionPromptInjector(backbone=backbone, prefix_layers=[1]).attach(backbone, name="inj")
    d = backbone.width("vision")
    pk = torch.zeros(4, 2, d, requires_grad=True)
    pv = torch.randn(4, 2, d, requires_grad=True)
    with inj.using(prefix={1: (pk, pv)}):
        out = backbone.encode_image(images)
    assert not torch.allclose(out, ref, atol=1e-4)
    out.pow(2).sum().backward()
    assert pv.grad.abs().sum() > 0 and pk.grad is not None
    with pytest.raises(ValueError, match="hooks layers"):
        inj.set(prefix={0: (pk, pv)})


def test_pool_selects_keys_by_query_similarity_and_pulls_only_selected():
    torch.manual_seed(0)
    pool = PromptPool(size=5, length=2, width=4, key_dim=3)
    with torch.no_grad():
        for i, k in enumerate(torch.eye(5, 3) * 3.0 + torch.tensor([[0, 0, 0]] * 3 + [[1, 1, 0], [0, 1, 1]]).float()):
            pool.keys[i].copy_(k)
    query = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.2, 1.0]])
    sim = pool.similarity(query)
    ref = F.normalize(query, dim=-1) @ F.normalize(pool.key_matrix(), dim=-1).t()
    assert torch.allclose(sim, ref)
    idx = pool.select(query, 2)
    assert idx.tolist() == sim.topk(2, dim=1).indices.tolist()
    assert idx[0, 0] == 0 and idx[1, 0] == 2  # the nearest key first
    loss = pool.matching_loss(query, idx)
    hand = sum((1 - F.cosine_similarity(query[b], pool.keys[int(i)], dim=0)) for b in range(2) for i in idx[b]) / 2
    assert torch.allclose(loss, hand)
    loss.backward()
    chosen = set(idx.flatten().tolist())
    for i in range(5):
        g = pool.keys[i].grad
        assert (g is not None and g.abs().sum() > 0) == (i in chosen)
    assert pool.gather(idx).shape == (2, 2, 1, 2, 4)
    with pytest.raises(ValueError, match="top_k"):
        pool.select(query, 6)
    pool.set_trainable([1])
    assert [p.requires_grad for p in pool.keys] == [False, True, False, False, False]


def test_coda_weights_prompts_and_orthogonality_match_formulas():
    torch.manual_seed(0)
    pool = CodaPromptPool(n_tasks=2, size=4, length=2, width=3, key_dim=8, layers=1)
    q = torch.randn(5, 8)
    w = pool.weights(q)  # task 0: chunk 0 only
    K, A = pool.K[0][0], pool.A[0][0]
    hand = torch.stack([F.cosine_similarity(q * A[m], K[m].expand_as(q), dim=1) for m in range(2)], dim=1)
    assert w.shape == (1, 5, 2) and torch.allclose(w[0], hand, atol=1e-6)
    p = pool.prompts(q)
    assert torch.allclose(p[0], torch.einsum("bk,krd->brd", hand, pool.P[0][0]), atol=1e-6)
    # the new chunk starts orthogonal to the old one, and only it trains
    pool.start_task(1)
    assert [pool.K[t].requires_grad for t in range(2)] == [False, True]
    k_all = torch.cat([pool.K[0][0], pool.K[1][0]])
    gram = F.normalize(k_all, dim=-1) @ F.normalize(k_all, dim=-1).t()
    assert torch.allclose(gram, torch.eye(4), atol=1e-5)
    X = torch.cat([pool.A[0][0], pool.A[1][0]])
    pen = pool.orthogonality_penalty()
    hand_pen = sum(((Y @ Y.t() - torch.eye(4)) ** 2).mean() for Y in (
        k_all, X, torch.cat([pool.P[0][0], pool.P[1][0]]).reshape(4, -1)))
    assert torch.allclose(pen, hand_pen, atol=1e-6)
    pen.backward()
    assert pool.K[0].grad is None and pool.K[1].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiple"):
        CodaPromptPool(n_tasks=3, size=4, length=2, width=3, key_dim=8, layers=1)


def test_frozen_query_ignores_attachments(backbone, images):
    ref = backbone.encode_image(images)
    inj = VisionPromptInjector(backbone=backbone).attach(backbone, name="inj")
    inj.set(prepend=torch.randn(4, 2, backbone.width("vision")))
    assert torch.allclose(frozen_image_query(backbone, images), ref, atol=1e-6)
    inj.clear()
