"""K Llama models of one shape as one computation: every weight stacked with a leading member dimension.

Why not ``torch.func.vmap`` over the HF module: measured on llama-nano (one thread, 64x64 tokens), a
vmapped ``functional_call`` of 16 models is 1.5x *slower* than a loop over them, and a tiny model's step
is overhead-bound (hundreds of small kernels, 40-100x from the FLOP limit). Here each layer is one
batched matmul over the K members (``torch.bmm`` on ``[K, N, d_in] x [K, d_in, d_out]``), so the kernel
count of a step no longer grows with K.

The math is the HF ``LlamaForCausalLM``'s, term for term (RMSNorm in float32, rotary embeddings from the
model's own ``LlamaRotaryEmbedding``, causal attention with scale ``head_dim^-1/2``, SwiGLU MLP, an
untied or tied head), and `tests/models/test_grouped.py` checks each member's logits, loss and
gradients against the HF model's. Members may carry LoRA adapters on any linear layer (``W' = W +
s·B A``, A: r x d_in, B: d_out x r, PEFT's layout), taken from PEFT models, so a LoRA fine-tuning grid
runs grouped too.

`grouping_problem` says why a model cannot be grouped (another family, biases, dropout, grouped-query
attention, a rope scaling); callers then keep the per-model path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from overtrain.core.lora import lora_layers

LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def grouping_problem(config) -> str | None:
    """None if models of this `transformers` config can train grouped; else the reason they cannot."""
    if getattr(config, "model_type", None) != "llama":
        return f"model type {getattr(config, 'model_type', None)!r} (grouped training covers llama)"
    if config.num_key_value_heads != config.num_attention_heads:
        return "grouped-query attention"
    if config.attention_bias or config.mlp_bias:
        return "linear biases"
    if config.attention_dropout:
        return "attention dropout"
    if config.hidden_act != "silu":
        return f"activation {config.hidden_act!r}"
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope type {rope.get('rope_type')!r}"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp"
    return None


def _base(model: nn.Module) -> nn.Module:
    """The HF causal LM under a PEFT wrapper (the model itself when there is none)."""
    get = getattr(model, "get_base_model", None)
    return get() if get is not None else model


@dataclass
class Lora:
    """Stacked LoRA factors of one linear layer: A ``[K, r, d_in]``, B ``[K, d_out, r]``; W' = W + s·B A."""

    A: torch.Tensor
    B: torch.Tensor
    scaling: float


