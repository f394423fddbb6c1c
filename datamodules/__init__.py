"""LightningDataModules, one per dataset."""

from datamodules.mnist import MNISTDataModule

__all__ = ["MNISTDataModule"]
