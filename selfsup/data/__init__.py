"""Datasets: built-in Fashion-MNIST and digits, image folders, WebDataset tar shards, .npy/.npz arrays, IDX files;
registered sources."""
from selfsup.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from selfsup.data.folder import FolderOptions
from selfsup.data.idx import read_idx
from selfsup.data.sources import SOURCES, load_data, register_source
from selfsup.data.types import DataSpec, Dataset, dataset_stats, image_spec, spec_of

__all__ = ["FASHION_MNIST_CLASSES", "FolderOptions", "SOURCES", "DataSpec", "Dataset", "dataset_stats", "image_spec", "load_data",
           "read_idx", "register_source", "spec_of"]
