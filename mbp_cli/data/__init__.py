"""Datasets built from posed scenes: cached matches with ground truth, for training and benchmarks."""
