"""PEFT methods other than LoRA on a frozen Llama: IA3, prompt tuning, P-tuning, prefix tuning.

Each trains a handful of tensors and leaves every pretrained weight frozen, like LoRA (lora.py),
and reuses lora.py's wrapping (wrap_linears, set_submodule), weight_names.py's alias table
(q_proj <-> wq, ..., down_proj <-> w2; with_aliases); lora.count_parameters counts what trains.

IA3, "Infused Adapter by Inhibiting and Amplifying Inner Activations" (Liu et al. 2022, "Few-Shot
Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning", arXiv:2205.05638,
Section 3.3). Three learned vectors rescale the keys, the values and the FFN's inner activation:
    softmax(Q (l_k * K)^T / sqrt(d_k)) (l_v * V)        l_k, l_v (out,) of k_proj / v_proj
    FFN(x) = W2 (l_ff * gamma(W1 x))                     l_ff (hidden,), the input of down_proj
`*` is element-wise (broadcast over B, T); every l starts at ones, so step 0 is the base model.
An IA3Layer scales its Linear's output (k, v: y = l * (W x + b)) or, for the feedforward modules,
its input (down_proj: y = W (l * x) + b); merged, l folds into the weight (diag(l) W, or
W diag(l) for down_proj: unload_ia3). Trainable: one number per scaled channel,
L * (2 n_kv_heads head_dim + hidden_dim) for peft's Llama default (k, v, down).

Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
arXiv:2104.08691, Section 2). The frozen model reads n learned embedding vectors before the input:
    input embeddings = [P; E(x)]        P (n, dim) trained, E the frozen token embedding
Negative token ids select P's rows (id -1 -> P[0], ..., -n -> P[n-1]), so any model that only
embeds its tokens (our Llama, HF's LlamaModel) runs unchanged; prepend_soft_prompt puts
-1..-n in front. P starts as the embeddings of n random vocabulary tokens (Section 3.2).
Trainable: n * dim.

P-tuning (Liu et al. 2021, "GPT Understands, Too", arXiv:2103.10385, Section 3.2): the same
[P; E(x)], but P comes out of a prompt encoder applied to free embeddings P' (n, dim), N(0, 1):
    MLP:   P = W3 relu(W2 relu(W1 P' + b1) + b2) + b3                   widths dim -> h -> h -> dim
    LSTM:  P = W2 relu(W1 [h_fwd; h_bwd] + b1) + b2, h = BiLSTM(P')     widths dim -> 2h -> dim
(peft's PromptEncoder; h = encoder_hidden_size, default dim). Trainable: n * dim + the encoder.

Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
arXiv:2101.00190, Section 4): every layer gets n trained keys and values that every query sees,
    head_j = softmax(q [P_k; K]^T / sqrt(D)) [P_v; V]     P_k, P_v (n_kv_heads, n, D) per layer,
stored as one P (n, L * 2 * n_kv_heads * D) in peft's order (layer 0 keys, layer 0 values, ...).
Prefix keys carry no RoPE and the real tokens take positions n, n+1, ..., exactly what transformers
does with peft's past_key_values (n cached slots before the input; see llama.py). Reparametrisation
(Section 4.3, peft's prefix_projection): P = W2 tanh(W1 P' + b1) + b2, P' (n, n_kv_heads * D), for
stabler training; `fold` computes P once for inference and keeps the plain tensor. Trainable:
n L 2 n_kv_heads D, or with the MLP n kv + (kv + 1) h + (h + 1) L 2 kv (kv = n_kv_heads D).

One call for every method: adapt(llama, config) -> the model to train. LoRA and IA3 live in the
Llama's Linears (the Llama is returned); the virtual-token methods return a VirtualTokenLlama: the
Llama's call and return (logits, hidden of the real positions only), .config / .norm / .output,
and a KV cache whose n extra first slots hold the virtual tokens, so scoring, the answer loss and
sample.generate_batch run on it unchanged. Left pads sit after the virtual slots, masked.

Trainable parameters by formula (formula_count, the check of lora.count_parameters): LoRA's
lora.lora_parameter_count (its variants too: DoRA adds m, out per Linear), and each formula
above. On disk, every method (LoRA too) is saved and loaded in peft's layout by peft_format.py.

Size: over 400 lines: four methods share one entry point (adapt) and one virtual-token model.

Shape legend: B batch, T tokens, n virtual tokens, dim model width, L layers, D head_dim, h encoder
width, V vocabulary, `in` / `out` features of a wrapped Linear, `...` any leading dims (B, T).

Tests: tests/test_adapters.py against peft on a tiny LlamaForCausalLM (IA3, prompt tuning,
P-tuning MLP / LSTM: same parameters -> same logits and counts; prefix tuning on our converted
Llama: same P -> same logits, its MLP -> same P), our save -> peft -> same logits (and back,
peft_format.py), only adapter tensors change in a step, cached generation == uncached, formula
counts, file errors.
"""
from dataclasses import dataclass, field, replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import llama as llama_module
import lora
import options
from lora import set_submodule, wrap_linears
from weight_names import HF_TO_LLAMA2C, with_aliases

