"""What runs after the model at inference time, turning its outputs into what a user reads.

Biomarkers from the segmentation (``biomarkers``), temperature scaling of the class probabilities
(``calibration``), the image statistics of a frame (``frame_stats``) and the out-of-distribution detector
built on them and on the classifier's pooled features (``ood``). None of it needs ground truth.

It sits beside ``data`` and ``models`` in the layers (it imports only ``labels``, ``data``, ``models`` and
the small utilities), so ``train``, ``evaluate`` and ``infer`` all use it and inference does not depend
on training or evaluation. Scoring against ground truth is ``pleura.metrics``.
"""
