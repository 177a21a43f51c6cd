"""The text LM and image CNN tasks: conversion, loss, metrics, and that they learn."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pipeline.config import ImageTaskConfig, PipelineConfig, TextTaskConfig
from pipeline.train.images import ImageDecodeError, augment, decode_images, to_float
from pipeline.train.task import as_float_dict
from pipeline.train.tasks import get_task, task_names
from pipeline.train.tasks.images import ImageClassifierTask, confusion_key
from pipeline.train.tasks.text import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TextLMTask,
    decode,
    encode,
    make_windows,
)

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # These models are tiny: on a shared 2-core machine extra intra-op threads only spin
    # against other processes (10-40x slower under load), and one thread is as fast idle.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "All that glitters is not gold.",
    "Spark writes Parquet; Ray trains the model.",
]


# ----------------------------------------------------------------------------- registry

def test_registry_builds_tasks_by_name() -> None:
    cfg = PipelineConfig()
    assert {"text", "images"} <= set(task_names())
    assert isinstance(get_task("text", cfg), TextLMTask)
    task = get_task("images", cfg, labels=["circle", "square"])
    assert isinstance(task, ImageClassifierTask) and task.labels == ("circle", "square")
    assert task.max_pixels == cfg.inputs.images.max_pixels
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        get_task("audio", cfg)
    with pytest.raises(ValueError, match="label vocabulary"):
        get_task("images", cfg)
    with pytest.raises(ValueError, match="sorted and distinct"):
        get_task("images", cfg, labels=["square", "circle"])


def test_train_stages_come_from_the_registry() -> None:
    """Each trainable modality's stage is rebuilt from its factory reference; its cache
    key covers its own section and the settings its spec names, not the others'."""
    from pipeline import modalities
    from pipeline.config import config_from_dict
    from pipeline.evaluate.stage import evaluate_config_slice, evaluate_stage
    from pipeline.orchestrator.stages import stage_from_factory
    from pipeline.train.stage import train_config_slice, train_stage

    cfg = config_from_dict({"modalities": ["text", "images"],
                            "train": {"transactions": {"enabled": False}}})
    for spec in modalities.specs():
        assert spec.training is not None
        for make in (train_stage, evaluate_stage):
            stage = make(spec.name)
            rebuilt = stage_from_factory(stage.factory, stage.args, stage.name)
            assert (rebuilt.name, rebuilt.inputs) == (stage.name, stage.inputs)
            assert stage.enabled(cfg) == (spec.name != "transactions")
        sliced = train_config_slice(cfg, spec.name)
        assert set(sliced["train"]) & set(modalities.names()) == {spec.name}
        gates = evaluate_config_slice(cfg, spec.name)["gates"]
        assert set(gates) == {g.field for g in spec.metric_gates}
    assert train_config_slice(cfg, "images")["max_pixels"] == cfg.inputs.images.max_pixels
    assert "max_pixels" not in train_config_slice(cfg, "text")
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        train_stage("audio")


# ----------------------------------------------------------------------------- text

def test_tokenizer_round_trips_unicode() -> None:
    text = "naïve café — 日本語 🙂 Ω"
    ids = encode(text)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert len(ids) == len(text.encode("utf-8")) + 2 and all(0 <= i < 256 for i in ids[1:-1])
    assert decode(ids) == text
    assert decode(torch.tensor(ids)) == text
    # a multi-byte character cut in half decodes to U+FFFD instead of raising
    assert decode(encode("🙂")[1:3]) == "\ufffd"


def test_windows_pad_short_and_cut_long_documents() -> None:
    seq_len = 8
    texts = np.array(["hi", "", None, "abcdefghijklmnopqrstuvwxyz", "é"], dtype=object)
    w = make_windows(texts, seq_len, train=False)
    assert w.shape == (5, seq_len + 1) and w.dtype == np.int64
    assert w[0].tolist() == [BOS_ID, ord("h"), ord("i"), EOS_ID] + [PAD_ID] * 5
    assert w[1].tolist() == w[2].tolist() == [BOS_ID, EOS_ID] + [PAD_ID] * 7
    assert w[3].tolist() == [BOS_ID, *b"abcdefgh"]  # validation: offset 0
    assert w[4].tolist() == [BOS_ID, 0xC3, 0xA9, EOS_ID] + [PAD_ID] * 5


