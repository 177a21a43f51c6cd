"""Text task: a byte-level decoder-only transformer language model.

Tokenizer: the 256 byte values of the UTF-8 encoding are the tokens 0-255, plus three
special ids: BOS=256 starts every document, EOS=257 ends it, PAD=258 fills windows after
the end and is masked out of the loss. Vocabulary 259; nothing to download or train, and
every string round-trips exactly.

Training examples: document d becomes the token stream `[BOS] + utf8(d) + [EOS]` and one
example is a window of `seq_len + 1` tokens of that stream (inputs = the first seq_len,
targets = the same shifted by one). A stream shorter than the window is padded with PAD;
from a longer one a window starts at a random offset when training (drawn from the step's
generator, so a resumed run sees the same windows) and at offset 0 otherwise, so that
validation and test figures are deterministic (they score each document's first
seq_len + 1 tokens).

Metrics (sums, all-reduced by the loop, see pipeline.train.task):

- `loss_sum`: summed NLL in nats of every non-PAD target (bytes and EOS);
- `tokens`: the number of those targets;
- `byte_loss_sum`: summed NLL in nats of the targets that are bytes (0-255), i.e. without
  EOS (BOS and PAD are never scored);
- `bytes`: the number of those byte targets.

`summarize` reports `loss` = loss_sum / tokens (mean nats per token), `perplexity` =
exp(loss) and `bits_per_byte` = byte_loss_sum / ln(2) / bytes: the mean code length in bits
the model spends on each UTF-8 byte of text. It leaves out the cost of predicting the end
of a document (at most one EOS per window), so it is directly comparable across tokenizers
that do not share our special tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import PipelineConfig, TextTaskConfig
from pipeline.train.models import TransformerLM

N_BYTES = 256
BOS_ID = 256
EOS_ID = 257
PAD_ID = 258
VOCAB_SIZE = 259


def encode(text: str) -> list[int]:
    """Token ids of one string: BOS, its UTF-8 bytes, EOS."""
    return [BOS_ID, *text.encode("utf-8"), EOS_ID]


def decode(tokens: Sequence[int] | torch.Tensor | np.ndarray) -> str:
    """The text of byte tokens; special tokens are dropped, invalid UTF-8 (e.g. a
    multi-byte character cut by a window) becomes U+FFFD instead of raising."""
    ids = np.asarray(tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens,
                     dtype=np.int64)
    return ids[ids < N_BYTES].astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def _utf8_buffers(texts: Any) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [B+1] int64, data uint8) of the UTF-8 bytes of a column of strings.

    Arrow encodes the whole column into one contiguous buffer in C, so there is no
    per-row Python; a null text is treated as an empty document."""
    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(
        np.asarray(texts, dtype=object), type=pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
            else np.zeros(0, dtype=np.uint8))
    return offsets, data


def make_windows(texts: Any, seq_len: int, train: bool,
                 generator: torch.Generator | None = None) -> np.ndarray:
    """The [B, seq_len + 1] int64 token windows of a batch of documents (see module doc).

    Fully vectorized: one index grid gathers every window's bytes from the batch's
    concatenated UTF-8 buffer."""
    offsets, data = _utf8_buffers(texts)
    n = np.diff(offsets)  # bytes per document
    starts = offsets[:-1]
    width = seq_len + 1
    stream = n + 2  # BOS + bytes + EOS
    span = np.maximum(stream - width, 0)  # how far a window can slide
    if train and len(n):
        u = torch.rand(len(n), generator=generator, dtype=torch.float64).numpy()
        shift = np.minimum((u * (span + 1)).astype(np.int64), span)
    else:
        shift = np.zeros(len(n), dtype=np.int64)
    pos = shift[:, None] + np.arange(width, dtype=np.int64)[None, :]  # stream position
    out = np.full(pos.shape, PAD_ID, dtype=np.int64)
    out[pos == 0] = BOS_ID
    out[pos == (n + 1)[:, None]] = EOS_ID
    is_byte = (pos >= 1) & (pos <= n[:, None])
    out[is_byte] = data[(starts[:, None] + pos - 1)[is_byte]]
    return out