# ----------------------------------------------------------------------------
# IA3 (Liu et al. 2022)


@dataclass
class IA3Config:
    target_modules: list = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])  # Linears
    feedforward_modules: list = field(default_factory=lambda: ["down_proj"])  # scale their input

    def __post_init__(self):
        if not self.target_modules:
            raise ValueError("IA3Config.target_modules is empty; e.g. --ia3_targets k_proj,v_proj")
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

    @torch.no_grad()
    def to_linear(self):
        """A plain nn.Linear with l folded in (merged): W diag(l) for a feedforward module,
        diag(l) W and l * b for the others (the export path: run_export.py)."""
        l = self.ia3_l.to(self.weight.dtype)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device="meta")
        scaled = self.weight * (l[None, :] if self.feedforward else l[:, None])  # (out, in)
        linear.weight = nn.Parameter(scaled, requires_grad=False)
        if self.bias is not None:
            bias = self.bias if self.feedforward else self.bias * l
            linear.bias = nn.Parameter(bias.clone(), requires_grad=False)
        return linear


def inject_ia3(model, config, option="IA3Config.target_modules"):
    """Wrap the target Linears in IA3Layers (ones: the base model); freeze the rest; names.
    option: the flag or field named when no target matches."""
    feedforward = with_aliases(config.feedforward_modules)
    return wrap_linears(model, config.target_modules, lambda name, linear: IA3Layer(
        linear, feedforward=name.rpartition(".")[2] in feedforward), option=option)


