"""Evaluation: COCO AP of detections through pycocotools (see :mod:`fna_ext.eval.coco`)."""

from .coco import (STAT_NAMES, detections_to_results, evaluate_coco, evaluate_detections,
                   write_results_json)

__all__ = ["STAT_NAMES", "detections_to_results", "evaluate_coco", "evaluate_detections",
           "write_results_json"]
