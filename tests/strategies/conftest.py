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