def unload_ia3(model):
    """Replace every IA3Layer by its merged nn.Linear (IA3Layer.to_linear): a base-format model
    that computes what the adapted one did. Returns the number of layers merged."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, IA3Layer)]
    for name, layer in layers:
        set_submodule(model, name, layer.to_linear())
    return len(layers)


# ----------------------------------------------------------------------------
# prompt tuning (Lester et al. 2021) and P-tuning (Liu et al. 2021)

def _check_virtual_tokens(n, encoder_hidden_size=None):
    """n and h within options.MAX_SIZE before anything is allocated (adapt bounds n again by the
    model's max_seq_len)."""
    if n < 0:
        raise ValueError(f"--num_virtual_tokens {n}: must be >= 0")
    if n:
        options.check_size("--num_virtual_tokens", n)
    if encoder_hidden_size is not None:
        options.check_size("--encoder_hidden_size", encoder_hidden_size)


@dataclass
class PromptTuningConfig:
    num_virtual_tokens: int = 20                # n, soft-prompt length in embedding vectors

    def __post_init__(self):
        _check_virtual_tokens(self.num_virtual_tokens)


@dataclass
class PTuningConfig:
    """P-tuning; field names are those of peft's PromptEncoderConfig."""
    num_virtual_tokens: int = 20                # n, virtual tokens
    encoder_reparameterization_type: str = "MLP"  # prompt encoder: "MLP" or "LSTM" (+ MLP head)
    encoder_hidden_size: Optional[int] = None   # h; None = dim (peft's default)
    encoder_num_layers: int = 2                 # LSTM layers (the MLP always has 3 Linears)
    encoder_dropout: float = 0.0                # dropout between LSTM layers

    def __post_init__(self):
        _check_virtual_tokens(self.num_virtual_tokens, self.encoder_hidden_size)
        if self.encoder_reparameterization_type not in ("MLP", "LSTM"):
            raise ValueError(f"--encoder_type {self.encoder_reparameterization_type!r}: use MLP "
                             "or LSTM")


class PromptEncoder(nn.Module):
    """P-tuning's encoder P' (n, dim) -> P (n, dim): an MLP, or a BiLSTM then an MLP (module names
    lstm_head / mlp_head as in peft's PromptEncoder, so weights copy one to one)."""

    def __init__(self, dim, config):
        super().__init__()
        h = config.encoder_hidden_size or dim
        self.lstm_head = None
        if config.encoder_reparameterization_type == "LSTM":
            self.lstm_head = nn.LSTM(dim, h, num_layers=config.encoder_num_layers,
                                     dropout=config.encoder_dropout, bidirectional=True,
                                     batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * h, 2 * h), nn.ReLU(), nn.Linear(2 * h, dim))
        else:
            self.mlp_head = nn.Sequential(nn.Linear(dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                          nn.Linear(h, dim))

    def forward(self, prompt):
        """prompt P' (n, dim) -> P (n, dim)."""
        if self.lstm_head is not None:
            prompt = self.lstm_head(prompt[None])[0][0]                    # (n, 2h)
        return self.mlp_head(prompt)                                       # (n, dim)


class SoftPromptEmbedding(nn.Module):
    """Token embedding where ids -1 .. -n select n virtual embeddings P (n, dim).

    P = prompt (prompt tuning) or encoder(prompt) (P-tuning). The frozen table is registered as
    `weight`, so tied output heads still share it; prompt is kept in fp32 (trained by AdamW) and
    P is cast to the table's dtype on use.
    """

    def __init__(self, embedding, num_virtual_tokens, encoder=None):
        super().__init__()
        self.weight = embedding.weight.requires_grad_(False)              # (V, dim), frozen
        ids = torch.randint(0, self.weight.shape[0], (num_virtual_tokens,))
        self.prompt = nn.Parameter(self.weight.detach()[ids.to(self.weight.device)].float())
        self.encoder = encoder

    def virtual_embeddings(self):
        """P (n, dim)."""
        return self.prompt if self.encoder is None else self.encoder(self.prompt)

    def forward(self, tokens):
        """tokens (B, T), ids >= 0 real and -1..-n virtual -> embeddings (B, T, dim)."""
        real = F.embedding(tokens.clamp(min=0), self.weight)              # (B, T, dim)
        if self.prompt.shape[0] == 0:
            return real
        slot = (-tokens - 1).clamp(0, self.prompt.shape[0] - 1)           # (B, T)
        soft = F.embedding(slot, self.virtual_embeddings()).to(real.dtype)  # (B, T, dim)
        return torch.where((tokens < 0).unsqueeze(-1), soft, real)

    @torch.no_grad()
    def fold_(self):
        """P-tuning for inference: prompt <- encoder(prompt), no encoder (prompt tuning's form)."""
        if self.encoder is not None:
            self.prompt = nn.Parameter(self.virtual_embeddings().float())
            self.encoder = None


def prepend_soft_prompt(tokens, attention_mask=None, num_virtual_tokens=0):
    """Prefix ids -1..-n (and ones in the mask): tokens (B, T) -> (B, n + T)."""
    soft = -torch.arange(1, num_virtual_tokens + 1, device=tokens.device)
    tokens = torch.cat([soft.expand(tokens.shape[0], -1), tokens], dim=1)  # (B, n + T)
    if attention_mask is not None:
        ones = attention_mask.new_ones(attention_mask.shape[0], num_virtual_tokens)
        attention_mask = torch.cat([ones, attention_mask], dim=1)        # (B, n + T)
    return tokens, attention_mask


def _embedding_name(model):
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)
             and n.rpartition(".")[2] in ("tok_embeddings", "embed_tokens")]
    if len(names) != 1:
        raise ValueError(f"prompt tuning needs exactly one tok_embeddings/embed_tokens module, "
                         f"found {names}; pass the language model itself")
    return names[0]


def inject_prompt_tuning(model, config, encoder=None):
    """Replace the token embedding (tok_embeddings or embed_tokens) by a SoftPromptEmbedding
    (with `encoder`: P-tuning's). Every other parameter is frozen; returns the module's name."""
    name = _embedding_name(model)
    model.requires_grad_(False)
    set_submodule(model, name, SoftPromptEmbedding(model.get_submodule(name),
                                                   config.num_virtual_tokens, encoder))
    return name


