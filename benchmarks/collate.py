"""Collate cost: avalanche-mm's MultimodalCollate against torch's default_collate.

Fixed-size modalities (an image [3, 32, 32] and an audio clip [2, 64] per sample)
are collated by ``default_collate`` (the baseline: what a plain PyTorch loader
does) and by ``MultimodalCollate`` with the dataset's specs; a second case adds a
variable-length text modality (3-30 tokens), which ``default_collate`` cannot
batch, measured against a hand-written ``pad_sequence`` baseline. Timings are
interleaved (ABBA) over ``--repeats`` rounds of ``--batches`` batches; one line per
figure: median (range) in ms per batch and the median of per-round ratios.
Target: fixed-size ratio <= 2.

Usage: ``python benchmarks/collate.py [--repeats 9] [--batch-size 64] [--batches 50]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import default_collate

from avalanche_mm.data.collate import MultimodalCollate, infer_specs


def make_samples(n, variable):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = {"image": torch.randn(3, 32, 32, generator=g), "audio": torch.randn(2, 64, generator=g)}
        if variable:
            x["text"] = torch.randint(1, 1000, (int(torch.randint(3, 31, (1,), generator=g)),), generator=g)
        out.append((x, i % 10, 0))
    return out


def baseline_fixed(batch):
    return default_collate(batch)


def baseline_variable(batch):
    xs = [s[0] for s in batch]
    text = pad_sequence([x["text"] for x in xs], batch_first=True)
    fixed = default_collate([({k: v for k, v in x.items() if k != "text"}, s[1], s[2]) for x, s in zip(xs, batch)])
    fixed[0]["text"] = text
    fixed[0]["text_lengths"] = torch.tensor([len(x["text"]) for x in xs])
    return fixed


def timed(fn, batches):
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    return (time.perf_counter() - t0) / len(batches)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=50)
    args = ap.parse_args()
    print(f"# batch {args.batch_size}, {args.batches} batches per round, {args.repeats} interleaved rounds, "
          f"threads={torch.get_num_threads()}")
    for variable in (False, True):
        samples = make_samples(args.batch_size * 4, variable)
        batches = [samples[(k % 4) * args.batch_size:(k % 4 + 1) * args.batch_size] for k in range(args.batches)]
        specs = infer_specs([s[0] for s in samples], variable=["text"] if variable else None)
        ours = MultimodalCollate(specs)
        base = baseline_variable if variable else baseline_fixed
        timed(ours, batches[:5]), timed(base, batches[:5])  # warm-up
        t_base, t_ours, ratio = [], [], []
        for r in range(args.repeats):
            if r % 2:
                a, b = timed(ours, batches), timed(base, batches)
            else:
                b, a = timed(base, batches), timed(ours, batches)
            t_base.append(b)
            t_ours.append(a)
            ratio.append(a / b)
        label = "fixed-size (image + audio)" if not variable else "with padded text"
        bname = "torch default_collate" if not variable else "default_collate + pad_sequence"
        print(f"{label}: {bname}: median {statistics.median(t_base) * 1e3:.3f} ms/batch "
              f"(range {min(t_base) * 1e3:.3f}-{max(t_base) * 1e3:.3f})")
        print(f"{label}: MultimodalCollate: median {statistics.median(t_ours) * 1e3:.3f} ms/batch "
              f"(range {min(t_ours) * 1e3:.3f}-{max(t_ours) * 1e3:.3f})")
        print(f"{label}: ratio MultimodalCollate / baseline: median {statistics.median(ratio):.2f} "
              f"(range {min(ratio):.2f}-{max(ratio):.2f})")


if __name__ == "__main__":
    main()
