"""Shared fixtures of the CLIP strategy tests."""

import pytest

WORLD = {"seed": 0, "image_size": 32, "shapes": 4, "colours": 4, "textures": 2, "sizes": 2}
TASKS = [{"name": "colours", "target": "colour"}, {"name": "shapes", "target": "shape"}]


@pytest.fixture(scope="module")
def setup():
    """A two-task MTIL-style world bundle and a tiny open_clip zero-shot classifier (per module)."""
    from avalanche_mm.benchmarks.catalog import demo_mtil
    from avalanche_mm.models import build_backbone
    from avalanche_mm.models.build import clip_classifier

    bundle = demo_mtil(world=WORLD, tasks=TASKS, train_per_class=4, test_per_class=2, reference_per_combination=1)
    model = clip_classifier(build_backbone("tiny-openclip", seed=0), bundle, {"freeze": ["logit_scale"]})
    return bundle, model


@pytest.fixture(scope="module")
def pairs_setup():
    """A 2-phase pair stream of the world and a tiny open_clip RetrievalHead factory."""
    from avalanche_mm.experiments.retrieval import build_retrieval_model, world_retrieval_stream
    from avalanche_mm.models import build_backbone

    backbone = build_backbone("tiny-openclip", seed=0)
    bundle = world_retrieval_stream(num_phases=2, pairs_per_combination=2, reference_per_combination=1,
                                    shapes=3, colours=3, textures=2, sizes=2, heldout_classes=2,
                                    heldout_per_class=1, tokenizer=backbone.sample_tokenizer)

    def make():
        import copy

        return build_retrieval_model(copy.deepcopy(backbone), bundle, {"freeze": ["logit_scale"]})

    return bundle, make
