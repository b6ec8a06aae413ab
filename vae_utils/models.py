"""Every model class of the library by name: what a checkpoint records and ``load_or_train`` builds
(``build_model(FlowVAEConfig(...))`` is a FlowVAE). The extensions' modules are named here, not imported: a class
is looked up when a checkpoint or a config asks for it, so the core imports no extension.
"""

from __future__ import annotations

import importlib

from .model import VAE, VAEConfig

__all__ = ["MODEL_CLASSES", "model_class", "build_model"]

MODEL_CLASSES = {"VAE": "vae_utils.model", "FlowVAE": "vae_utils.flows", "ConditionalVAE": "vae_utils.conditional"}


def model_class(name: str) -> type[VAE]:
    """The model class called ``name`` (a key of ``MODEL_CLASSES``)."""
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model class {name!r}; vae_utils has {sorted(MODEL_CLASSES)}")
    return getattr(importlib.import_module(MODEL_CLASSES[name]), name)


def build_model(config: VAEConfig) -> VAE:
    """A new model for ``config``: the class whose ``config_class`` the config is."""
    for name in MODEL_CLASSES:
        cls = model_class(name)
        if type(config) is cls.config_class:
            return cls(config)
    raise TypeError(f"no vae_utils model takes a {type(config).__name__}; build your model yourself")
