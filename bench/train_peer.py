#!/usr/bin/python3
"""Python PyTorch peer of `xmoe bench train`: the same MoE encoder, batches and training step.

Run with Debian's /usr/bin/python3 and python3-torch (scripts/setup.sh --bench). Reads a
pre-training config (configs/*.json, or the resolved one `xmoe bench train --print-config`
writes; missing keys take the documented defaults of docs/pretraining.md), applies --set
overrides like the CLI, and prints one JSON line with the same keys as `xmoe bench train`.

The model, written the way a good plain PyTorch implementation would write it:
  token + learned position embeddings, dropout; pre-LN (or post-LN) blocks of multi-head
  self-attention (one fused QKV Linear, matmul / masked_fill / softmax / dropout / matmul, as
  xmoe's SelfAttention) and a dense GELU FFN, or an MoE layer where model.moe_layers places one;
  final LN; tied MLM head LN(gelu(x W + b)) · Eᵀ + b at the labelled positions only.
  MoE layer: padding rows removed; router "dot" (Switch: softmax(h·W), top-k) or "xmoe"
  (SPEC §2.3: project to d_e, L2-normalise tokens and expert embeddings, cosine / learnable τ,
  expert embeddings rescaled to expert_norm before each training forward); Switch balance loss
  (SPEC §3); dropless experts, one nn.Linear pair per expert: tokens sorted by expert once
  (argsort), index_select, a loop over the experts' contiguous slices, gate-weighted index_add.
Training step: mlm + aux loss, backward, clip_grad_norm_, AdamW (two groups: weight decay on
parameters with dim >= 2 only), zero_grad(set_to_none=True).
--prune-last-layer runs the last layer after its attention only at the labelled positions, as
xmoe's mlm() does (an MoE last layer routes every token and runs its experts for those only);
without it the peer computes the last layer everywhere, as plain encoder code does.
--nproc N: N processes (torch.distributed, Gloo), --threads each, data parallel as a PyTorch
user runs it on one machine: every rank holds the whole model (experts replicated) and trains on
its own batches; after backward the gradients (zeros where a rank has none, e.g. an idle expert)
are averaged in one all-reduce of one flat buffer, then clipping and AdamW as above. Rank 0
prints the JSON line, with the tokens of all ranks (the comparison with `xmoe bench train
--nproc N`, whose experts are split instead).
"""
import argparse
import json
import math
import os
import socket
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

NUM_SPECIAL, MASK_ID, PAD_ID = 5, 4, 0

DEFAULTS = {
    "name": "run",
    "data": {"max_len": 128, "batch_tokens": 4096, "mask_prob": 0.15},
    "model": {"d_model": 256, "n_layers": 4, "n_heads": 4, "d_ff": 1024, "dropout": 0.1,
              "attention_dropout": 0.1, "pre_norm": True, "moe_layers": [], "init_seed": 1},
    "train": {"lr": 5e-4, "weight_decay": 0.01, "beta1": 0.9, "beta2": 0.98, "eps": 1e-6,
              "clip_norm": 1.0, "seed": 1},
}
MOE_DEFAULTS = {"top_k": 1, "router": "dot", "gate": "softmax", "normalize_topk": True,
                "capacity_factor": 0.0, "activation": "gelu", "expert_depth": 1,
                "expert_norm": 1.5, "balance_temperature": 0.07, "normalize_tokens": True,
                "dim_reduction": True, "l2_norm": True, "balance_coef": 0.01, "z_loss_coef": 0.0,
                "jitter": 0.0}


