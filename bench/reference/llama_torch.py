"""A straightforward Llama (RMSNorm, RoPE, GQA, SwiGLU) in plain PyTorch, the reference side of
bench/models.bench.ts. Reads config.json and model.safetensors of a float32 Llama checkpoint
(the safetensors header is parsed here: the `safetensors` package is not in Debian), then times
on the CPU, as the TypeScript side does:

  generation  prompts [B, prompt_len] (equal lengths, so no padding) -> new_tokens tokens each,
              KV cache, temperature 1 + top-p 0.9 sampling (sort, softmax, cumsum, multinomial)
  scoring     logits of [B, seq_len] given tokens (one forward pass, full logits)

Usage: /usr/bin/python3 llama_torch.py MODEL_DIR SPEC_JSON  -> prints one JSON line of timings.
SPEC_JSON: {"threads", "reps", "generation": [{"batch", "prompt_len", "new_tokens"}], "scoring": {"batch", "seq_len"}}
Only what the bench's model uses is implemented: no rope scaling, no biases, float32 weights.
"""
import json
import math
import os
import struct
import sys
import time

import torch


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: {name}: only F32 weights are supported here, got {info['dtype']}")
        begin, end = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.float32).reshape(info["shape"])
    return out


class Llama:
    def __init__(self, model_dir):
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        w = load_safetensors(os.path.join(model_dir, "model.safetensors"))
        self.n_layers = cfg["num_hidden_layers"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.n_heads
        self.eps = cfg["rms_norm_eps"]
        theta = cfg.get("rope_theta", 10000.0)
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        self.embed = w["model.embed_tokens.weight"]
        self.lm_head = w.get("lm_head.weight", self.embed)
        self.norm = w["model.norm.weight"]
        self.layers = []
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            self.layers.append({k: w[p + n + ".weight"] for k, n in [
                ("in_norm", "input_layernorm"), ("post_norm", "post_attention_layernorm"),
                ("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"), ("o", "self_attn.o_proj"),
                ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"), ("down", "mlp.down_proj")]})

    def rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, pos):
        ang = pos[..., None].float() * self.inv_freq  # [T, hd/2] or [B, T, hd/2]
        cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
        if pos.dim() == 2:  # per-row positions: broadcast over heads
            cos, sin = cos[:, None], sin[:, None]
        x1, x2 = x[..., : self.head_dim // 2], x[..., self.head_dim // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def forward(self, ids, cache=None, mask=None, lora=None, prompt=None):
        """ids [B, T]; cache: list of (k, v) [B, kv, P, hd] or None. Returns hidden [B, T, H], new cache.
        mask [B, T] (no cache): 1 = token, 0 = padding; positions are cumsum(mask) - 1 clamped
        at 0 and padded keys get a -1e9 score bias, as src/models/forward.ts does.
        lora: (scale, {module path: (A [r, in], B [out, r])}) adds scale * B A x to those layers.
        prompt: soft-prompt vectors [k, H] in front of every row's token embeddings (no cache; mask
        given): hidden states come back for all k + T positions."""
        x = self.embed[ids]
        if prompt is not None:
            x = torch.cat([prompt.expand(ids.shape[0], -1, -1), x], 1)
            mask = torch.cat([torch.ones(ids.shape[0], prompt.shape[0], dtype=mask.dtype), mask], 1)
        B, T = x.shape[:2]
        P = 0 if cache is None else cache[0][0].shape[2]
        causal = torch.ones(T, P + T, dtype=torch.bool).tril(P)
        if mask is None:
            pos = torch.arange(P, P + T)
        else:
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            causal = causal & (mask[:, None, None, :] > 0)  # [B, 1, T, S]
        scale, adapters = lora if lora is not None else (0.0, {})

        def linear(h, i, name, path):
            y = h @ self.layers[i][name].T
            ab = adapters.get(f"model.layers.{i}.{path}")
            return y if ab is None else y + scale * ((h @ ab[0].T) @ ab[1].T)

        new_cache = []
        for i, L in enumerate(self.layers):
            h = self.rms(x, L["in_norm"])
            q = linear(h, i, "q", "self_attn.q_proj").view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
            k = linear(h, i, "k", "self_attn.k_proj").view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            v = linear(h, i, "v", "self_attn.v_proj").view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = self.rope(q, pos), self.rope(k, pos)
            if cache is not None:
                k = torch.cat([cache[i][0], k], 2)
                v = torch.cat([cache[i][1], v], 2)
            new_cache.append((k, v))
            rep = self.n_heads // self.n_kv
            kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            s = (q @ kk.transpose(-1, -2)) / math.sqrt(self.head_dim)
            # -1e9 rather than -inf: a fully padded query row stays finite (its output is unused)
            s = s.masked_fill(~causal, -1e9)
            a = (s.softmax(-1) @ vv).transpose(1, 2).reshape(B, T, -1)
            x = x + linear(a, i, "o", "self_attn.o_proj")
            h = self.rms(x, L["post_norm"])
            act = torch.nn.functional.silu(linear(h, i, "gate", "mlp.gate_proj")) * linear(h, i, "up", "mlp.up_proj")
            x = x + linear(act, i, "down", "mlp.down_proj")
        return self.rms(x, self.norm), new_cache

    def logits(self, ids):
        h, _ = self.forward(ids)
        return h @ self.lm_head.T

    def generate(self, prompts, new_tokens, top_p=0.9, generator=None):
        h, cache = self.forward(prompts)
        out = []
        for _ in range(new_tokens):
            logits = h[:, -1] @ self.lm_head.T
            probs, order = logits.softmax(-1).sort(-1, descending=True)
            before = probs.cumsum(-1) - probs
            probs = probs.masked_fill(before >= top_p, 0.0)
            pick = torch.multinomial(probs, 1, generator=generator)
            tok = order.gather(-1, pick)
            out.append(tok)
            h, cache = self.forward(tok, cache)
        return torch.cat(out, 1)


class SpecTrainer:
    """Base of the training references' trainers: the frozen model and the JSON spec, whose
    "batch" entries ({"shape", "data"}) tensor() reads."""

    def __init__(self, model, spec):
        self.model = model
        self.spec = spec

    def tensor(self, key, dtype):
        b = self.spec["batch"][key]
        return torch.tensor(b["data"], dtype=dtype).reshape(b["shape"])


def serve_training(make_trainer, check):
    """The protocol of the training references (lora_train_torch.py, soft_prompt_train_torch.py):
    argv MODEL_DIR SPEC_FILE THREADS; make_trainer(Llama, spec) -> (fresh, step) where fresh()
    gives a new training state and step(state) runs one step returning (loss, grad_norm);
    check(spec, fresh, step) -> the check dict. Prints {"torch", "threads", "blas", "check"}, then
    answers each "step" line on stdin with {"seconds": its time}."""
    model_dir, spec_file, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    spec = json.load(open(spec_file))
    torch.set_num_threads(threads)
    fresh, step = make_trainer(Llama(model_dir), spec)
    result = check(spec, fresh, step)
    blas = sorted({line.split()[-1] for line in open("/proc/self/maps") if "blas" in line})
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "blas": blas, "check": result}), flush=True)
    state = fresh()
    for line in sys.stdin:
        if line.strip() != "step":
            raise SystemExit(f"expected 'step' on stdin, got {line.strip()!r}")
        t0 = time.perf_counter()
        step(state)
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)


