"""Ground-truth measurements on real GPUs (issue 3): harness, methods, dataset.

Nothing here imports torch at package import time; ``measurement.dataset`` needs only pandas.
"""
