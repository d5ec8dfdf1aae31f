"""S4: the SSM of ssm.py made fast and stable (HiPPO init, a convolution kernel, FFT) + the CLI.

1. HiPPO-LegS (Gu et al. 2020, arXiv:2008.07669, Sec. 3 / Appendix D.3), the A that makes the
   state an optimal Legendre summary of the past:
       A_nk = -sqrt(2n+1) sqrt(2k+1) if n > k,  -(n+1) if n = k,  0 if n < k;   B_n = sqrt(2n+1)
2. NPLR / DPLR form (S4, Gu, Goel & Re 2022, arXiv:2111.00396, Sec. 3.3, Theorem 1):
       A = V (Lambda - P Q^*) V^*,  P = Q = V^* sqrt(n + 1/2)   (A + P P^T is normal: -1/2 I + skew)
   Diagonal inits (S4D, Gu et al. 2022, arXiv:2206.11893, Sec. 4), n = 0..N-1 complex modes:
       S4D-LegS: the Lambda of the NPLR form above (modes with Im > 0), B = V^* B
       S4D-Lin:  a_n = -1/2 + i pi n          S4D-Inv: a_n = -1/2 + i (2N/pi) (2N/(2n+1) - 1)
3. The SSM convolution kernel (S4 Eq. 4-5): unrolling h_t = A_bar h_{t-1} + B_bar u_t gives
       y_t = sum_k K_k u_{t-k} + D u_t,   K_k = Re(C A_bar^k B_bar),  k = 0..L-1
   Diagonal A: K = Re((C * B_bar) @ Vandermonde(A_bar)), Vandermonde[n, k] = A_bar_n^k (S4D Eq. 5);
     the fast path splits k = a S + b (S ~ sqrt L) so no (H, N, L) matrix is built (ssm_kernel_blocked).
   DPLR A (full S4): the truncated generating function at the roots of unity omega_k = e^{-2 pi i k/L},
       K^(omega) = C~ (I - A_bar omega)^{-1} B_bar,   C~ = C (I - A_bar^L)  (C~ is what S4 learns)
     = 2/(1+omega) C~ [g(omega) - A]^{-1} B,          g(omega) = (2/dt) (1-omega)/(1+omega) (bilinear)
     and Woodbury turns [g - Lambda + P Q^*]^{-1} into Cauchy sums k_ab = sum_n a_n b_n / (g - Lambda_n):
       K^ = 2/(1+omega) [k_{C~,B} - k_{C~,P} (1 + k_{Q*,P})^{-1} k_{Q*,B}],  K = Re(iFFT(K^))  (S4 Alg. 1)
4. Causal convolution by FFT: y = irfft(rfft(u, 2L) * rfft(K, 2L))[:L] (zero-padding to 2L makes the
   circular convolution causal), O(L log L) instead of the scan's L sequential steps, in fp32.
5. Recurrent `step` mode (inference): h = A_bar h + B_bar u_t, y = Re(C h) + D u_t; for DPLR with
   dense A_bar (N x N) and C = C~ (I - A_bar^L)^{-1}.

Shapes: B batch, L length, H channels, N complex state size. The classifier, data and tokenizers are
ssm.py's. CLI: `run.py --option ssm | s4 | ssm_compare` (flags: add_arguments).
Tests: tests/test_s4.py (FFT conv == ssm.scan for ZOH and bilinear; Vandermonde kernel == explicit
powers C A_bar^k B_bar; HiPPO-LegS == closed form and == its NPLR form; Cauchy kernel == dense powers;
step mode == convolution mode; gradients; no NaN at L = 8192; CLI end to end).
"""
import argparse
import csv
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import data
import ssm
import train


# ----------------------------------------------------------------------------
# HiPPO-LegS, its NPLR form, and the diagonal inits

def hippo_legs(N):
    """HiPPO-LegS A (N, N) and B (N,) in float64, built as -(tril(p p^T) - diag(n)), p_n = sqrt(2n+1)."""
    p = torch.sqrt(1 + 2 * torch.arange(N, dtype=torch.float64))        # (N,)
    A = torch.tril(p[:, None] * p[None, :]) - torch.diag(torch.arange(N, dtype=torch.float64))
    return -A, p.clone()                                                  # (N, N), (N,)


