"""Trainable parameters of the prompt methods: per task and stored, as a fraction of the backbone.

Two tables, one line per method:

1. CLIP ViT-B/16 at the methods' default sizes (the backbone built on the meta device: shapes
   only; :func:`avalanche_mm.strategies._prompting.vit_b16_prompt_parameters`), 10 tasks/domains;
2. the ``demo-clip`` of ``studies/domain-prompts`` with that study's parameters (the strategies
   built on the real model; counted with :func:`avalanche_mm.models.trainable_parameter_report`
   while the first task trains).

Counts are exact (no timing); run::

    python benchmarks/prompt_parameters.py
"""

import copy

import torch

from avalanche_mm.experiments.config import load_config
from avalanche_mm.experiments.registry import build_benchmark, build_clip_backbone, clip_classifier
from avalanche_mm.strategies import L2P, AttriCLIP, CODAPrompt, DualPrompt, SLiPrompts
from avalanche_mm.strategies._prompting import vit_b16_prompt_parameters
from avalanche_mm.strategies.registry import METHODS

CLASSES = {"l2p": L2P, "dualprompt": DualPrompt, "coda-prompt": CODAPrompt, "s-liprompts": SLiPrompts,
           "attriclip": AttriCLIP}


def main():
    print("CLIP ViT-B/16, default sizes, 10 tasks")
    for name, row in vit_b16_prompt_parameters().items():
        b = row["backbone"]
        print(f"  {name:12s} trainable per task {row['trainable_per_task']:>9,} ({100 * row['trainable_per_task'] / b:.3f}%)"
              f"  stored {row['stored']:>9,} ({100 * row['stored'] / b:.3f}%)  of {b:,}")
    cfg = load_config("studies/domain-prompts")
    study = cfg["studies"]["domains"]
    backbone = build_clip_backbone(study["model"], seed=0)
    bundle = build_benchmark(study["benchmark"], seed=0)
    base = clip_classifier(backbone, bundle, study["model"])
    total = sum(p.numel() for p in base.parameters())
    print(f"demo-clip ({total:,} parameters), studies/domain-prompts settings, {bundle.n_experiences} domains")
    for sname, entry in study["strategies"].items():
        if entry["method"] not in CLASSES:
            continue
        params = {k: v for k, v in entry.items() if k not in ("method", "training")}
        for key in ("n_tasks", "n_domains"):
            if key in METHODS[entry["method"]].params and params.get(key) is None:
                params[key] = bundle.n_experiences
        model = copy.deepcopy(base)
        s = CLASSES[entry["method"]](model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), **params)
        s.prompt_plugin.on_training_experience(None, 0)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        stored = sum(p.numel() for n, p in model.named_parameters() if ".attachments." in f".{n}")
        print(f"  {sname:12s} trainable per task {trainable:>9,} ({100 * trainable / total:.3f}%)"
              f"  stored {stored:>9,} ({100 * stored / total:.3f}%)")


if __name__ == "__main__":
    main()
