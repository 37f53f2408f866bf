"""The autoregressive speech-token model of Tortoise (``UnifiedVoice``, autoregressive.pth).

A GPT-2 decoder reads one sequence made of three parts and predicts the next speech code:

    [conditioning latent] [start_text, text tokens..., stop_text] [start_mel, mel codes..., stop_mel]
          1 vector           text embedding + text position          mel embedding + mel position

* The conditioning latent (one 1024-d vector per voice) comes from ``ConditioningEncoder`` applied to
  80-band log-mel clips and averaged over clips.
* GPT-2's own token and position embeddings are unused: text and mel tokens have their own embedding
  tables and their own *learned* position tables, and both positions restart at 0 for each part.
* The GPT-2 stack is written here (fused QKV, ``F.scaled_dot_product_attention``) but keeps the
  parameter layout of Hugging Face's ``GPT2Model`` (``Conv1D`` weights stored (in, out)), so the
  official checkpoint loads with ``strict=True`` under the names ``gpt.h.N.*`` and ``gpt.ln_f``.
* Hidden states go through ``gpt.ln_f`` and then ``final_norm`` before the text or mel head.

Two ways to run it:

1. ``forward``: teacher forcing over a whole (text, codes) pair.  It gives the text and mel logits, or
   with ``return_latent=True`` the final-norm hidden states at the mel positions: the "latents" that the
   diffusion decoder is conditioned on (the second AR pass of the pipeline).
2. ``new_cache`` / ``prefill`` / ``decode_step``: incremental decoding with a preallocated KV cache.
   The mel position of generated token k is k (the start token is position 0), exactly as in
   ``forward``; so a cached decode reproduces the uncached logits at every step.  (The original's
   ``kv_cache=True`` path used k+1 for cached steps; we do not reproduce that.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AttentionBlock


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ARConfig:
    """Hyper-parameters of ``UnifiedVoice``; the defaults are the official checkpoint's."""

    layers: int = 30
    model_dim: int = 1024
    heads: int = 16
    max_text_tokens: int = 402
    max_mel_tokens: int = 604
    max_conditioning_inputs: int = 2
    mel_length_compression: int = 1024   # waveform samples (22.05 kHz) per mel code
    number_text_tokens: int = 255
    start_text_token: int = 255
    stop_text_token: int = 0
    number_mel_codes: int = 8194
    start_mel_token: int = 8192
    stop_mel_token: int = 8193
    mel_channels: int = 80               # bands of the conditioning mel spectrogram
    conditioning_attn_blocks: int = 6
    layer_norm_eps: float = 1e-5

    @property
    def text_vocab(self) -> int:
        """Rows of the text embedding / outputs of the text head (tokens plus the start token)."""
        return self.number_text_tokens + 1

    @property
    def mel_positions(self) -> int:
        """Rows of the mel position table (608 for the official model)."""
        return self.max_mel_tokens + 2 + self.max_conditioning_inputs

    @property
    def text_positions(self) -> int:
        """Rows of the text position table (404 for the official model)."""
        return self.max_text_tokens + 2

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.heads

    @classmethod
    def tiny(cls) -> "ARConfig":
        """A ~1.4M-parameter model for tests.

        Token ids and sequence limits stay official (8194 mel codes, start 8192, stop 8193, 402/604
        tokens) so a tiny model is a drop-in for the rest of the pipeline; only the width and depth shrink.
        """
        return cls(layers=2, model_dim=64, heads=4)


# --------------------------------------------------------------------------------------------------
# Conditioning encoder and embeddings
# --------------------------------------------------------------------------------------------------

class ConditioningEncoder(nn.Module):
    """(B, 80, T) log-mel clip -> (B, D) voice vector: 1x1 conv, attention blocks, first frame."""

    def __init__(self, spec_dim: int, dim: int, attn_blocks: int = 6, heads: int = 4):
        super().__init__()
        self.init = nn.Conv1d(spec_dim, dim, kernel_size=1)
        self.attn = nn.Sequential(*[AttentionBlock(dim, heads) for _ in range(attn_blocks)])

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # The blocks attend over all frames; frame 0 then summarises the clip (no pooling).
        return self.attn(self.init(mel))[:, :, 0]


