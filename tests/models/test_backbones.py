
import pytest
import torch
import torch.nn.functional as F

from avalanche_mm.models import (
    HFCLIPBackbone,
    OpenCLIPBackbone,
    PretrainedWeightsNotFoundError,
    build_backbone,
    list_backbones,
)

TEXTS = ["a photo of a red circle.", "a blue square", "X X X dog"]


def _clip_loss(b, images, ids):
    img = b.encode_image(images)
    txt = b.encode_text(ids)
    logits = b.logit_scale_value() * img @ txt.t()
    target = torch.arange(len(images))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def test_registry_lists_tiny_configs():
    names = list_backbones()
    assert "tiny-openclip" in names and "tiny-hfclip" in names


def test_backend_classes(backbone):
    expected = OpenCLIPBackbone if backbone.name == "tiny-openclip" else HFCLIPBackbone
    assert isinstance(backbone, expected)
    assert backbone.embed_dim == 64 and backbone.image_size == 32
    assert backbone.context_length == 32


def test_encode_shapes_and_normalisation(backbone, images):
    ids = backbone.tokenize(TEXTS)
    assert ids.shape == (3, backbone.context_length) and ids.dtype == torch.long
    fi = backbone.encode_image(images)
    ft = backbone.encode_text(ids)
    assert fi.shape == (4, 64) and ft.shape == (3, 64)
    assert torch.allclose(fi.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(ft.norm(dim=-1), torch.ones(3), atol=1e-5)
    raw = backbone.encode_image(images, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(4), atol=1e-3)
    assert torch.allclose(F.normalize(raw, dim=-1), fi, atol=1e-6)
    img, txt, scale = backbone(images, ids)
    assert torch.allclose(img, fi) and torch.allclose(txt, ft)
    assert scale.item() == pytest.approx(backbone.logit_scale.exp().item(), rel=1e-6)


def test_tokenization_is_the_clip_bpe_on_both_backends(backbone):
    ids = backbone.tokenize(TEXTS)
    assert (ids[:, 0] == backbone.sot_token_id).all()
    # "a photo of a red circle." -> sot a photo of a red circle . eot
    assert ids[0, :9].tolist() == [49406, 320, 1125, 539, 320, 736, 7117, 269, 49407]
    assert ids[0, 9:].eq(backbone.pad_token_id).all()
    long_ids = backbone.tokenize(["word " * 100])
    assert long_ids.shape == (1, 32) and long_ids[0, -1] == backbone.eot_token_id
    one = backbone.sample_tokenizer("a blue square")
    assert one.tolist() == ids[1, : len(one)].tolist() and one[-1] == backbone.eot_token_id


def test_encode_text_accepts_collate_padded_ids(backbone):
    ids = backbone.tokenize(TEXTS)
    seqs = [backbone.sample_tokenizer(t) for t in TEXTS]
    # the data layer pads variable-length ids to the batch's longest, with 0
    short = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=0)
    assert short.shape[1] < backbone.context_length
    assert torch.allclose(backbone.encode_text(ids), backbone.encode_text(short), atol=1e-5)
    too_long = torch.cat([ids, ids], dim=1)
    assert backbone.encode_text(too_long).shape == (3, 64)


def test_input_validation_messages(backbone, images):
    with pytest.raises(ValueError, match="preprocess_eval"):
        backbone.encode_image(images[0])
    with pytest.raises(ValueError, match="32x32"):
        backbone.encode_image(torch.zeros(1, 3, 16, 16))
    with pytest.raises(TypeError, match="integer token ids"):
        backbone.encode_text(torch.zeros(2, 5))
    with pytest.raises(TypeError, match="list of strings"):
        backbone.tokenize(["ok", 3])


def test_state_dict_round_trip(backbone, images):
    ids = backbone.tokenize(TEXTS)
    other = build_backbone(backbone.name, seed=123)
    assert not torch.allclose(other.encode_image(images), backbone.encode_image(images))
    other.load_state_dict(backbone.state_dict())
    assert torch.allclose(other.encode_image(images), backbone.encode_image(images), atol=1e-6)
    assert torch.allclose(other.encode_text(ids), backbone.encode_text(ids), atol=1e-6)


def test_same_seed_same_weights(backbone, images):
    again = build_backbone(backbone.name, seed=0)
    assert torch.equal(again.encode_image(images), backbone.encode_image(images))


