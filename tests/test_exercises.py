"""The checkers of notebook 04's four exercises (vu.exercises): the notebook's own solutions pass, its stubs
and every deliberately broken version of a solution fail, each with a message that names the fault.

The solutions are read from the notebook's solution cells (tagged "solution"), and each broken version is
that source with one edit, so the test follows the notebook: an edit that no longer applies fails here.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import vae_utils as vu
from vae_utils.data import ImageDataset

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_training_a_vae.ipynb"
PIECES = {"Encoder": "encoder_passed", "Decoder": "decoder_passed", "negative_elbo": "loss_passed",
          "train_one_epoch": "loop_passed"}


def cells(tag: str | None = None) -> list[str]:
    notebook = json.loads(NOTEBOOK.read_text())
    return ["".join(c["source"]) for c in notebook["cells"]
            if c["cell_type"] == "code" and (tag is None or tag in c.get("metadata", {}).get("tags", []))]


def solution_source(name: str) -> str:
    (source,) = [s for s in cells("solution") if f"not {PIECES[name]}" in s]
    return source


def stub_source(name: str) -> str:
    kind = "class" if name[0].isupper() else "def"
    (source,) = [s for s in cells() if s.startswith(f"{kind} {name}(")]
    return source


def namespace(**sources: str) -> dict:
    """The solutions of all four pieces, then the given sources (a broken piece) on top."""
    space = {"torch": torch, "nn": nn, "F": F, "math": math, "tqdm": functools.partial(tqdm, disable=True),
             **{flag: False for flag in PIECES.values()}, "print": lambda *a, **k: None}
    for name in PIECES:
        exec(solution_source(name), space)
    for source in sources.values():
        exec(source, space)
    return space


def broken(name: str, old: str, new: str) -> str:
    source = solution_source(name)
    assert source.count(old) == 1, f"the edit {old!r} no longer applies to the solution of {name}"
    return source.replace(old, new)


@pytest.fixture(scope="module")
def data() -> ImageDataset:
    images = torch.randint(0, 256, (1024, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[:, :, :7] = 0  # a blank band, as around a garment: a pattern the model can learn within an epoch
    return ImageDataset(images, torch.zeros(1024, dtype=torch.long), ["x"], "patterns")


def run_check(name: str, space: dict, data: ImageDataset):
    piece = space[name]
    if name == "Encoder":
        return vu.exercises.check_encoder(piece)
    if name == "Decoder":
        return vu.exercises.check_decoder(piece)
    if name == "negative_elbo":
        return vu.exercises.check_loss(piece)
    return vu.exercises.check_training_loop(piece, data)


@pytest.mark.parametrize("name", list(PIECES))
def test_the_notebook_solution_passes_its_checker(name, data, capsys):
    assert run_check(name, namespace(), data)
    assert capsys.readouterr().out.startswith(f"{name}: correct")


@pytest.mark.parametrize("name, words", [
    ("Encoder", "no layers yet"),
    ("Decoder", "no layers yet"),
    ("negative_elbo", "returned None"),
    ("train_one_epoch", "returned None"),
])
def test_the_stub_fails_and_says_what_is_missing(name, words, data, capsys):
    assert not run_check(name, namespace(stub=stub_source(name)), data)
    out = capsys.readouterr().out
    assert out.startswith(f"{name}: not yet") and words in out, out


LOOP = "train_one_epoch"
BROKEN = [
    # ---- the encoder
    ("Encoder", "log sigma for log sigma^2", "return self.mu_head(h), self.logvar_head(h)",
     "return self.mu_head(h), 0.5 * self.logvar_head(h)", "that is log sigma"),
    ("Encoder", "sigma for log sigma^2", "return self.mu_head(h), self.logvar_head(h)",
     "return self.mu_head(h), self.logvar_head(h).exp()", "sigma^2 or sigma"),
    ("Encoder", "no ReLU", "nn.Linear(784, hidden), nn.ReLU()", "nn.Linear(784, hidden)", "no ReLU"),
    ("Encoder", "a head of the wrong size", "self.logvar_head = nn.Linear(hidden, latent_dim)",
     "self.logvar_head = nn.Linear(hidden, 1)", "expected a layer 784 -> 400 and two heads"),
    ("Encoder", "mu of the wrong shape", "return self.mu_head(h), self.logvar_head(h)",
     "return self.mu_head(h)[:, None], self.logvar_head(h)", "mu has shape [5, 1, 20]"),
    ("Encoder", "one output", "return self.mu_head(h), self.logvar_head(h)", "return self.mu_head(h)",
     "two tensors, (mu, logvar)"),
    ("Encoder", "forward without return", "return self.mu_head(h), self.logvar_head(h)", "self.mu_head(h)",
     "returned None"),
    # ---- the decoder
    ("Decoder", "a sign flip", "return self.layers(z)", "return -self.layers(z)", "wrong sign"),
    ("Decoder", "probabilities, not logits", "return self.layers(z)", "return torch.sigmoid(self.layers(z))",
     "returns probabilities"),
    ("Decoder", "no ReLU", "nn.Linear(latent_dim, hidden),  # [..., d] -> [..., 400]\n                nn.ReLU(),",
     "nn.Linear(latent_dim, hidden),", "no ReLU"),
    ("Decoder", "no reshape", "nn.Unflatten(-1, (1, 28, 28)),", "", "reshape the 784 logits"),
    ("Decoder", "leading dimensions lost", "nn.Unflatten(-1, (1, 28, 28)),", "nn.Unflatten(1, (1, 28, 28)),",
     "several samples per image"),
    # ---- the loss
    ("negative_elbo", "a sign flip", "return -(log_px_given_z - kl).mean()", "return (log_px_given_z - kl).mean()",
     "the sign is flipped"),
    ("negative_elbo", "log sigma for log sigma^2 in z", "z = mu + torch.exp(0.5 * logvar) * eps",
     "z = mu + torch.exp(logvar) * eps", "sigma = exp(logvar / 2)"),
    ("negative_elbo", "log sigma for log sigma^2 in the KL", "(mu**2 + logvar.exp() - 1 - logvar)",
     "(mu**2 + (2 * logvar).exp() - 1 - 2 * logvar)", "your KL treats logvar as log sigma"),
    ("negative_elbo", "the KL summed over the batch", "return -(log_px_given_z - kl).mean()",
     "return -(log_px_given_z.mean() - kl.sum())", "the KL is summed over the batch"),
    ("negative_elbo", "summed over the batch", "return -(log_px_given_z - kl).mean()",
     "return -(log_px_given_z - kl).sum()", "you sum over the batch"),
    ("negative_elbo", "averaged over pixels", ".sum(dim=(-3, -2, -1))", ".mean(dim=(-3, -2, -1))",
     "average log p(x|z) over the pixels"),
    ("negative_elbo", "the KL averaged over latent dimensions", "- 1 - logvar).sum(dim=-1)",
     "- 1 - logvar).mean(dim=-1)", "average the KL over the latent dimensions"),
    ("negative_elbo", "no KL", "return -(log_px_given_z - kl).mean()", "return -log_px_given_z.mean()",
     "no KL term"),
    ("negative_elbo", "the KL added", "return -(log_px_given_z - kl).mean()", "return -(log_px_given_z + kl).mean()",
     "the KL enters with the wrong sign"),
    ("negative_elbo", "one loss per image", "return -(log_px_given_z - kl).mean()", "return -(log_px_given_z - kl)",
     "one per image"),
    ("negative_elbo", "a float", "return -(log_px_given_z - kl).mean()", "return -(log_px_given_z - kl).mean().item()",
     "not .item()"),
    ("negative_elbo", "the generator ignored", "eps = torch.randn(mu.shape, generator=generator)",
     "eps = torch.randn(mu.shape)", "generators seeded alike"),
    ("negative_elbo", "z detached", "z = mu + torch.exp(0.5 * logvar) * eps",
     "z = (mu + torch.exp(0.5 * logvar) * eps).detach()", "the gradient that reaches the encoder"),
    ("negative_elbo", "log(sigmoid) for the likelihood", "(x * logits - F.softplus(logits))",
     "(x * torch.log(torch.sigmoid(logits)) + (1 - x) * torch.log(1 - torch.sigmoid(logits)))",
     "inf or NaN for a confident decoder"),
    # ---- the loop
    (LOOP, "a missing zero_grad", "optimizer.zero_grad()  # forget the previous step's gradients", "pass",
     "gradients pile up"),
    (LOOP, "zero_grad after backward",
     "optimizer.zero_grad()  # forget the previous step's gradients\n            loss.backward()  # d loss / d(phi, theta)",
     "loss.backward()\n            optimizer.zero_grad()", "cleared between loss.backward()"),
    (LOOP, "a sign flip", "loss.backward()  # d loss / d(phi, theta)", "(-loss).backward()", "did not fall"),
    (LOOP, "no backward", "loss.backward()  # d loss / d(phi, theta)", "pass", "without a loss.backward()"),
    (LOOP, "no optimizer step", "optimizer.step()  # Adam updates both networks", "pass",
     "called optimizer.step() 0 times"),
    (LOOP, "grey images", "data.batches(batch_size, binarize=True)", "data.batches(batch_size)", "grey levels"),
    (LOOP, "tensors for losses", "losses.append(loss.item())", "losses.append(loss.detach())", "list of 8 floats"),
    (LOOP, "half an epoch", "data.batches(batch_size, binarize=True)",
     "list(data.batches(batch_size, binarize=True))[:4]", "is 8 steps; your loop called optimizer.step() 4 times"),
]


@pytest.mark.parametrize("name, fault, old, new, words", BROKEN, ids=[f"{row[0]}: {row[1]}" for row in BROKEN])
def test_a_broken_piece_fails_with_a_message_that_names_the_fault(name, fault, old, new, words, data, capsys):
    space = namespace(broken=broken(name, old, new))
    assert not run_check(name, space, data)
    out = capsys.readouterr().out
    assert out.startswith(f"{name}: not yet") and words in out, out


def test_every_named_fault_of_the_issue_is_caught_by_every_checker_it_can_reach():
    """The four faults the series warns about, each in every piece where it can occur."""
    faults = {row[0]: {row[1] for row in BROKEN if row[0] == name} for row in BROKEN for name in [row[0]]}
    assert {"log sigma for log sigma^2"} <= faults["Encoder"]
    assert {"a sign flip"} <= faults["Decoder"]
    assert {"a sign flip", "log sigma for log sigma^2 in z", "log sigma for log sigma^2 in the KL",
            "the KL summed over the batch"} <= faults["negative_elbo"]
    assert {"a sign flip", "a missing zero_grad"} <= faults[LOOP]


def test_the_checks_leave_the_random_state_alone(data):
    space = namespace()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for name in PIECES:
        run_check(name, space, data)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_head_of_two_d_outputs_and_other_layer_names_pass(capsys):
    class Encoder(nn.Module):  # one head for mu and logvar together, and names of its own
        def __init__(self, latent_dim, hidden=400):
            super().__init__()
            self.first = nn.Linear(784, hidden)
            self.both = nn.Linear(hidden, 2 * latent_dim)

        def forward(self, x):
            return self.both(torch.relu(self.first(x.flatten(1)))).chunk(2, dim=-1)

    class Swapped(nn.Module):  # the logvar head registered first, and returned second
        def __init__(self, latent_dim, hidden=400):
            super().__init__()
            self.logvar_layer = nn.Linear(hidden, latent_dim)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU())
            self.mean_layer = nn.Linear(hidden, latent_dim)

        def forward(self, x):
            h = self.body(x)
            return self.mean_layer(h), self.logvar_layer(h)

    assert vu.exercises.check_encoder(Encoder) and vu.exercises.check_encoder(Swapped)
    decoder = namespace()["Decoder"](20)
    for encoder_class in (Encoder, Swapped):
        encoder = encoder_class(20)
        model = vu.exercises.as_vae(encoder, decoder)
        x = torch.rand(3, 1, 28, 28)
        for got, want in zip(model.encode(x), encoder(x)):
            torch.testing.assert_close(got, want)


def test_as_vae_refuses_modules_it_cannot_reproduce():
    space = namespace(broken=broken("Decoder", "return self.layers(z)", "return torch.sigmoid(self.layers(z))"))
    with pytest.raises(ValueError, match="does not reproduce your modules' outputs"):
        vu.exercises.as_vae(space["Encoder"](20), space["Decoder"](20))
