"""One soft-prompt training step in plain PyTorch autograd + torch.optim.AdamW, the reference side
of bench/soft-prompt.bench.ts. The model is llama_torch.py's Llama (same safetensors file, frozen);
the step is what stages/soft-prompts/train.ts builds for a plain soft prompt:

  k trainable vectors in front of each row's token embeddings (right-padded batch: mask 0 on the
  padding) -> hidden states at the real tokens -> cross-entropy of the targets where loss_mask is 1,
  averaged over those positions -> backward -> clip_grad_norm_ -> AdamW (decay on the prompt)

Usage: /usr/bin/python3 soft_prompt_train_torch.py MODEL_DIR SPEC_FILE THREADS. Prints one JSON line
(the check), then for each line "step" on stdin runs one more step and prints {"seconds": its time},
so the TypeScript side can alternate its steps with these ones under the same machine load.
SPEC_FILE (JSON): {"check_steps", "lr", "adamw": {"beta1", "beta2", "eps", "weight_decay",
  "max_grad_norm"}, "prompt": {"shape", "data"}, "batch": {name: {"shape", "data"}}}  (batch names:
  input_ids, attention_mask, targets, loss_mask)
The check: the loss and gradient norm of each of check_steps steps from the given prompt on the
batch, and the prompt after the last of them.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_torch import SpecTrainer, serve_training  # noqa: E402


class Trainer(SpecTrainer):
    def __init__(self, model, spec):
        super().__init__(model, spec)
        t = self.tensor
        self.ids = t("input_ids", torch.int64)
        self.mask = t("attention_mask", torch.int64)
        self.targets = t("targets", torch.int64).reshape(-1)
        self.loss_mask = t("loss_mask", torch.float32).reshape(-1)

    def fresh(self):
        p = self.spec["prompt"]
        prompt = torch.tensor(p["data"], dtype=torch.float32).reshape(p["shape"]).requires_grad_()
        a = self.spec["adamw"]
        opt = torch.optim.AdamW([prompt], lr=self.spec["lr"], betas=(a["beta1"], a["beta2"]), eps=a["eps"], weight_decay=a["weight_decay"])
        return prompt, opt

    def step(self, prompt, opt):
        opt.zero_grad(set_to_none=True)
        h, _ = self.model.forward(self.ids, mask=self.mask, prompt=prompt)
        h = h[:, prompt.shape[0]:].reshape(-1, h.shape[-1])
        nll = torch.nn.functional.cross_entropy(h @ self.model.lm_head.T, self.targets, reduction="none")
        loss = (nll * self.loss_mask).sum() / self.loss_mask.sum()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([prompt], self.spec["adamw"]["max_grad_norm"])
        opt.step()
        return float(loss), float(norm)


def check(spec, fresh, step):
    state = fresh()
    steps = [step(state) for _ in range(spec["check_steps"])]
    return {"loss": [s[0] for s in steps], "grad_norm": [s[1] for s in steps], "prompt_last": state[0].detach().reshape(-1).tolist()}


def make_trainer(model, spec):
    trainer = Trainer(model, spec)
    return trainer.fresh, lambda state: trainer.step(*state)


if __name__ == "__main__":
    serve_training(make_trainer, check)