def nplr_legs(N):
    """Lambda (N,), P (N,), B (N,) complex128 and V (N, N) with A = V (diag(Lambda) - P P^*) V^*."""
    A, B = hippo_legs(N)
    p = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)           # (N,)
    S = A + p[:, None] * p[None, :]                  # normal part: -1/2 I + skew-symmetric
    S_skew = S - torch.diag(torch.diagonal(S))       # (N, N) skew-symmetric
    imag, V = torch.linalg.eigh(S_skew.to(torch.complex128) * -1j)  # -i * skew is Hermitian
    Lambda = torch.diagonal(S).mean() + 1j * imag                    # (N,) all real parts -1/2
    Vh = V.conj().T
    return Lambda, Vh @ p.to(V.dtype), Vh @ B.to(V.dtype), V


def s4d_init(kind, N):
    """Diagonal A (N,) and B (N,) complex64 for S4D-LegS / -Lin / -Inv (N complex modes)."""
    n = torch.arange(N, dtype=torch.float64)
    if kind == "s4d-lin":
        A, B = -0.5 + 1j * math.pi * n, torch.ones(N)
    elif kind == "s4d-inv":
        A, B = -0.5 + 1j * (2 * N / math.pi) * (2 * N / (2 * n + 1) - 1), torch.ones(N)
    elif kind in ("s4d-legs", "legs"):
        Lambda, _, B, _ = nplr_legs(2 * N)           # 2N real modes = N conjugate pairs
        keep = torch.argsort(Lambda.imag, descending=True)[:N]
        A, B = Lambda[keep], B[keep]
    else:
        raise ValueError(f"init {kind!r}: use s4d-lin, s4d-inv or s4d-legs for a diagonal S4")
    return A.to(torch.cfloat), B.to(torch.cfloat)


# ----------------------------------------------------------------------------
# the kernel and the FFT convolution

def ssm_kernel(A_bar, B_bar, C, L):
    """K_k = Re(sum_n C_n B_bar_n A_bar_n^k), k < L, via a Vandermonde product. (H, N) -> (H, L)."""
    k = torch.arange(L, device=A_bar.device, dtype=A_bar.real.dtype)            # (L,)
    vandermonde = torch.exp(torch.log(A_bar)[..., None] * k)                     # (H, N, L)
    return torch.einsum("hn,hnl->hl", C * B_bar, vandermonde).real               # (H, L)