def timed(fn, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)  # best of reps, as the TypeScript side


def main():
    model_dir, spec = sys.argv[1], json.loads(sys.argv[2])
    torch.set_num_threads(spec["threads"])
    model = Llama(model_dir)
    vocab = model.embed.shape[0]
    g = torch.Generator().manual_seed(0)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "generation": [], "scoring": None}
    with torch.inference_mode():
        for gen in spec["generation"]:
            prompts = torch.randint(3, vocab, (gen["batch"], gen["prompt_len"]), generator=g)
            sec = timed(lambda: model.generate(prompts, gen["new_tokens"], generator=g), spec["reps"])
            result["generation"].append({**gen, "seconds": sec, "tokens_per_s": gen["batch"] * gen["new_tokens"] / sec})
        sc = spec["scoring"]
        ids = torch.randint(3, vocab, (sc["batch"], sc["seq_len"]), generator=g)
        sec = timed(lambda: model.logits(ids), spec["reps"])
        result["scoring"] = {**sc, "seconds": sec, "tokens_per_s": sc["batch"] * sc["seq_len"] / sec}
        # the reference's greedy continuation of a fixed prompt, for a correctness cross-check
        h, cache = model.forward(torch.tensor([spec["check_prompt"]]))
        greedy = []
        for _ in range(spec["check_tokens"]):
            tok = (h[:, -1] @ model.lm_head.T).argmax(-1, keepdim=True)
            greedy.append(int(tok))
            h, cache = model.forward(tok, cache)
        result["greedy_check"] = greedy
    # Debian's torch calls whatever libblas.so.3 points to: the reference BLAS (slow) unless
    # OpenBLAS is installed (apt-get install -y libopenblas0). Record which one ran.
    result["blas"] = sorted({line.split()[-1] for line in open("/proc/self/maps") if "blas" in line})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
