"""Cross-modal alignment and representation-drift math on embedding matrices.

Inputs are ``[N, D]`` embedding matrices (torch tensors or array-likes). Unless stated
otherwise, rows are L2-normalised here, so scaling an embedding does not change any result.
Pairs are one-to-one (row ``i`` of the image matrix matches row ``i`` of the text matrix) unless
``text_to_image`` maps each text row to the index of its image (several captions per image).
All computations run in float64 on the input's device.
"""

import contextlib
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor


def _as_embeddings(x, *, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                f"{name} must be an [N, D] embedding matrix (tensor or array); got "
                f"{type(x).__name__}: {exc}"
            ) from exc
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty [N, D] embedding matrix; got shape {tuple(x.shape)}"
        )
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def l2_normalize(x, *, name: str = "embeddings") -> Tensor:
    """Row-wise L2 normalisation in float64. Zero rows raise an error.

    :param x: ``[N, D]`` embeddings.
    :param name: the argument name used in error messages.
    """
    x = _as_embeddings(x, name=name)
    norms = x.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        bad = torch.nonzero(norms.view(-1) == 0).view(-1)[:5].tolist()
        raise ValueError(f"{name} has all-zero rows (e.g. rows {bad}); they have no direction")
    return x / norms


def _check_pair(a: Tensor, b: Tensor, names=("image_emb", "text_emb")) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} must share the embedding width; got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )


def _text_to_image(text_to_image, n_images: int, n_texts: int, device) -> Tensor:
    if text_to_image is None:
        if n_images != n_texts:
            raise ValueError(
                f"without text_to_image the pairs are one-to-one, so image and text embeddings "
                f"need the same number of rows; got {n_images} images and {n_texts} texts. Pass "
                f"text_to_image (the image index of each text) for several captions per image."
            )
        return torch.arange(n_texts, device=device)
    idx = torch.as_tensor(text_to_image, device=device).long().reshape(-1)
    if idx.shape[0] != n_texts:
        raise ValueError(
            f"text_to_image must give one image index per text ({n_texts}); got {idx.shape[0]}"
        )
    if idx.numel() and (idx.min() < 0 or idx.max() >= n_images):
        raise ValueError(
            f"text_to_image values must be image indices in [0, {n_images - 1}]; got range "
            f"[{int(idx.min())}, {int(idx.max())}]"
        )
    counts = torch.bincount(idx, minlength=n_images)
    if (counts == 0).any():
        orphans = torch.nonzero(counts == 0).view(-1)[:5].tolist()
        raise ValueError(
            f"every image needs at least one text for image->text retrieval; images without "
            f"texts: {orphans}"
        )
    return idx


def similarity_matrix(image_emb, text_emb) -> Tensor:
    """Cosine similarity matrix ``S[i, j] = cos(image_i, text_j)``, float64 ``[N_i, N_t]``."""
    a = l2_normalize(image_emb, name="image_emb")
    b = l2_normalize(text_emb, name="text_emb")
    _check_pair(a, b)
    return a @ b.T


