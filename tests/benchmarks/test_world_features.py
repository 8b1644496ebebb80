"""demo-av's frozen pre-extracted features (AV-CIL's regime on the procedural world)."""

import pytest
import torch

from avalanche_mm.benchmarks.catalog import demo_av
from avalanche_mm.benchmarks.world import ProceduralWorld
from avalanche_mm.benchmarks.world_features import WorldFeatureExtractor, world_feature_extractor
from avalanche_mm.models.fusion.avcil import avcil_feature_problem, build_avcil_model

WORLD = {"seed": 3, "image_size": 8, "shapes": 2, "colours": 2, "textures": 2, "sizes": 2, "noise": {"image": 0.3}}
TINY = {"per_combination": 2, "epochs": 2, "token_dim": 6, "audio_dim": 5, "conv_channels": [4]}


def test_pretraining_sees_only_reference_objects_is_frozen_and_keeps_the_callers_rng(monkeypatch):
    world = ProceduralWorld(**WORLD)
    seen = []
    generate = ProceduralWorld.generate

    def spy(self, combinations, **kw):
        seen.extend(tuple(c) for c in combinations)
        return generate(self, combinations, **kw)

    monkeypatch.setattr(ProceduralWorld, "generate", spy)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    ex = WorldFeatureExtractor(world, settings=TINY)
    assert torch.equal(torch.get_rng_state(), state)  # pretraining ran in a forked RNG
    assert seen and set(seen) <= set(world.combinations("reference"))
    assert not set(seen) & set(world.combinations("task"))  # no object of any benchmark's classes
    for enc in ex.encoders.values():
        assert all(not p.requires_grad for p in enc.parameters()) and not enc.training
    # pretraining moved the weights away from the seeded initialisation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        from avalanche_mm.models.fusion.avcil import ConvTokens

        init = ConvTokens(in_channels=3, out_dim=6, channels=[4])
    assert not torch.equal(init.net[0].weight, ex.encoders["image"].net[0].weight)


def test_demo_av_features_are_the_frozen_encoders_outputs_in_avcil_layout():
    kw = dict(world=WORLD, num_classes=4, num_experiences=2, train_per_class=3, test_per_class=2)
    raw = demo_av(**kw)
    feat = demo_av(**kw, features=TINY)
    ex = world_feature_extractor(WORLD, ("image", "audio"), TINY)
    x_raw, y_raw = raw.scenario.test_stream[0].dataset[0][:2]
    x, y = feat.scenario.test_stream[0].dataset[0][:2]
    assert y == y_raw
    assert x["image"].shape == (1, 16, 6) and x["audio"].shape == (5,)  # [T, S, Dv] and [Da]
    ref = ex.encode({"image": x_raw["image"][None], "audio": x_raw["audio"][None]})
    assert torch.allclose(x["image"], ref["image"][0]) and torch.allclose(x["audio"], ref["audio"][0])
    specs = {m: type("S", (), {"shape": tuple(v.shape)})() for m, v in x.items()}
    assert avcil_feature_problem(specs["audio"].shape, specs["image"].shape) is None
    net = build_avcil_model(specs, 4, {"inputs": "features"})
    assert net({"image": x["image"][None], "audio": x["audio"][None]}).shape == (1, 4)
    assert net.last_spatial_attention.shape == (1, 1, 16, 6)


def test_bad_feature_settings_name_the_key():
    with pytest.raises(ValueError, match=r"unknown keys \['epoch'\]"):
        demo_av(world=WORLD, num_classes=4, num_experiences=2, features={"epoch": 3})
    with pytest.raises(ValueError, match="features.token_dim"):
        demo_av(world=WORLD, num_classes=4, num_experiences=2, features={"token_dim": 0})
    with pytest.raises(ValueError, match="features need modalities"):
        demo_av(world=WORLD, num_classes=4, num_experiences=2, modalities=["image", "text"], features={})


def test_frames_are_independent_renderings_encoded_one_by_one():
    kw = dict(world=WORLD, num_classes=4, num_experiences=2, train_per_class=3, test_per_class=2)
    single = demo_av(**kw, features=TINY)
    clips = demo_av(**kw, features={**TINY, "frames": 3})
    x1 = single.scenario.test_stream[0].dataset[0][0]["image"]
    x3 = clips.scenario.test_stream[0].dataset[0][0]["image"]
    assert x3.shape == (3, 16, 6)  # [T, S, Dv]
    # frame 0 is the single-frame sample (same encoder: the pretraining does not depend on frames)
    assert torch.allclose(x3[0], x1[0])
    assert not torch.allclose(x3[1], x3[0]) and not torch.allclose(x3[2], x3[1])
    net = build_avcil_model({m: type("S", (), {"shape": (3, 16, 6) if m == "image" else (5,)})() for m in ("audio", "image")}, 4, {"inputs": "features"})
    assert net.frames == 3


def test_world_image_frames_stack_renderings_as_clips():
    world = ProceduralWorld(**WORLD)
    classes = world.task_classes(2)
    one = world.classification_split(classes, per_class=2, modalities=("image",), tag="t")
    two = world.classification_split(classes, per_class=2, modalities=("image",), tag="t", image_frames=2)
    a, b = one[0][0]["image"], two[0][0]["image"]
    assert b.shape == (3, 2, 8, 8) and torch.equal(b[:, 0], a) and not torch.equal(b[:, 1], a)
    with pytest.raises(ValueError, match="image_frames must be a positive int"):
        world.classification_split(classes, per_class=2, modalities=("image",), image_frames=0)


def test_extractor_networks_equal_the_library_encoders_they_stand_in_for():
    """The benchmark layer keeps its own extractor networks (it sits below the models); with the
    same seed they build and compute exactly what ConvTokens / the conv SequenceEncoder do."""
    from avalanche_mm.benchmarks.world_features import _FrameTokens, _SpectrogramVector
    from avalanche_mm.models.fusion.avcil import ConvTokens
    from avalanche_mm.models.fusion.encoders import SequenceEncoder

    torch.manual_seed(3)
    ours = _FrameTokens(3, 8, [4, 6])
    torch.manual_seed(3)
    lib = ConvTokens(in_channels=3, out_dim=8, channels=[4, 6])
    clips = torch.randn(2, 3, 2, 9, 9)
    assert torch.equal(ours(clips), lib(clips))
    assert torch.equal(ours(clips[:, :, 0]), lib(clips[:, :, 0]))
    torch.manual_seed(4)
    ours_a = _SpectrogramVector(5, 7)
    torch.manual_seed(4)
    lib_a = SequenceEncoder(in_channels=5, out_dim=7, hidden=7)
    spec = torch.randn(3, 5, 11)
    assert torch.allclose(ours_a(spec), lib_a(spec), rtol=0, atol=1e-6)