def load_config(path, overrides):
    with open(path) as f:
        raw = json.load(f)
    for item in overrides:
        key, _, value = item.partition("=")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    cfg = {"name": raw.get("name", DEFAULTS["name"])}
    for section in ("data", "model", "train"):
        cfg[section] = dict(DEFAULTS[section], **raw.get(section, {}))
    moe = raw.get("moe")
    if moe is not None:
        moe = dict(MOE_DEFAULTS, **moe)
        moe.setdefault("d_ff", cfg["model"]["d_ff"])
        moe.setdefault("d_e", max(2, moe["n_expert"] // 2))
        moe.setdefault("temperature_init", 0.3 if moe["gate"] == "softmax" else 0.07)
        unsupported = [k for k, ok in (("router", moe["router"] in ("dot", "xmoe")),
                                       ("capacity_factor", moe["capacity_factor"] == 0),
                                       ("expert_depth", moe["expert_depth"] == 1),
                                       ("activation", moe["activation"] == "gelu"),
                                       ("jitter", moe["jitter"] == 0)) if not ok]
        if unsupported:
            raise SystemExit("train_peer.py: moe." + ", moe.".join(unsupported) +
                             " not supported by this peer (dot/xmoe router, dropless, depth 1, gelu)")
    cfg["moe"] = moe
    return cfg


class SelfAttention(nn.Module):
    def __init__(self, d, heads, dropout):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)

    def context(self, x, key_padding):
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        scores = scores.masked_fill(key_padding.view(b, 1, 1, l), float("-inf"))
        weights = self.dropout(scores.softmax(-1).nan_to_num(0.0))
        return (weights @ v).transpose(1, 2).reshape(b, l, d)

    def forward(self, x, key_padding):
        return self.out(self.context(x, key_padding))


class MoE(nn.Module):
    def __init__(self, d, m):
        super().__init__()
        self.e, self.k, self.m = m["n_expert"], m["top_k"], m["router"]
        self.opt = m
        if self.m == "dot":
            self.weight = nn.Parameter(torch.empty(self.e, d).uniform_(-d ** -0.5, d ** -0.5))
        else:
            route_dim = m["d_e"] if m["dim_reduction"] else d
            if m["dim_reduction"]:
                self.proj = nn.Parameter(torch.empty(route_dim, d).uniform_(-d ** -0.5, d ** -0.5))
            self.expert_embed = nn.Parameter(nn.init.orthogonal_(torch.empty(self.e, route_dim)))
            self.temperature = nn.Parameter(torch.full((1,), float(m["temperature_init"])),
                                            requires_grad=m["l2_norm"])
            self.rescale()
        self.fc1 = nn.ModuleList(nn.Linear(d, m["d_ff"]) for _ in range(self.e))
        self.fc2 = nn.ModuleList(nn.Linear(m["d_ff"], d) for _ in range(self.e))

    @torch.no_grad()
    def rescale(self):
        norms = self.expert_embed.norm(dim=1, keepdim=True).clamp_min(1e-4)
        self.expert_embed.mul_(self.opt["expert_norm"] / norms)

    def route(self, h):
        if self.m == "dot":
            scores = h @ self.weight.t()
            return scores, scores.softmax(-1)
        if self.training:
            self.rescale()
        z = h @ self.proj.t() if self.opt["dim_reduction"] else h
        if not self.opt["l2_norm"]:
            scores = z @ self.expert_embed.t()
            return scores, scores.softmax(-1)
        zn = F.normalize(z, dim=-1, eps=1e-4) if self.opt["normalize_tokens"] else z
        scores = zn @ F.normalize(self.expert_embed, dim=-1, eps=1e-4).t()
        balance = (scores / self.opt["balance_temperature"]).softmax(-1)
        return scores / self.temperature.clamp_min(1e-4), balance

    def forward(self, x, mask, computed=None):
        real = mask.nonzero().squeeze(1)
        h = x.index_select(0, real)
        logits, balance_probs = self.route(h)
        if self.opt["gate"] == "softmax":
            gates, ids = logits.softmax(-1).topk(self.k, dim=-1)
            if self.k > 1 and self.opt["normalize_topk"]:
                gates = gates / gates.sum(-1, keepdim=True).clamp_min(1.2e-7)
        else:
            ids = logits.detach().topk(self.k, dim=-1).indices
            gates = logits.gather(1, ids).sigmoid()
        t = h.shape[0]
        f = torch.bincount(ids[:, 0], minlength=self.e).to(h.dtype) / t
        aux = self.opt["balance_coef"] * self.e * (f * balance_probs.mean(0)).sum()
        if self.opt["z_loss_coef"] > 0:
            aux = aux + self.opt["z_loss_coef"] * logits.logsumexp(-1).pow(2).mean()

        flat_ids = ids.reshape(-1)
        slots = None
        if computed is not None:  # only the slots of the tokens whose output is used
            slots = computed.index_select(0, real).repeat_interleave(self.k).nonzero().squeeze(1)
            flat_ids = flat_ids.index_select(0, slots)
        order = flat_ids.argsort()
        if slots is not None:
            order = slots.index_select(0, order)
        counts = torch.bincount(flat_ids, minlength=self.e).tolist()
        token = order // self.k
        xs = h.index_select(0, token)
        ys = [self.fc2[e](F.gelu(self.fc1[e](xe))) for e, xe in enumerate(xs.split(counts))]
        y_sorted = torch.cat(ys) * gates.reshape(-1).index_select(0, order).unsqueeze(1)
        y = torch.zeros_like(h).index_add(0, token, y_sorted)
        return torch.zeros_like(x).index_copy(0, real, y), aux


class Block(nn.Module):
    def __init__(self, cfg, index):
        super().__init__()
        m = cfg["model"]
        d = m["d_model"]
        self.pre_norm = m["pre_norm"]
        self.attention = SelfAttention(d, m["n_heads"], m["attention_dropout"])
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.moe = MoE(d, cfg["moe"]) if index in m["moe_layers"] else None
        if self.moe is None:
            self.fc1, self.fc2 = nn.Linear(d, m["d_ff"]), nn.Linear(m["d_ff"], d)
        self.dropout = nn.Dropout(m["dropout"])

    def ffn(self, x, padding, computed=None):
        if self.moe is None:
            return self.fc2(F.gelu(self.fc1(x))), None
        b, l, d = x.shape
        y, aux = self.moe(x.reshape(b * l, d), (~padding).reshape(-1), computed)
        return y.view(b, l, d), aux

    # Pre-LN: LN before each sub-layer, plain residual after; post-LN: LN after the residual.
    def attention_input(self, x):
        return self.norm1(x) if self.pre_norm else x

    def after_attention(self, x, attended):
        return x + self.dropout(attended) if self.pre_norm else self.norm1(x + self.dropout(attended))

    def ffn_input(self, h):
        return self.norm2(h) if self.pre_norm else h

    def after_ffn(self, h, y):
        return h + self.dropout(y) if self.pre_norm else self.norm2(h + self.dropout(y))

    def forward(self, x, padding):
        h = self.after_attention(x, self.attention(self.attention_input(x), padding))
        y, aux = self.ffn(self.ffn_input(h), padding)
        return self.after_ffn(h, y), aux

    def forward_rows(self, x, padding, rows):
        """forward() at the flat positions `rows` only, after the attention: [M, d]."""
        d = x.shape[2]
        at = lambda t: t.reshape(-1, d).index_select(0, rows)
        if self.moe is not None:  # the router sees every token
            computed = torch.zeros(x.shape[0] * x.shape[1], dtype=torch.bool).index_fill_(0, rows, True)
            h = self.after_attention(x, self.attention(self.attention_input(x), padding))
            y, aux = self.ffn(self.ffn_input(h), padding, computed)
            return self.after_ffn(at(h), at(y)), aux
        # Dense: only the attention context needs every position (keys and values).
        context = at(self.attention.context(self.attention_input(x), padding))
        h = self.after_attention(at(x), self.attention.out(context))
        return self.after_ffn(h, self.ffn(self.ffn_input(h), padding)[0]), None


class Encoder(nn.Module):
    def __init__(self, cfg, vocab, max_len, prune_last_layer=False):
        super().__init__()
        m = cfg["model"]
        d = m["d_model"]
        self.d, self.pre_norm, self.prune = d, m["pre_norm"], prune_last_layer
        self.tokens, self.positions = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.dropout = nn.Dropout(m["dropout"])
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(m["n_layers"]))
        self.final_norm = nn.LayerNorm(d) if self.pre_norm else None
        self.head_transform, self.head_norm = nn.Linear(d, d), nn.LayerNorm(d)
        self.head_bias = nn.Parameter(torch.zeros(vocab))
        with torch.no_grad():  # BERT initialisation outside the MoE layers
            for name, p in self.named_parameters():
                if ".moe." in name or name == "head_bias":
                    continue
                if "norm" in name:
                    p.fill_(0.0 if name.endswith("bias") else 1.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, 0.02)

    def mlm(self, ids, labels):
        padding = ids.eq(PAD_ID)
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        x = self.dropout(self.tokens(ids) + self.positions(pos))
        flat = labels.reshape(-1)
        where = flat.ne(-100).nonzero().squeeze(1)
        aux = x.new_zeros(())
        for i, layer in enumerate(self.layers):
            if self.prune and i == len(self.layers) - 1:
                x, a = layer.forward_rows(x, padding, where)
            else:
                x, a = layer(x, padding)
            if a is not None:
                aux = aux + a
        if self.pre_norm:
            x = self.final_norm(x)
        h = x.reshape(-1, self.d)
        if not self.prune:
            h = h.index_select(0, where)
        h = self.head_norm(F.gelu(self.head_transform(h)))
        logits = torch.addmm(self.head_bias, h, self.tokens.weight.t())
        return F.cross_entropy(logits, flat.index_select(0, where)), aux