def retrieval_recall(
    image_emb,
    text_emb,
    *,
    ks: Sequence[int] = (1, 5, 10),
    text_to_image=None,
) -> Dict[str, float]:
    """Image->text and text->image recall@k, and their mean.

    A query is a hit at ``k`` when fewer than ``k`` wrong candidates score at least as high as
    its best correct candidate (ties count against the query: pessimistic ranking).

    :param image_emb: ``[N_i, D]`` image embeddings.
    :param text_emb: ``[N_t, D]`` text embeddings.
    :param ks: the cut-offs ``k`` (positive integers).
    :param text_to_image: optional ``[N_t]`` image index of each text.
    :return: ``{"i2t_R@k": ..., "t2i_R@k": ..., "mean_recall": ...}``, fractions in [0, 1];
        ``mean_recall`` is the mean of all the ``2 * len(ks)`` recalls.
    """
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers; got {ks}")
    sim = similarity_matrix(image_emb, text_emb)
    n_img, n_txt = sim.shape
    owner = _text_to_image(text_to_image, n_img, n_txt, sim.device)
    correct = torch.zeros_like(sim, dtype=torch.bool)
    correct[owner, torch.arange(n_txt, device=sim.device)] = True
    # image -> text: best correct text score per image
    best = sim.masked_fill(~correct, -math.inf).max(dim=1, keepdim=True).values
    i2t_rank = ((sim >= best) & ~correct).sum(dim=1)
    # text -> image: the one correct image per text
    true_score = sim[owner, torch.arange(n_txt, device=sim.device)].view(1, -1)
    t2i_rank = ((sim >= true_score) & ~correct).sum(dim=0)
    out: Dict[str, float] = {}
    for k in ks:
        out[f"i2t_R@{k}"] = float((i2t_rank < k).double().mean())
    for k in ks:
        out[f"t2i_R@{k}"] = float((t2i_rank < k).double().mean())
    out["mean_recall"] = float(sum(out.values()) / len(out))
    return out


def positive_pair_cosine(image_emb, text_emb, *, text_to_image=None) -> float:
    """Mean cosine similarity of matching (image, text) pairs."""
    a = l2_normalize(image_emb, name="image_emb")
    b = l2_normalize(text_emb, name="text_emb")
    _check_pair(a, b)
    owner = _text_to_image(text_to_image, a.shape[0], b.shape[0], a.device)
    return float((a[owner] * b).sum(dim=1).mean())


def modality_gap(emb_a, emb_b) -> float:
    """Euclidean distance between the centroids of two modalities' normalised embeddings.

    ``gap = || mean_i a_i / |a_i| - mean_j b_j / |b_j| ||_2`` (Liang et al., NeurIPS 2022).
    """
    a = l2_normalize(emb_a, name="emb_a")
    b = l2_normalize(emb_b, name="emb_b")
    _check_pair(a, b, ("emb_a", "emb_b"))
    return float((a.mean(dim=0) - b.mean(dim=0)).norm())