def generate(model: nn.Module, prompt: str, max_new_tokens: int, temperature: float = 1.0,
             generator: torch.Generator | None = None) -> str:
    """Sample a continuation of `prompt` (the continuation only, without the prompt).

    Greedy when temperature == 0, otherwise sampling from softmax(logits / temperature)
    with `generator` (a CPU generator: sampling happens on CPU, the vocabulary is tiny).
    Stops at EOS or after `max_new_tokens`; BOS and PAD are never sampled. The context
    is the last max_seq_len tokens. Bytes are decoded with errors="replace"."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    lm = getattr(model, "module", model)  # unwrap DDP
    assert isinstance(lm, TransformerLM)
    device = next(lm.parameters()).device
    tokens = encode(prompt)[:-1]  # BOS + prompt bytes, no EOS: the text goes on
    new: list[int] = []
    was_training = lm.training
    lm.eval()
    try:
        with torch.no_grad():
            for _ in range(max_new_tokens):
                ctx = torch.tensor([tokens[-lm.max_seq_len:]], dtype=torch.int64,
                                   device=device)
                logits = lm(ctx)[0, -1].float().cpu()
                logits[BOS_ID] = logits[PAD_ID] = -math.inf
                if temperature == 0:
                    nxt = int(torch.argmax(logits))
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    nxt = int(torch.multinomial(probs, 1, generator=generator))
                if nxt == EOS_ID:
                    break
                tokens.append(nxt)
                new.append(nxt)
    finally:
        lm.train(was_training)
    return decode(new)


class TextLMTask:
    """Byte-level LM task on the `text` column (implements pipeline.train.task.Task)."""

    name: str = "text"
    columns: tuple[str, ...] = ("text",)

    def __init__(self, cfg: TextTaskConfig) -> None:
        if cfg.d_model % cfg.n_heads != 0:
            raise ValueError(f"d_model={cfg.d_model} is not divisible by n_heads={cfg.n_heads}")
        self.cfg = cfg
        self.seq_len = cfg.seq_len

    @classmethod
    def from_config(cls, cfg: PipelineConfig, labels: Sequence[str] | None = None
                    ) -> TextLMTask:
        """Registry factory: the text task of a pipeline config (labels are unused)."""
        return cls(cfg.train.text)

    def build_model(self) -> nn.Module:
        c = self.cfg
        return TransformerLM(VOCAB_SIZE, c.d_model, c.n_layers, c.n_heads, c.seq_len)

    def to_tensors(self, batch: Mapping[str, Any], train: bool,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """{"tokens": [B, seq_len + 1] int64}: BOS + bytes + EOS windows, PAD-filled."""
        windows = make_windows(batch["text"], self.seq_len, train, generator)
        return {"tokens": torch.from_numpy(windows)}

    def loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens = batch["tokens"]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        # float32 logits for the softmax even under bf16 autocast.
        logits = model(inputs).float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                              ignore_index=PAD_ID, reduction="none")
        flat = targets.reshape(-1)
        scored = flat != PAD_ID
        is_byte = flat < N_BYTES
        loss_sum = nll.sum()  # ignored (PAD) positions contribute exactly 0
        n_tokens = scored.sum()
        loss = loss_sum / n_tokens.clamp(min=1)
        sums = {
            "loss_sum": loss_sum.detach(),
            "tokens": n_tokens.detach().float(),
            "byte_loss_sum": (nll * is_byte).sum().detach(),
            "bytes": is_byte.sum().detach().float(),
        }
        return loss, sums

    def summarize(self, sums: Mapping[str, float]) -> dict[str, float]:
        tokens = sums.get("tokens", 0.0)
        n_bytes = sums.get("bytes", 0.0)
        loss = sums.get("loss_sum", 0.0) / tokens if tokens else math.nan
        bpb = (sums.get("byte_loss_sum", 0.0) / math.log(2) / n_bytes
               if n_bytes else math.nan)
        # exp overflows a float past ~709 nats; a loss that high means "diverged" anyway.
        ppl = math.exp(min(loss, 700.0)) if not math.isnan(loss) else math.nan
        return {"loss": loss, "perplexity": ppl, "bits_per_byte": bpb}

    def generate(self, model: nn.Module, prompt: str, max_new_tokens: int,
                 temperature: float = 1.0, generator: torch.Generator | None = None) -> str:
        """See `generate` (module level)."""
        return generate(model, prompt, max_new_tokens, temperature, generator)
