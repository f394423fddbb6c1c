"""LightningDataModules, one per dataset."""

from datamodules.mnist import MNISTDataModule
from datamodules.omniglot import OmniglotDataModule
from datamodules.yahoo import YahooDataModule

__all__ = ["MNISTDataModule", "OmniglotDataModule", "YahooDataModule"]
