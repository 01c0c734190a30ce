"""Training-step speed of the MoE model, ours against the textbook MoE, side by side in one run.

Usage: python bench/model_step.py [--presets cpu-tiny,gpu-small] [--steps N] [--batch-size B]
                                  [--device auto|cpu|cuda] [--peak-tflops X] [--json]

Ours: sort the (token, slot) assignments by expert once, run each expert on its contiguous slice,
unsort (moeswarm.model.model.MoELayer), with MaskedAdamW. Baseline, "textbook": the same model and
weights, but each MoE layer loops over experts and picks its tokens with a boolean mask
(`(top_k_ids == e).any(-1)`), adds the weighted outputs into place, and trains with torch.optim.AdamW.
A step is forward + backward + gradient clipping + optimizer step on a batch of B x context bytes;
the two run interleaved, step by step, so a busy machine slows both alike; figures are medians over
the timed steps after two warm-up steps. On CUDA (bf16 autocast) the script also prints
model FLOP utilisation: 6 x (non-embedding active parameters) + 12 x layers x context x d_model FLOPs
per token, over the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moeswarm.model.config import PRESETS, MoEConfig, preset
from moeswarm.model.model import MoELayer, MoETransformer, route
from moeswarm.model.optim import MaskedAdamW, set_trainable
from moeswarm.model.trainer import resolve_device

# dense bf16 peak (no sparsity) by device-name fragment, in TFLOP/s
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
CPU_BATCH = {"cpu-tiny": 32, "gpu-small": 2}
CUDA_BATCH = {"cpu-tiny": 32, "gpu-small": 16}


class TextbookMoELayer(MoELayer):
    """The common MoE forward: loop over experts, select their tokens with a boolean mask."""

    def forward(self, x_BTD: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D)
        routing = route(self.router(x_ND), self.top_k)
        out_ND = torch.zeros_like(x_ND)
        counts = []
        for e in range(self.n_experts):
            hit_NK = routing.experts_NK == e
            mask_N = hit_NK.any(dim=-1)
            counts.append(int(mask_N.sum()))
            if counts[-1] == 0:
                continue
            weight_n = (routing.weights_NK * hit_NK).sum(dim=-1)[mask_N]
            y_nD = F.gelu(x_ND[mask_N] @ self.w_in[e]) @ self.w_out[e]
            out_ND[mask_N] += weight_n.unsqueeze(-1).to(y_nD.dtype) * y_nD
        share_E = torch.tensor(counts, dtype=torch.float32, device=x_BTD.device) / (B * T * self.top_k)
        balance = self.n_experts * torch.sum(share_E * routing.probs_NE.mean(dim=0))
        z_loss = torch.logsumexp(routing.logits_NE, dim=-1).square().mean()
        return out_ND.view(B, T, D), balance, z_loss


def textbook_twin(model: MoETransformer) -> MoETransformer:
    """Same config and weights as `model`, with every MoE layer swapped for the textbook loop."""
    twin = MoETransformer(model.config)
    for block in twin.blocks:
        block.moe = TextbookMoELayer(model.config)
    twin.load_state_dict(model.state_dict())
    return twin.to(next(model.parameters()).device)


def flops_per_token(config: MoEConfig, model: MoETransformer) -> float:
    embeddings = model.tok_emb.weight.numel() + model.pos_emb.weight.numel()
    active = model.num_params(active=True) - embeddings
    return 6.0 * active + 12.0 * config.n_layers * config.context * config.d_model


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for frag, tf in PEAK_TFLOPS.items() if frag in name), None)


def timed_step(model: MoETransformer, optimizer: Any, batch: Tensor, device: torch.device) -> float:
    """Seconds for one training step on `batch`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(batch[:, :-1], batch[:, 1:])
    assert out.loss is not None
    optimizer.zero_grad()
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def bench_preset(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    config = preset(name)
    batch_size = args.batch_size or (CUDA_BATCH if device.type == "cuda" else CPU_BATCH)[name]
    ours = MoETransformer(config, seed=0).to(device)
    textbook = textbook_twin(ours)
    gen = torch.Generator().manual_seed(0)
    warmup = 2
    batches = [
        torch.randint(0, 256, (batch_size, config.context + 1), generator=gen).to(device)
        for _ in range(warmup + args.steps)
    ]
    with torch.no_grad():  # both implementations compute the same function
        probe = batches[0][: min(4, batch_size), :-1]
        diff = (ours(probe).logits.float() - textbook(probe).logits.float()).abs().max().item()
    results: dict[str, Any] = {"preset": name, "batch_size": batch_size, "context": config.context}
    peak = peak_flops(device, args.peak_tflops)
    runs = {
        "ours": (ours, MaskedAdamW(ours, set_trainable(ours), lr=1e-3)),
        "textbook": (textbook, torch.optim.AdamW(textbook.parameters(), lr=1e-3, betas=(0.9, 0.95))),
    }
    times: dict[str, list[float]] = {label: [] for label in runs}
    for i, batch in enumerate(batches):  # interleaved, so both see the same background load
        for label, (model, optimizer) in runs.items():
            seconds = timed_step(model, optimizer, batch, device)
            if i >= warmup:
                times[label].append(seconds)
    for label, (model, _) in runs.items():
        step_s = statistics.median(times[label])
        tokens_per_s = batch_size * config.context / step_s
        mfu = tokens_per_s * flops_per_token(config, model) / peak if peak else None
        results[label] = {
            "step_ms": round(step_s * 1e3, 2),
            "tokens_per_s": round(tokens_per_s, 1),
            "mfu": round(mfu, 4) if mfu is not None else None,
        }
    results["speedup"] = round(results["textbook"]["step_ms"] / results["ours"]["step_ms"], 3)
    results["max_abs_logit_diff"] = diff
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets",
        help=f"comma-separated, from {', '.join(PRESETS)} (default: cpu-tiny on CPU, all on CUDA)",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per implementation (default 10)")
    parser.add_argument(
        "--batch-size", type=int, help="windows per step (default: 32; gpu-small 16 on CUDA, 2 on CPU)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU when its name is not known")
    parser.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object on the last line"
    )
    args = parser.parse_args()
    if args.steps <= 0:
        parser.error("--steps must be positive")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    default = "cpu-tiny" if device.type == "cpu" else ",".join(PRESETS)
    names = [n.strip() for n in (args.presets or default).split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        parser.error(f"unknown presets: {', '.join(unknown)}")
    label = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(f"device: {label}; torch {torch.__version__}; median of {args.steps} steps after 2 warm-up steps")
    print(f"{'preset':<10} {'batch':>5} {'impl':<9} {'step ms':>9} {'tokens/s':>10} {'MFU':>7}")
    all_results = []
    for name in names:
        res = bench_preset(name, args, device)
        all_results.append(res)
        for impl in ("ours", "textbook"):
            r = res[impl]
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
            print(
                f"{name:<10} {res['batch_size']:>5} {impl:<9} {r['step_ms']:>9.1f} {r['tokens_per_s']:>10,.0f} {mfu:>7}"
            )
        print(
            f"{name:<10} ours is {res['speedup']:.2f}x the textbook step rate; max |logit diff| {res['max_abs_logit_diff']:.2e}"
        )
    if args.json:
        print(json.dumps({"device": label, "steps": args.steps, "results": all_results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
