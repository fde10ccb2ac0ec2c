"""Datasets, non-IID partitions across the nodes of a fleet, and mini-batch sampling.

Three datasets load into one :class:`Dataset` shape (uint8 NCHW images, normalised
per batch with the training set's per-channel mean and standard deviation):

* ``fashion-mnist``: the four IDX files (gzipped or not), by default from Debian's
  ``dataset-fashion-mnist`` package in ``/usr/share/datasets/fashion-mnist``,
  memory-mapped (:mod:`~dslth_edge.data.idx`);
* ``cifar10``: the "python version" batch directory ``cifar-10-batches-py``
  (:mod:`~dslth_edge.data.cifar`);
* ``synthetic``: seeded class prototypes plus noise, any shape and class count
  (:mod:`~dslth_edge.data.synthetic`).

A partition scheme (:func:`parse_partition`) turns a dataset into one
:class:`NodeSplit` per node (:mod:`~dslth_edge.data.partition`); :func:`scarce` caps
each node's training split; batches (:func:`batch_indices`) are a pure function of
``(seed, step)`` (:mod:`~dslth_edge.data.sampling`). Every random choice is drawn
from a (seed, purpose tag) stream (:mod:`~dslth_edge.data.seeds`).

The modules, in the order data flows through them: seeds, dataset, idx, cifar,
synthetic, load, splits, counts, scarce, partition, sampling (textmatrix reads the
count files). This package only re-exports their public API.
"""

from __future__ import annotations

from dslth_edge.data.cifar import CIFAR10_CLASSES, CIFAR10_FILES
from dslth_edge.data.counts import apportion, assign_classes, load_count_matrix, scale_counts
from dslth_edge.data.dataset import Dataset, build_dataset, channel_stats, normalise
from dslth_edge.data.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, FASHION_MNIST_FILES, default_cache_dir
from dslth_edge.data.load import KNOWN_DATASETS, load_dataset
from dslth_edge.data.partition import partition, partition_labels
from dslth_edge.data.sampling import BatchSampler, batch_indices
from dslth_edge.data.scarce import scarce
from dslth_edge.data.splits import PARTITION_FORMS, NodeSplit, PartitionSpec, counts_matrix, parse_partition
from dslth_edge.data.synthetic import make_synthetic

__all__ = [
    "KNOWN_DATASETS",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_CLASSES",
    "CIFAR10_FILES",
    "CIFAR10_CLASSES",
    "PARTITION_FORMS",
    "Dataset",
    "NodeSplit",
    "PartitionSpec",
    "BatchSampler",
    "load_dataset",
    "make_synthetic",
    "build_dataset",
    "channel_stats",
    "normalise",
    "default_cache_dir",
    "parse_partition",
    "load_count_matrix",
    "scale_counts",
    "apportion",
    "assign_classes",
    "partition",
    "partition_labels",
    "scarce",
    "counts_matrix",
    "batch_indices",
]
