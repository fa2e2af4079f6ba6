"""Model configurations (papers.md, Part 3.1 "Models and training", Part 3.3 Results 5-7).

Hugging Face classes, configured rather than re-implemented:
  gpt2     GPT-2 with rotary position embedding, no dropout, tied embeddings: GPTNeoXForCausalLM
           with sequential residual and a GELU MLP of width mlp_ratio * n_embd (mlp_ratio 0: no MLP)
  llama    LlamaForCausalLM (gated SiLU MLP, RMSNorm, rotary)
  mistral  MistralForCausalLM (gated MLP; grouped-query attention off at these sizes)
  bert     a BERT-like bidirectional encoder for whole-word masked LM (Result 7): ModernBertForMaskedLM,
           i.e. rotary positions like our GPT-2 (learned absolute positions, as in the original BERT, kept
           every small model on the unigram plateau: masked-token loss = unigram entropy for 2000 steps),
           pre-norm, a gated GELU MLP of width mlp_width, global attention in every layer
Names follow the paper: "GPT2-l-h" is l layers, h heads, 64h wide (`parse_name`). `n_params`
reports parameters with and without embeddings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch

from kn.errors import DataError
from kn.tokenize import SPECIAL_TOKENS

ARCHS = ("gpt2", "llama", "mistral", "bert")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "gpt2"
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    mlp_ratio: float = 4.0       # MLP width / n_embd (gated archs: 8/3 keeps the parameter count)
    vocab_size: int = 4096
    context: int = 512
    tie_embeddings: bool = True

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise DataError(f"arch: got {self.arch!r}; allowed: {', '.join(ARCHS)}")
        for f in ("n_layer", "n_head", "n_embd", "vocab_size", "context"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DataError(f"{f}: got {v!r}; allowed: a positive integer")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise DataError(f"n_embd: {self.n_embd} must split into n_head={self.n_head} heads of even width (rotary)")
        if not (self.mlp_ratio >= 0):
            raise DataError(f"mlp_ratio: got {self.mlp_ratio!r}; allowed: a number >= 0")

    @property
    def mlp_width(self) -> int:
        return int(round(self.mlp_ratio * self.n_embd))


def parse_name(name: str, **overrides) -> ModelConfig:
    """'GPT2-12-12' -> 12 layers, 12 heads, 768 wide; 'llama-4-4' likewise (64 per head)."""
    m = re.fullmatch(r"(gpt2|llama|mistral|bert)-(\d+)-(\d+)", name.strip(), flags=re.IGNORECASE)
    if not m:
        raise DataError(f"model: got {name!r}; allowed: ARCH-LAYERS-HEADS with ARCH in {', '.join(ARCHS)}, e.g. GPT2-12-12")
    arch, layers, heads = m.group(1).lower(), int(m.group(2)), int(m.group(3))
    cfg = ModelConfig(arch=arch, n_layer=layers, n_head=heads, n_embd=64 * heads,
                      mlp_ratio=8 / 3 if arch in ("llama", "mistral") else 4.0)
    return replace(cfg, **overrides)


def hf_config(cfg: ModelConfig):
    """The transformers config object for `cfg` (SDPA attention, no dropout)."""
    from transformers import GPTNeoXConfig, LlamaConfig, MistralConfig, ModernBertConfig
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
                  num_attention_heads=cfg.n_head, max_position_embeddings=cfg.context,
                  tie_word_embeddings=cfg.tie_embeddings)
    if cfg.arch == "gpt2":
        return GPTNeoXConfig(**common, intermediate_size=cfg.mlp_width, rotary_pct=1.0, use_parallel_residual=False,
                             hidden_act="gelu", attention_dropout=0.0, hidden_dropout=0.0)
    if cfg.arch in ("llama", "mistral"):
        cls = LlamaConfig if cfg.arch == "llama" else MistralConfig
        extra = {"sliding_window": None} if cfg.arch == "mistral" else {}
        return cls(**common, intermediate_size=cfg.mlp_width, num_key_value_heads=cfg.n_head,
                   attention_dropout=0.0, **extra)
    ids = {name.replace("_token", "_token_id"): i for i, name in enumerate(SPECIAL_TOKENS)}   # kn's tokenizers
    return ModernBertConfig(**common, **ids, cls_token_id=ids["bos_token_id"], sep_token_id=ids["eos_token_id"],
                            intermediate_size=cfg.mlp_width, hidden_activation="gelu",
                            global_attn_every_n_layers=1, local_attention=cfg.context, attention_dropout=0.0,
                            mlp_dropout=0.0, embedding_dropout=0.0, reference_compile=False)


def build_model(cfg: ModelConfig, seed: int = 0):
    """A freshly initialised model (seeded), SDPA attention."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    torch.manual_seed(seed)
    auto = AutoModelForMaskedLM if cfg.arch == "bert" else AutoModelForCausalLM
    model = auto.from_config(hf_config(cfg), attn_implementation="sdpa")
    if cfg.mlp_width == 0:
        remove_mlp_bias(model)
    return model


def remove_mlp_bias(model) -> None:
    """With no MLP (mlp_ratio 0) the zero-width layers leave only an output bias: fix it at zero."""
    for name, p in model.named_parameters():
        if "mlp" in name and p.numel() and name.endswith("bias") and "4h_to_h" in name:
            p.data.zero_()
            p.requires_grad_(False)


def n_params(model, trainable_only: bool = True) -> dict:
    """Parameters (trainable ones by default), all and without embeddings (token and position tables)."""
    seen, total, emb = set(), 0, 0
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    out = model.get_output_embeddings()
    if out is not None:
        embeddings.add(id(out.weight))
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
        emb += p.numel() if id(p) in embeddings else 0
    return {"all": total, "non_embedding": total - emb}


def formula_params(cfg: ModelConfig) -> dict:
    """GPT-2 (GPT-NeoX layout) parameter count from the config, to cross-check `n_params`."""
    if cfg.arch != "gpt2":
        raise DataError(f"arch: formula_params covers gpt2 only, got {cfg.arch!r}")
    d, f = cfg.n_embd, cfg.mlp_width
    mlp = (d * f + f) + (f * d + d) if f else 0
    per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + mlp                        # 2 LN, qkv, out, MLP
    body = cfg.n_layer * per_layer + 2 * d                                             # + final LN
    emb = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return {"all": body + emb, "non_embedding": body}
