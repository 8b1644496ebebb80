"""Real-size cost: one fine-tuning, one ZSCL and one MoE-style frozen-backbone iteration
on CLIP ViT-B/16 (open_clip architecture, random weights, 224 px), with peak memory and a
projection of the MTIL training cost (11 datasets x 1000 iterations, batch 64).

Each method runs in its own subprocess (a clean peak-memory reading: peak RSS on CPU,
``torch.cuda.max_memory_allocated`` on CUDA) and times ``--steps`` iterations after
``--warmup`` untimed ones; one line per figure.

- **fine-tune**: both towers trained; the task's class prompts (``--classes``, one
  template, as ZSCL trains) encoded with gradient; image batch ``--batch``; CE with
  label smoothing 0.2; AdamW (fused where available).
- **ZSCL**: the fine-tune step plus a reference batch of the same size encoded in the
  same student forward, KD in both directions against ``--ref-sentences`` teacher sentence
  features (computed once per task, as here; the released code re-encodes them with the
  teacher every iteration), teacher reference-image features read from the cache, and the
  L2 term to the task start (its gradient added directly).
- **MoE-style**: the backbone frozen; a mixture of 4 bottleneck adapters (top-2 router)
  after every transformer block of both towers, as MoE-Adapters attaches them; gradient
  flows through the frozen blocks to the adapters only.

The MTIL projection multiplies the per-iteration time by ``64 / batch`` (images scale
linearly; the text side does not depend on the batch, so this over-estimates when the
text tower dominates) and by 11 x 1000 iterations; evaluation is not included.
On CUDA the step runs in bf16 autocast.

Usage: ``python benchmarks/real_size_cost.py [--batch 2] [--classes 10] [--steps 2] [--device auto]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("finetune", "zscl", "moe")
MTIL_ITERATIONS = 11 * 1000
MTIL_BATCH = 64


class MoEAdapter(nn.Module):
    """Top-2 of ``experts`` residual bottleneck adapters on a block's output."""

    def __init__(self, width: int, experts: int = 4, bottleneck: int = 64, top_k: int = 2):
        super().__init__()
        self.router = nn.Linear(width, experts)
        self.down = nn.Parameter(torch.randn(experts, width, bottleneck) * width ** -0.5)
        self.up = nn.Parameter(torch.zeros(experts, bottleneck, width))
        self.top_k = top_k

    def forward(self, h):
        gate = self.router(h.mean(dim=-2) if h.dim() == 3 else h).softmax(-1)  # per sequence
        w, idx = gate.topk(self.top_k, dim=-1)
        out = h
        for k in range(self.top_k):
            down, up = self.down[idx[..., k]], self.up[idx[..., k]]  # [B, W, r], [B, r, W]
            z = torch.relu(torch.einsum("...lw,...wr->...lr", h, down))
            out = out + w[..., k, None, None] * torch.einsum("...lr,...rw->...lw", z, up)
        return out


def attach_moe(backbone) -> nn.ModuleList:
    adapters = nn.ModuleList()
    for tower in ("vision", "text"):
        batch_first = backbone.tokens_batch_first(tower)
        for block in backbone.blocks(tower):
            ad = MoEAdapter(backbone.width(tower)).to(backbone.device)
            adapters.append(ad)

            def hook(_m, _inp, out, _ad=ad, _bf=batch_first):
                h = out if _bf else out.transpose(0, 1)
                h = _ad(h)
                return h if _bf else h.transpose(0, 1)

            block.register_forward_hook(hook)
    return adapters


