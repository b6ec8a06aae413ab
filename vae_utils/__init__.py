"""vae_utils: variational autoencoders, derived and checked.

The library behind the tutorial series in notebooks/. The names below are the public API; the toy
models of the theory notebooks live in `vae_utils.toy`, the gradient estimators in
`vae_utils.estimators`, and the network builders in `vae_utils.networks`.

    import vae_utils as vu
    train, test = vu.load_dataset("fashion-mnist", "train"), vu.load_dataset("fashion-mnist", "test")
    result = vu.fit(vu.VAE(), train, test, vu.TrainConfig(epochs=10))
    vu.show_images(result.model.sample(64))
"""

from . import estimators, toy
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_or_train, save_checkpoint
from .data import (
    DATASET_NAMES,
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    DatasetNotFoundError,
    IdxFormatError,
    ImageDataset,
    load_dataset,
    read_idx,
)
from .device import pick_device, seed_everything
from .evaluation import estimate_log_likelihood
from .model import VAE, VAEConfig, VAEOutput
from .objectives import (
    ELBO,
    bernoulli_log_likelihood,
    effective_sample_size,
    elbo_monte_carlo,
    elbo_terms,
    gaussian_kl,
    gaussian_kl_per_dim,
    gaussian_log_likelihood,
    importance_weighted_bound,
    log_normal_diag,
    log_standard_normal,
    monte_carlo_kl,
    negative_elbo_loss,
    reparameterize,
    vae_elbo,
)
from .plotting import (
    LiveLossPlot,
    plot_history,
    plot_kl_per_dim,
    plot_latent_manifold,
    plot_latent_scatter,
    plot_latent_traversal,
    show_images,
)
from .training import FitResult, History, TrainConfig, TrainingDivergedError, evaluate_elbo, fit
from .widgets import interpolation_explorer, latent_explorer

__version__ = "0.1.0"

__all__ = [
    # models
    "VAE", "VAEConfig", "VAEOutput",
    # objectives (sign and reduction in each docstring)
    "ELBO", "bernoulli_log_likelihood", "effective_sample_size", "elbo_monte_carlo", "elbo_terms",
    "gaussian_kl", "gaussian_kl_per_dim", "gaussian_log_likelihood", "importance_weighted_bound",
    "log_normal_diag", "log_standard_normal", "monte_carlo_kl", "negative_elbo_loss", "reparameterize", "vae_elbo",
    # data
    "DATASET_NAMES", "FASHION_MNIST_CLASSES", "MNIST_CLASSES", "DatasetNotFoundError", "IdxFormatError",
    "ImageDataset", "load_dataset", "read_idx",
    # training, evaluation, checkpoints
    "FitResult", "History", "TrainConfig", "TrainingDivergedError", "evaluate_elbo", "fit",
    "estimate_log_likelihood",
    "Checkpoint", "CheckpointError", "load_checkpoint", "load_or_train", "save_checkpoint",
    # devices and seeds
    "pick_device", "seed_everything",
    # plotting and widgets
    "LiveLossPlot", "plot_history", "plot_kl_per_dim", "plot_latent_manifold", "plot_latent_scatter",
    "plot_latent_traversal", "show_images", "interpolation_explorer", "latent_explorer",
    # submodules
    "estimators", "toy",
]
