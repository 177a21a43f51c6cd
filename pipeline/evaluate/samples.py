"""Generated samples for the evaluation report (the text modality's `samples` hook)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.config import PipelineConfig
from pipeline.evaluate.model import TrainedModel
from pipeline.storage import Location, published_files
from pipeline.train.tasks.text import TextLMTask


def text_samples(cfg: PipelineConfig, trained: TrainedModel, data: Location,
                 test: pa.Table) -> list[dict[str, str]]:
    """`evaluate.num_samples` continuations of seeded test-document prompts, each beside
    the text that really followed (documents read from the published split stage `data`)."""
    ev = cfg.evaluate
    ids = test.column("doc_id").to_pylist()
    if not ids or ev.num_samples == 0:
        return []
    rng = np.random.default_rng(ev.seed)
    chosen = sorted(str(ids[i]) for i in rng.choice(len(ids), min(ev.num_samples, len(ids)),
                                                    replace=False))
    texts: dict[str, str] = {}
    for file in published_files(data, prefix="data/", suffix=".parquet"):
        with file.open("rb") as fh:
            part = pq.read_table(fh, columns=["doc_id", "text"],
                                 filters=[("split", "==", "test"), ("doc_id", "in", chosen)])
        texts.update(zip(part.column("doc_id").to_pylist(), part.column("text").to_pylist(),
                         strict=True))
    task = trained.task
    if not isinstance(task, TextLMTask):
        raise TypeError(f"text samples need a text model, got {type(task).__name__}")
    out = []
    for i, doc_id in enumerate(chosen):
        text = texts.get(doc_id) or ""
        prompt = text[:ev.prompt_chars]
        gen = torch.Generator().manual_seed(ev.seed + i)
        continuation = task.generate(trained.model, prompt, ev.max_new_tokens, ev.temperature,
                                     gen)
        out.append({"doc_id": doc_id, "prompt": prompt, "continuation": continuation,
                    "reference": text[ev.prompt_chars:ev.prompt_chars + ev.max_new_tokens]})
    return out