def one_method(args) -> dict:
    from avalanche_mm.models import build_backbone
    from avalanche_mm.strategies.finetune import distillation_loss, make_clip_optimizer

    device = torch.device(args.device)
    torch.manual_seed(0)
    bb = build_backbone("ViT-B-16", local_files_only=True).to(device)
    size = bb.image_size
    amp = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, size, size, generator=g).to(device)
    ref_images = torch.rand(args.batch, 3, size, size, generator=g).to(device)
    labels = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
    tokens = bb.tokenize([f"a photo of a class {i}." for i in range(args.classes)]).to(device)
    bb.logit_scale.requires_grad_(False)
    if args.method == "moe":
        bb.freeze("vision", "text")
        adapters = attach_moe(bb)
        opt = make_clip_optimizer(adapters, lr=1e-4)
    else:
        opt = make_clip_optimizer(bb, lr=1e-5)
    start = {n: p.detach().clone() for n, p in bb.named_parameters() if p.requires_grad} \
        if args.method == "zscl" else {}
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        # once per task: teacher sentence features and (cached) teacher reference-image features
        n_ref = args.ref_sentences
        ref_tok = tokens.repeat((n_ref + args.classes - 1) // args.classes, 1)[:n_ref]
        t_txt = torch.cat([bb.encode_text(ref_tok[i:i + 256]) for i in range(0, n_ref, 256)]).float() \
            if args.method == "zscl" else None
        t_img = bb.encode_image(ref_images).float() if args.method == "zscl" else None

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            text = bb.encode_text(tokens)
            x = torch.cat([images, ref_images]) if args.method == "zscl" else images
            feats = bb.encode_image(x)
            scale = bb.logit_scale_value()
            logits = scale * feats[: args.batch].float() @ text.float().t()
            loss = F.cross_entropy(logits, labels, label_smoothing=0.2)
            if args.method == "zscl":
                s = scale * feats[args.batch:].float() @ t_txt.t()
                t = scale * t_img @ t_txt.t()
                loss = loss + distillation_loss(t, s, 2.0) + distillation_loss(t.t(), s.t(), 2.0)
        loss.backward()
        if args.method == "zscl":  # L2 to the task start, gradient added directly
            with torch.no_grad():
                params = [p for n, p in bb.named_parameters() if n in start]
                diffs = torch._foreach_sub([p.detach() for p in params], [start[n] for n, p in bb.named_parameters() if n in start])
                torch._foreach_add_([p.grad for p in params], diffs, alpha=2.0)
        opt.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"method": args.method, "times": times, "peak_bytes": peak,
            "trainable": sum(p.numel() for p in (adapters.parameters() if args.method == "moe" else bb.parameters())
                             if p.requires_grad)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=None, help="images per step (default: 2 on CPU, 64 on CUDA)")
    ap.add_argument("--classes", type=int, default=None, help="class prompts per step (default: 10 on CPU, 100 on CUDA)")
    ap.add_argument("--ref-sentences", type=int, default=None,
                    help="reference sentences encoded once per task (default: 64 on CPU, 1000 on CUDA); "
                         "the per-iteration cost does not depend on it")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--method", choices=METHODS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    args.batch = args.batch or (64 if cuda else 2)
    args.classes = args.classes or (100 if cuda else 10)
    args.ref_sentences = args.ref_sentences or (1000 if cuda else 64)
    if args.method:  # child process
        print(json.dumps(one_method(args)))
        return
    print(f"# ViT-B/16 (open_clip, random weights, 224 px), device {args.device}"
          f"{' bf16 autocast' if cuda else ''}, batch {args.batch}, {args.classes} class prompts, "
          f"{args.steps} timed steps, threads={torch.get_num_threads()}")
    results = {}
    for m in METHODS:
        cmd = [sys.executable, __file__, "--method", m, "--batch", str(args.batch), "--classes", str(args.classes),
               "--ref-sentences", str(args.ref_sentences), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if out.returncode != 0:
            print(f"{m}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        results[m] = json.loads(out.stdout.strip().splitlines()[-1])
    for m, r in results.items():
        t = statistics.median(r["times"])
        hours = t * (MTIL_BATCH / args.batch) * MTIL_ITERATIONS / 3600
        print(f"{m}: iteration median {t:.3f} s (range {min(r['times']):.3f}-{max(r['times']):.3f})")
        print(f"{m}: peak memory {r['peak_bytes'] / 2**30:.2f} GiB "
              f"({'CUDA allocated' if cuda else 'process RSS'}); trainable parameters {r['trainable'] / 1e6:.1f}M")
        print(f"{m}: projected MTIL training (11 x 1000 iterations, batch {MTIL_BATCH}): {hours:.1f} h "
              f"on this device (linear in the batch)")
    if "finetune" in results:
        base = statistics.median(results["finetune"]["times"])
        for m in ("zscl", "moe"):
            if m in results:
                print(f"{m} / fine-tune iteration ratio: {statistics.median(results[m]['times']) / base:.2f}")


if __name__ == "__main__":
    main()