def alignment_loss(image_emb, text_emb, *, alpha: float = 2.0, text_to_image=None) -> float:
    """Alignment loss of Wang & Isola (2020): ``E ||f(x) - g(y)||_2^alpha`` over positive pairs.

    Lower is better (0 = every pair coincides).
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0; got {alpha}")
    a = l2_normalize(image_emb, name="image_emb")
    b = l2_normalize(text_emb, name="text_emb")
    _check_pair(a, b)
    owner = _text_to_image(text_to_image, a.shape[0], b.shape[0], a.device)
    return float((a[owner] - b).norm(dim=1).pow(alpha).mean())


def uniformity_loss(emb, *, t: float = 2.0) -> float:
    """Uniformity loss of Wang & Isola (2020): ``log E_{i != j} exp(-t ||x_i - x_j||^2)``.

    Lower (more negative) = more uniformly spread on the sphere.
    """
    if t <= 0:
        raise ValueError(f"t must be > 0; got {t}")
    x = l2_normalize(emb, name="emb")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings; got {n}")
    sq = torch.cdist(x, x).pow(2)
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    vals = -t * sq[iu[0], iu[1]]
    return float(torch.logsumexp(vals, dim=0) - math.log(vals.numel()))


def similarity_kl(sim_old, sim_new, *, logit_scale: float = 100.0) -> float:
    """Mean row-wise ``KL(softmax(s * S_old[i]) || softmax(s * S_new[i]))`` (Mod-X).

    :param sim_old: ``[N, M]`` similarities under the old model.
    :param sim_new: ``[N, M]`` similarities under the new model, same probe pairs.
    :param logit_scale: ``s``, the inverse temperature (CLIP's is 100).
    :return: the mean KL divergence in nats (0 for identical matrices).
    """
    if logit_scale <= 0:
        raise ValueError(f"logit_scale must be > 0; got {logit_scale}")
    s_old = _as_embeddings(sim_old, name="sim_old")
    s_new = _as_embeddings(sim_new, name="sim_new")
    if s_old.shape != s_new.shape:
        raise ValueError(
            f"sim_old and sim_new must have the same shape; got {tuple(s_old.shape)} and "
            f"{tuple(s_new.shape)}"
        )
    log_p = torch.log_softmax(logit_scale * s_old, dim=1)
    log_q = torch.log_softmax(logit_scale * s_new, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return float(kl.clamp_min(0).mean())


def argmax_consistency(sim_old, sim_new) -> float:
    """Fraction of rows whose argmax is the same under the old and new similarity matrices."""
    s_old = _as_embeddings(sim_old, name="sim_old")
    s_new = _as_embeddings(sim_new, name="sim_new")
    if s_old.shape != s_new.shape:
        raise ValueError(
            f"sim_old and sim_new must have the same shape; got {tuple(s_old.shape)} and "
            f"{tuple(s_new.shape)}"
        )
    return float((s_old.argmax(dim=1) == s_new.argmax(dim=1)).double().mean())


@contextlib.contextmanager
def small_linalg():
    """Run small dense decompositions (SVD, eigvals of probe-sized matrices) on one thread.

    Multi-threaded LAPACK on matrices of a few hundred rows gains nothing and, when the
    cores are shared (data-loader workers, other jobs), its threads wait on each other:
    a 20 ms SVD was measured at 640 ms. The previous thread count is restored on exit.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _common_basis(mats: Sequence[Tensor], tol: float) -> Tensor:
    stacked = torch.cat(list(mats), dim=0)
    with small_linalg():
        _, s, vh = torch.linalg.svd(stacked, full_matrices=False)
    if s.numel() == 0 or s[0] <= 0:
        raise ValueError("the embeddings are all zero; no rotation can be measured")
    rank = int((s > tol * s[0]).sum())
    return vh[:rank].T  # [D, k], orthonormal columns


def _procrustes(a: Tensor, b: Tensor, null_tol: Optional[float] = None) -> Tensor:
    # argmin_{R orthogonal} ||a R - b||_F  =  U V^T  with  a^T b = U S V^T.
    # With ``null_tol``, singular directions below ``null_tol * s_max`` are not determined by
    # the data; there R maps the left null space onto the right one by the orthogonal map
    # closest to the identity (so directions a modality never visits do not rotate), while
    # determined directions keep the exact solution.
    m = a.T @ b
    with small_linalg():
        u, sv, vh = torch.linalg.svd(m)
        if null_tol is None:
            return u @ vh
        k = int((sv > null_tol * sv[0]).sum()) if sv.numel() and sv[0] > 0 else 0
        r = u[:, :k] @ vh[:k]
        if k < m.shape[0]:
            un, vn = u[:, k:], vh[k:].T
            x, _, yh = torch.linalg.svd(un.T @ vn)
            r = r + un @ (x @ yh) @ vn.T
    return r


def procrustes_rotation(x_old, x_new, *, tol: float = 1e-6) -> Tuple[Tensor, Tensor]:
    """Orthogonal Procrustes rotation from old to new embeddings of the same samples.

    The rotation is solved inside the subspace spanned by the data (the top right-singular
    vectors of ``[x_old; x_new]`` with singular value above ``tol`` times the largest), so
    directions the probe set never visits do not produce spurious angles.

    :param x_old: ``[N, D]`` embeddings under the old model (normalised here).
    :param x_new: ``[N, D]`` embeddings of the same samples under the new model.
    :param tol: relative singular-value threshold for the data subspace.
    :return: ``(R, basis)``: ``R`` is ``[k, k]`` orthogonal, ``basis`` is ``[D, k]``; in full
        coordinates ``x_old @ basis @ R @ basis.T`` approximates ``x_new``.
    """
    a = l2_normalize(x_old, name="x_old")
    b = l2_normalize(x_new, name="x_new")
    _check_pair(a, b, ("x_old", "x_new"))
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"x_old and x_new must embed the same samples (same number of rows); got "
            f"{a.shape[0]} and {b.shape[0]}"
        )
    basis = _common_basis([a, b], tol)
    return _procrustes(a @ basis, b @ basis), basis


