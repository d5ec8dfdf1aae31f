"""AdamW with decoupled weight decay, the learning-rate schedule, and gradient-norm clipping.

AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv:1711.05101,
Algorithm 2), for one parameter tensor theta with gradient g at step t = 1, 2, ...:

    theta <- theta - lr * wd * theta              decoupled weight decay (line 12, eta_t = lr)
    m     <- beta1 * m + (1 - beta1) * g          first moment, EMA of gradients (line 7)
    v     <- beta2 * v + (1 - beta2) * g^2        second moment, EMA of squared gradients (line 8)
    m_hat  = m / (1 - beta1^t)                    bias corrections (lines 9-10): m and v start at 0
    v_hat  = v / (1 - beta2^t)                    and would otherwise be biased towards 0 early on
    theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)                                    (line 12)

Weight decay is "decoupled": it shrinks theta directly instead of being added to g as L2
regularisation (which Adam would rescale by 1/sqrt(v_hat), decaying rarely-updated weights less).
The convention here is torch.optim.AdamW's: decay multiplies by (1 - lr * wd) *before* the Adam
step, with the schedule multiplier folded into lr. With correct_bias=False (minllama / the old HF
AdamW option) m_hat = m and v_hat = v.

Two implementations of the same update, tested equal:
    adamw_step_reference  a Python loop over tensors, one line per line of Algorithm 2;
    adamw_step_foreach    torch._foreach_* ops over the whole list at once (faster on GPU: one
                          multi-tensor kernel launch per op instead of one per parameter tensor).

Learning-rate schedule (lr_at), for step s = 0, 1, ... (the index of the optimizer step about to run):
    s < warmup:   lr = base_lr * (s + 1) / warmup                   linear warmup (Goyal et al. 2017)
    afterwards:   p = min(1, (s - warmup) / (total - warmup))       progress through the decay
                  cosine:   lr = base_lr * (r + (1 - r) * (1 + cos(pi * p)) / 2)
                            (SGDR, Loshchilov & Hutter 2017, arXiv:1608.03983, eq. 5, no restarts)
                  linear:   lr = base_lr * (r + (1 - r) * (1 - p))
                  constant: lr = base_lr
    with r = min_lr_ratio, the floor as a fraction of base_lr.

Gradient clipping (clip_grad_norm, Pascanu et al. 2013, arXiv:1211.5063, Algorithm 1):
    total = sqrt(sum_i ||g_i||^2);  g_i <- g_i * min(1, max_norm / (total + 1e-6))

Tests: tests/test_optimizer.py checks AdamW against torch.optim.AdamW over 200 steps (fp64 and
fp32), the foreach path against the loop, lr_at at key steps, and clip_grad_norm against
torch.nn.utils.clip_grad_norm_.
"""
import math

import torch

import distributed

SCHEDULES = ("cosine", "linear", "constant")


# ----------------------------------------------------------------------------
# the AdamW update as functions of plain tensors

def adamw_step_reference(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps,
                         weight_decay, correct_bias=True):
    """One AdamW step (Algorithm 2) on lists of tensors, in place, one tensor at a time.

    params, grads, exp_avgs (m), exp_avg_sqs (v): lists of same-shaped tensors per parameter.
    step: the step number t >= 1 after this update (used for the bias corrections).
    """
    bias_correction1 = 1 - beta1 ** step if correct_bias else 1.0
    bias_correction2 = 1 - beta2 ** step if correct_bias else 1.0
    for theta, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        theta.mul_(1 - lr * weight_decay)                      # decoupled weight decay
        m.lerp_(g, 1 - beta1)                                  # m = beta1*m + (1-beta1)*g
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)          # v = beta2*v + (1-beta2)*g^2
        # lr * m_hat / (sqrt(v_hat) + eps), with the corrections folded into scalars
        denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(eps)
        theta.addcdiv_(m, denom, value=-lr / bias_correction1)


def adamw_step_foreach(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps,
                       weight_decay, correct_bias=True):
    """adamw_step_reference with torch._foreach_* ops: the same maths, one launch per op.

    All tensors must share one device and dtype (AdamW.step groups them so).
    """
    bias_correction1 = 1 - beta1 ** step if correct_bias else 1.0
    bias_correction2 = 1 - beta2 ** step if correct_bias else 1.0
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, math.sqrt(bias_correction2))
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, value=-lr / bias_correction1)


# ----------------------------------------------------------------------------
# the optimizer

class AdamW(torch.optim.Optimizer):
    """AdamW (Loshchilov & Hutter 2019, Algorithm 2) with torch.optim.AdamW's conventions.

    foreach=False runs adamw_step_reference (readable), foreach=True adamw_step_foreach (fast).
    State per parameter: "step" (int t), "exp_avg" (m), "exp_avg_sq" (v).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                 correct_bias=True, foreach=False):
        if lr < 0.0:
            raise ValueError(f"--lr {lr}: the learning rate must be >= 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas {tuple(betas)}: each beta must be in [0, 1)")
        if eps < 0.0:
            raise ValueError(f"eps {eps}: must be >= 0")
        if weight_decay < 0.0:
            raise ValueError(f"--weight_decay {weight_decay}: must be >= 0")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        correct_bias=correct_bias, foreach=foreach)
        super().__init__(params, defaults)

    def _gather(self, group):
        """Tensors of the params with a gradient in `group`, bucketed by (device, dtype, step)."""
        buckets = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("AdamW does not support sparse gradients; use dense embeddings")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            key = (p.device, p.dtype, state["step"])
            bucket = buckets.setdefault(key, ([], [], [], []))
            for lst, t in zip(bucket, (p, p.grad, state["exp_avg"], state["exp_avg_sq"])):
                lst.append(t)
        return buckets

    @torch.no_grad()
    def step(self, closure=None):
        """Apply one AdamW update to every parameter that has a gradient; returns closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            update = adamw_step_foreach if group["foreach"] else adamw_step_reference
            for (_, _, step), tensors in self._gather(group).items():
                update(*tensors, step=step, lr=group["lr"], beta1=beta1, beta2=beta2,
                       eps=group["eps"], weight_decay=group["weight_decay"],
                       correct_bias=group["correct_bias"])
        return loss


# ----------------------------------------------------------------------------
# learning-rate schedule and gradient clipping

def lr_at(step, base_lr, warmup_steps, total_steps, schedule="cosine", min_lr_ratio=0.0):
    """Learning rate for optimizer step `step` (0-based): linear warmup, then decay to the floor."""
    if schedule not in SCHEDULES:
        raise ValueError(f"--schedule {schedule!r}: unknown; use one of {', '.join(SCHEDULES)}")
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return base_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * decay)


@torch.no_grad()
def clip_grad_norm(parameters, max_norm):
    """Scale all gradients so their joint L2 norm is at most max_norm; returns the norm before.

    The norm is taken over all gradients as one vector (Pascanu et al. 2013), as
    torch.nn.utils.clip_grad_norm_ does; the 1e-6 keeps the division finite at norm 0.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g, 2.0).to(device) for g in grads]    # ||g_i|| each
    total = torch.linalg.vector_norm(torch.stack(norms), 2.0)                # sqrt(sum ||g_i||^2)
    total = distributed.full(total)          # FSDP shards: the norm over all ranks, a plain tensor
    # min(1, .) via clamp keeps this on the device: no .item() sync
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device, g.dtype))
    return total