def test_training_windows_are_random_contiguous_slices_reproducible_by_generator() -> None:
    seq_len = 8
    doc = "abcdefghijklmnopqrstuvwxyz"
    stream = encode(doc)
    texts = np.array([doc] * 32, dtype=object)
    a = make_windows(texts, seq_len, True, torch.Generator().manual_seed(1))
    b = make_windows(texts, seq_len, True, torch.Generator().manual_seed(1))
    c = make_windows(texts, seq_len, True, torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    starts = set()
    for row in a.tolist():
        start = stream.index(row[0]) if row[0] != BOS_ID else 0
        assert row == stream[start:start + seq_len + 1]
        starts.add(start)
    assert len(starts) > 5 and max(starts) <= len(stream) - (seq_len + 1)
    # short documents are never shifted, even in training
    short = make_windows(np.array(["hi"], dtype=object), seq_len, True,
                         torch.Generator().manual_seed(3))
    assert short[0, :4].tolist() == [BOS_ID, ord("h"), ord("i"), EOS_ID]


def test_lm_loss_masks_padding_and_counts_bytes() -> None:
    task = TextLMTask(TextTaskConfig(seq_len=16, d_model=32, n_layers=1, n_heads=2))
    torch.manual_seed(0)
    model = task.build_model()
    batch = task.to_tensors({"text": np.array(["hello", "wörld!", "x" * 40], dtype=object)},
                            train=False)
    loss, sums = task.loss(model, batch)
    # targets: "hello"+EOS = 6, "wörld!" (7 bytes)+EOS = 8, a full window of 16 bytes
    assert float(sums["tokens"]) == 6 + 8 + 16
    assert float(sums["bytes"]) == 5 + 7 + 16
    logits = model(batch["tokens"][:, :-1]).float()
    targets = batch["tokens"][:, 1:]
    logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(max=258)[..., None])[..., 0]
    keep = targets != PAD_ID
    torch.testing.assert_close(loss, -(logp[keep]).mean())
    torch.testing.assert_close(sums["byte_loss_sum"], -(logp[targets < 256]).sum())
    assert 4.0 < loss.item() < 7.0  # about ln(259) at initialization


def test_text_summarize_defines_loss_perplexity_and_bits_per_byte() -> None:
    task = TextLMTask(TextTaskConfig())
    out = task.summarize({"loss_sum": 20.0, "tokens": 10.0, "byte_loss_sum": 16.0,
                          "bytes": 8.0})
    assert out["loss"] == pytest.approx(2.0)
    assert out["perplexity"] == pytest.approx(math.exp(2.0))
    assert out["bits_per_byte"] == pytest.approx(2.0 / math.log(2))
    assert math.isnan(task.summarize({})["loss"])


def test_lm_learns_a_repetitive_corpus_quickly() -> None:
    task = TextLMTask(TextTaskConfig(seq_len=64, d_model=64, n_layers=2, n_heads=4))
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    texts = np.array(SENTENCES * 4, dtype=object)
    gen = torch.Generator().manual_seed(0)
    # CPU time, not wall time: the test machine is shared, and under load wall time
    # measures the neighbours (this takes ~1 s of CPU).
    t0 = time.process_time()
    losses = []
    for _ in range(30):
        loss, sums = task.loss(model, task.to_tensors({"text": texts}, True, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert time.process_time() - t0 < 10
    assert np.mean(losses[-5:]) < losses[0] - 2.0, losses
    metrics = task.summarize(as_float_dict(sums))
    assert metrics["bits_per_byte"] < 8.0 and metrics["perplexity"] > 1.0


def test_generate_returns_text_and_greedy_is_deterministic() -> None:
    task = TextLMTask(TextTaskConfig(seq_len=16, d_model=32, n_layers=1, n_heads=2))
    torch.manual_seed(0)
    model = task.build_model()
    a = task.generate(model, "The quick ", 20, temperature=0.0)
    b = task.generate(model, "The quick ", 20, temperature=0.0)
    assert isinstance(a, str) and a == b
    s1 = task.generate(model, "Ω", 20, 1.0, torch.Generator().manual_seed(5))
    s2 = task.generate(model, "Ω", 20, 1.0, torch.Generator().manual_seed(5))
    assert isinstance(s1, str) and s1 == s2
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="temperature"):
        task.generate(model, "x", 1, temperature=-1.0)


# ----------------------------------------------------------------------------- images

def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _shape_image(kind: str, rng: np.random.Generator, size: int = 32) -> bytes:
    """A dark circle or square of random size and place on a light background."""
    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(190, 256, 3)))
    r = int(rng.integers(6, 11))
    cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = tuple(int(v) for v in rng.integers(0, 90, 3))
    draw = ImageDraw.Draw(im)
    (draw.ellipse if kind == "circle" else draw.rectangle)(box, fill=fill)
    return _encode(im, "PNG")


