"""Explainers that a model computes itself, and what trains them (Zeng et al. 2021): the CIFAR-style ResNet-18."""

from .resnet import ResNetCIFAR, resnet18_cifar

__all__ = ["ResNetCIFAR", "resnet18_cifar"]
