"""Published numbers, quoted as published (REFERENCE.md), for side-by-side tables.

These are the papers' claims, never our results: notebooks print them next to what
the code measured, with the recipe, dataset, profile and hardware of our runs.
Errors are test error in percent; accuracies in percent.
"""
from __future__ import annotations

RESNET_CIFAR10_ERROR = {  # He et al. 2016 Table 6; reimplementation: akamaster (200 epochs)
    "resnet20": {"He et al. 2016": 8.75, "PyTorch reimplementation": 8.27, "seed 000": 9.04},
    "resnet32": {"He et al. 2016": 7.51, "PyTorch reimplementation": 7.37},
    "resnet44": {"He et al. 2016": 7.17},
    "resnet56": {"He et al. 2016": 6.97, "PyTorch reimplementation": 6.61},
    "resnet110": {"He et al. 2016": 6.43, "PyTorch reimplementation": 6.32},
}

CNNTENTION = {  # seed 000 (arXiv 2412.11657), reconstructed from the authors' logs
    "cifar10_test_error": {"resnet20": 9.04, "resnet20_selfatt": 8.56, "resnet20_mha": 8.94,
                           "resnet20_cbam": 8.68},
    "mnist_test_error": {"resnet20": 1.48, "resnet20_selfatt": 0.70, "resnet20_mha": 1.16,
                         "resnet20_cbam": 2.00},
    "cbam_reduction_val_acc": {8: 90.66, 16: 90.32, 32: 89.94},
    "selfatt_merge_val_acc": {"weighted": 90.01, "residual": 88.00},
}

PARAMS = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
          "resnet110": 1_727_962}


def published_frame(table: dict, value_name: str = "published"):
    """A nested ``{row: {source: value}}`` or flat ``{row: value}`` dict as a DataFrame."""
    import pandas as pd

    rows = []
    for key, val in table.items():
        if isinstance(val, dict):
            rows += [{"model": key, "source": src, value_name: v} for src, v in val.items()]
        else:
            rows.append({"model": key, value_name: val})
    return pd.DataFrame(rows)
