"""Text sources: plain text, the fortunes format, labelled TSV, and folders of such files (name = label).

Each decodes to a Dataset of kind "text": the raw documents in `texts` (kept for evaluation's TF-IDF baseline),
an empty (N, 0) `x` until a run's tokenizer turns them into token ids (see selfsup.data.tokenize).
"""
from __future__ import annotations

import gzip
import os

import torch

from selfsup.data.types import Dataset
from selfsup.errors import SelfSupError

TEXT_EXTENSIONS = (".txt", ".text", ".tsv")
COMPRESSED = (".gz", ".dz")  # gzip-compressed text: jargon.txt.gz, dictd's gcide.dict.dz (gzip-compatible)
SKIP_SUFFIXES = (".dat", ".u8")  # strfile's index files, and fortune's .u8 symlinks to the same text
FORTUNES_DIR = "/usr/share/games/fortunes"
# The built-in `fortunes` task: every category file of Debian's `fortunes` package with at least 200 entries,
# except the three mixed collections (cookie, fortunes, miscellaneous), which have no topic to classify.
# 21 categories, 10,937 entries in fortunes 1:1.99.
FORTUNES_MIN_ENTRIES = 200
FORTUNES_MIXED = ("cookie", "fortunes", "miscellaneous")


def decode_utf8(path: str) -> str:
    """The file's text; a one-line error naming the file and the byte offset of the first undecodable byte."""
    if not os.path.isfile(path):  # a FIFO or a device (/dev/zero) would block or never end
        raise SelfSupError(f"{path} is not a regular file (a FIFO, device or socket); selfsup reads text only "
                           "from regular files")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise SelfSupError(f"cannot read {path}: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the extension
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise SelfSupError(f"{path} is not valid gzip: {e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SelfSupError(f"{path} is not UTF-8 text: undecodable byte 0x{raw[e.start]:02x} at byte offset "
                           f"{e.start}") from None


def split_fortunes(text: str) -> list[str]:
    """Entries of a fortune file: separated by lines holding only `%` (trailing whitespace and \\r allowed)."""
    entries, current = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            entries.append("\n".join(current))
            current = []
        else:
            current.append(line)
    entries.append("\n".join(current))
    return [e.strip() for e in entries if e.strip()]


def split_documents(text: str) -> list[str]:
    """Documents of a plain text file: the fortunes format if some line is a lone `%`; else blank-line-separated
    paragraphs if the file has a blank line between text; else one document per line."""
    lines = text.splitlines()
    if any(line.strip() == "%" for line in lines):
        return split_fortunes(text)
    stripped = [line.strip() for line in lines]
    first = next((i for i, s in enumerate(stripped) if s), None)
    last = max((i for i, s in enumerate(stripped) if s), default=None)
    if first is not None and any(not s for s in stripped[first:last]):
        docs, current = [], []
        for line, s in zip(lines, stripped):
            if s:
                current.append(line)
            elif current:
                docs.append("\n".join(current).strip())
                current = []
        if current:
            docs.append("\n".join(current).strip())
        return docs
    return [s for s in stripped if s]


def read_tsv(path: str) -> tuple[list[str], list[str]]:
    """(labels, texts) of a `label<TAB>text` file; blank lines are skipped, a row without a tab is an error."""
    labels, texts = [], []
    for n, line in enumerate(decode_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        label, tab, body = line.partition("\t")
        if not tab or not label.strip():
            raise SelfSupError(f"{path}:{n}: expected label<TAB>text, found no {'tab' if not tab else 'label'}")
        labels.append(label.strip())
        texts.append(body.strip())
    return labels, texts


def text_dataset(texts: list[str], names: list[str] | None, where: str, paths: list[str] | None = None) -> Dataset:
    """A "text" Dataset; `names` (one label name per document, or None) become sorted classes and int labels."""
    if not texts:
        raise SelfSupError(f"no documents found in {where} (empty corpus)")
    labels = classes = None
    if names is not None:
        classes = sorted(set(names))
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[c] for c in names], dtype=torch.int64)
    return Dataset(torch.zeros(len(texts), 0, dtype=torch.long), labels, paths=paths, classes=classes, name=where,
                   kind="text", texts=list(texts))


def load_text_file(path: str, labels: str | None = None) -> Dataset:
    """A single .txt/.tsv (or extension-less) file; TSV rows carry their labels, other files have none."""
    if labels:
        raise SelfSupError(f"a labels file cannot be given with a text source ({path}); use label<TAB>text rows")
    if path.lower().endswith((".tsv", ".tsv.gz")):
        names, texts = read_tsv(path)
        return text_dataset(texts, names, path, [f"{path}:{i}" for i in range(len(texts))])
    texts = split_documents(decode_utf8(path))
    return text_dataset(texts, None, path, [f"{path}#{i}" for i in range(len(texts))])


def find_text_files(root: str) -> list[str]:
    """Sorted text files under `root`: .txt/.text/.tsv or no extension; hidden files, symlinks and strfile's
    .dat/.u8 files are skipped (fortune's .u8 are links to the same text)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            full = os.path.join(dirpath, f)
            if f.startswith(".") or os.path.islink(full) or f.lower().endswith(SKIP_SUFFIXES):
                continue
            ext = os.path.splitext(f)[1].lower()
            if ext in TEXT_EXTENSIONS or ext == "":
                found.append(full)
    return sorted(found)


def looks_like_text_folder(root: str) -> bool:
    """A folder of text (no images in it, some text files): decided by file names only."""
    from selfsup.data.index import has_images

    return bool(find_text_files(root)) and not has_images(root)


def _label_of(path: str, root: str) -> str:
    """The subfolder directly under `root` holding the file, else the file's own name without extension."""
    parts = os.path.relpath(path, root).split(os.sep)
    return parts[0] if len(parts) > 1 else os.path.splitext(parts[0])[0]


def load_text_folder(root: str, only: list[str] | None = None) -> Dataset:
    """Every document under `root`, labelled by its file (top level) or its subfolder; `only`: those labels."""
    root = os.path.abspath(root)
    texts, names, paths = [], [], []
    for path in find_text_files(root):
        label = _label_of(path, root)
        if only is not None and label not in only:
            continue
        if path.lower().endswith(".tsv"):
            raise SelfSupError(f"{path}: a folder's files take their label from their name; TSV files carry "
                               "their own labels and must be given alone")
        docs = split_documents(decode_utf8(path))
        texts += docs
        names += [label] * len(docs)
        paths += [f"{path}#{i}" for i in range(len(docs))]
    return text_dataset(texts, names, root, paths)


def fortunes_categories(root: str = FORTUNES_DIR) -> list[str]:
    """The categories of the built-in task (see FORTUNES_MIN_ENTRIES, FORTUNES_MIXED), found in `root`."""
    keep = []
    for path in find_text_files(root):
        name = _label_of(path, root)
        if name not in FORTUNES_MIXED and len(split_fortunes(decode_utf8(path))) >= FORTUNES_MIN_ENTRIES:
            keep.append(name)
    return keep


def load_fortunes(split: str = "train") -> Dataset | None:
    """The built-in `fortunes` source: one split (evaluation tests on the run's holdout), label = category."""
    if split != "train":
        return None
    if not os.path.isdir(FORTUNES_DIR):
        raise SelfSupError(f"fortunes not found in {FORTUNES_DIR}: install the Debian package `fortunes` "
                           "(scripts/setup.sh does), or pass the folder of fortune files with --data")
    data = load_text_folder(FORTUNES_DIR, only=fortunes_categories())
    data.name = "fortunes"
    return data