def make_batch(b, l, vocab, mask_prob, gen):
    """The same draws, in the same order, as make_batch in cli/bench_train.cpp."""
    ids = torch.randint(NUM_SPECIAL, vocab, (b, l), generator=gen, dtype=torch.long)
    masked = torch.rand((b, l), generator=gen, dtype=torch.float).lt(mask_prob)
    masked[:, 0] = True
    labels = torch.where(masked, ids, torch.full((), -100, dtype=torch.long))
    return ids.masked_fill(masked, MASK_ID), labels


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], help="dotted.key=value (JSON or string)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-seqs", type=int, default=0)
    p.add_argument("--seq-len", type=int, default=0)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--foreach", action="store_true", help="AdamW(foreach=True)")
    p.add_argument("--prune-last-layer", action="store_true",
                   help="last layer after its attention only at the labelled positions (as xmoe)")
    p.add_argument("--profile", type=int, default=0,
                   help="profile this many extra steps: self time per op on stderr")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes (Gloo all-reduce of the gradients)")
    a = p.parse_args()
    if a.nproc > 1:
        if a.profile:
            raise SystemExit("--profile runs in one process only (no --nproc)")
        with socket.socket() as s:  # a free port for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.multiprocessing.spawn(train, args=(a, port), nprocs=a.nproc, join=True)
    else:
        train(0, a, None)


