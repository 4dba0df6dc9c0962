"""Fast CPU generation: a hand-written greedy (or sampled) decoding loop over the model's own weights, for
Llama-family decoders (llama, qwen2, qwen3). What it saves against transformers' generate() on a small model
(benchmarks/evaluate/gen_backends.py measures it):

- bf16 matmuls where the CPU has AVX-512 BF16 or AMX (oneDNN then runs them at several times the fp32 rate),
  while the residual stream, the norms, the rotary embedding, the attention and the final logits stay fp32,
  so greedy answers stay close to the fp32 ones (a whole-bf16 model keeps far fewer of them);
- fused q/k/v and gate/up projections (one matmul each instead of three and two);
- a key/value cache allocated once per batch (no concatenation per step), and logits only for the last
  prompt position in the prefill;
- rows that have emitted EOS leave the batch (their cache rows are dropped), and the loop stops when every
  row has, instead of computing every row for max_new_tokens steps.

The worker's one copy of the base model serves every cell: switching to a cell's LoRA adapter rebuilds
the fused weights with peft's own delta (W + scale·B·A) added, from the untouched base weights (a
fraction of a second for a 135M model), so adapters are honoured as peft computes them. The prompts go
through the same chat template ids (pipelines/registries/chat.py) and left padding."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipelines.config import GenerateConfig
from pipelines.errors import ConfigError
from pipelines.evaluate.backends.base import Backend
from pipelines.evaluate.backends.transformers import length_batches, prompt_lengths
from pipelines.evaluate.weights import LoadedModel
from pipelines.registries.chat import batch_encoding

log = logging.getLogger(__name__)

# /proc/cpuinfo flags under which oneDNN has native bf16 dot products (AVX-512 BF16, or AMX tiles).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
SUPPORTED_TYPES = ("llama", "qwen2", "qwen3")
DTYPES = ("auto", "bfloat16", "float32")
# Candidates per row the bf16 vocabulary projection shortlists for the fp32 argmax (Decoder.greedy).
RESCORE_K = 8


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo does not exist, e.g. macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def resolve_dtype(requested: str, flags: frozenset[str], option: str = "dtype") -> str:
    """The matmul dtype to run: bf16 only where the CPU computes it natively (emulated bf16 is slower than
    fp32). "auto" falls back to fp32 with a log line; an explicit "bfloat16" on such a CPU is an error."""
    if requested not in DTYPES:
        raise ConfigError(f"generate.options.{option}={requested!r} is not one of {', '.join(DTYPES)}")
    has_bf16 = bool(flags & BF16_FLAGS)
    if requested == "bfloat16" and not has_bf16:
        raise ConfigError(
            f"generate.options.{option}=bfloat16 needs a CPU with native bf16 (the avx512_bf16 or amx_bf16 flag "
            f"in /proc/cpuinfo), which this one lacks: set generate.options.{option}=auto (fp32 here) or float32")
    if requested == "auto":
        if not has_bf16:
            log.info("fastcpu: no avx512_bf16/amx_bf16 in /proc/cpuinfo, so matmuls run in float32 (slower)")
        return "bfloat16" if has_bf16 else "float32"
    return requested


class FastCpuBackend(Backend):
    """The hand-written decoding loop below, batches of similar prompt length (as the transformers backend)."""

    def __init__(self, model: LoadedModel, gcfg: GenerateConfig, dtype: str = "auto",
                 cpuinfo: str = "/proc/cpuinfo", prefill_batch: int = 32, kv_dtype: str = "float32") -> None:
        super().__init__(model, gcfg)
        if prefill_batch < 1:
            raise ConfigError(f"generate.options.prefill_batch={prefill_batch} must be at least 1")
        # generate.batch_size rows decode together; their prompts' pass runs prefill_batch at a time.
        self.prefill_batch = prefill_batch
        # Checked before the model loads, so a CPU without bf16 fails at once.
        flags = cpu_flags(Path(cpuinfo))
        self.dtype = resolve_dtype(dtype, flags)
        self.kv_dtype = resolve_dtype(kv_dtype, flags, "kv_dtype")
        self.tok = model.tok
        self._decoder: Decoder | None = None
        self._built_for: Path | None = None  # the adapter the fused weights include (with _decoder set)

    @property
    def decoder(self) -> Decoder:
        if self._decoder is None or self._built_for != self.adapter:
            self.model.activate(self.adapter)
            self._decoder = None  # free the previous cell's fused copy before building the next
            self._decoder = Decoder(self.model.base_model(), self.dtype, self.kv_dtype)
            self._built_for = self.adapter
        return self._decoder

    @property
    def eos(self) -> list[int]:
        eos = self.model.hf.generation_config.eos_token_id
        eos = self.tok.eos_token_id if eos is None else eos
        return [eos] if isinstance(eos, int) else list(eos)

    def batches(self, prompts: list[str]) -> list[list[int]]:
        return length_batches(prompt_lengths(self.tok, prompts), self.gcfg.batch_size)

    def answer(self, prompts: list[str]) -> list[str]:
        enc = batch_encoding(self.tok, prompts)
        rows = self.decoder.generate(enc["input_ids"], enc["attention_mask"], self.gcfg, self.eos,
                                     prefill_batch=self.prefill_batch)
        return self.tok.batch_decode(rows, skip_special_tokens=True)


class Decoder:
    """A Llama-family decoder's forward pass in plain torch, weights taken from a loaded transformers model."""

    def __init__(self, model: Any, dtype: str, kv_dtype: str = "float32") -> None:
        import torch

        cfg = model.config
        if cfg.model_type not in SUPPORTED_TYPES:
            raise ConfigError(f"generate.backend=fastcpu runs {', '.join(SUPPORTED_TYPES)} models, not "
                              f"{cfg.model_type!r}: set generate.backend=transformers for this model")
        self.mm = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        # The key/value cache: read whole at every decoding step, so at a large batch its bytes cost as
        # much as the matmuls; bf16 halves them (attention then runs on bf16 inputs, fp32 accumulation).
        self.kv = torch.bfloat16 if kv_dtype == "bfloat16" else torch.float32
        inner = model.model
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.embed = inner.embed_tokens.weight.detach()
        self.layers = [self._layer(lay) for lay in inner.layers]
        self.norm, self.eps = inner.norm.weight.detach(), inner.norm.variance_epsilon
        # fp32 logits decide: the argmax over 49k tokens is where a rounding flips a greedy answer. A bf16
        # copy only shortlists the candidates (greedy()).
        self.lm_head = model.lm_head.weight.detach()
        self.lm_head_lp = self.lm_head.to(self.mm) if self.mm != torch.float32 else None
        self.rotary = inner.rotary_emb

    def _layer(self, lay: Any) -> dict[str, Any]:
        import torch

        at, mlp = lay.self_attn, lay.mlp

        def cat(*mods: Any) -> Any:
            return torch.cat([_weight(m) for m in mods]).to(self.mm).contiguous()

        bias = None
        if _base(at.q_proj).bias is not None:  # qwen2
            bias = torch.cat([_base(m).bias for m in (at.q_proj, at.k_proj, at.v_proj)]).detach().to(self.mm)
        return {"in_norm": (lay.input_layernorm.weight.detach(), lay.input_layernorm.variance_epsilon),
                "qkv": cat(at.q_proj, at.k_proj, at.v_proj), "qkv_bias": bias,
                "o": cat(at.o_proj),
                "q_norm": _norm_of(getattr(at, "q_norm", None)), "k_norm": _norm_of(getattr(at, "k_norm", None)),
                "post_norm": (lay.post_attention_layernorm.weight.detach(), lay.post_attention_layernorm.variance_epsilon),
                "gate_up": cat(mlp.gate_proj, mlp.up_proj), "down": cat(mlp.down_proj),
                "inter": _base(mlp.gate_proj).weight.shape[0]}

    def _linear(self, x: Any, w: Any, b: Any = None) -> Any:
        import torch.nn.functional as F

        return F.linear(x.to(self.mm), w, b).float()

    def forward(self, ids: Any, cos: Any, sin: Any, cache: list[tuple[Any, Any]], t0: int, mask: Any) -> Any:
        """Hidden states after the last layer for ids [B, T] written at cache slots t0..t0+T; mask [B, 1, T, t0+T]
        (True = may attend)."""
        import torch.nn.functional as F

        B, T = ids.shape
        h = self.embed[ids]
        nq, nkv, hd = self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.head_dim
        for lay, (kc, vc) in zip(self.layers, cache, strict=True):
            x = _rms(h, *lay["in_norm"])
            qkv = self._linear(x, lay["qkv"], lay["qkv_bias"])
            q = qkv[..., :nq].view(B, T, -1, hd)
            k = qkv[..., nq:nq + nkv].view(B, T, -1, hd)
            v = qkv[..., nq + nkv:].view(B, T, -1, hd)
            if lay["q_norm"] is not None:  # qwen3 normalises each head before the rotation
                q, k = _rms(q, *lay["q_norm"]), _rms(k, *lay["k_norm"])
            q, k = _rope(q.transpose(1, 2), cos, sin), _rope(k.transpose(1, 2), cos, sin)
            kc[:, :, t0:t0 + T] = k
            vc[:, :, t0:t0 + T] = v.transpose(1, 2)
            att = F.scaled_dot_product_attention(q.to(self.kv), kc[:, :, :t0 + T], vc[:, :, :t0 + T], attn_mask=mask,
                                                 enable_gqa=self.n_kv != self.n_heads)
            h = h + self._linear(att.transpose(1, 2).reshape(B, T, -1), lay["o"])
            gu = self._linear(_rms(h, *lay["post_norm"]), lay["gate_up"])
            h = h + self._linear(F.silu(gu[..., :lay["inter"]]) * gu[..., lay["inter"]:], lay["down"])
        return h

    def logits(self, h: Any) -> Any:
        """fp32 logits over the whole vocabulary (sampling, and the tests' reference)."""
        import torch.nn.functional as F

        return F.linear(_rms(h, self.norm, self.eps), self.lm_head)

    def greedy(self, h: Any) -> Any:
        """The argmax of the fp32 logits. With bf16 matmuls the vocabulary projection — the largest matmul
        of a decoding step for a small model (49k x 576: more than all 30 layers together at batch 64) —
        runs in bf16 to shortlist RESCORE_K candidates per row, and the fp32 logits of those alone decide:
        the same token as the full fp32 argmax unless the winner falls outside a bf16 top-k, which the
        rounding (relative 2^-8) cannot do short of a near-tie among more than k tokens."""
        import torch
        import torch.nn.functional as F

        x = _rms(h, self.norm, self.eps)
        if self.lm_head_lp is None:
            return F.linear(x, self.lm_head).argmax(-1)
        cand = F.linear(x.to(self.mm), self.lm_head_lp).topk(RESCORE_K, dim=-1).indices
        exact = torch.einsum("bd,bkd->bk", x, self.lm_head[cand])
        return cand.gather(1, exact.argmax(-1, keepdim=True)).squeeze(1)

    def generate(self, ids: Any, attn: Any, gcfg: GenerateConfig, eos: list[int],
                 prefill_batch: int | None = None) -> list[list[int]]:
        """New token ids per row (EOS and what follows left out), for left-padded ids/attn [B, T]. The
        prompts' pass runs in chunks of `prefill_batch` rows (all at once when None), each cut to its own
        longest prompt, so a decoding batch much larger than the prefill's wastes no padding there; then
        every row decodes in one batch (a step costs little more at 256 rows than at 32)."""
        import torch

        with torch.inference_mode():
            return self._generate(ids, attn.bool(), gcfg, torch.tensor(eos), prefill_batch or ids.shape[0])

    def prefill(self, ids: Any, valid: Any, S: int) -> tuple[Any, list[tuple[Any, Any]], Any, Any]:
        """The prompts' pass on its own: the last position's hidden state, the cache (room for S tokens),
        which of its slots hold a real token, and each row's last position."""
        import torch

        B, T = ids.shape
        cache = self._cache(B, S)
        keys = torch.zeros(B, S, dtype=torch.bool)
        h, last = self._prefill_into(ids, valid, cache, keys)
        return h, cache, keys, last

    def _cache(self, B: int, S: int) -> list[tuple[Any, Any]]:
        import torch

        return [(torch.zeros(B, self.n_kv, S, self.head_dim, dtype=self.kv),
                 torch.zeros(B, self.n_kv, S, self.head_dim, dtype=self.kv))
                for _ in self.layers]

    def _prefill_into(self, ids: Any, valid: Any, cache: list[tuple[Any, Any]], keys: Any, t0: int = 0,
                      pos0: int = 0) -> tuple[Any, Any]:
        """Runs ids [b, T] through the model writing cache slots t0..t0+T-1, attending to the slots before
        t0 that keys marks (a shared prefix; a gap of padding is unmarked), with positions from pos0;
        marks the real tokens in keys. Returns the last position's hidden state and each row's position."""
        import torch

        b, T = ids.shape
        cos_t, sin_t = self._rope_table(pos0 + T)
        keys[:, t0:t0 + T] = valid
        pos = pos0 + (valid.long().cumsum(-1) - 1).clamp(min=0)  # positions as transformers derives them
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        # A padding query may attend to itself, so that no row of the softmax is empty (NaN).
        own = (causal & valid[:, None, None, :]) | torch.eye(T, dtype=torch.bool)
        mask = torch.cat([keys[:, None, None, :t0].expand(b, 1, T, t0), own], dim=-1) if t0 else own
        h = self.forward(ids, cos_t[pos][:, None], sin_t[pos][:, None], cache, t0, mask)
        return h[:, -1], pos[:, -1]

    @staticmethod
    def shared_prefix(ids: Any, valid: Any) -> int:
        """How many leading real tokens every row has in common (the chat template's system turn and
        opening: 24 of SmolLM2's 61 tokens a prompt on the laptop's suite), leaving each row one of its own."""
        import torch

        lens = valid.sum(-1)
        shortest = int(lens.min())
        if ids.shape[0] < 2 or shortest < 2:
            return 0
        starts = ids.shape[1] - lens  # left padding: row r's tokens start there
        head = ids.gather(1, starts[:, None] + torch.arange(shortest - 1)[None])
        same = (head == head[:1]).all(0)
        return int(same.long().cumprod(0).sum())

    def _generate(self, ids: Any, valid: Any, gcfg: GenerateConfig, eos: Any, prefill_batch: int) -> list[list[int]]:
        import torch

        B, T = ids.shape
        # Cache layout per row: [shared prefix (P) | the rest of its prompt, right-aligned in R slots | new
        # tokens]. The prefix is computed once for the batch; each row's pass covers only its own tokens.
        P = self.shared_prefix(ids, valid) if B > 1 else 0
        lens = valid.sum(-1)
        R = int((lens - P).max())
        S = P + R + gcfg.max_new_tokens
        cos_t, sin_t = self._rope_table(S)
        cache = self._cache(B, S)
        keys = torch.zeros(B, S, dtype=torch.bool)
        if P:
            one = self._cache(1, P)
            self._prefill_into(ids[:1, T - int(lens[0]):T - int(lens[0]) + P], torch.ones(1, P, dtype=torch.bool),
                               one, torch.zeros(1, P, dtype=torch.bool))
            for (kc, vc), (k1, v1) in zip(cache, one, strict=True):
                kc[:, :, :P] = k1
                vc[:, :, :P] = v1
            keys[:, :P] = True
        rest_valid = torch.arange(R)[None] >= (R - (lens - P))[:, None]  # [B, R]: each row's own tokens
        rest_ids = ids[:, T - R:]
        h = torch.empty(B, self.embed.shape[1])
        last = torch.empty(B, dtype=torch.long)
        for r0 in range(0, B, prefill_batch):
            r1 = min(B, r0 + prefill_batch)
            # This chunk's tokens sit in its last t columns; the columns before them stay unmarked.
            t = int((lens[r0:r1] - P).max())
            views = [(kc[r0:r1], vc[r0:r1]) for kc, vc in cache]
            h[r0:r1], last[r0:r1] = self._prefill_into(rest_ids[r0:r1, R - t:], rest_valid[r0:r1, R - t:], views,
                                                      keys[r0:r1], t0=P + R - t, pos0=P)
        rows = torch.arange(B)  # original row of each row still in the batch
        alive = torch.ones(B, dtype=torch.bool)
        out: list[list[int]] = [[] for _ in range(B)]
        gen = torch.Generator().manual_seed(gcfg.seed)
        for step in range(gcfg.max_new_tokens):
            nxt = self.greedy(h) if gcfg.temperature <= 0 else self._sample(self.logits(h), gcfg, gen)
            done = torch.isin(nxt, eos) & alive
            for r, tok, a in zip(rows.tolist(), nxt.tolist(), (alive & ~done).tolist(), strict=True):
                if a:
                    out[r].append(tok)
            alive &= ~done
            if step == gcfg.max_new_tokens - 1 or not bool(alive.any()):
                break
            # Finished rows leave the batch once they are a quarter of it: every step then costs about
            # what the live rows do, without copying the cache at every step some row finishes.
            if 4 * int((~alive).sum()) >= alive.numel():
                keep = alive.nonzero().squeeze(1)
                rows, nxt, last, keys, alive = rows[keep], nxt[keep], last[keep], keys[keep], alive[keep]
                cache = [(kc[keep], vc[keep]) for kc, vc in cache]
            t = P + R + step
            keys[:, t] = True
            last = last + 1
            h = self.forward(nxt[:, None], cos_t[last][:, None, None], sin_t[last][:, None, None], cache, t,
                             keys[:, None, None, :t + 1])[:, -1]
        return out

    def _rope_table(self, n: int) -> tuple[Any, Any]:
        """cos/sin [n, head_dim] for positions 0..n-1, from the model's own rotary module (any rope scaling)."""
        import torch

        cos, sin = self.rotary(torch.zeros(1, dtype=torch.float32), torch.arange(n)[None])
        return cos[0].float(), sin[0].float()

    @staticmethod
    def _sample(logits: Any, gcfg: GenerateConfig, gen: Any) -> Any:
        """Temperature + top-p sampling (seeded; not the same draws as transformers')."""
        import torch

        probs = torch.softmax(logits / gcfg.temperature, -1)
        sp, si = probs.sort(-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always).
        sp = sp.masked_fill(sp.cumsum(-1) - sp > gcfg.top_p, 0.0)
        return si.gather(-1, torch.multinomial(sp, 1, generator=gen)).squeeze(1)


def _base(mod: Any) -> Any:
    """The plain Linear under a peft LoRA layer (or the Linear itself)."""
    return getattr(mod, "base_layer", mod)


def _weight(mod: Any) -> Any:
    """A Linear's weight with the active LoRA adapters' deltas added (peft's get_delta_weight: scale,
    rsLoRA and fan-in/fan-out as peft applies them), or the plain weight without an active adapter."""
    import torch

    w = _base(mod).weight.detach()
    if not hasattr(mod, "base_layer") or getattr(mod, "disable_adapters", False):
        return w
    with torch.no_grad():
        for name in mod.active_adapters:
            if name in getattr(mod, "lora_A", {}):
                w = w + mod.get_delta_weight(name).to(w.dtype)
    return w


def _norm_of(mod: Any) -> tuple[Any, float] | None:
    return None if mod is None else (mod.weight.detach(), mod.variance_epsilon)


def _rms(x: Any, w: Any, eps: float) -> Any:
    """transformers' RMSNorm, in fp32, in the same order of operations."""
    import torch

    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x: Any, cos: Any, sin: Any) -> Any:
    import torch

    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
