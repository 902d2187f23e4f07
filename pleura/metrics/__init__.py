"""Scores of predictions against ground truth: segmentation (``segmentation``) and diagnosis
classification (``classification``).

A package of its own rather than part of ``pleura.postprocess``: metrics need the true labels and run
during training (validation scores, held-out predictions) and evaluation, while post-processing runs at
inference on a model's outputs alone. Both sit beside ``data`` and ``models`` in the layers, so ``train``
scores with the same code that ``evaluate`` reports.
"""