def inject_p_tuning(model, config):
    """P-tuning: a SoftPromptEmbedding whose P comes from a PromptEncoder; P' ~ N(0, 1) (peft's
    nn.Embedding init). Returns the embedding module's name."""
    weight = model.get_submodule(_embedding_name(model)).weight
    encoder = PromptEncoder(weight.shape[1], config).to(weight.device)
    name = inject_prompt_tuning(model, config, encoder)
    nn.init.normal_(model.get_submodule(name).prompt)
    return name


# ----------------------------------------------------------------------------
# prefix tuning (Li & Liang 2021)

@dataclass
class PrefixTuningConfig:
    num_virtual_tokens: int = 20                # n, prefix slots per layer
    prefix_projection: bool = False             # train P = MLP(P') (Section 4.3) instead of P
    encoder_hidden_size: Optional[int] = None   # h of the MLP; None = n_kv_heads * head_dim (peft)

    def __post_init__(self):
        _check_virtual_tokens(self.num_virtual_tokens, self.encoder_hidden_size)


class PrefixEncoder(nn.Module):
    """P (n, L * 2 * kv), kv = n_kv_heads * D: a trained tensor, or W2 tanh(W1 P' + b1) + b2 of a
    trained P' (n, kv) (prefix_projection). Both start as peft's: N(0, 1), nn.Linear's init."""

    def __init__(self, config, llama_config):
        super().__init__()
        c = llama_config
        self.shape = (c.n_layers, 2, c.n_kv_heads, c.head_dim)           # per virtual token
        kv, width = c.n_kv_heads * c.head_dim, c.n_layers * 2 * c.n_kv_heads * c.head_dim
        n, self.transform = config.num_virtual_tokens, None
        if config.prefix_projection:
            h = config.encoder_hidden_size or kv
            self.embedding = nn.Parameter(torch.randn(n, kv))                  # P' (n, kv)
            self.transform = nn.Sequential(nn.Linear(kv, h), nn.Tanh(), nn.Linear(h, width))
        else:
            self.embedding = nn.Parameter(torch.randn(n, width))               # P (n, L*2*kv)

    def forward(self):
        """P (n, L * 2 * kv), per token: layer 0 keys, layer 0 values, layer 1 keys, ..."""
        return self.embedding if self.transform is None else self.transform(self.embedding)

    def key_values(self):
        """[PrefixKV(P_k, P_v) of layer i for i < L], P_k and P_v each (1, n_kv_heads, n, D)."""
        P = self()                                                          # (n, L*2*kv)
        layers = P.view(-1, *self.shape).permute(1, 2, 3, 0, 4).unsqueeze(2)  # (L, 2, 1, kv, n, D)
        return [PrefixKV(k, v) for k, v in layers]

    @torch.no_grad()
    def fold_(self):
        """For inference: compute P once and keep it as the plain tensor (no MLP)."""
        if self.transform is not None:
            self.embedding = nn.Parameter(self().float())
            self.transform = None


class PrefixKV:
    """One layer's prefix as the keys/values source of llama.Attention: extend(k, v) puts P_k,
    P_v (1|B, n_kv_heads, n, D), without RoPE, in front of the call's k, v (B, n_kv_heads, T, D)
    -> each (B, n_kv_heads, n + T, D); llama.Llama(tokens, start_pos=n, kv=prefix) runs on it."""

    def __init__(self, keys, values):
        self.keys, self.values = keys, values

    def extend(self, k, v):
        B = k.shape[0]
        return (torch.cat([self.keys.to(k.dtype).expand(B, -1, -1, -1), k], 2),    # (B, kv, n+T, D)
                torch.cat([self.values.to(v.dtype).expand(B, -1, -1, -1), v], 2))  # (B, kv, n+T, D)


def write_prefix(cache, prefix, batch):
    """Prefix tuning with a KV cache: every layer's PrefixKV into slots 0..n-1 of rows
    0..batch-1, flagged real, so tokens written from slot n attend to them and take positions
    n, n+1, ... (llama.attention_inputs counts the real slots before each token)."""
    n = prefix[0].keys.shape[-2]
    slots = torch.arange(n, device=cache.keys.device)                       # (n,)
    for i, p in enumerate(prefix):
        cache.layer(i, slots, n).extend(p.keys.expand(batch, -1, -1, -1),
                                        p.values.expand(batch, -1, -1, -1))
    cache.write_real(slots, torch.ones(batch, n, dtype=torch.bool, device=slots.device))


