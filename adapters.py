"""PEFT methods other than LoRA on a frozen Llama: IA3 and prompt tuning (prefix tuning to come).

Both train a handful of vectors and leave every pretrained weight frozen, like LoRA (lora.py),
and reuse lora.py's wrapping machinery (with_aliases, wrap_linears, set_submodule) and its alias
table (q_proj <-> wq, ..., down_proj <-> w2); lora.count_parameters counts what trains.

IA3, "Infused Adapter by Inhibiting and Amplifying Inner Activations" (Liu et al. 2022, "Few-Shot
Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning", arXiv:2205.05638,
Section 3.3). Three learned vectors rescale the keys, the values and the FFN's inner activation:

    softmax(Q (l_k * K)^T / sqrt(d_k)) (l_v * V)        l_k, l_v (out,) of k_proj / v_proj
    FFN(x) = W2 (l_ff * gamma(W1 x))                     l_ff (hidden,), the input of down_proj

`*` is element-wise (broadcast over B, T); every l starts at ones, so step 0 is the base model.
An IA3Layer wrapping a Linear scales its output (k, v: y = l * (W x + b)) or, for the
feedforward modules, its input (down_proj: y = W (l * x) + b). Trainable parameters: one number per
scaled channel.

Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
arXiv:2104.08691, Section 2). The frozen model reads n learned embedding vectors before the input:

    input embeddings = [P; E(x)]        P (n, dim) trained, E the frozen token embedding

Negative token ids select P's rows (id -1 -> P[0], ..., -n -> P[n-1]), so any model that only
embeds its tokens (our Llama, HF's LlamaModel) runs unchanged; prepend_soft_prompt puts
-1..-n in front. P starts as the embeddings of n random vocabulary tokens (Section 3.2).
Trainable parameters: n * dim.

Shape legend: B batch, T tokens, n virtual tokens, dim model width, V vocabulary, `in` / `out`
features of the wrapped Linear, `...` any leading dims (B, T).

Tests: tests/test_adapters.py against peft's IA3 and PromptTuning on a tiny transformers
LlamaForCausalLM (same vectors -> same logits; same trainable-parameter counts), IA3 with ones and
a zero-length soft prompt against the base model, and the config errors.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lora import set_submodule, with_aliases, wrap_linears

# ----------------------------------------------------------------------------
# IA3 (Liu et al. 2022)


@dataclass
class IA3Config:
    target_modules: list = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])  # Linears
    feedforward_modules: list = field(default_factory=lambda: ["down_proj"])  # scale their input

    def __post_init__(self):
        targets = with_aliases(self.target_modules)
        stray = [m for m in self.feedforward_modules if m not in targets]
        if stray:
            raise ValueError(f"IA3Config.feedforward_modules {stray} are not in target_modules "
                             f"{list(self.target_modules)}; add them there too (as peft requires)")


class IA3Layer(nn.Module):
    """A frozen nn.Linear whose output (k, v) or input (FFN intermediate) is rescaled by l.

    feedforward=False: y = l * (W x + b), l (out,);  feedforward=True: y = W (l * x) + b, l (in,).
    The frozen `weight` / `bias` keep their names, so base state_dict keys do not change.
    """

    def __init__(self, base, feedforward):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight.requires_grad_(False)                  # (out, in), frozen
        self.bias = None if base.bias is None else base.bias.requires_grad_(False)
        self.feedforward = feedforward
        size = self.in_features if feedforward else self.out_features
        self.ia3_l = nn.Parameter(torch.ones(size, device=base.weight.device))  # (in,) or (out,)

    def forward(self, x):
        """x (..., in) -> (..., out) with the input or the output scaled channel-wise by l."""
        scale = self.ia3_l.to(x.dtype)
        if self.feedforward:
            return F.linear(x * scale, self.weight, self.bias)              # (..., out)
        return F.linear(x, self.weight, self.bias) * scale                  # (..., out)


def inject_ia3(model, config):
    """Wrap the target Linears in IA3Layers (ones: the base model); freeze the rest; names."""
    feedforward = with_aliases(config.feedforward_modules)
    return wrap_linears(model, config.target_modules, lambda name, linear: IA3Layer(
        linear, feedforward=name.rpartition(".")[2] in feedforward),
        option="IA3Config.target_modules")


# ----------------------------------------------------------------------------
# prompt tuning (Lester et al. 2021)

@dataclass
class PromptTuningConfig:
    num_virtual_tokens: int = 20                # n, soft-prompt length in embedding vectors

    def __post_init__(self):
        if self.num_virtual_tokens < 0:
            raise ValueError(f"--num_virtual_tokens {self.num_virtual_tokens}: must be >= 0")


class SoftPromptEmbedding(nn.Module):
    """Token embedding where ids -1 .. -n select n learned soft-prompt vectors P (n, dim).

    The frozen table is registered as `weight`, so tied output heads still share it; P is kept
    in fp32 (trained by AdamW) and cast to the table's dtype on use.
    """

    def __init__(self, embedding, num_virtual_tokens):
        super().__init__()
        self.weight = embedding.weight.requires_grad_(False)              # (V, dim), frozen
        ids = torch.randint(0, self.weight.shape[0], (num_virtual_tokens,))
        self.prompt = nn.Parameter(self.weight.detach()[ids.to(self.weight.device)].float())

    def forward(self, tokens):
        """tokens (B, T), ids >= 0 real and -1..-n soft -> embeddings (B, T, dim)."""
        real = F.embedding(tokens.clamp(min=0), self.weight)              # (B, T, dim)
        if self.prompt.shape[0] == 0:
            return real
        slot = (-tokens - 1).clamp(0, self.prompt.shape[0] - 1)           # (B, T)
        soft = F.embedding(slot, self.prompt).to(real.dtype)              # (B, T, dim)
        return torch.where((tokens < 0).unsqueeze(-1), soft, real)


def prepend_soft_prompt(tokens, attention_mask=None, num_virtual_tokens=0):
    """Prefix ids -1..-n (and ones in the mask): tokens (B, T) -> (B, n + T)."""
    soft = -torch.arange(1, num_virtual_tokens + 1, device=tokens.device)
    tokens = torch.cat([soft.expand(tokens.shape[0], -1), tokens], dim=1)  # (B, n + T)
    if attention_mask is not None:
        ones = attention_mask.new_ones(attention_mask.shape[0], num_virtual_tokens)
        attention_mask = torch.cat([ones, attention_mask], dim=1)        # (B, n + T)
    return tokens, attention_mask


def inject_prompt_tuning(model, config):
    """Replace the token embedding (tok_embeddings or embed_tokens) by a SoftPromptEmbedding.

    Every other parameter is frozen; returns the replaced module's name.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)
             and n.rpartition(".")[2] in ("tok_embeddings", "embed_tokens")]
    if len(names) != 1:
        raise ValueError(f"prompt tuning needs exactly one tok_embeddings/embed_tokens module, "
                         f"found {names}; pass the language model itself")
    model.requires_grad_(False)
    set_submodule(model, names[0], SoftPromptEmbedding(model.get_submodule(names[0]),
                                                       config.num_virtual_tokens))
    return names[0]
