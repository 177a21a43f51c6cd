"""Connected components on Spark against a Python union-find reference."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from pipeline.dedup.components import NotConvergedError, connected_components

pytestmark = pytest.mark.integration


def _union_find(edges: list[tuple[Any, Any]]) -> dict[Any, Any]:
    parent: dict[Any, Any] = {}

    def find(x: Any) -> Any:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        if a == b:
            continue
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the root is always the component minimum
    return {x: find(x) for x in parent}


def _shapes() -> list[tuple[int, int]]:
    edges: list[tuple[int, int]] = []
    edges += [(i, i + 1) for i in range(0, 60)]  # long chain, ids in order
    chain = np.random.default_rng(0).permutation(np.arange(100, 160)).tolist()
    edges += list(itertools.pairwise(chain))  # chain with shuffled ids
    edges += [(200, i) for i in range(201, 230)]  # star centered on its minimum
    edges += [(i, 330) for i in range(300, 330)]  # star centered on its maximum
    edges += [(400 + k, 400 + (k + 1) % 20) for k in range(20)]  # cycle
    edges += [(500, 501), (501, 500), (500, 501), (502, 503)]  # duplicates, both ways
    edges += [(600, 600), (601, 601), (601, 602)]  # self-loops: 600 alone has no edge
    rng = np.random.default_rng(1)  # sparse random graph: many small trees and a few cycles
    edges += [(int(a), int(b)) for a, b in rng.integers(1000, 1300, size=(220, 2))]
    return edges


def test_components_match_union_find_on_many_shapes(spark: Any) -> None:
    edges = _shapes()
    df = spark.createDataFrame(edges, "src long, dst long")
    got = {r["node"]: r["component"] for r in connected_components(df).collect()}
    expected = _union_find(edges)
    assert got == expected
    assert 600 not in got  # a node with only a self-loop has no edge
    assert got[159] == 100 and got[330] == 300 and got[419] == 400


def test_string_ids_custom_columns_and_order_independence(spark: Any) -> None:
    rng = np.random.default_rng(3)
    pairs = [(f"d{a:03d}", f"d{b:03d}") for a, b in rng.integers(0, 80, size=(70, 2))]
    pairs += [("zz", None), (None, "d001")]  # null endpoints are ignored
    df = spark.createDataFrame(pairs, "a string, b string")
    got = {r["node"]: r["component"]
           for r in connected_components(df, src="a", dst="b").collect()}
    assert got == _union_find([p for p in pairs if None not in p])
    shuffled = df.repartition(3).orderBy(df["a"].desc())
    again = {r["node"]: r["component"]
             for r in connected_components(shuffled, src="a", dst="b").collect()}
    assert again == got


def test_no_edges_gives_no_rows(spark: Any) -> None:
    df = spark.createDataFrame([(1, 1)], "src long, dst long")
    assert connected_components(df).count() == 0


def test_gives_up_after_max_iterations(spark: Any) -> None:
    df = spark.createDataFrame([(i, i + 1) for i in range(64)], "src long, dst long")
    with pytest.raises(NotConvergedError, match="1 rounds"):
        connected_components(df, max_iterations=1)
