"""Human pose estimation (COCO keypoints, top-down) with SimpleBaseline: one task of fna_ext.tasks."""
