#!/usr/bin/python3
"""Python PyTorch peers of one MoE layer, timed the same way as `xmoe bench layer`.

Run with Debian's /usr/bin/python3 and python3-torch (scripts/setup.sh --bench). Prints one JSON
line per peer: forward + backward medians over --iters after --warmup, tokens/s.

Peers (written here, after the published designs):
  fairseq  capacity layer with one-hot dispatch/combine einsums ([T, E, C] tensors, GShard/fairseq)
  loop     loop over experts with separate per-expert nn.Linear weights (index_select / index_add_)
  stacked  loop over experts with stacked [E, d_ff, d] weights
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F


def top1_or_k(logits, k):
    probs = logits.softmax(-1)
    vals, ids = probs.topk(k, dim=-1)
    if k > 1:
        vals = vals / vals.sum(-1, keepdim=True)
    return probs, vals, ids


class FairseqStyle(torch.nn.Module):
    """Capacity layer with dense one-hot dispatch/combine tensors of shape [T, E, C]."""

    def __init__(self, d, f, e, k, capacity_factor):
        super().__init__()
        self.e, self.k, self.cf = e, k, capacity_factor
        self.wg = torch.nn.Linear(d, e, bias=False)
        self.w1 = torch.nn.Parameter(torch.randn(e, d, f) / math.sqrt(d))
        self.b1 = torch.nn.Parameter(torch.zeros(e, 1, f))
        self.w2 = torch.nn.Parameter(torch.randn(e, f, d) / math.sqrt(f))
        self.b2 = torch.nn.Parameter(torch.zeros(e, 1, d))

    def forward(self, x):
        t = x.shape[0]
        probs, gates, ids = top1_or_k(self.wg(x), self.k)
        cap = math.ceil(self.cf * self.k * t / self.e)
        combine = x.new_zeros(t, self.e, cap)
        filled = torch.zeros(self.e, dtype=torch.long)
        for j in range(self.k):
            mask = F.one_hot(ids[:, j], self.e)                       # [T, E]
            pos = (torch.cumsum(mask, 0) - 1 + filled) * mask          # slot within expert
            filled = filled + mask.sum(0)
            keep = (pos < cap) & (mask > 0)
            pos_oh = F.one_hot(pos.clamp(max=cap - 1), cap) * keep.unsqueeze(-1)  # [T, E, C]
            combine = combine + gates[:, j, None, None] * pos_oh
        dispatch = (combine > 0).to(x.dtype)
        xe = torch.einsum("tec,td->ecd", dispatch, x)                  # [E, C, d]
        h = F.gelu(torch.baddbmm(self.b1, xe, self.w1))
        ye = torch.baddbmm(self.b2, h, self.w2)                        # [E, C, d]
        me, ce = probs.mean(0), F.one_hot(ids[:, 0], self.e).float().mean(0)
        aux = (me * ce).sum() * self.e
        return torch.einsum("tec,ecd->td", combine, ye), aux


class LoopLinear(torch.nn.Module):
    """Dropless loop over experts, one pair of nn.Linear per expert."""

    def __init__(self, d, f, e, k):
        super().__init__()
        self.e, self.k = e, k
        self.wg = torch.nn.Linear(d, e, bias=False)
        self.fc1 = torch.nn.ModuleList(torch.nn.Linear(d, f) for _ in range(e))
        self.fc2 = torch.nn.ModuleList(torch.nn.Linear(f, d) for _ in range(e))

    def forward(self, x):
        probs, gates, ids = top1_or_k(self.wg(x), self.k)
        out = torch.zeros_like(x)
        flat_ids, flat_gates = ids.reshape(-1), gates.reshape(-1)
        tokens = torch.arange(x.shape[0]).repeat_interleave(self.k)
        for e in range(self.e):
            sel = (flat_ids == e).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            tok = tokens[sel]
            y = self.fc2[e](F.gelu(self.fc1[e](x.index_select(0, tok))))
            out.index_add_(0, tok, y * flat_gates[sel, None])
        me, ce = probs.mean(0), F.one_hot(ids[:, 0], self.e).float().mean(0)
        return out, (me * ce).sum() * self.e


class LoopStacked(LoopLinear):
    """Dropless loop over experts with stacked [E, f, d] weights."""

    def __init__(self, d, f, e, k):
        torch.nn.Module.__init__(self)
        self.e, self.k = e, k
        self.wg = torch.nn.Linear(d, e, bias=False)
        self.w1 = torch.nn.Parameter(torch.randn(e, f, d) / math.sqrt(d))
        self.b1 = torch.nn.Parameter(torch.zeros(e, f))
        self.w2 = torch.nn.Parameter(torch.randn(e, d, f) / math.sqrt(f))
        self.b2 = torch.nn.Parameter(torch.zeros(e, d))
        self.fc1 = [lambda v, e=e: F.linear(v, self.w1[e], self.b1[e]) for e in range(e)]
        self.fc2 = [lambda v, e=e: F.linear(v, self.w2[e], self.b2[e]) for e in range(e)]


def time_layer(layer, x, grad, iters, warmup):
    fwd, bwd = [], []
    for i in range(warmup + iters):
        layer.zero_grad(set_to_none=True)
        xi = x.detach().requires_grad_()
        t0 = time.perf_counter()
        y, aux = layer(xi)
        t1 = time.perf_counter()
        ((y * grad).sum() + 0.01 * aux).backward()
        t2 = time.perf_counter()
        if i >= warmup:
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
    total = [a + b for a, b in zip(fwd, bwd)]
    return statistics.median(fwd), statistics.median(bwd), statistics.median(total)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--d-ff", type=int, default=2048)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--capacity-factor", type=float, default=1.25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--peers", default="fairseq,loop,stacked")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.tokens, a.d_model)
    grad = torch.randn(a.tokens, a.d_model)
    makers = {
        "fairseq": lambda: FairseqStyle(a.d_model, a.d_ff, a.experts, a.top_k, a.capacity_factor),
        "loop": lambda: LoopLinear(a.d_model, a.d_ff, a.experts, a.top_k),
        "stacked": lambda: LoopStacked(a.d_model, a.d_ff, a.experts, a.top_k),
    }
    for name in a.peers.split(","):
        layer = makers[name]()
        fwd, bwd, total = time_layer(layer, x, grad, a.iters, a.warmup)
        print(json.dumps({"peer": name, "tokens": a.tokens, "experts": a.experts, "top_k": a.top_k,
                          "threads": a.threads, "torch": torch.__version__, "fwd_ms": fwd,
                          "bwd_ms": bwd, "fwd_bwd_ms": total,
                          "tokens_per_s": a.tokens / (total / 1e3)}), flush=True)


if __name__ == "__main__":
    main()
