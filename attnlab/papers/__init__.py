"""The source papers, one module each, as registered data (see :mod:`.registry`).

``list_papers()`` and ``get_paper(id)`` give them; ``create_model(name)`` builds any
paper's model. Adding a paper: a module here that calls :func:`register_paper`, imported
below.
"""
from __future__ import annotations

from .registry import (AblationAxis, Claim, ModelSpec, Paper, SpeedTarget, create_model, get_paper,
                       list_models, list_papers, model_options, model_spec, register_paper, resolve_model)

# Importing a paper module registers it (in the order the notebooks take them).
from . import baselines, cnntention  # noqa: E402,F401
from . import residual_attention  # noqa: E402,F401
from . import aaconv  # noqa: E402,F401
from . import embedding_attention  # noqa: E402,F401
from . import abcnn  # noqa: E402,F401

__all__ = ["Paper", "ModelSpec", "Claim", "AblationAxis", "SpeedTarget", "register_paper", "list_papers",
           "get_paper", "list_models", "model_spec", "model_options", "resolve_model", "create_model"]
