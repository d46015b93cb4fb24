"""Pictures of what an encoder learned, written by `selfsup eval` into RUN_DIR/plots/.

- embedding_map.png: the test embeddings in 2-D, coloured by class. UMAP (McInnes et al. 2018) when
  `umap-learn` is installed, else t-SNE (van der Maaten & Hinton 2008, scikit-learn) on the first 50 principal
  components; at most MAP_POINTS test samples, a seeded class-stratified-by-chance subsample, for speed.
- neighbours.png (images) / neighbours.md (text): a few seeded test queries, each with its K nearest training
  samples by cosine similarity (the metric of the kNN protocol) and their labels; a neighbour whose label differs
  from the query's is framed (images) or marked (text) in red. neighbours.json records the indices.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .features import extract_features

MAP_POINTS = 2000  # test samples in the 2-D map
N_QUERIES = 6  # rows of the neighbour grid
K_NEIGHBOURS = 6  # training neighbours per query
WRONG = "#d62728"  # a neighbour of another class
TSNE_MIN = 10  # fewer test points: the map is their first two principal components


def nearest_neighbours(train_f: torch.Tensor, query_f: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, k) indices of the k training rows most cosine-similar to each query row, most similar first."""
    sim = F.normalize(query_f.float(), dim=1) @ F.normalize(train_f.float(), dim=1).T  # sim: Q x N_train
    return sim.topk(min(k, train_f.shape[0]), dim=1).indices


def pca_2d(feats: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2): the first two principal components of the L2-normalised features (t-SNE needs more than a few
    points; tests use this to keep each eval call fast)."""
    from sklearn.decomposition import PCA
    x = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    if len(x) < 2:
        return np.zeros((len(x), 2)), "PCA"
    xy = PCA(min(2, *x.shape), random_state=seed).fit_transform(x)
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1]))), "PCA"


def project_2d(feats: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """(N, 2) coordinates of (N, D) features and the projection's name: UMAP if installed, else t-SNE (500
    iterations, half scikit-learn's default, for time; the clusters have settled by then); PCA below TSNE_MIN
    points. benchmarks/eval_plots.py times it."""
    if len(feats) < TSNE_MIN:
        return pca_2d(feats, seed)
    try:
        import umap  # noqa: F401  (umap-learn)
    except ImportError:
        umap = None
    if umap is not None:
        return umap.UMAP(n_components=2, random_state=seed, metric="cosine").fit_transform(feats), "UMAP"
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    x = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)  # cosine geometry, as kNN
    if x.shape[1] > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    return TSNE(2, init="pca", perplexity=perplexity, max_iter=500, random_state=seed).fit_transform(x), "t-SNE"


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _class_name(classes, y: int) -> str:
    return classes[y] if classes and 0 <= y < len(classes) else str(y)


def plot_map(path: Path, xy: np.ndarray, labels: np.ndarray, classes, title: str, projection: str) -> None:
    """A scatter of the 2-D map, one colour per class, a legend of class names outside the axes."""
    fig = _figure(8.5, 6.5)
    ax = fig.add_subplot()
    ids = np.unique(labels)
    import matplotlib
    colours = matplotlib.colormaps["tab10" if len(ids) <= 10 else "tab20"]
    size = max(6.0, min(40.0, 12_000 / len(xy)))  # points: larger when there are few
    for i, y in enumerate(ids):
        m = labels == y
        ax.scatter(xy[m, 0], xy[m, 1], s=size, alpha=0.7, color=colours(i % colours.N),
                   label=_class_name(classes, int(y)))
    ax.set(title=title, xlabel=f"{projection} 1", ylabel=f"{projection} 2")
    ax.set_xticks([]), ax.set_yticks([])
    if len(ids) <= 20:
        ax.legend(title="class", loc="upper left", bbox_to_anchor=(1.01, 1), markerscale=3, fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _show(ax, img: np.ndarray) -> None:
    """A uint8 (C, H, W) image on `ax` (gray for one channel), without ticks."""
    img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])


def plot_neighbour_grid(path: Path, test_x, test_y, train_x, train_y, queries, nn, classes, title: str) -> None:
    """Rows: a test query (left), then its nearest training images; red frame and label: another class."""
    k = nn.shape[1]
    fig = _figure(1.45 * (k + 1) + 0.4, 1.55 * len(queries) + 0.8)
    axes = fig.subplots(len(queries), k + 1, squeeze=False)
    for r, q in enumerate(queries):
        _show(axes[r, 0], test_x[q])
        axes[r, 0].set_title(f"query: {_class_name(classes, int(test_y[q]))}", fontsize=9, fontweight="bold")
        for c, j in enumerate(nn[r], start=1):
            ax = axes[r, c]
            _show(ax, train_x[j])
            wrong = int(train_y[j]) != int(test_y[q])
            ax.set_title(f"#{c}: {_class_name(classes, int(train_y[j]))}", fontsize=9,
                         color=WRONG if wrong else "black")
            for s in ax.spines.values():
                s.set(edgecolor=WRONG if wrong else "#bbbbbb", linewidth=3 if wrong else 0.8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_neighbour_text(path: Path, test_texts, test_y, train_texts, train_y, queries, nn, classes, title) -> None:
    """The text form of the grid: each query document, then its nearest training documents with their labels."""
    def cut(t: str) -> str:
        t = " ".join(str(t).split())
        return t if len(t) <= 200 else t[:199] + "…"
    lines = [f"# {title}", "", "Neighbours of another class than the query's are marked **✗**.", ""]
    for q, row in zip(queries, nn):
        lines += [f"## Query (test #{q}, class {_class_name(classes, int(test_y[q]))})", "",
                  f"> {cut(test_texts[q])}", ""]
        for rank, j in enumerate(row, start=1):
            mark = "" if int(train_y[j]) == int(test_y[q]) else " **✗**"
            lines.append(f"{rank}. [{_class_name(classes, int(train_y[j]))}]{mark} {cut(train_texts[j])}")
        lines.append("")
    path.write_text("\n".join(lines))


class _Texts:
    """A token Dataset's documents by index: its raw texts, else its token ids written out."""

    def __init__(self, ds):
        self.ds = ds

    def __getitem__(self, i: int) -> str:
        if self.ds.texts is not None:
            return self.ds.texts[i]
        return "token ids " + " ".join(str(t) for t in self.ds.x[i].tolist() if t != self.ds.pad_id)