def rotation_angles(rotation: Tensor) -> Tensor:
    """Absolute rotation angles, in degrees, of an orthogonal matrix (one per eigenvalue).

    A rotation by ``theta`` in one plane of a ``k``-dim space gives two angles ``theta`` and
    ``k - 2`` zeros; a reflection contributes 180.
    """
    r = torch.as_tensor(rotation).to(torch.float64)
    if r.dim() != 2 or r.shape[0] != r.shape[1]:
        raise ValueError(f"rotation must be a square matrix; got shape {tuple(r.shape)}")
    with small_linalg():
        eig = torch.linalg.eigvals(r)
    return torch.rad2deg(torch.angle(eig).abs())


def intra_modal_rotation(x_old, x_new, *, tol: float = 1e-6) -> float:
    """How far one modality's representation rotated between two model versions.

    The mean absolute eigen-angle (degrees) of the orthogonal Procrustes rotation from old to new
    embeddings of a fixed probe set (see :func:`procrustes_rotation`). 0 for identical models.
    """
    rot, _ = procrustes_rotation(x_old, x_new, tol=tol)
    return float(rotation_angles(rot).mean())


def procrustes_residual(x_old, x_new, *, tol: float = 1e-6) -> float:
    """Share of the change that a rotation does not explain.

    ``||x_old R - x_new||_F^2 / ||x_new||_F^2`` on normalised embeddings; 0 when the new
    representation is an exact rotation of the old one.
    """
    rot, basis = procrustes_rotation(x_old, x_new, tol=tol)
    a = l2_normalize(x_old, name="x_old")
    b = l2_normalize(x_new, name="x_new")
    mapped = a @ basis @ rot @ basis.T + (a - a @ basis @ basis.T)
    return float((mapped - b).pow(2).sum() / b.pow(2).sum())


def inter_modal_deviation(
    image_old, image_new, text_old, text_new, *, tol: float = 1e-6
) -> float:
    """How far two modalities rotated relative to each other between two model versions.

    Both modalities' Procrustes rotations ``R_img`` and ``R_txt`` are solved in one common data
    subspace; the deviation is the mean absolute eigen-angle (degrees) of ``R_img^T R_txt``. It is
    0 when both modalities rotated identically (cross-modal geometry preserved), whatever the
    common rotation, and grows as they rotate out of sync (Mod-X's "inter-modal deviation").

    Directions of the common subspace that a modality's probe data does not visit are held
    fixed, so identical models give 0 even with fewer probe pairs than dimensions; a rotation is
    only identifiable within the span of the probe set, so use at least as many probe pairs as
    embedding dimensions when comparing models that differ.
    """
    ia = l2_normalize(image_old, name="image_old")
    ib = l2_normalize(image_new, name="image_new")
    ta = l2_normalize(text_old, name="text_old")
    tb = l2_normalize(text_new, name="text_new")
    _check_pair(ia, ta, ("image_old", "text_old"))
    _check_pair(ia, ib, ("image_old", "image_new"))
    _check_pair(ta, tb, ("text_old", "text_new"))
    if ia.shape[0] != ib.shape[0] or ta.shape[0] != tb.shape[0]:
        raise ValueError(
            "old and new embeddings must cover the same probe samples: got "
            f"{ia.shape[0]}/{ib.shape[0]} image rows and {ta.shape[0]}/{tb.shape[0]} text rows"
        )
    basis = _common_basis([ia, ib, ta, tb], tol)
    # the common subspace is usually larger than either modality's own span: directions a
    # modality does not visit stay put (identical models -> 0 even with few probe pairs)
    r_img = _procrustes(ia @ basis, ib @ basis, null_tol=1e-4)
    r_txt = _procrustes(ta @ basis, tb @ basis, null_tol=1e-4)
    return float(rotation_angles(r_img.T @ r_txt).mean())


