"""Epoch time of a frozen-backbone classifier, with and without the frozen-feature cache.

A linear probe (:class:`avalanche_mm.models.LinearProbe`) is trained on top of a frozen
vision-language image encoder. Without the cache every epoch encodes every image again;
with :class:`avalanche_mm.models.FrozenFeatureCache` the images are encoded once (the
"cache build", a one-off cost shared by every later epoch, strategy and run) and each
epoch only reads the cached features. Both variants are timed side by side in one run,
on the same data, batch size and optimizer.

The default backbone is the open_clip ``ViT-B-32`` architecture with random weights (no
download; the cost of encoding does not depend on the weights), at its native 224x224
input size, so that encoding dominates as it does with real CLIP models. ``tiny-openclip``
shows the other end: when the encoder is tiny the cache saves little.

Usage::

    python benchmarks/feature_cache.py [--backbone ViT-B-32] [--num-samples 256]
        [--batch-size 64] [--epochs 2] [--repeats 3] [--device cpu] [--threads N]
"""

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from avalanche_mm.data import make_multimodal_dataset
from avalanche_mm.models import FrozenFeatureCache, LinearProbe, build_backbone


def _epoch(model, dataset, *, batch_size, optimizer, device):
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, collate_fn=dataset.collate_fn,
        generator=torch.Generator().manual_seed(0),
    )
    start = time.perf_counter()
    for x, y, _ in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-32")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    backbone = build_backbone(args.backbone, local_files_only=True).to(device).eval()
    backbone.freeze()
    size = backbone.image_size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.num_samples, 3, size, size, generator=g)
    targets = torch.randint(0, args.num_classes, (args.num_samples,), generator=g).tolist()
    dataset = make_multimodal_dataset({"image": images}, targets)
    n_params = sum(p.numel() for p in backbone.parameters())
    print(
        f"backbone {args.backbone} ({n_params / 1e6:.1f}M params, {size}x{size} images), "
        f"{args.num_samples} samples, batch {args.batch_size}, {args.epochs} epochs, {args.repeats} repeats, "
        f"device {device}, {torch.get_num_threads()} CPU threads"
    )

    def new_probe():
        torch.manual_seed(0)
        probe = LinearProbe(
            encoder=backbone.encode_image, in_features=backbone.embed_dim,
            num_classes=args.num_classes,
        ).to(device)
        return probe, torch.optim.SGD(probe.head.parameters(), lr=0.1)

    def uncached_run():
        probe, opt = new_probe()
        return [_epoch(probe, dataset, batch_size=args.batch_size, optimizer=opt, device=device)
                for _ in range(args.epochs)]

    def cached_run():
        with tempfile.TemporaryDirectory() as root:
            cache = FrozenFeatureCache(root=root)
            start = time.perf_counter()
            feats = cache.get_or_compute(backbone.encode_image, dataset, batch_size=args.batch_size, device=device)
            build = time.perf_counter() - start
            start = time.perf_counter()
            FrozenFeatureCache(root=root).get_or_compute(
                backbone.encode_image, dataset, batch_size=args.batch_size, device=device)
            reload = time.perf_counter() - start
            feature_data = cache.feature_dataset(dataset, feats)
            probe, opt = new_probe()
            epochs = [_epoch(probe, feature_data, batch_size=args.batch_size, optimizer=opt, device=device)
                      for _ in range(args.epochs)]
        return build, reload, epochs

    rows = {k: [] for k in ("u_epoch", "c_epoch", "epoch_ratio", "build", "reload", "u_total", "c_total",
                            "total_ratio")}
    for r in range(args.repeats):
        if r % 2 == 0:
            unc = uncached_run()
            build, reload, cac = cached_run()
        else:
            build, reload, cac = cached_run()
            unc = uncached_run()
        u, c = statistics.median(unc), statistics.median(cac)
        rows["u_epoch"].append(u)
        rows["c_epoch"].append(c)
        rows["epoch_ratio"].append(u / c)
        rows["build"].append(build)
        rows["reload"].append(reload)
        rows["u_total"].append(sum(unc))
        rows["c_total"].append(build + sum(cac))
        rows["total_ratio"].append(sum(unc) / (build + sum(cac)))

    def fig(label, key, unit=" s", fmt="{:.3f}"):
        xs = rows[key]
        print(f"{label}: median {fmt.format(statistics.median(xs))}{unit} "
              f"(range {fmt.format(min(xs))}-{fmt.format(max(xs))}, {len(xs)} interleaved repeats)")

    fig("uncached epoch", "u_epoch")
    fig("cached epoch", "c_epoch")
    fig("per-epoch speed-up (uncached / cached epoch)", "epoch_ratio", "x", "{:.1f}")
    fig("one-off cache build (encode + fingerprint + write)", "build")
    fig("cache reuse in a new run (fingerprint + read)", "reload")
    fig(f"end-to-end uncached ({args.epochs} epochs)", "u_total")
    fig(f"end-to-end cached (build + {args.epochs} epochs)", "c_total")
    fig(f"end-to-end speed-up ({args.epochs} epochs, build included)", "total_ratio", "x", "{:.2f}")
    return statistics.median(rows["total_ratio"])


if __name__ == "__main__":
    main()