class LearnedPositionEmbeddings(nn.Module):
    """A learned table of absolute positions; each part of the sequence counts from 0."""

    def __init__(self, n_positions: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(n_positions, dim)

    def forward(self, length: int) -> torch.Tensor:
        """Positions 0..length-1 as a (length, D) tensor."""
        return self.emb.weight[:length]

    def at(self, position: torch.Tensor) -> torch.Tensor:
        """The row of one position given as a device tensor (no host sync); shape (1, D)."""
        return self.emb.weight.index_select(0, position.reshape(1))


# --------------------------------------------------------------------------------------------------
# GPT-2 (Hugging Face GPT2Model layout, no token/position embeddings of its own)
# --------------------------------------------------------------------------------------------------

def weight_first_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T + bias`` computed as ``(weight @ x.T + bias).T``; ``weight`` is (out, in).

    Same numbers as ``F.linear`` up to float rounding, but MKL runs the few-row products of AR
    decoding (16 rows at batch 16) 1.6-2.1x faster this way when ``weight`` is contiguous (out, in).
    The result is a transposed view (no copy); every op downstream accepts it.
    """
    rows = x.reshape(-1, x.shape[-1])
    y = torch.addmm(bias.unsqueeze(1), weight, rows.t()).t()
    return y.reshape(*x.shape[:-1], weight.shape[0])


class Conv1D(nn.Module):
    """GPT-2's linear layer: ``y = x @ weight + bias`` with ``weight`` of shape (in, out).

    ``weight_first`` (set by ``UnifiedVoice.use_weight_first_linears``) computes it with
    :func:`weight_first_linear`; the weight then lives out-major in memory (a transposed view of an
    (out, in) tensor) while its shape, and so the state dict, stays (in, out).
    """

    weight_first: bool = False

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_first:
            return weight_first_linear(x, self.weight.t(), self.bias)
        return F.linear(x, self.weight.t(), self.bias)


class SelfAttention(nn.Module):
    """Causal multi-head self-attention with one fused q|k|v projection (``c_attn``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn = Conv1D(dim, 3 * dim)
        self.c_proj = Conv1D(dim, dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> q, k, v each (B, H, T, D/H); c_attn's output is laid out [q | k | v]."""
        b, t, d = x.shape
        q, k, v = self.c_attn(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        b, h, t, hd = y.shape
        return self.c_proj(y.transpose(1, 2).reshape(b, t, h * hd))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attention over the whole sequence; also returns this layer's k and v (for a cache)."""
        q, k, v = self._qkv(x)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self._merge(y), k, v

    def step(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot: int | torch.Tensor, mask: torch.Tensor | None, rows: bool = False) -> torch.Tensor:
        """One new position: write its k/v into the cache at ``slot`` in place, attend to the cache.

        ``slot`` as an int: the cache is read up to ``slot`` inclusive (eager, dynamic length).
        ``slot`` as a (1,) device tensor: the whole preallocated cache is read and ``mask`` (True =
        attend) hides the unused tail, so shapes are static and the step can be graph-captured.
        With ``rows``, ``slot`` is (B,): row b writes its k/v at its own ``slot[b]`` (sequences of
        different prompt lengths and ages in one batch, as continuous batching has), and ``mask``
        is (B, 1, 1, L), one row of visible slots per sequence.
        """
        q, k, v = self._qkv(x)
        if rows:
            index = torch.arange(x.shape[0], device=x.device)
            k_cache[index, :, slot] = k[:, :, 0].to(k_cache.dtype)
            v_cache[index, :, slot] = v[:, :, 0].to(v_cache.dtype)
        elif isinstance(slot, int):
            k_cache[:, :, slot:slot + 1] = k
            v_cache[:, :, slot:slot + 1] = v
            k_cache, v_cache = k_cache[:, :, :slot + 1], v_cache[:, :, :slot + 1]
        else:
            k_cache.index_copy_(2, slot, k.to(k_cache.dtype))
            v_cache.index_copy_(2, slot, v.to(v_cache.dtype))
        # The cache may be kept wider than the activations (UnifiedVoice.kv_cache_dtype): the query
        # follows it, the output goes back through c_proj (which casts to its own dtype).
        y = F.scaled_dot_product_attention(q.to(k_cache.dtype), k_cache, v_cache, attn_mask=mask)
        return self._merge(y)


class MLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.c_fc = Conv1D(dim, 4 * dim)
        self.c_proj = Conv1D(4 * dim, dim)

    #: ``c_fc`` applies the GELU itself (a packed layer with the activation fused as a post-op).
    fused_gelu: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2's "gelu_new" is the tanh approximation.
        if self.fused_gelu:
            return self.c_proj(self.c_fc(x))
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, k, v = self.attn(self.ln_1(x))
        x = x + a
        return x + self.mlp(self.ln_2(x)), k, v

    def step(self, x, k_cache, v_cache, slot, mask, rows: bool = False) -> torch.Tensor:
        x = x + self.attn.step(self.ln_1(x), k_cache, v_cache, slot, mask, rows)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """The block stack and final LayerNorm of GPT-2 (``h``, ``ln_f``), fed with embeddings."""

    def __init__(self, layers: int, dim: int, heads: int, eps: float):
        super().__init__()
        self.h = nn.ModuleList([Block(dim, heads, eps) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
        """Causal pass over (B, T, D) embeddings; with ``cache``, k/v fill its slots 0..T-1.

        The cache may have more rows than ``x`` (one shared prompt for many samples): k/v broadcast.
        """
        for i, block in enumerate(self.h):
            x, k, v = block(x)
            if cache is not None:
                cache.k[i, :, :, :k.shape[2]].copy_(k)
                cache.v[i, :, :, :v.shape[2]].copy_(v)
        return self.ln_f(x)

    def step(self, x: torch.Tensor, cache: "KVCache", slot: int | torch.Tensor,
             mask: torch.Tensor | None, rows: bool = False) -> torch.Tensor:
        """One position (B, 1, D) against the cache; see ``SelfAttention.step``."""
        for i, block in enumerate(self.h):
            x = block.step(x, cache.k[i], cache.v[i], slot, mask, rows)
        return self.ln_f(x)


# --------------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------------

@dataclass
class KVCache:
    """Preallocated keys/values of every layer, written in place by ``prefill`` and ``decode_step``.

    ``k``/``v``: (layers, batch, heads, max_len, head_dim).  Slot s holds sequence position s:
    the prompt fills 0..prompt_len-1 (its last slot is the start mel token, mel position 0), and mel
    position p lives in slot ``prompt_len - 1 + p``.  ``slot_offset`` is that ``prompt_len - 1`` as a
    0-d device tensor, so a captured decode step stays valid for prompts of any length.
    """

    k: torch.Tensor
    v: torch.Tensor
    slot_offset: torch.Tensor      # 0-d long, on the cache's device
    slots: torch.Tensor            # arange(max_len), on the device; compared against the slot for the mask
    prompt_len: int = 0

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def max_mel_position(self) -> int:
        """The largest mel position ``decode_step`` can take after the current prefill."""
        return self.max_len - self.prompt_len


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------

# Keys of official checkpoints that the original's loader (load_state_dict(strict=False)) ignores:
# GPT-2's causal-mask buffers saved by older transformers (autoregressive.pth holds gpt.h.N.attn.bias
# and gpt.h.N.attn.masked_bias for every layer; transformers >= 4.31 no longer persists them), and the
# aliases the original adds after loading (post_init_gpt2_config: inference_model.*, gpt.wte = mel_embedding).
_IGNORED_CHECKPOINT_KEYS = re.compile(r"^(gpt\.h\.\d+\.attn\.(bias|masked_bias)|gpt\.wte\.weight|inference_model\..*)$")


class UnifiedVoice(nn.Module):
    """Tortoise's autoregressive model; see the module docstring for the sequence layout."""

    def __init__(self, config: ARConfig | None = None):
        super().__init__()
        self.config = c = config or ARConfig()
        self.conditioning_encoder = ConditioningEncoder(c.mel_channels, c.model_dim,
                                                        attn_blocks=c.conditioning_attn_blocks, heads=c.heads)
        self.text_embedding = nn.Embedding(c.text_vocab, c.model_dim)
        self.mel_embedding = nn.Embedding(c.number_mel_codes, c.model_dim)
        self.gpt = GPT2(c.layers, c.model_dim, c.heads, c.layer_norm_eps)
        self.mel_pos_embedding = LearnedPositionEmbeddings(c.mel_positions, c.model_dim)
        self.text_pos_embedding = LearnedPositionEmbeddings(c.text_positions, c.model_dim)
        self.final_norm = nn.LayerNorm(c.model_dim)
        self.text_head = nn.Linear(c.model_dim, c.text_vocab)
        self.mel_head = nn.Linear(c.model_dim, c.number_mel_codes)
        self.weight_first = False
        # The KV cache's dtype when it must differ from the weights' (None: theirs; use_packed_linears).
        self.kv_cache_dtype: torch.dtype | None = None
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # GPT-2's scheme; only matters for freshly built (random) models, checkpoints overwrite it.
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, 0.02)
            elif isinstance(m, Conv1D):
                m.weight.normal_(0.0, 0.02)
                m.bias.zero_()

    @staticmethod
    def convert_state_dict(raw: dict) -> dict:
        """Official checkpoint content -> this module's state dict (drops only ignorable keys).

        Dropped: ``gpt.h.N.attn.bias`` / ``gpt.h.N.attn.masked_bias`` (GPT-2 causal-mask buffers
        that the real autoregressive.pth carries), ``gpt.wte.weight`` and ``inference_model.*``
        (aliases of existing weights).  The original loads with ``strict=False`` and ignores them too.
        """
        return {k: v for k, v in raw.items() if not _IGNORED_CHECKPOINT_KEYS.match(k)}

    @torch.no_grad()
    def use_weight_first_linears(self, enabled: bool = True) -> "UnifiedVoice":
        """Compute the GPT-2 linears and the mel head as ``weight @ x.T`` (or back to ``x @ weight.T``).

        The Policy turns this on where the device's matrix product prefers it
        (``Policy.ar_weight_first``: float32 on the CPU).  Enabling re-lays each GPT-2 weight out-major
        in memory (one copy per weight, at load time); shapes, names and the state dict do not change,
        and the outputs equal the default path's up to float rounding.
        """
        for m in self.gpt.modules():
            if isinstance(m, Conv1D):
                if enabled and not m.weight.t().is_contiguous():
                    m.weight.data = m.weight.data.t().contiguous().t()
                m.weight_first = enabled
        self.weight_first = enabled
        return self

    @torch.no_grad()
    def use_packed_linears(self, dtype: torch.dtype, rows: int) -> "UnifiedVoice":
        """Prepack the GPT-2 linears and the mel head for oneDNN (``models.packed``), the CPU's fastest path.

        Each GPT-2 ``Conv1D`` and the mel head become a :class:`~tortoise_xpu.models.packed.PackedLinear`
        in ``dtype`` laid out for products of ``rows`` rows (the decode batch), ``c_fc`` with its GELU
        fused; the KV cache is kept in float32 (``kv_cache_dtype``): one query against the cache in
        bfloat16 went through a copy of each cache slice (oneDNN's batched product wants dense
        batches) or SDPA's slow bfloat16 path, 0.3-1.2 ms per layer at batch 16, against ~0.2 ms for
        SDPA's float32 kernel on the slice in place.  The conditioning encoder's attention blocks use
        explicit products (``AttentionBlock.matmul_attention``).  The float weights are
        dropped: the model's state dict is not the checkpoint's any more, and it cannot be moved off
        the CPU (pack after loading).  The rest of the model (embeddings, LayerNorms, conditioning
        encoder) is untouched.  Outputs equal the unpacked model's up to ``dtype`` rounding.
        """
        from tortoise_xpu.models.packed import PackedLinear

        self.use_weight_first_linears(False)
        targets: list[tuple[nn.Module, str, nn.Module]] = []
        for parent in self.gpt.modules():
            for name, child in parent.named_children():
                if isinstance(child, Conv1D):
                    targets.append((parent, name, child))
        for block in self.conditioning_encoder.modules():  # its attention over the voice clips' frames
            if isinstance(block, AttentionBlock):
                block.matmul_attention = True
        for parent, name, child in targets:
            gelu = isinstance(parent, MLP) and name == "c_fc"
            setattr(parent, name, PackedLinear(child.weight.t(), child.bias, dtype, rows, gelu_tanh=gelu))
            if gelu:
                parent.fused_gelu = True
        if isinstance(self.mel_head, nn.Linear):
            self.mel_head = PackedLinear(self.mel_head.weight, self.mel_head.bias, dtype, rows)
        self.kv_cache_dtype = torch.float32
        return self

    def _mel_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.weight_first:
            return weight_first_linear(hidden, self.mel_head.weight, self.mel_head.bias)
        return self.mel_head(hidden)

    # ----------------------------------------------------------------------------- conditioning
    def get_conditioning(self, mels: torch.Tensor) -> torch.Tensor:
        """Voice latent from conditioning mels: (B, n_clips, 80, T) or (B, 80, T) -> (B, D).

        Each clip is encoded on its own and the clip vectors are averaged.
        """
        if mels.dim() == 3:
            mels = mels.unsqueeze(1)
        b, n = mels.shape[:2]
        per_clip = self.conditioning_encoder(mels.reshape(b * n, *mels.shape[2:]))
        return per_clip.reshape(b, n, -1).mean(dim=1)

    # ----------------------------------------------------------------------------- embeddings
    def _embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """Text tokens *without* start/stop -> (B, T+2, D) embeddings of [start, text, stop]."""
        c = self.config
        text = F.pad(F.pad(text, (0, 1), value=c.stop_text_token), (1, 0), value=c.start_text_token)
        return self.text_embedding(text) + self.text_pos_embedding(text.shape[1])

    def _embed_mel(self, codes: torch.Tensor) -> torch.Tensor:
        """Mel codes including the start token, at mel positions 0..T-1 -> (B, T, D)."""
        return self.mel_embedding(codes) + self.mel_pos_embedding(codes.shape[1])

    def _pad_codes_past_length(self, codes: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Replace codes that lie past each clip's real length by the stop token (a copy, not in place).

        A clip of n samples has n // compression codes; the code after the last one is kept because
        the codec's receptive field makes it still carry audio, so stop starts one code later.
        """
        keep = wav_lengths.div(self.config.mel_length_compression, rounding_mode="trunc") + 1
        past = torch.arange(codes.shape[1], device=codes.device)[None, :] >= keep[:, None]
        return codes.masked_fill(past, self.config.stop_mel_token)

    # ----------------------------------------------------------------------------- teacher forcing
    def forward(self, cond_latent: torch.Tensor, text_inputs: torch.Tensor, text_lengths: torch.Tensor,
                mel_codes: torch.Tensor, wav_lengths: torch.Tensor, *, return_latent: bool = False,
                clip_inputs: bool = True) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass over [cond, start_text, text, stop_text, start_mel, codes, stop_mel].

        Arguments follow the original ``UnifiedVoice.forward``:
          cond_latent (B, D) from ``get_conditioning``; text_inputs (B, T) long, without start/stop;
          text_lengths (B,); mel_codes (B, M) long; wav_lengths (B,) waveform samples per clip, so that
          codes past ``wav_lengths // mel_length_compression + 1`` become the stop token.
          ``clip_inputs`` first cuts text to ``max(text_lengths)`` and codes to
          ``max(wav_lengths) // mel_length_compression`` (the pipeline's latents pass passes False).

        Returns ``(text_logits (B, T+2, text_vocab), mel_logits (B, M'+2, number_mel_codes))`` with
        the class axis last (the original returns (B, V, T) mel logits plus training losses), or with
        ``return_latent`` the final-norm hidden states at the mel inputs [start, codes...] minus the
        last two (B, M', D): latent i is the state that predicts code i.
        """
        c = self.config
        if clip_inputs:
            text_inputs = text_inputs[:, :int(text_lengths.max())]
            mel_codes = mel_codes[:, :int(wav_lengths.max()) // c.mel_length_compression]
        codes = self._pad_codes_past_length(mel_codes, wav_lengths)
        codes = F.pad(F.pad(codes, (0, 1), value=c.stop_mel_token), (1, 0), value=c.start_mel_token)

        text_emb = self._embed_text(text_inputs)
        mel_emb = self._embed_mel(codes)
        x = torch.cat([cond_latent.unsqueeze(1).to(text_emb.dtype), text_emb, mel_emb], dim=1)
        h = self.final_norm(self.gpt(x))

        mel_h = h[:, -codes.shape[1]:]
        if return_latent:
            return mel_h[:, :-2]
        text_h = h[:, 1:1 + text_emb.shape[1]]
        return self.text_head(text_h), self._mel_logits(mel_h)

    # ----------------------------------------------------------------------------- cached decoding
    @staticmethod
    def prompt_length(text_len: int) -> int:
        """Sequence length that ``prefill`` writes for ``text_len`` text tokens (cond + start/stop + start mel)."""
        return text_len + 4

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        """Allocate a zeroed KV cache for ``batch`` sequences of up to ``max_len`` positions in total.

        To generate N codes after a prompt of T text tokens, ``max_len >= prompt_length(T) + N - 1``
        (the last code is never fed back).  dtype/device default to the model's parameters'; a model
        whose ``kv_cache_dtype`` is set (packed on the CPU: float32) keeps its cache in that dtype.
        """
        c = self.config
        p = next(self.parameters())
        dtype = self.kv_cache_dtype or dtype or p.dtype
        device = device if device is not None else p.device
        shape = (c.layers, batch, c.heads, max_len, c.head_dim)
        return KVCache(k=torch.zeros(shape, dtype=dtype, device=device),
                       v=torch.zeros(shape, dtype=dtype, device=device),
                       slot_offset=torch.zeros((), dtype=torch.long, device=device),
                       slots=torch.arange(max_len, device=device))

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-position states (B, 1, D) after ln_f -> (mel logits (B, V), final-norm hidden (B, D))."""
        hidden = self.final_norm(x[:, -1])
        return self._mel_logits(hidden), hidden

    def prefill(self, cond_latent: torch.Tensor, text_tokens: torch.Tensor,
                cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the prompt [cond, start_text, text, stop_text, start_mel] and fill the cache from slot 0.

        cond_latent (1 or B, D); text_tokens (1 or B, T) long, without start/stop tokens (the same
        tokens the original's ``inference_speech`` takes).  A batch of 1 is computed once and
        broadcast to the cache's batch.  Returns the logits for the first generated code (B, V) and
        the final-norm hidden state at the start token (B, D): the latent of that code.
        """
        text_emb = self._embed_text(text_tokens)
        b = max(cond_latent.shape[0], text_emb.shape[0])
        if b not in (1, cache.batch):
            raise ValueError(f"prompt batch {b} does not match the cache batch {cache.batch}")
        start = torch.full((1, 1), self.config.start_mel_token, dtype=torch.long, device=text_tokens.device)
        x = torch.cat([cond_latent.unsqueeze(1).to(text_emb.dtype).expand(b, -1, -1),
                       text_emb.expand(b, -1, -1),
                       self._embed_mel(start).expand(b, -1, -1)], dim=1)
        if x.shape[1] > cache.max_len:
            raise ValueError(f"prompt of {x.shape[1]} positions does not fit a cache of {cache.max_len}")
        cache.prompt_len = x.shape[1]
        cache.slot_offset.fill_(x.shape[1] - 1)
        logits, hidden = self._heads(self.gpt(x, cache))
        # contiguous copies: samplers edit logits in place (repetition penalty), which an expanded view forbids
        return logits.expand(cache.batch, -1).contiguous(), hidden.expand(cache.batch, -1).contiguous()

    def decode_step(self, tokens: torch.Tensor, position: int | torch.Tensor,
                    cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed one code per sequence at mel ``position`` (>= 1); K/V are written into ``cache`` in place.

        tokens (B,) long: the code generated at the previous step.  position: the mel position of
        those tokens (the first generated code is position 1, the start token being 0).  A Python int
        reads the cache up to the current slot; a 0-d long device tensor reads the whole cache under a
        mask, with no host synchronisation and fixed shapes (CUDA-graph capturable: update the tensor
        in place between replays).  Returns logits for the next code (B, V) and the final-norm hidden
        state at this position (B, D), i.e. the latent of ``tokens`` for streaming vocoders.
        """
        if cache.prompt_len == 0:
            raise ValueError("decode_step needs a cache filled by prefill()")
        if isinstance(position, int):
            if not 1 <= position <= min(cache.max_mel_position, self.config.mel_positions - 1):
                raise ValueError(f"mel position {position} is outside this cache/model "
                                 f"(1..{min(cache.max_mel_position, self.config.mel_positions - 1)})")
            slot, mask = cache.prompt_len - 1 + position, None
            pos_emb = self.mel_pos_embedding.emb.weight[position]
        else:
            slot = (cache.slot_offset + position).reshape(1)
            mask = (cache.slots <= slot).view(1, 1, 1, -1)
            pos_emb = self.mel_pos_embedding.at(position)
        x = (self.mel_embedding(tokens) + pos_emb).unsqueeze(1)
        return self._heads(self.gpt.step(x, cache, slot, mask))

    def decode_rows(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                    cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """One code per sequence for a batch whose rows are at different places (continuous batching).

        tokens (B,) long: each row's last code; positions (B,) long: the mel position of that code
        (>= 1); slots (B,) long: the cache slot it goes to (the row's prompt length - 1 + position).
        ``cache.k``/``cache.v`` (layers, B, heads, L, head_dim) may be views over a larger cache;
        row b attends to its slots 0..slots[b] only (a per-row mask), so what a row computes does
        not depend on the other rows' prompts or ages.  Returns logits (B, V) and the final-norm
        hidden states (B, D), as :meth:`decode_step`.
        """
        mask = (cache.slots.view(1, -1) <= slots.view(-1, 1)).view(slots.shape[0], 1, 1, -1)
        x = (self.mel_embedding(tokens) + self.mel_pos_embedding.emb(positions)).unsqueeze(1)
        return self._heads(self.gpt.step(x, cache, slots, mask, rows=True))