def test_decode_png_jpeg_grayscale_and_alpha_to_rgb() -> None:
    rgb = Image.new("RGB", (40, 20), (255, 0, 0))
    blobs = [
        _encode(rgb, "PNG"),
        _encode(rgb, "JPEG"),
        _encode(Image.new("L", (8, 8), 128), "PNG"),
        _encode(Image.new("RGBA", (16, 16), (0, 0, 0, 0)), "PNG"),  # fully transparent
        _encode(rgb.convert("P"), "PNG"),
    ]
    out = decode_images(blobs, 16, max_pixels=10_000)
    assert out.shape == (5, 16, 16, 3) and out.dtype == np.uint8
    assert (out[0] == [255, 0, 0]).all()
    assert abs(int(out[1, 8, 8, 0]) - 255) < 10 and out[1, 8, 8, 1] < 10
    assert (out[2] == 128).all()
    assert (out[3] == 255).all()  # transparency composited onto white
    task = ImageClassifierTask(ImageTaskConfig(image_size=16), ["a", "b"], max_pixels=10_000)
    t = task.to_tensors({"bytes": np.array(blobs, dtype=object),
                         "label": np.array(["a", "b", "a", "b", "a"], dtype=object)}, False)
    assert t["images"].shape == (5, 3, 16, 16) and t["images"].dtype == torch.float32
    assert t["images"].min() >= -1.0 and t["images"].max() <= 1.0
    assert t["labels"].tolist() == [0, 1, 0, 1, 0]


def test_pixel_limit_and_corrupt_bytes_raise_naming_the_row() -> None:
    ok = _encode(Image.new("RGB", (10, 10)), "PNG")
    big = _encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageDecodeError, match=r"row 1 \(image_id img-b\).*10000 pixels"):
        decode_images([ok, big], 8, max_pixels=5_000, ids=["img-a", "img-b"])
    with pytest.raises(ValueError, match="row 0: cannot decode"):
        decode_images([b"not an image"], 8, max_pixels=5_000)
    task = ImageClassifierTask(ImageTaskConfig(image_size=8), ["a"], max_pixels=5_000)
    with pytest.raises(ValueError, match=r"label 'zebra' is not one of"):
        task.to_tensors({"bytes": np.array([ok], dtype=object),
                         "label": np.array(["zebra"], dtype=object)}, False)


def test_augmentation_is_reproducible_and_seed_dependent() -> None:
    rng = np.random.default_rng(0)
    x = to_float(decode_images([_shape_image("circle", rng) for _ in range(8)], 32, 10_000))
    a = augment(x, torch.Generator().manual_seed(7))
    b = augment(x, torch.Generator().manual_seed(7))
    c = augment(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.min() >= 0.0 and a.max() <= 1.0
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, x)


def test_cnn_learns_circles_vs_squares_and_metric_sums_are_consistent() -> None:
    rng = np.random.default_rng(0)
    labels = ["circle", "square"]
    task = ImageClassifierTask(ImageTaskConfig(image_size=32, channels=8), labels)

    def sample(n: int) -> dict[str, np.ndarray]:
        kinds = rng.choice(labels, n)
        return {"bytes": np.array([_shape_image(k, rng) for k in kinds], dtype=object),
                "label": kinds.astype(object)}

    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=task.cfg.lr)  # default 2e-3
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss, _ = task.loss(model, task.to_tensors(sample(32), True, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.2, losses

    model.eval()
    with torch.no_grad():
        _, raw = task.loss(model, task.to_tensors(sample(64), False))
    sums = as_float_dict(raw)
    metrics = task.summarize(sums)
    assert metrics["accuracy"] == pytest.approx(sums["correct"] / 64)
    assert metrics["accuracy"] > 0.75, metrics
    cm = task.confusion_matrix(sums)
    assert cm.shape == (2, 2) and cm.sum() == sums["count"] == 64
    assert np.trace(cm) == sums["correct"]
    assert set(sums) == {"loss_sum", "correct", "count"} | {
        confusion_key(i, j) for i in range(2) for j in range(2)}
