"""attnlab: a Jupyter-first workbook on attention in convolutional networks."""
from __future__ import annotations

__version__ = "0.1.0"

from .data import load_data, load_dataset, list_datasets  # noqa: E402
from .models import create_model, list_models  # noqa: E402
from .layers import create_attn, list_attn  # noqa: E402
from .recipes import get_recipe, list_recipes, PROFILES  # noqa: E402
from .train import fit, evaluate, seed_everything, History  # noqa: E402
from .runs import RunConfig, train_or_load, list_runs  # noqa: E402

__all__ = [
    "__version__", "load_data", "load_dataset", "list_datasets", "create_model",
    "list_models", "create_attn", "list_attn", "get_recipe", "list_recipes", "PROFILES",
    "fit", "evaluate", "seed_everything", "History", "RunConfig", "train_or_load", "list_runs",
]
