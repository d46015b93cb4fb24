"""Image datasets: built-in Fashion-MNIST and digits, image folders, .npy/.npz arrays and IDX files."""
from selfsup.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from selfsup.data.idx import read_idx
from selfsup.data.sources import load_images
from selfsup.data.types import ImageData

__all__ = ["FASHION_MNIST_CLASSES", "ImageData", "load_images", "read_idx"]