def ssm_kernel_blocked(A_bar, B_bar, C, L):
    """ssm_kernel without the (H, N, L) Vandermonde matrix: the fast path S4DLayer uses.

    Write k = a S + b with S = ceil(sqrt(L)), 0 <= b < S. Then A_bar^k = A_bar^(aS) A_bar^b, so
        K[a S + b] = Re(sum_n (C B_bar A_bar^(aS))_n (A_bar^b)_n)
    is one complex matrix product per channel, (L/S, N) @ (N, S): two exps on (H, N, sqrt L)
    instead of one on (H, N, L) (complex exp is what the plain version spends its time on).
    """
    S = math.isqrt(L - 1) + 1                                                    # S * S >= L
    n_blocks = -(-L // S)                                                        # ceil(L / S)
    log_A = torch.log(A_bar)[..., None]                                          # (H, N, 1)
    b = torch.arange(S, device=A_bar.device, dtype=A_bar.real.dtype)             # (S,)
    a = torch.arange(n_blocks, device=A_bar.device, dtype=A_bar.real.dtype) * S  # (L/S,)
    inner = torch.exp(log_A * b)                                                 # (H, N, S)
    outer = (C * B_bar)[..., None] * torch.exp(log_A * a)                        # (H, N, L/S)
    K = torch.bmm(outer.transpose(1, 2), inner).real                             # (H, L/S, S)
    return K.reshape(K.shape[0], -1)[:, :L]                                      # (H, L)


def causal_fft_conv(u, K):
    """y_t = sum_{k<=t} K_k u_{t-k}: u (B, H, L), K (H, L) -> (B, H, L); fp32 even under autocast.

    Faster than the scan: two rfft of length 2L and one irfft, O(L log L) and fully parallel.
    """
    L = u.shape[-1]
    with torch.autocast(device_type=u.device.type, enabled=False):
        u_f = torch.fft.rfft(u.float(), n=2 * L)                                 # (B, H, L+1)
        K_f = torch.fft.rfft(K.float(), n=2 * L)                                 # (H, L+1)
        y = torch.fft.irfft(u_f * K_f, n=2 * L)[..., :L]                         # (B, H, L)
    return y.to(u.dtype)


def cauchy_dplr_kernel(Lambda, P, B, C_tilde, dt, L):
    """The full S4 kernel (H, L) of A = diag(Lambda) - P P^* (bilinear), Woodbury + Cauchy sums.

    Lambda, P, B, C_tilde (H, N) complex; dt (H,). See item 3 of the module docstring.
    """
    k = torch.arange(L, device=Lambda.device, dtype=Lambda.real.dtype)
    omega = torch.exp(-2j * math.pi * k / L)                                     # (L,)
    g = (2.0 / dt)[:, None] * ((1 - omega) / (1 + omega))                        # (H, L)
    cauchy = 1.0 / (g[:, None, :] - Lambda[..., None])                           # (H, N, L)
    # the four Cauchy sums k_ab[h, l] = sum_n a_n b_n cauchy[h, n, l] as one batched product
    weights = torch.stack([C_tilde * B, C_tilde * P, P.conj() * B, P.conj() * P], dim=1)  # (H, 4, N)
    k_cb, k_cp, k_pb, k_pp = torch.bmm(weights, cauchy).unbind(1)                 # 4 x (H, L)
    K_hat = 2.0 / (1 + omega) * (k_cb - k_cp * k_pb / (1 + k_pp))                # (H, L)
    return torch.fft.ifft(K_hat, n=L).real                                       # (H, L)


def dplr_dense_bilinear(Lambda, P, B, dt):
    """Dense A_bar (H, N, N), B_bar (H, N) of A = diag(Lambda) - P P^*, bilinear (for step mode)."""
    N = Lambda.shape[-1]
    A = torch.diag_embed(Lambda) - P[..., :, None] * P.conj()[..., None, :]      # (H, N, N)
    eye = torch.eye(N, dtype=A.dtype, device=A.device)
    half = dt[:, None, None] / 2 * A                                             # (H, N, N)
    A_bar = torch.linalg.solve(eye - half, eye + half)                           # (H, N, N)
    B_bar = torch.linalg.solve(eye - half, dt[:, None, None] * B[..., None])[..., 0]  # (H, N)
    return A_bar, B_bar


# ----------------------------------------------------------------------------
# layers

class S4DLayer(ssm.DiagonalSSM):
    """Diagonal S4 (S4D): DiagonalSSM's parameters and _discrete, forward = kernel + FFT conv.

    Same numbers as DiagonalSSM._forward (tests/test_s4.py) at a fraction of the time; `step`
    (inherited) is the recurrent mode.
    """

    def forward(self, u):
        A_bar, B_bar, C, D = self._discrete()
        K = ssm_kernel_blocked(A_bar, B_bar, C, u.shape[-1])          # (H, L)
        return causal_fft_conv(u, K) + (D[:, None] * u.float()).to(u.dtype)   # (B, H, L)


class S4Layer(nn.Module):
    """Full S4: DPLR A = diag(Lambda) - P P^* from HiPPO-LegS, bilinear, Cauchy kernel, FFT conv.

    Learns Lambda (Re < 0 via log), P, B, C~ (S4's C tilde), D, dt per channel. C~ ties the kernel to
    the training length: step mode converts C = C~ (I - A_bar^L)^{-1} for a given L.
    """

    def __init__(self, H, N, dt_min=1e-3, dt_max=1e-1, dt_clamp=(1e-4, 1.0)):
        super().__init__()
        Lambda, P, B, _ = nplr_legs(N)
        self.H, self.N, self.dt_clamp = H, N, dt_clamp
        log_dt = math.log(dt_min) + torch.rand(H) * (math.log(dt_max) - math.log(dt_min))
        self.log_dt = nn.Parameter(log_dt)                                          # (H,)
        self.log_Lambda_real = nn.Parameter(torch.log(-Lambda.real).float().repeat(H, 1))  # (H, N)
        self.Lambda_imag = nn.Parameter(Lambda.imag.float().repeat(H, 1))           # (H, N)
        self.P = nn.Parameter(torch.view_as_real(P.to(torch.cfloat)).repeat(H, 1, 1))   # (H, N, 2)
        self.B = nn.Parameter(torch.view_as_real(B.to(torch.cfloat)).repeat(H, 1, 1))   # (H, N, 2)
        C = torch.randn(H, N, dtype=torch.cfloat) * math.sqrt(0.5)
        self.C_tilde = nn.Parameter(torch.view_as_real(C))                          # (H, N, 2)
        self.D = nn.Parameter(torch.randn(H))                                       # (H,)

    def dplr(self):
        """Lambda, P, B, C~ (H, N) complex and dt (H,), with Re(Lambda) < 0 and dt clamped."""
        Lambda = torch.complex(-torch.exp(self.log_Lambda_real.float()).clamp(min=1e-4),
                               self.Lambda_imag.float())
        as_complex = [torch.view_as_complex(p.float()) for p in (self.P, self.B, self.C_tilde)]
        return (Lambda, *as_complex, torch.exp(self.log_dt.float()).clamp(*self.dt_clamp))

    def forward(self, u):
        Lambda, P, B, C_tilde, dt = self.dplr()
        K = cauchy_dplr_kernel(Lambda, P, B, C_tilde, dt, u.shape[-1])    # (H, L)
        return causal_fft_conv(u, K) + (self.D[:, None] * u.float()).to(u.dtype)   # (B, H, L)

    def recurrent(self, L):
        """A_bar (H, N, N), B_bar (H, N), C (H, N) of the recurrence equal to forward() on length L."""
        Lambda, P, B, C_tilde, dt = self.dplr()
        A_bar, B_bar = dplr_dense_bilinear(Lambda, P, B, dt)
        eye = torch.eye(self.N, dtype=A_bar.dtype, device=A_bar.device)
        # C (I - A_bar^L) = C~  <=>  (I - A_bar^L)^T C^T = C~^T
        C = torch.linalg.solve((eye - torch.linalg.matrix_power(A_bar, L)).transpose(-1, -2),
                               C_tilde[..., None])[..., 0]                          # (H, N)
        return A_bar, B_bar, C

    def step(self, u_t, h, recurrent):
        """One step: u_t (B, H), h (B, H, N), recurrent = self.recurrent(L) -> y_t (B, H), h."""
        A_bar, B_bar, C = recurrent
        h = torch.einsum("hnm,bhm->bhn", A_bar, h) + B_bar * u_t[..., None]    # (B, H, N)
        return torch.einsum("bhn,hn->bh", h, C).real + self.D * u_t, h

    def initial_state(self, batch):
        return torch.zeros(batch, self.H, self.N, dtype=torch.cfloat, device=self.D.device)


class FFTSSMBlock(ssm.SSMBlock):
    """Seed 000's FFTSSMBlock: ssm.SSMBlock with an S4D (diagonal) or S4 (DPLR) layer inside."""

    def make_layer(self, config):
        if config.layer == "s4":
            return S4Layer(config.d_model, config.d_state, config.dt_min, config.dt_max)
        A, B = s4d_init(config.init, config.d_state)
        return S4DLayer(config.d_model, config.d_state, A=A, B=B,
                        discretization=config.discretization,
                        dt_min=config.dt_min, dt_max=config.dt_max)


def build_model(config):
    """The classifier for config.layer: "ssm" (loop scan), "s4d" or "s4" (FFT)."""
    return ssm.SSMClassifier(config, ssm.SSMBlock if config.layer == "ssm" else FFTSSMBlock)


# ----------------------------------------------------------------------------
# data, training (train.fit is the loop), evaluation

SSM_PARAMS = ("log_dt", "log_A_real", "A_imag", "log_Lambda_real", "Lambda_imag", ".P", ".B")


def load_data(args):
    """Read and tokenize --train/--val/--test; num_classes = 1 + the largest training label."""
    train_ex = ssm.read_examples(args.train, flag="--train")
    num_classes = 1 + max(e["label"] for e in train_ex)
    val_ex = ssm.read_examples(args.val, num_classes, flag="--val")
    test_ex = ssm.read_examples(args.test, num_classes, require_label=False, flag="--test")
    if args.tokenizer == "bytes":
        tokenizer = ssm.ByteTokenizer()
    else:
        tokenizer = ssm.SentencePieceTokenizer.train([e["text"] for e in train_ex], args.vocab_size,
                                                     cache_dir=args.out_dir,
                                                     case_fold=args.case_fold)
    encoded = {name: ssm.encode_all(tokenizer, [e["text"] for e in ex], args.max_len)
               for name, ex in (("train", train_ex), ("val", val_ex), ("test", test_ex))}
    return {"examples": {"train": train_ex, "val": val_ex, "test": test_ex}, "ids": encoded,
            "tokenizer": tokenizer, "num_classes": num_classes}


def batches(dataset, split, batch_size, shuffle=False, seed=0):
    labels = [e["label"] if e["label"] is not None else 0 for e in dataset["examples"][split]]
    return data.Batches(dataset["ids"][split], labels, batch_size, dataset["tokenizer"].pad_id,
                        shuffle=shuffle, seed=seed, sort_by_length=not shuffle)


def loss_fn(model, batch):
    """Summed cross-entropy over the batch and the number of examples (train.fit's contract)."""
    device = next(model.parameters()).device
    logits = model(batch["tokens"].to(device), batch["attention_mask"].to(device))  # (B, C)
    loss = nn.functional.cross_entropy(logits.float(), batch["labels"].to(device), reduction="sum")
    return loss, len(batch["labels"])


@torch.no_grad()
def predict(model, eval_batches):
    """Predicted class per example (input order) and mean loss / accuracy against the labels."""
    device = next(model.parameters()).device
    preds, loss_sum, correct, count = {}, 0.0, 0, 0
    for batch in eval_batches:
        logits = model(batch["tokens"].to(device), batch["attention_mask"].to(device)).float()
        labels = batch["labels"].to(device)
        loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        guess = logits.argmax(-1)
        correct += int((guess == labels).sum())
        count += len(labels)
        preds.update(zip(batch["index"], guess.tolist()))
    return [preds[i] for i in range(count)], {"loss": loss_sum / count, "accuracy": correct / count}


def make_optimizer(model, args):
    """AdamW with S4's two groups: A, B, dt at min(lr, ssm_lr) without weight decay; the rest."""
    import optimizer
    special = [p for n, p in model.named_parameters() if any(s in n for s in SSM_PARAMS)]
    ids = {id(p) for p in special}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return optimizer.AdamW([{"params": rest, "weight_decay": args.weight_decay},
                            {"params": special, "lr": min(args.lr, args.ssm_lr), "weight_decay": 0.0}],
                           lr=args.lr)


def model_config(args, layer, dataset):
    """SSMConfig from the flags; the basic SSM takes --ssm_init, S4 takes --init."""
    return ssm.SSMConfig(vocab_size=dataset["tokenizer"].vocab_size,
                         num_classes=dataset["num_classes"], d_model=args.d_model,
                         n_layers=args.n_layers, d_state=args.d_state, dropout=args.dropout,
                         token_dropout=args.token_dropout, zero_init_branch=args.zero_init_branch,
                         layer=layer, init=args.ssm_init if layer == "ssm" else args.init,
                         discretization=args.discretization, mixing=args.mixing,
                         bidirectional=args.bidirectional, pooling=args.pooling,
                         pad_id=dataset["tokenizer"].pad_id)


def train_one(args, layer, name, dataset):
    """Build, train with train.fit, evaluate on val and test, write submission + results JSON."""
    device = "cuda" if args.use_gpu else "cpu"
    config = model_config(args, layer, dataset)
    model = build_model(config).to(device)
    train_batches = batches(dataset, "train", args.batch_size, shuffle=True, seed=args.seed)
    val_batches = batches(dataset, "val", args.eval_batch_size)
    fit_config = train.TrainConfig(
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        schedule="cosine", max_grad_norm=1.0, max_steps_per_epoch=args.max_steps_per_epoch,
        time_budget_s=args.time_budget, patience=args.patience, out_dir=args.out_dir, name=name,
        progress=not args.no_progress)
    history = train.fit(model, train_batches, loss_fn, fit_config,
                        evaluate=lambda m: predict(m, val_batches)[1],
                        optimizer=make_optimizer(model, args))
    _, val_metrics = predict(model, val_batches)
    test_preds, test_metrics = predict(model, batches(dataset, "test", args.eval_batch_size))
    test_ex = dataset["examples"]["test"]
    has_labels = all(e["label"] is not None for e in test_ex)
    submission = Path(args.out_dir) / f"{name}-submission.csv"
    write_submission(submission, [e["id"] for e in test_ex], test_preds)
    epochs = history["epochs"]
    steps = sum(e["steps"] for e in epochs)
    results = {
        "name": name, "layer": layer, "config": vars(config), "parameters": history["trainable_parameters"],
        "tokenizer": dataset["tokenizer"].kind, "vocab_size": config.vocab_size, "max_len": args.max_len,
        "epochs_run": len(epochs), "stopped": history["stopped"], "device": device,
        "torch_threads": torch.get_num_threads(),
        "train_time_s": sum(e["train_time_s"] for e in epochs),
        "time_per_epoch_s": [e["train_time_s"] for e in epochs],
        "time_per_step_s": sum(e["train_time_s"] for e in epochs) / max(steps, 1),
        "best_epoch": (history["best"] or {}).get("epoch"),
        "val_accuracy": val_metrics["accuracy"], "val_loss": val_metrics["loss"],
        "test_accuracy": test_metrics["accuracy"] if has_labels else None,
        "test_loss": test_metrics["loss"] if has_labels else None,
        "curves": [{"epoch": e["epoch"] + 1, "train_loss": e["train_loss"],
                    "val_loss": e.get("dev_loss"), "val_accuracy": e.get("dev_accuracy"),
                    "time_s": e["train_time_s"]} for e in epochs],
        "submission": str(submission)}
    train.save_json_atomic(Path(args.out_dir) / f"{name}-results.json", results)
    print(f"{name}: val acc {results['val_accuracy']:.4f}, test acc {results['test_accuracy']}, "
          f"{results['train_time_s']:.1f} s training, {results['time_per_step_s'] * 1000:.1f} ms/step")
    return results


def write_submission(path, ids, labels):
    """`id,label` CSV (Kaggle style), written atomically."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "label"])
    writer.writerows(zip(ids, labels, strict=True))
    train.write_text_atomic(path, out.getvalue())


# ----------------------------------------------------------------------------
# ssm_compare: a bag-of-words naive Bayes baseline, timing against L, the comparison table

def naive_bayes_accuracy(train_ex, test_ex, alpha=1.0):
    """Multinomial naive Bayes on lower-cased word counts, Laplace smoothing alpha (numpy only).

    log p(c | doc) = log prior_c + sum_w n_w log theta_cw,  theta_cw = (n_cw + alpha) / (n_c + alpha V)
    """
    import re
    words = lambda text: re.findall(r"\w+", text.lower())  # noqa: E731
    vocab = {w: i for i, w in enumerate(sorted({w for e in train_ex for w in words(e["text"])}))}
    C = 1 + max(e["label"] for e in train_ex)
    counts, prior = np.zeros((C, len(vocab))), np.zeros(C)
    for e in train_ex:
        prior[e["label"]] += 1
        np.add.at(counts[e["label"]], [vocab[w] for w in words(e["text"])], 1)
    log_theta = np.log((counts + alpha) / (counts.sum(1, keepdims=True) + alpha * len(vocab)))
    log_prior = np.log(prior / prior.sum())
    correct = 0
    for e in test_ex:
        ids = [vocab[w] for w in words(e["text"]) if w in vocab]
        correct += int(np.argmax(log_prior + log_theta[:, ids].sum(1)) == e["label"])
    return correct / len(test_ex)


def time_forward_backward(layer, L, batch=2, repeats=3, device="cpu"):
    """Median seconds of one forward + backward of a sequence layer on u (batch, H, L)."""
    u = torch.randn(batch, layer.H, L, device=device, requires_grad=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        layer(u).square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_vs_length(lengths, H=64, N=32, batch=2, loop_budget_s=60.0, device="cpu"):
    """Forward+backward seconds per L for the loop scan and the FFT convolution (same parameters).

    The loop is timed once per L (FFT: median of 3 after a warm-up) and is skipped once its
    predicted time (last time * L / last L) would exceed loop_budget_s; skipped points are None.
    """
    torch.manual_seed(0)
    A, B = s4d_init("s4d-lin", N)
    fft_layer = S4DLayer(H, N, A=A, B=B).to(device)
    loop_layer = ssm.DiagonalSSM(H, N, A=A, B=B).to(device)
    loop_layer.load_state_dict(fft_layer.state_dict())
    rows, last = [], None
    for L in lengths:
        time_forward_backward(fft_layer, L, batch, 1, device)
        row = {"L": L, "fft_s": time_forward_backward(fft_layer, L, batch, 3, device), "loop_s": None}
        if last is None or last[1] * L / last[0] <= loop_budget_s:
            row["loop_s"] = time_forward_backward(loop_layer, L, batch, 1, device)
            last = (L, row["loop_s"])
        rows.append(row)
        loop_text = "skipped" if row["loop_s"] is None else f"{row['loop_s'] * 1e3:.0f} ms"
        print(f"L={L}: fft {row['fft_s'] * 1e3:.1f} ms, loop {loop_text}", flush=True)
    return rows


def loglog_slope(rows, key):
    """Least-squares slope of log(time) against log(L) over the measured points (None if < 2)."""
    points = [(r["L"], r[key]) for r in rows if r[key] is not None]
    if len(points) < 2:
        return None
    return float(np.polyfit(np.log([p[0] for p in points]), np.log([p[1] for p in points]), 1)[0])


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    """Save a figure atomically (tmp + os.replace), small (dpi 80)."""
    import os
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=80)
    _pyplot().close(fig)
    os.replace(tmp, path)


def plot_time_vs_length(rows, path):
    """Log-log forward+backward time against L for the loop scan and the FFT convolution."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for key, label in (("loop_s", "loop scan (ssm.py)"), ("fft_s", "kernel + FFT conv (s4.py)")):
        points = [(r["L"], r[key]) for r in rows if r[key] is not None]
        slope = loglog_slope(rows, key)
        ax.loglog(*zip(*points), "o-", base=2, label=f"{label}, slope {slope:.2f}")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("forward + backward time (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_compare(results, path):
    """Left: train and val loss per epoch; right: val accuracy against training time."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        epochs = [c["epoch"] for c in r["curves"]]
        ax_loss.plot(epochs, [c["train_loss"] for c in r["curves"]], "o-", label=f"{r['name']} train")
        ax_loss.plot(epochs, [c["val_loss"] for c in r["curves"]], "s--", label=f"{r['name']} val")
        elapsed = np.cumsum([c["time_s"] for c in r["curves"]])
        ax_acc.plot(elapsed, [c["val_accuracy"] for c in r["curves"]], "o-", label=r["name"])
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss")
    ax_acc.set(xlabel="training time (s)", ylabel="val accuracy")
    ax_loss.legend()
    ax_acc.legend()
    fig.tight_layout()
    _save(fig, path)


def comparison_table(results, nb_accuracy):
    """Markdown table: one row per model plus the naive Bayes baseline."""
    lines = ["| model | params | epochs | s/epoch | ms/step | best val acc | test acc |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        per_epoch = np.mean(r["time_per_epoch_s"])
        test = "n/a" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        lines.append(f"| {r['name']} ({r['layer']}, init {r['config']['init']}) | {r['parameters']:,} | "
                     f"{r['epochs_run']} | {per_epoch:.1f} | {r['time_per_step_s'] * 1e3:.1f} | "
                     f"{r['val_accuracy']:.4f} | {test} |")
    lines.append(f"| bag-of-words naive Bayes (alpha 1) | - | - | - | - | - | {nb_accuracy:.4f} |")
    return "\n".join(lines) + "\n"


def compare(args, dataset):
    """Train the basic SSM and S4 under the same budget; table, plots, time against L."""
    results = []
    for layer, name in (("ssm", "ssm"), (args.layer, "s4")):
        torch.manual_seed(args.seed)
        results.append(train_one(args, layer, name, dataset))
    ex = dataset["examples"]
    nb = naive_bayes_accuracy(ex["train"], ex["test"]) if ex["test"][0]["label"] is not None else None
    out = Path(args.out_dir)
    table = comparison_table(results, nb if nb is not None else float("nan"))
    plot_compare(results, out / "compare-curves.png")
    summary = {"models": results, "naive_bayes_test_accuracy": nb}
    if args.bench_lengths:
        lengths = [int(x) for x in args.bench_lengths.split(",")]
        rows = time_vs_length(lengths, loop_budget_s=args.bench_loop_budget,
                              device="cuda" if args.use_gpu else "cpu")
        plot_time_vs_length(rows, out / "time-vs-length.png")
        slopes = {k: loglog_slope(rows, k) for k in ("loop_s", "fft_s")}
        summary.update(time_vs_length=rows, slopes=slopes)
        table += (f"\nforward+backward time vs L: log-log slope loop {slopes['loop_s']:.2f}, "
                  f"FFT {slopes['fft_s']:.2f}\n")
    train.write_text_atomic(out / "compare.md", table)
    train.save_json_atomic(out / "compare.json", summary)
    print(table)
    return max(results, key=lambda r: r["val_accuracy"])


# ----------------------------------------------------------------------------
# CLI: run.py --option ssm | s4 | ssm_compare

def add_arguments(parser, option):
    """Flags of --option ssm / s4 / ssm_compare.

    Defaults: the configuration picked on DBpedia-14's validation split (BENCHMARKS.md, issue 4):
    one bidirectional block, N 32, mean+max pooling, dropout 0.3, word dropout 0.2, weight decay 1.0.
    """
    data_dir = "../shared/data/dbpedia14"
    add = parser.add_argument
    add("--train", default=f"{data_dir}/train.json", help="training JSON ({id, text, label} rows)")
    add("--val", "--dev", dest="val", default=f"{data_dir}/val.json", help="validation JSON")
    add("--test", default=f"{data_dir}/test.json", help="test JSON (label optional)")
    add("--out_dir", "--out-dir", default=f"out/{option}", help="results, curves, tokenizer cache")
    add("--submission", default=None, help="id,label CSV for the test file (default OUT_DIR/submission.csv)")
    add("--tokenizer", choices=["sentencepiece", "bytes"], default="sentencepiece",
        help="SentencePiece unigram trained on --train, or raw UTF-8 bytes")
    add("--vocab_size", "--vocab-size", type=int, default=8000, help="SentencePiece vocabulary size")
    add("--case_fold", "--case-fold", action=argparse.BooleanOptionalAction, default=True,
        help="lower-case (NFKC case folding) inside the SentencePiece model")
    add("--max_len", "--max-len", type=int, default=128, help="tokens kept per text (bos included)")
    add("--d_model", "--d-model", type=int, default=128, help="H: channels")
    add("--n_layers", "--n-layers", type=int, default=1, help="stacked SSM blocks")
    add("--d_state", "--d-state", type=int, default=32, help="N: complex state size per channel")
    add("--dropout", type=float, default=0.3, help="dropout probability")
    add("--token_dropout", "--token-dropout", type=float, default=0.2,
        help="training-time word dropout: fraction of tokens replaced by pad")
    add("--zero_init_branch", "--zero-init-branch", action="store_true",
        help="zero-init each block's mixing layer, so the model starts as a bag of embeddings")
    add("--layer", choices=["s4d", "s4"], default="s4d",
        help="S4 variant: s4d (diagonal, Vandermonde kernel) or s4 (DPLR, Cauchy kernel)")
    add("--init", choices=["s4d-legs", "s4d-lin", "s4d-inv"], default="s4d-legs", help="S4D A init")
    add("--ssm_init", "--ssm-init", choices=["random", "s4d-lin", "s4d-inv", "s4d-legs"],
        default="random", help="A init of the basic SSM (random: no HiPPO structure)")
    add("--discretization", choices=["zoh", "bilinear"], default="zoh",
        help="diagonal models' discretization (the DPLR S4 always uses bilinear)")
    add("--mixing", choices=["glu", "gelu"], default="glu", help="channel mixing after the SSM")
    add("--bidirectional", action=argparse.BooleanOptionalAction, default=True,
        help="also run each SSM right to left (--no-bidirectional: causal only)")
    add("--pooling", choices=["mean", "max", "meanmax"], default="meanmax",
        help="how token states become one vector: masked mean, max, or both concatenated")
    add("--epochs", type=int, default=10, help="passes over the training set")
    add("--lr", type=float, default=4e-3, help="peak learning rate (cosine decay)")
    add("--ssm_lr", "--ssm-lr", type=float, default=1e-3, help="lr cap for A, B, dt (no weight decay)")
    add("--weight_decay", "--weight-decay", type=float, default=1.0, help="AdamW weight decay")
    add("--warmup_steps", "--warmup-steps", type=int, default=50, help="linear warmup steps")
    add("--batch_size", type=int, default=32, help="training batch size")
    add("--eval_batch_size", "--eval-batch-size", type=int, default=128, help="evaluation batch size")
    add("--time_budget", "--time-budget", type=float, default=None,
        help="seconds of training per model (None: all epochs)")
    add("--max_steps_per_epoch", "--max-steps-per-epoch", type=int, default=None,
        help="cap on optimizer steps per epoch")
    add("--patience", type=int, default=None, help="stop after this many epochs without a better val")
    add("--no_progress", "--no-progress", action="store_true", help="no tqdm bars (for logs)")
    if option == "ssm_compare":
        add("--bench_lengths", "--bench-lengths", default="256,512,1024,2048,4096,8192",
            help="comma-separated L for the time-vs-length plot ('' to skip)")
        add("--bench_loop_budget", "--bench-loop-budget", type=float, default=60.0,
            help="skip loop-scan lengths predicted to take longer than this (s)")


def main(args):
    for flag in ("max_len", "batch_size", "epochs", "vocab_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} {getattr(args, flag)}: must be >= 1")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    dataset = load_data(args)
    sizes = {k: len(v) for k, v in dataset["examples"].items()}
    print(f"data: {sizes}, {dataset['num_classes']} classes, tokenizer {dataset['tokenizer'].kind} "
          f"(V={dataset['tokenizer'].vocab_size}), max_len {args.max_len}", flush=True)
    if args.option == "ssm_compare":
        best = compare(args, dataset)
    else:
        layer, name = ("ssm", "ssm") if args.option == "ssm" else (args.layer, "s4")
        best = train_one(args, layer, name, dataset)
    submission = Path(args.submission or Path(args.out_dir) / "submission.csv")
    train.write_text_atomic(submission, Path(best["submission"]).read_text(encoding="utf-8"))
    print(f"wrote {submission} (from {best['name']})")
