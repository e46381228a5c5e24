"""One LoRA training step in plain PyTorch autograd + torch.optim.AdamW, the reference side of
bench/train.bench.ts. The model is llama_torch.py's Llama (same safetensors file); the step is
what stages/baking/lora-train.ts builds with teacher "stored":

  student hidden states at the positions predicting response tokens (left-padded batch, LoRA
  y = W x + scale * B A x on the given modules) -> forward KL(teacher || student) per token with
  the teacher as top-k log-probs + tail mass (src/graph/losses.ts topKForwardKL), summed over
  tokens and multiplied by loss_scale -> backward -> clip_grad_norm_ -> AdamW.step

Usage: /usr/bin/python3 lora_train_torch.py MODEL_DIR SPEC_FILE THREADS. Prints one JSON line (the check),
then for each line "step" on stdin runs one more step and prints {"seconds": its time}, so the
TypeScript side can alternate its steps with these ones and both see the same machine load.
SPEC_FILE (JSON): {"check_steps", "lr", "adamw": {"beta1", "beta2", "eps",
  "weight_decay", "max_grad_norm"}, "lora_scale", "lora": [{"module", "A": {"name", "shape", "data"}, "B": {...}}],
  "batch": {name: {"shape", "data"}}}  (batch names: student_ids, student_mask, student_positions,
  token_mask, top_ids, top_logprobs, tail_mass, loss_scale)
The check: the loss and gradient norm of each of check_steps steps from the given LoRA matrices
on the batch, and the matrices after the first and after the last of them.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_torch import SpecTrainer, serve_training  # noqa: E402


def top_k_forward_kl(lq, top_ids, top_lp, tail, mask):
    """Σ_k p_k (log p_k - log q_k) + p_tail (log p_tail - log q_tail) per token, times mask."""
    lq_top = lq.gather(1, top_ids)
    top_term = (top_lp.exp() * (top_lp - lq_top)).sum(1)
    tiny = 1e-12  # as losses.ts: probabilities below it count as 0 in the tail term
    q_tail = (1 - lq_top.exp().sum(1)).clamp(min=tiny)
    tail_term = torch.where(tail > tiny, tail * (tail.clamp(min=tiny).log() - q_tail.log()), torch.zeros_like(tail))
    return (top_term + tail_term) * mask


class Trainer(SpecTrainer):
    def __init__(self, model, spec):
        super().__init__(model, spec)
        t = self.tensor
        self.ids = t("student_ids", torch.int64)
        self.mask = t("student_mask", torch.int64)
        self.positions = t("student_positions", torch.int64)
        self.token_mask = t("token_mask", torch.float32)
        self.top_ids = t("top_ids", torch.int64)
        self.top_lp = t("top_logprobs", torch.float32)
        self.tail = t("tail_mass", torch.float32)
        self.loss_scale = float(spec["batch"]["loss_scale"]["data"][0])

    def fresh(self):
        """The initial LoRA matrices as leaf tensors and an AdamW over them."""
        leaf = lambda m: torch.tensor(m["data"], dtype=torch.float32).reshape(m["shape"]).requires_grad_()
        params = {m["name"]: leaf(m) for t in self.spec["lora"] for m in (t["A"], t["B"])}
        a = self.spec["adamw"]
        opt = torch.optim.AdamW(params.values(), lr=self.spec["lr"], betas=(a["beta1"], a["beta2"]), eps=a["eps"], weight_decay=a["weight_decay"])
        adapters = {t["module"]: (params[t["A"]["name"]], params[t["B"]["name"]]) for t in self.spec["lora"]}
        return params, opt, (self.spec["lora_scale"], adapters)

    def step(self, params, opt, lora):
        opt.zero_grad(set_to_none=True)
        h, _ = self.model.forward(self.ids, mask=self.mask, lora=lora)
        h = h.reshape(-1, h.shape[-1])[self.positions]
        lq = (h @ self.model.lm_head.T).log_softmax(-1)
        loss = top_k_forward_kl(lq, self.top_ids, self.top_lp, self.tail, self.token_mask).sum() * self.loss_scale
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), self.spec["adamw"]["max_grad_norm"])
        opt.step()
        return float(loss), float(norm)


def check(spec, fresh, step):
    state = fresh()
    params = state[0]
    flat = lambda: {k: v.detach().reshape(-1).tolist() for k, v in params.items()}
    steps = [step(state)]
    first = flat()
    steps += [step(state) for _ in range(spec["check_steps"] - 1)]
    return {"loss": [s[0] for s in steps], "grad_norm": [s[1] for s in steps], "params_first": first, "params_last": flat()}


def make_trainer(model, spec):
    trainer = Trainer(model, spec)
    return trainer.fresh, lambda state: trainer.step(*state)


if __name__ == "__main__":
    serve_training(make_trainer, check)
