"""Generation speed of the procedural multimodal world (avalanche_mm.benchmarks.ProceduralWorld).

Generates ``--n`` samples (default 10,000) of every combination of the default world, with
32x32 images, captions, audio spectrograms and (with ``--sensor``) sensor series, turns them
into a tokenised multimodal Avalanche dataset, and prints the wall-clock time of each step and
the throughput. The issue's target is under 10 s for 10,000 samples on 2 CPU cores.

Usage::

    python benchmarks/world_generation.py [--n 10000] [--image-size 32] [--sensor] [--threads 1]
"""

import argparse
import time

import torch

from avalanche_mm.benchmarks import ProceduralWorld


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of samples")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-domains", type=int, default=4)
    parser.add_argument("--sensor", action="store_true", help="also generate sensor series")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    world = ProceduralWorld(seed=0, image_size=args.image_size, num_domains=args.num_domains)
    combos = world.combinations("all")
    picks = [combos[i % len(combos)] for i in range(args.n)]
    domains = [i % args.num_domains for i in range(args.n)]
    modalities = ("image", "text", "audio") + (("sensor",) if args.sensor else ())
    tokenizer = world.tokenizer()

    gen_times, ds_times = [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        samples = world.generate(picks, domains=domains, modalities=modalities, tag=f"speed{r}")
        t1 = time.perf_counter()
        samples.to_dataset(list(range(args.n)), modalities=modalities, tokenizer=tokenizer)
        t2 = time.perf_counter()
        gen_times.append(t1 - t0)
        ds_times.append(t2 - t1)
    best_gen, best_ds = min(gen_times), min(ds_times)
    shapes = {m: tuple(v.shape[1:]) for m, v in samples.modalities.items()}
    print(f"procedural world: {args.n} samples, modalities {list(modalities)}, shapes {shapes}, "
          f"{len(combos)} objects, {args.num_domains} domains, torch threads "
          f"{torch.get_num_threads()}")
    print(f"generation     : best {best_gen:.2f} s of {args.repeats} "
          f"({args.n / best_gen:,.0f} samples/s); all {[round(t, 2) for t in gen_times]}")
    print(f"dataset build  : best {best_ds:.2f} s (tokenise captions, Avalanche dataset)")
    print(f"total          : {best_gen + best_ds:.2f} s (target < 10 s for 10,000 samples)")


if __name__ == "__main__":
    main()
