"""The fusion model's automatic video encoder (per-frame 2-D encoder + temporal mean) and the
ResNet-18 backbone of SAMM's recipes."""

import pytest
import torch
import torch.nn.functional as F

from avalanche_mm.data.collate import ModalitySpec
from avalanche_mm.models.fusion import ConvEncoder, ResNet18Encoder, SequenceEncoder, VideoEncoder
from avalanche_mm.models.fusion.registry import FUSION_MODELS, fusion


def _specs(video=(3, 4, 8, 8), audio=(6, 10)):
    return {
        "audio": ModalitySpec("audio", torch.float32, tuple(audio)),
        "video": ModalitySpec("video", torch.float32, tuple(video)),
    }


def test_video_encoder_is_the_mean_of_its_frames():
    torch.manual_seed(0)
    frame = ConvEncoder(in_channels=3, out_dim=5, channels=(4,))
    enc = VideoEncoder(frame_encoder=frame)
    clips = torch.randn(2, 3, 4, 8, 8)  # [B, C, F, H, W]
    expected = torch.stack([frame(clips[:, :, f]) for f in range(4)], 1).mean(1)
    torch.testing.assert_close(enc(clips), expected)
    # temporal average pooling: the order of the frames does not matter
    torch.testing.assert_close(enc(clips.flip(2)), expected)
    with pytest.raises(ValueError, match=r"video clips \[B, C, F, H, W\]"):
        enc(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="3-channel frames, got 1"):
        enc(torch.randn(2, 1, 4, 8, 8))


def test_fusion_builds_on_video_clips_and_trains_one_step():
    torch.manual_seed(0)
    model = fusion(specs=_specs(), num_classes=3, hidden=8, conv_channels=[4])
    assert isinstance(model.encoders["video"], VideoEncoder)
    assert isinstance(model.encoders["audio"], SequenceEncoder)
    x = {"video": torch.randn(4, 3, 4, 8, 8), "audio": torch.randn(4, 6, 10)}
    y = torch.tensor([0, 1, 2, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.encoders["video"].parameters()]
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.encoders["video"].parameters()))
    assert set(model.last_unimodal_logits) == {"audio", "video"}


def test_resnet18_backbone_on_clips_and_spectrograms():
    torch.manual_seed(0)
    model = fusion(specs=_specs(video=(3, 2, 16, 16), audio=(16, 20)), num_classes=3, hidden=512, backbone="resnet18")
    v, a = model.encoders["video"], model.encoders["audio"]
    assert isinstance(v, VideoEncoder) and isinstance(v.frame_encoder, ResNet18Encoder)
    assert isinstance(a, ResNet18Encoder) and a.in_channels == 1 and a.out_dim == 512
    assert isinstance(a.proj, torch.nn.Identity)  # SAMM's 512 features, no projection
    out = model({"video": torch.randn(2, 3, 2, 16, 16), "audio": torch.randn(2, 16, 20)})
    assert out.shape == (2, 3)


def test_check_names_shapes_without_an_encoder():
    spec = FUSION_MODELS.get("fusion")
    ok = spec.problems(_specs(), {}, "studies.s.model.params")
    assert ok == []
    bad = spec.problems(_specs(video=(3, 2, 2, 8, 8)), {}, "studies.s.model.params")
    assert len(bad) == 1 and "studies.s.model.name: no automatic encoder for modality 'video'" in bad[0]