def write_plots(run_dir, encoder, train, test, device, name: str, layer: str, seed: int = 0,
                max_points: int = MAP_POINTS, n_queries: int = N_QUERIES, k: int = K_NEIGHBOURS) -> dict:
    """Write the map and the neighbour grid of `encoder` (at `layer`, named `name` in titles) into
    RUN_DIR/plots/; returns {"files": [...], "projection", "queries", "neighbours"} (indices into test / train)."""
    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    encoder = encoder.to(device)
    g = np.random.default_rng(seed)
    test_y, train_y = test.labels.cpu().numpy(), train.labels.cpu().numpy()
    classes = test.classes or train.classes
    pick = np.sort(g.choice(len(test), min(max_points, len(test)), replace=False))
    queries = np.sort(g.choice(len(test), min(n_queries, len(test)), replace=False))
    test_f = extract_features(encoder, test.x, device).cpu()
    train_f = extract_features(encoder, train.x, device).cpu()
    nn = nearest_neighbours(train_f, test_f[queries], k).numpy()  # nn: Q x k training indices
    xy, projection = project_2d(test_f[pick].numpy(), seed)
    what = f"{name}, layer {layer}"
    plot_map(out / "embedding_map.png", xy, test_y[pick], classes,
             f"{what}: {projection} of {len(pick):,} test embeddings", projection)
    files = [out / "embedding_map.png"]
    title = f"{what}: nearest training samples (cosine) of {len(queries)} test queries"
    if test.kind == "image":
        plot_neighbour_grid(out / "neighbours.png", test.x.cpu().numpy(), test_y, train.x.cpu().numpy(), train_y,
                            queries, nn, classes, title + "; red: another class")
        files.append(out / "neighbours.png")
    else:
        write_neighbour_text(out / "neighbours.md", _Texts(test), test_y, _Texts(train), train_y, queries, nn,
                             classes, title)
        files.append(out / "neighbours.md")
    record = {"projection": projection, "layer": layer, "map_points": len(pick), "seed": seed,
              "queries": queries.tolist(), "neighbours": nn.tolist(), "metric": "cosine"}
    (out / "neighbours.json").write_text(json.dumps(record))
    return {"files": [str(f) for f in files], **record}
