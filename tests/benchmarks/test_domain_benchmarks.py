"""The domain-incremental benchmarks of S-liPrompts: missing data is reported with its layout;
the demo world carries a paired reference split."""

import pytest

from avalanche_mm.benchmarks import get_benchmark
from avalanche_mm.benchmarks.datasets import DatasetNotFoundError


@pytest.mark.parametrize("name, expect", [
    ("core50-domains", ["core50_128x128", "paths.pkl", "Expected layout", "download=True"]),
    ("domainnet-domains", ["clipart_train.txt", "sketch", "Expected layout", "M3SDA"]),
    ("cddb-hard", ["gaugan/train", "san/val", "0_real", "Coral79/CDDB"]),
])
def test_real_domain_benchmarks_name_missing_files_and_layout(tmp_path, name, expect):
    with pytest.raises(DatasetNotFoundError) as info:
        get_benchmark(name, root=str(tmp_path))
    text = str(info.value)
    assert str(tmp_path) in text and all(e in text for e in expect), text


def test_cddb_reads_real_fake_folders(tmp_path):
    from PIL import Image

    for task in ("gaugan", "biggan"):
        for split in ("train", "val"):
            for i, sub in enumerate(("0_real", "1_fake")):
                folder = tmp_path / task / split / "subset" / sub
                folder.mkdir(parents=True)
                Image.new("RGB", (8, 8), (i * 200, 0, 0)).save(folder / "a.png")
    scenario = get_benchmark("cddb-hard", root=str(tmp_path), tasks=["gaugan", "biggan"], image_size=8)
    assert len(scenario.train_stream) == 2 and scenario.class_names == ["real", "fake"]
    x, y = scenario.train_stream[1].dataset[1][:2]
    assert x["image"].shape == (3, 8, 8) and int(y) == 1


def test_demo_domains_has_domains_and_a_paired_reference():
    bundle = get_benchmark("demo-domains", world={"seed": 0, "image_size": 16}, num_classes=3, num_domains=2,
                           train_per_class=2, test_per_class=1, reference_per_combination=1)
    assert bundle.n_experiences == 2 and len(bundle.class_names) == 3
    assert bundle.reference is not None and bundle.reference.paired
    assert len(bundle.reference.texts) == len(bundle.reference.images) > 0