class GroupedLlama:
    """K Llama causal LMs of one config, their weights stacked: ``params[name]`` is ``[K, *shape]``.

    Attributes:
        config: the shared `transformers` config.
        params: HF parameter name (``model.layers.0.mlp.up_proj.weight``) -> stacked tensor; a tied head
            has no ``lm_head.weight`` entry.
        lora: adapted linear's module name (``model.layers.0.mlp.up_proj``) -> its stacked `Lora`.
        k: number of members.
    """

    def __init__(self, config, params: dict[str, torch.Tensor], lora: dict[str, Lora] | None = None):
        problem = grouping_problem(config)
        if problem is not None:
            raise ValueError(f"cannot group this model: {problem}")
        self.config = config
        self.params = params
        self.lora = lora or {}
        self.k = next(iter(params.values())).shape[0]
        self.heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.tied = bool(config.tie_word_embeddings)
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        self._rotary = LlamaRotaryEmbedding(config)
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_models(cls, models: list[nn.Module], *, trainable: str = "all") -> GroupedLlama:
        """Stack the weights of `models` (HF causal LMs, or PEFT models of them) into a new group.

        The stacks are copies: training the group does not touch `models`. `trainable` sets
        ``requires_grad``: ``"all"`` (full fine-tuning, pre-training), ``"lora"`` (the adapters only)
        or ``"none"``.
        """
        bases = [_base(m) for m in models]
        config = bases[0].config
        names = [n for n, _ in bases[0].named_parameters() if ".lora_" not in n]
        params = {}
        for name in names:
            key = name.replace(".base_layer.", ".")
            stacked = torch.stack([dict(b.named_parameters())[name].detach() for b in bases]).clone()
            params[key] = stacked.requires_grad_(trainable == "all")
        lora = {}
        if trainable == "lora" or any(hasattr(m, "get_base_model") for m in models):
            views = [{_module_key(v.name): v for v in lora_layers(m)} for m in models]
            for key in views[0]:
                A = torch.stack([v[key].A.detach() for v in views]).clone()
                B = torch.stack([v[key].B.detach() for v in views]).clone()
                lora[key] = Lora(
                    A.requires_grad_(trainable == "lora"),
                    B.requires_grad_(trainable == "lora"),
                    views[0][key].scaling,
                )
        return cls(config, params, lora)

    def trainable(self) -> list[torch.Tensor]:
        """The stacked tensors that train, in a fixed order."""
        out = [p for p in self.params.values() if p.requires_grad]
        for lo in self.lora.values():
            out += [t for t in (lo.A, lo.B) if t.requires_grad]
        return out

    # --- forward ------------------------------------------------------------------------------------

    def _linear(self, h: torch.Tensor, module: str) -> torch.Tensor:
        """``h W^T (+ s h A^T B^T)`` per member: h ``[K, N, d_in]`` -> ``[K, N, d_out]``."""
        out = torch.bmm(h, self.params[module + ".weight"].transpose(1, 2))
        lo = self.lora.get(module)
        if lo is not None:
            out = out + lo.scaling * torch.bmm(torch.bmm(h, lo.A.transpose(1, 2)), lo.B.transpose(1, 2))
        return out

    def _norm(self, h: torch.Tensor, name: str) -> torch.Tensor:
        """LlamaRMSNorm: ``w * h / sqrt(mean(h^2) + eps)`` (statistics in float32), w ``[K, d]``."""
        dtype = h.dtype
        h32 = h.float()
        h32 = h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps)
        return self.params[name + ".weight"][:, None, :] * h32.to(dtype)

    def _rope(self, T: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (T, like.device, like.dtype)
        if key not in self._rope_cache:
            positions = torch.arange(T, device=like.device)[None]
            self._rotary.to(like.device)
            cos, sin = self._rotary(like, positions)
            self._rope_cache[key] = (cos[0], sin[0])  # [T, head_dim]
        return self._rope_cache[key]

    def _attention(self, h: torch.Tensor, layer: str, B: int, T: int) -> torch.Tensor:
        K, H, D = self.k, self.heads, self.head_dim

        def heads(t: torch.Tensor) -> torch.Tensor:  # [K, B*T, H*D] -> [K*B, H, T, D]
            return t.view(K * B, T, H, D).transpose(1, 2)

        q = heads(self._linear(h, f"{layer}.self_attn.q_proj"))
        k = heads(self._linear(h, f"{layer}.self_attn.k_proj"))
        v = heads(self._linear(h, f"{layer}.self_attn.v_proj"))
        cos, sin = self._rope(T, h)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=D**-0.5)
        o = o.transpose(1, 2).reshape(K, B * T, H * D)
        return self._linear(o, f"{layer}.self_attn.o_proj")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[K, B, T, V]`` for token ids `x`: ``[B, T]`` (every member reads the same
        batch) or ``[K, B, T]`` (each its own)."""
        emb = self.params["model.embed_tokens.weight"]  # [K, V, d]
        if x.dim() == 2:
            x = x.expand(self.k, *x.shape)
        K, B, T = x.shape
        members = torch.arange(K, device=x.device)[:, None, None]
        h = emb[members, x].reshape(K, B * T, -1)
        for i in range(self.config.num_hidden_layers):
            layer = f"model.layers.{i}"
            h = h + self._attention(self._norm(h, f"{layer}.input_layernorm"), layer, B, T)
            a = self._norm(h, f"{layer}.post_attention_layernorm")
            gated = F.silu(self._linear(a, f"{layer}.mlp.gate_proj")) * self._linear(
                a, f"{layer}.mlp.up_proj"
            )
            h = h + self._linear(gated, f"{layer}.mlp.down_proj")
        h = self._norm(h, "model.norm")
        head = emb if self.tied else self.params["lm_head.weight"]
        return torch.bmm(h, head.transpose(1, 2)).view(K, B, T, -1)

    def loss(self, x: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
        """Per-member next-token cross-entropy (nats per token), ``[K]``: the HF model's ``labels=x`` loss.
        ``reduction="sum"`` gives the per-member sum over the predicted tokens instead."""
        logits = self.logits(x)[:, :, :-1].float()
        target = (x if x.dim() == 3 else x.expand(self.k, *x.shape))[:, :, 1:]
        per_token = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none")
        per_member = per_token.view(self.k, -1)
        return per_member.sum(1) if reduction == "sum" else per_member.mean(1)

    # --- back to single models ----------------------------------------------------------------------

    @torch.no_grad()
    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """Member `i`'s weights under the HF names (LoRA factors under PEFT's ``lora_A/B.default`` names)."""
        out = {name: t[i].clone() for name, t in self.params.items()}
        for module, lo in self.lora.items():
            out[f"{module}.lora_A.default.weight"] = lo.A[i].clone()
            out[f"{module}.lora_B.default.weight"] = lo.B[i].clone()
        return out


def _module_key(peft_name: str) -> str:
    """``base_model.model.model.layers.0.mlp.up_proj`` -> ``model.layers.0.mlp.up_proj``."""
    prefix = "base_model.model."
    return peft_name[len(prefix) :] if peft_name.startswith(prefix) else peft_name


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@torch.no_grad()
def grouped_eval_loss(group: GroupedLlama, batches: list[torch.Tensor]) -> list[float]:
    """Per-member mean next-token cross-entropy (nats per token) over every predicted token of `batches`
    (each ``[B, T]``, shared by the members): `overtrain.core.evaluate.evaluate_loss` for each member.

    Sums accumulate in float64 on the host side of each batch, as ``evaluate_loss`` does with ``.item()``.
    """
    totals = torch.zeros(group.k, dtype=torch.float64)
    count = 0
    for x in batches:
        totals += group.loss(x, reduction="sum").double().cpu()
        count += x.shape[0] * (x.shape[1] - 1)
    return (totals / count).tolist() if count else [math.nan] * group.k