def test_local_checkpoint_file_loads(backbone, images, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(backbone.model.state_dict(), path)
    loaded = build_backbone(backbone.name, pretrained=str(path), seed=99)
    assert torch.allclose(loaded.encode_image(images), backbone.encode_image(images), atol=1e-6)
    with pytest.raises(PretrainedWeightsNotFoundError, match="not a file"):
        build_backbone(backbone.name, pretrained=str(tmp_path / "absent.pt"))


def test_hf_save_pretrained_folder_round_trip(tmp_path, images):
    b = build_backbone("tiny-hfclip", seed=3)
    b.save_pretrained(str(tmp_path / "hf"))
    loaded = build_backbone(str(tmp_path / "hf"), local_files_only=True)
    assert isinstance(loaded, HFCLIPBackbone)
    assert torch.allclose(loaded.encode_image(images), b.encode_image(images), atol=1e-5)
    assert torch.equal(loaded.tokenize(TEXTS), b.tokenize(TEXTS))


def test_frozen_tower_stays_equal_after_training_step(backbone, images):
    backbone.freeze("vision")
    vision_before = [p.detach().clone() for p in backbone.tower_parameters("vision")]
    text_before = [p.detach().clone() for p in backbone.tower_parameters("text")]
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5)
    loss = _clip_loss(backbone, images[:3], backbone.tokenize(TEXTS))
    loss.backward()
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(vision_before, backbone.tower_parameters("vision")))
    assert any(not torch.equal(a, p) for a, p in zip(text_before, backbone.tower_parameters("text")))
    assert all(p.grad is None for p in backbone.tower_parameters("vision"))


def test_text_state_key_tracks_text_updates_only(backbone, images):
    key = backbone.text_state_key()
    backbone.encode_text(backbone.tokenize(TEXTS))
    assert backbone.text_state_key() == key
    with torch.no_grad():
        backbone.tower_parameters("vision")[0].add_(1.0)
    assert backbone.text_state_key() == key
    with torch.no_grad():
        backbone.tower_parameters("text")[0].add_(1.0)
    assert backbone.text_state_key() != key


def test_preprocess_accepts_pil_uint8_float_and_grayscale(backbone):
    from PIL import Image

    pp = backbone.preprocess_eval
    u8 = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    out_u8 = pp(u8)
    assert out_u8.shape == (3, 32, 32) and out_u8.dtype == torch.float32
    assert torch.allclose(pp(u8.float() / 255), out_u8, atol=1e-5)
    pil = Image.fromarray(u8.permute(1, 2, 0).numpy())
    assert torch.allclose(pp(pil), out_u8, atol=1e-5)
    assert pp(torch.rand(1, 32, 32)).shape == (3, 32, 32)
    # normalisation: a constant image equal to the mean maps to zero
    mean_img = torch.tensor(pp.mean).view(3, 1, 1).expand(3, 32, 32)
    assert pp(mean_img).abs().max() < 1e-5
    torch.manual_seed(0)
    a = backbone.preprocess_train(u8)
    torch.manual_seed(0)
    b = backbone.preprocess_train(u8)
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        pp(torch.rand(5, 8, 8))


def test_offline_open_clip_tag_names_model_tag_cache_and_fix(tmp_path):
    with pytest.raises(PretrainedWeightsNotFoundError) as info:
        build_backbone(
            "ViT-B-32", pretrained="openai", cache_dir=str(tmp_path), local_files_only=True
        )
    msg = str(info.value)
    assert "ViT-B-32" in msg and "openai" in msg and str(tmp_path) in msg
    assert "hf download" in msg and "ViT-B-32.pt" in msg
    assert "pretrained='/path/to/checkpoint" in msg


def test_offline_open_clip_unknown_tag_or_name(tmp_path):
    with pytest.raises(PretrainedWeightsNotFoundError, match="neither a known tag"):
        build_backbone("ViT-B-32", pretrained="no-such-tag", local_files_only=True)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("no-such-model")


def test_offline_hf_hub_id_names_model_cache_and_fix(tmp_path):
    with pytest.raises(PretrainedWeightsNotFoundError) as info:
        build_backbone(
            "openai/clip-vit-base-patch32", cache_dir=str(tmp_path), local_files_only=True
        )
    msg = str(info.value)
    assert "openai/clip-vit-base-patch32" in msg and str(tmp_path) in msg
    assert "save_pretrained" in msg and "hf download" in msg


def test_hf_folder_without_config_is_explained(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(PretrainedWeightsNotFoundError, match="no config.json"):
        build_backbone(str(tmp_path))


def test_open_clip_local_dir_round_trip_through_open_clip_factory(tmp_path, images):
    b = build_backbone("tiny-openclip", seed=4)
    b.save_pretrained(str(tmp_path / "oc"))
    assert (tmp_path / "oc" / "open_clip_config.json").is_file()
    loaded = build_backbone(str(tmp_path / "oc"), local_files_only=True)
    assert isinstance(loaded, OpenCLIPBackbone) and loaded.name.startswith("local-dir:")
    assert torch.allclose(loaded.encode_image(images), b.encode_image(images), atol=1e-5)
    assert torch.equal(loaded.tokenize(TEXTS), b.tokenize(TEXTS))
    assert loaded.context_length == 32 and loaded.image_size == 32