# ----------------------------------------------------------------------------
# virtual-token models: the Llama's interface, n slots in front of every sequence

class VirtualSlotsCache:
    """The Llama's KVCache as callers of a VirtualTokenLlama see it: n slots fewer."""

    def __init__(self, cache, n):
        self.cache, self.n = cache, n

    def fits(self, batch, length):                         # as llama.KVCache.fits
        return self.cache.fits(batch, length + self.n)


class VirtualTokenLlama(nn.Module):
    """A frozen Llama whose every sequence starts with n virtual tokens in slots 0..n-1. Called
    like llama.Llama (tokens, start_pos, attention_mask, last_only) -> (logits, hidden) of the
    real positions. start_pos None or 0 starts a sequence (the virtual tokens are added); a
    later start_pos (decode) is shifted by n past them."""

    def __init__(self, llama, num_virtual_tokens):
        super().__init__()
        self.llama, self.num_virtual_tokens = llama, num_virtual_tokens

    config = property(lambda self: self.llama.config)      # the Llama's, for generate_batch,
    norm = property(lambda self: self.llama.norm)          # scoring.label_scores and the
    output = property(lambda self: self.llama.output)      # answer loss

    @property
    def cache(self):
        cache = self.llama.cache
        return None if cache is None else VirtualSlotsCache(cache, self.num_virtual_tokens)

    def setup_cache(self, max_batch_size, max_seq_len=None):
        """A KVCache of max_seq_len real slots (default: all the config allows) plus n."""
        n = self.num_virtual_tokens
        self.llama.setup_cache(max_batch_size, None if max_seq_len is None else max_seq_len + n)

    def reset_cache(self):
        self.llama.reset_cache()

    @staticmethod
    def starts_sequence(start_pos):
        """A 0-d tensor start_pos is a decode step (generate_batch's compiled path)."""
        return start_pos is None or (isinstance(start_pos, int) and start_pos == 0)


class SoftPromptLlama(VirtualTokenLlama):
    """Prompt tuning / P-tuning: ids -1..-n (llama.tok_embeddings is a SoftPromptEmbedding) in
    front of the tokens, so P's keys and values fill cache slots 0..n-1 at prefill."""

    def __init__(self, llama):
        super().__init__(llama, llama.tok_embeddings.prompt.shape[0])

    def forward(self, tokens, start_pos=None, attention_mask=None, last_only=False):
        """tokens (B, T) -> (logits (B, T|1, V), hidden (B, T, dim)) of the real positions."""
        n = self.num_virtual_tokens
        if not self.starts_sequence(start_pos):
            return self.llama(tokens, start_pos + n, attention_mask, last_only)
        tokens, attention_mask = prepend_soft_prompt(tokens, attention_mask, n)  # (B, n + T)
        logits, hidden = self.llama(tokens, start_pos, attention_mask, last_only)
        return (logits if last_only else logits[:, n:]), hidden[:, n:]      # real positions


class PrefixLlama(VirtualTokenLlama):
    """Prefix tuning: P_k, P_v from a PrefixEncoder in front of every layer's keys and values
    (no cache: the n keys before the tokens, PrefixKV), or written into cache slots 0..n-1 at
    prefill (write_prefix)."""

    def __init__(self, llama, prefix_encoder):
        super().__init__(llama, prefix_encoder.embedding.shape[0])
        llama.requires_grad_(False)
        self.prefix_encoder = prefix_encoder

    def forward(self, tokens, start_pos=None, attention_mask=None, last_only=False):
        """tokens (B, T) -> (logits (B, T|1, V), hidden (B, T, dim))."""
        if start_pos is None:
            return self.llama(tokens, self.num_virtual_tokens, attention_mask, last_only,
                              self.prefix_encoder.key_values())
        if self.starts_sequence(start_pos) and self.llama.cache is not None:  # else: its error
            write_prefix(self.llama.cache, self.prefix_encoder.key_values(), tokens.shape[0])
        return self.llama(tokens, start_pos + self.num_virtual_tokens, attention_mask, last_only)