def train(rank, a, port):
    dist = None
    if port is not None:
        import torch.distributed as dist
        # PyTorch 2.4+ serves the TCP store through libuv unless USE_LIBUV=0; builds without
        # libuv (Debian 13's 2.6) refuse it. 1.13 ignores the variable.
        os.environ.setdefault("USE_LIBUV", "0")
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank,
                                world_size=a.nproc)
    torch.set_num_threads(a.threads)
    cfg = load_config(a.config, a.set)
    data, t = cfg["data"], cfg["train"]
    seq_len = a.seq_len or data["max_len"]
    batch_seqs = a.batch_seqs or max(1, data["batch_tokens"] // seq_len)

    torch.manual_seed(cfg["model"]["init_seed"])
    model = Encoder(cfg, a.vocab, max(data["max_len"], seq_len), a.prune_last_layer)
    model.train()
    torch.manual_seed(t["seed"])
    params = list(model.parameters())
    trainable = [q for q in params if q.requires_grad]
    groups = [{"params": [q for q in trainable if q.dim() >= 2], "weight_decay": t["weight_decay"]},
              {"params": [q for q in trainable if q.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=t["lr"], betas=(t["beta1"], t["beta2"]), eps=t["eps"],
                            foreach=a.foreach)
    max_norm = t["clip_norm"] if t["clip_norm"] > 0 else float("inf")

    gen = torch.Generator()
    gen.manual_seed(a.seed + 1000003 * rank)  # each rank its own batches
    batches = [make_batch(batch_seqs, seq_len, a.vocab, data["mask_prob"], gen)
               for _ in range(a.warmup + a.steps + a.profile)]
    checksum = batches[0][0].sum().item() + batches[0][1].ne(-100).sum().item()

    times, profiled_ms, prof = [], 0.0, None
    for i, (ids, labels) in enumerate(batches):
        if a.profile and i == a.warmup + a.steps:  # extra steps under the profiler, never timed
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            prof.__enter__()
        t0 = time.perf_counter()
        loss, aux = model.mlm(ids, labels)
        (loss + aux).backward()
        loss_v, aux_v = loss.item(), aux.item()
        if dist is not None:
            grads = [q.grad if q.grad is not None else torch.zeros_like(q) for q in trainable]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= a.nproc
            offset = 0
            for q in trainable:
                n = q.numel()
                q.grad = flat[offset:offset + n].view_as(q)
                offset += n
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        if not (math.isfinite(loss_v) and math.isfinite(float(grad_norm))):
            raise SystemExit("step %d: loss or gradient norm not finite" % (i + 1))
        if a.warmup <= i < a.warmup + a.steps:
            times.append((t1 - t0) * 1e3)
        elif i >= a.warmup + a.steps:
            profiled_ms += (t1 - t0) * 1e3 / a.profile
    if prof is not None:
        prof.__exit__(None, None, None)
        ops = sorted(((e.self_cpu_time_total / 1e3 / a.profile, e.key, e.count / a.profile)
                      for e in prof.key_averages()), reverse=True)
        total = sum(op[0] for op in ops)
        print("self time per step over %d profiled steps of %.1f ms (ops %.1f ms, outside ops %.1f ms):"
              % (a.profile, profiled_ms, total, profiled_ms - total), file=sys.stderr)
        for ms, name, calls in ops[:30]:
            print("%10.1f ms %7.0f calls  %s" % (ms, calls, name), file=sys.stderr)
    step_ms = statistics.median(times)
    if rank != 0:
        return
    tokens = batch_seqs * seq_len * a.nproc
    moe = cfg["moe"]
    print(json.dumps({"impl": "pytorch", "config": cfg["name"],
                      "router": moe["router"] if moe else "dense", "batch_seqs": batch_seqs,
                      "seq_len": seq_len, "vocab": a.vocab, "tokens": tokens, "steps": a.steps,
                      "warmup": a.warmup, "threads": torch.get_num_threads(), "ranks": a.nproc, "step_ms": step_ms,
                      "step_ms_min": min(times), "step_ms_max": max(times),
                      "tokens_per_s": tokens / (step_ms / 1e3),
                      "params": sum(q.numel() for q in params), "last_loss": loss_v,
                      "last_aux_loss": aux_v, "batch_checksum": float(checksum),
                      "torch": torch.__version__, "foreach": a.foreach,
                      "last_layer": "labelled positions" if a.prune_last_layer else "full"}),
          flush=True)


if __name__ == "__main__":
    main()
