"""2-D embedding, PNG and HTML outputs."""

import json
import re

import numpy as np
import pytest

from modelmap.geometry.centering import double_centre
from modelmap.geometry.mapping import (
    embed_2d,
    plot_map_png,
    point_labels,
    tsne_perplexity,
    write_map_html,
)


def _q(K: int, N: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Two families: a shared offset per family so the map has structure.
    offsets = rng.normal(0, 5, size=(2, N))
    L = rng.normal(-300, 1, size=(K, N)) + offsets[np.arange(K) % 2]
    return double_centre(L).astype(np.float32)


def test_perplexity_rule():
    assert tsne_perplexity(1000) == 30.0
    assert tsne_perplexity(91) == 30.0
    assert tsne_perplexity(20) == pytest.approx(19 / 3)


@pytest.mark.parametrize(("K", "method"), [(1, "single"), (2, "line"), (5, "pca"), (20, "tsne")])
def test_embed_shape_method_and_determinism(K, method):
    Q = _q(K)
    xy, used = embed_2d(Q, seed=42)
    xy2, used2 = embed_2d(Q, seed=42)
    assert used == used2 == method
    assert xy.shape == (K, 2)
    assert np.all(np.isfinite(xy))
    np.testing.assert_array_equal(xy, xy2)


def test_single_and_line_layouts():
    xy, _ = embed_2d(np.array([[1.0, -1.0]]))
    np.testing.assert_array_equal(xy, [[0.0, 0.0]])
    # ||(3,-3) - (-1,1)|| = sqrt(32)
    xy, _ = embed_2d(np.array([[3.0, -3.0], [-1.0, 1.0]]))
    d = np.sqrt(32.0)
    np.testing.assert_allclose(xy, [[-d / 2, 0.0], [d / 2, 0.0]])


def test_pca_preserves_distances_of_planar_data():
    # Points in a 2-D plane of a 5-D space: PCA must reproduce all pairwise distances.
    rng = np.random.default_rng(1)
    plane = rng.normal(size=(6, 2)) @ np.linalg.qr(rng.normal(size=(5, 2)))[0].T
    xy, used = embed_2d(plane, method="pca")
    assert used == "pca"

    def dists(X):
        return np.linalg.norm(X[:, None] - X[None], axis=-1)

    np.testing.assert_allclose(dists(xy), dists(plane), atol=1e-9)


def test_tsne_separates_families():
    Q = _q(20)
    xy, used = embed_2d(Q, method="tsne")
    assert used == "tsne"
    fam = np.arange(20) % 2
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    same = d[fam[:, None] == fam[None]].mean()
    other = d[fam[:, None] != fam[None]].mean()
    assert same < other


def test_bad_method():
    with pytest.raises(ValueError):
        embed_2d(_q(5), method="umap")


LABELS = [f"org{i % 3}/model-{i}" for i in range(12)]
FAMILIES = [f"fam{i % 3}" for i in range(12)]


def test_png_written(tmp_path):
    xy, _ = embed_2d(_q(12))
    path = plot_map_png(xy, LABELS, FAMILIES, tmp_path / "map.png", title="test map")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["map.png"]  # no temporary left behind


def test_png_many_models_without_labels(tmp_path):
    rng = np.random.default_rng(2)
    labels = [f"org/m{i}" for i in range(200)]
    path = plot_map_png(rng.normal(size=(200, 2)), labels, None, tmp_path / "sub" / "big.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_html_written(tmp_path):
    xy, _ = embed_2d(_q(12))
    extra = {"mean loglik (nats)": [-300.0 - i for i in range(12)], "nearest": LABELS[::-1]}
    path = write_map_html(xy, LABELS, FAMILIES, tmp_path / "map.html", extra=extra)
    page = path.read_text(encoding="utf-8")
    assert len(page) > 1_000_000  # plotly.js is embedded: works offline
    assert "plotly" in page.lower()
    assert '<script src="http' not in page
    for label in LABELS:
        # plotly's JSON writes "/" as \u002f (so "</script>" can never end the script early).
        assert label.replace("/", "\\u002f") in page
    for fam in ("fam0", "fam1", "fam2"):
        assert fam in page
    assert "mean loglik (nats)" in page
    assert [p.name for p in tmp_path.iterdir()] == ["map.html"]


def test_inputs_checked(tmp_path):
    with pytest.raises(ValueError):
        write_map_html(np.zeros((3, 2)), ["a", "b"], None, tmp_path / "x.html")
    with pytest.raises(ValueError):
        plot_map_png(np.zeros((2, 2)), ["a", "b"], ["f"], tmp_path / "x.png")
    with pytest.raises(ValueError):
        write_map_html(np.zeros((2, 2)), ["a", "b"], None, tmp_path / "x.html", {"e": [1]})
    assert list(tmp_path.iterdir()) == []


def _families(K: int, N: int = 60, n_fam: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fam = rng.normal(0, 3, size=(n_fam, N))
    L = rng.normal(-300, 20, size=(K, 1)) + fam[np.arange(K) % n_fam]
    return (L + rng.normal(0, 1, size=(K, N))).astype(np.float32)


def test_align_to_undoes_a_rotation_flip_and_shift():
    from modelmap.geometry.mapping import align_to

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(30, 2))
    angle = 1.1
    R = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (ref * [1, -1]) @ R + [5.0, -3.0]
    np.testing.assert_allclose(align_to(moved, ref), ref, atol=1e-9)
    # Aligning on a subset moves every row by the same rigid motion.
    np.testing.assert_allclose(align_to(moved, ref[:10], np.arange(10)), ref, atol=1e-9)


def test_new_model_placed_among_its_family_without_moving_the_map():
    from modelmap.geometry.mapping import place_on_map
    from modelmap.geometry.placement import Centring, two_kl_to_rows

    L = _families(60)
    c = Centring().fit(L)
    Q = c.transform(L)
    xy, _ = embed_2d(Q)
    before = xy.copy()
    new = _families(66)[60:]  # the next model of each family
    pos = place_on_map(xy, two_kl_to_rows(Q, c.transform(new)))
    np.testing.assert_array_equal(xy, before)
    fam = np.arange(60) % 6
    for f in range(6):
        nearest = np.argsort(np.linalg.norm(xy - pos[f], axis=1))[:5]
        assert (fam[nearest] == f).all()


def test_stable_re_embedding_keeps_points_and_neighbourhoods():
    from modelmap.geometry.kl import nearest_neighbours
    from modelmap.geometry.mapping import embed_stable
    from modelmap.geometry.placement import Centring
    from modelmap.geometry.stability import displacement_frac, knn_preservation

    L = _families(101)
    old = Centring().fit(L[:100])
    xy_old, _ = embed_2d(old.transform(L[:100]))
    Q = Centring().fit(L).transform(L)
    xy = embed_stable(Q, xy_old, np.arange(100), seed=1)
    assert displacement_frac(xy_old, xy[:100]) < 0.02
    nn, _ = nearest_neighbours(Q, 10)
    fresh, _ = embed_2d(Q, seed=1)
    assert knn_preservation(nn, xy) >= knn_preservation(nn, fresh) - 0.02


def test_stability_figures_by_hand():
    from modelmap.geometry.stability import displacement_frac, knn_preservation

    square = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # Pairwise distances 1,1,1,1,sqrt2,sqrt2: the 95th percentile is sqrt(2).
    moved = square + [[0.1, 0], [0.1, 0], [0, 0], [0, 0]]
    assert displacement_frac(square, moved) == pytest.approx(0.05 / np.sqrt(2))
    line = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0]])
    assert knn_preservation(np.array([[1], [0], [1], [2]]), line) == 1.0
    assert knn_preservation(np.array([[2], [0], [1], [2]]), line) == 0.75


def test_point_labels_are_the_shortest_unambiguous_form():
    keys = ["tiny/llama-base", "zoo/llama-base", "zoo/gpt2-base", "gpt2", "org/gpt2", "local-m"]
    assert point_labels(keys) == [
        "tiny/llama-base",
        "zoo/llama-base",
        "gpt2-base",
        "gpt2",  # a bare key is its own name; the other `gpt2` keeps its org
        "org/gpt2",
        "local-m",
    ]
    # A note after the key stays; the name is compared without it.
    assert point_labels(["a/m [budget]", "b/m", "c/n [budget]"]) == [
        "a/m [budget]",
        "b/m",
        "n [budget]",
    ]


def test_html_points_carry_unique_labels(tmp_path):
    keys = ["tiny/llama-base", "zoo/llama-base", "zoo/gpt2-base"]
    page = write_map_html(np.eye(3)[:, :2], keys, None, tmp_path / "map.html").read_text()
    (text,) = re.findall(r'"text":\[([^\]]*)\]', page)
    assert json.loads(f"[{text}]") == ["tiny/llama-base", "zoo/llama-base", "gpt2-base"]