# ----------------------------------------------------------------------------
# one entry point: config -> adapted model; inference form; trainable-parameter formulas

def adapt(llama, config, inference_mode=False, source=None):
    """The model to train (or run) for a PEFT config; the base weights are frozen. LoRA / IA3:
    llama itself, Linears wrapped; prompt, P-tuning, prefix: a VirtualTokenLlama around it.
    inference_mode (a loaded adapter, peft's word): P-tuning and prefix MLPs are built folded.
    source: the adapter_config.json a loaded config came from; errors then name its fields, not
    the command-line flags the user never passed."""
    def named(flag, field):
        return flag if source is None else f"{source}: {field}"
    n, positions = getattr(config, "num_virtual_tokens", 0), getattr(
        llama.config, "max_seq_len", None)                # None: transformers' model (tests)
    if positions is not None and n >= positions:          # the bound: the model's positions
        raise ValueError(f"{named('--num_virtual_tokens', 'num_virtual_tokens')} {n}: the model "
                         f"has max_seq_len {positions} positions, so n must be smaller (and "
                         "leave room for the text)")
    if isinstance(config, lora.LoraConfig):
        lora.inject_lora(llama, config, option=named("--lora_targets", "target_modules"))
    elif isinstance(config, IA3Config):
        inject_ia3(llama, config, option=named("--ia3_targets", "target_modules"))
    elif isinstance(config, PrefixTuningConfig):
        if inference_mode:                    # a saved prefix is P itself, MLP or not
            config = replace(config, prefix_projection=False)
        return PrefixLlama(llama, PrefixEncoder(config, llama.config).to(llama.norm.weight.device))
    else:                                     # a saved P-tuning adapter is its P: a soft prompt
        p_tuning = isinstance(config, PTuningConfig) and not inference_mode
        (inject_p_tuning if p_tuning else inject_prompt_tuning)(llama, config)
        return SoftPromptLlama(llama)
    return llama


def fold(model):
    """Inference form of a trained model: P-tuning's and prefix tuning's MLP outputs computed
    once and kept as plain tensors (what the saved adapter holds). Returns model."""
    for module in model.modules():
        if isinstance(module, (SoftPromptEmbedding, PrefixEncoder)):
            module.fold_()
    return model


def _lstm_count(i, h, layers):
    """A bidirectional nn.LSTM: per layer and direction 4 gates of h (in + h + 2) numbers."""
    return sum(2 * 4 * h * ((i if layer == 0 else 2 * h) + h + 2) for layer in range(layers))


def formula_count(config, c):
    """Trainable parameters by each method's formula (module docstring; LoRA: r (in + out) per
    adapted Linear), from the LlamaConfig c: the check of lora.count_parameters. Target names in
    either spelling (weight_names' alias table: k_proj = wk)."""
    n, kv = getattr(config, "num_virtual_tokens", 0), c.n_kv_heads * c.head_dim
    shapes = llama_module.linear_shapes(c)                                # name -> (in, out)
    if isinstance(config, lora.LoraConfig):                     # r (in + out) (+ out: DoRA) each
        return lora.lora_parameter_count(shapes, config.target_modules, config.r, c.n_layers,
                                         dora=config.use_dora)
    if isinstance(config, IA3Config):                                     # in or out each
        ff = with_aliases(config.feedforward_modules)
        names = sorted({HF_TO_LLAMA2C.get(t, t) for t in config.target_modules})
        return c.n_layers * sum(shapes[m][0 if m in ff else 1] for m in names)
    if isinstance(config, PromptTuningConfig):
        return n * c.dim
    if isinstance(config, PTuningConfig):
        h = config.encoder_hidden_size or c.dim
        if config.encoder_reparameterization_type == "LSTM":
            return (n * c.dim + _lstm_count(c.dim, h, config.encoder_num_layers)
                    + 2 * h * (2 * h + 1) + (2 * h + 1) * c.dim)
        return n * c.dim + (c.dim + 1) * h + (h + 1) * h + (h + 1) * c.dim
    width, h = c.n_layers * 2 * kv, config.encoder_hidden_size or kv
    return n * kv + (kv + 1) * h + (h + 1) * width if config.prefix_projection else n * width
