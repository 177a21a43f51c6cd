"""The small models: causal masking, tied embeddings, shapes, batch independence."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from pipeline.config import ImageTaskConfig, TextTaskConfig
from pipeline.train.models import SmallCNN, TransformerLM, count_parameters
from pipeline.train.tasks.images import ImageClassifierTask
from pipeline.train.tasks.text import VOCAB_SIZE, TextLMTask

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # These models are tiny: on a shared 2-core machine extra intra-op threads only spin
    # against other processes (10-40x slower under load), and one thread is as fast idle.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _lm(seq_len: int = 16) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(VOCAB_SIZE, d_model=32, n_layers=2, n_heads=4, max_seq_len=seq_len)


def test_lm_forward_shape_and_length_limit() -> None:
    model = _lm()
    tokens = torch.randint(0, VOCAB_SIZE, (3, 10))
    assert model(tokens).shape == (3, 10, VOCAB_SIZE)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.int64))


def test_changing_a_future_token_leaves_earlier_logits_unchanged() -> None:
    model = _lm().eval()
    tokens = torch.randint(0, 256, (2, 12))
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 256
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_output_embedding_is_tied_to_input_embedding() -> None:
    model = _lm()
    assert model.head.weight is model.tok_emb.weight
    # counted once, and one gradient flows into the shared tensor from both uses
    n_distinct = sum(p.numel() for p in model.parameters())
    n_all = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert n_all - n_distinct == VOCAB_SIZE * 32
    model(torch.randint(0, VOCAB_SIZE, (1, 5))).sum().backward()
    assert model.tok_emb.weight.grad is not None


def test_cnn_shapes_and_groupnorm() -> None:
    torch.manual_seed(0)
    model = SmallCNN(n_classes=4, channels=8)
    for size in (16, 32):
        assert model(torch.randn(2, 3, size, size)).shape == (2, 4)
    kinds = {type(m) for m in model.modules()}
    assert nn.GroupNorm in kinds and nn.BatchNorm2d not in kinds


def test_cnn_output_does_not_depend_on_the_rest_of_the_batch() -> None:
    # GroupNorm normalizes each image on its own: a one-image DDP shard behaves like a
    # full batch, and train mode equals eval mode.
    torch.manual_seed(0)
    model = SmallCNN(n_classes=3, channels=8)
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        batched = model.train()(x)
        single = model.eval()(x[2:3])
    torch.testing.assert_close(batched[2:3], single, rtol=1e-4, atol=1e-5)


def test_parameter_counts_at_default_config() -> None:
    text = TextLMTask(TextTaskConfig()).build_model()
    images = ImageClassifierTask(ImageTaskConfig(), ["a", "b", "c", "d"]).build_model()
    # Small enough to train on a laptop CPU in minutes (documented in the report).
    assert count_parameters(text) == 446_336
    assert count_parameters(images) == 241_700
