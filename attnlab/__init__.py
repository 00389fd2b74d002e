"""attnlab: a Jupyter-first workbook on attention in convolutional networks."""
from __future__ import annotations

from .version import __version__
from .data import load_data, load_dataset, list_datasets
from .layers import collect_maps, create_attn, list_attn
from .papers import create_model, get_paper, list_models, list_papers
from .recipes import get_recipe, list_recipes, PROFILES
from .train import fit, evaluate, seed_everything, History
from .runs import RunConfig, train_or_load, list_runs

__all__ = [
    "__version__", "load_data", "load_dataset", "list_datasets", "create_model", "list_models",
    "list_papers", "get_paper", "create_attn", "list_attn", "collect_maps", "get_recipe", "list_recipes",
    "PROFILES", "fit", "evaluate", "seed_everything", "History", "RunConfig", "train_or_load", "list_runs",
]
