"""Data every task shares: numpy/Pillow transforms (the SSD and RetinaNet recipes among them),
padded batching with seeded loaders, image-folder classification and the synthetic datasets.
COCO detection files are read by :mod:`fna_ext.tasks.detection.coco_data`."""

from .batching import collate_detection, detection_loader, padded_size, seed_worker
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, Compose, Expand, MinIoURandomCrop,
                         PhotometricDistortion, RandomHorizontalFlip, Resize, ResizeShortSide,
                         ToNormalizedTensor, default_eval_transform, retinanet_eval_transform,
                         retinanet_train_transform, ssd_eval_transform, ssd_train_transform)
from .classification import ImageFolderDataset
from .synthetic import CLASS_NAMES, default_dataset, generate_classification, generate_detection

__all__ = [
    "collate_detection", "detection_loader", "padded_size", "seed_worker",
    "IMAGENET_MEAN", "IMAGENET_STD", "Compose", "PhotometricDistortion", "Expand",
    "MinIoURandomCrop", "Resize", "ResizeShortSide", "RandomHorizontalFlip", "ToNormalizedTensor",
    "ssd_train_transform", "ssd_eval_transform", "retinanet_train_transform",
    "retinanet_eval_transform", "default_eval_transform",
    "ImageFolderDataset", "CLASS_NAMES", "default_dataset", "generate_classification", "generate_detection",
]