def representation_drift(
    image_old,
    text_old,
    image_new,
    text_new,
    *,
    logit_scale: float = 100.0,
    tol: float = 1e-6,
) -> Dict[str, float]:
    """Every drift measure between two model versions on one probe set of (image, text) pairs.

    Keys: ``modx_kl_i2t`` / ``modx_kl_t2i`` (row-wise KL between old and new similarity
    matrices over image rows / text rows, :func:`similarity_kl`), ``modx_kl`` (their mean, Mod-X's
    distillation target), ``argmax_consistency_i2t`` / ``_t2i`` and their mean
    ``argmax_consistency``, ``rotation_image`` / ``rotation_text``
    (:func:`intra_modal_rotation`), ``inter_modal_deviation``.

    Identical old and new embeddings give 0 for KL, rotations and deviation, and 1 for
    consistency.
    """
    s_old = similarity_matrix(image_old, text_old)
    s_new = similarity_matrix(image_new, text_new)
    if s_old.shape != s_new.shape:
        raise ValueError(
            f"old and new probe embeddings must cover the same pairs; similarity shapes "
            f"{tuple(s_old.shape)} and {tuple(s_new.shape)} differ"
        )
    out = {
        "modx_kl_i2t": similarity_kl(s_old, s_new, logit_scale=logit_scale),
        "modx_kl_t2i": similarity_kl(s_old.T, s_new.T, logit_scale=logit_scale),
        "argmax_consistency_i2t": argmax_consistency(s_old, s_new),
        "argmax_consistency_t2i": argmax_consistency(s_old.T, s_new.T),
        "rotation_image": intra_modal_rotation(image_old, image_new, tol=tol),
        "rotation_text": intra_modal_rotation(text_old, text_new, tol=tol),
        "inter_modal_deviation": inter_modal_deviation(
            image_old, image_new, text_old, text_new, tol=tol
        ),
    }
    out["modx_kl"] = 0.5 * (out["modx_kl_i2t"] + out["modx_kl_t2i"])
    out["argmax_consistency"] = 0.5 * (
        out["argmax_consistency_i2t"] + out["argmax_consistency_t2i"]
    )
    return out


def alignment_summary(
    image_emb, text_emb, *, ks: Sequence[int] = (1, 5, 10), text_to_image=None
) -> Dict[str, float]:
    """Retrieval recalls plus the geometry of one probe set, in one dict.

    Keys: those of :func:`retrieval_recall`, plus ``positive_cosine``, ``modality_gap``,
    ``alignment``, ``uniformity_image``, ``uniformity_text``.
    """
    out = retrieval_recall(image_emb, text_emb, ks=ks, text_to_image=text_to_image)
    out["positive_cosine"] = positive_pair_cosine(
        image_emb, text_emb, text_to_image=text_to_image
    )
    out["modality_gap"] = modality_gap(image_emb, text_emb)
    out["alignment"] = alignment_loss(image_emb, text_emb, text_to_image=text_to_image)
    out["uniformity_image"] = uniformity_loss(image_emb)
    out["uniformity_text"] = uniformity_loss(text_emb)
    return out


__all__ = [
    "l2_normalize",
    "similarity_matrix",
    "retrieval_recall",
    "positive_pair_cosine",
    "modality_gap",
    "alignment_loss",
    "uniformity_loss",
    "similarity_kl",
    "argmax_consistency",
    "procrustes_rotation",
    "rotation_angles",
    "intra_modal_rotation",
    "procrustes_residual",
    "inter_modal_deviation",
    "representation_drift",
    "alignment_summary",
    "small_linalg",
]
