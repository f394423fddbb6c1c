"""How useful is the latent code? A linear probe: logistic regression from posterior means to class labels.

A collapsed posterior carries no information about x, so a classifier on its means scores at chance; a latent
code in use separates the classes. The probe is fitted on the training set's posterior means and scored on the
test set's, which the test step already computes.
"""

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.aggregation import CatMetric

from diagnostics.contract import LabeledData, datamodule_of, latent_model
from diagnostics.evaluation import EvaluationCallback
from runtime.modes import evaluation_mode


def fit_logistic_regression(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = 1e-4, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS in float64 on standardised features.

    Returns (weight, bias, feature_mean, feature_std); the fit is deterministic for given inputs.
    Objective: mean cross-entropy + l2/2 * ||weight||^2.
    """
    # Lightning evaluates under inference mode; the fit needs autograd, on copies of the inputs.
    with torch.inference_mode(False), torch.enable_grad():
        x, labels = features.double().clone(), labels.clone()
        feature_mean, feature_std = x.mean(0), x.std(0).clamp_min(1e-8)
        x = (x - feature_mean) / feature_std
        weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=max_iter,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
        )

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ weight + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    return weight.detach(), bias.detach(), feature_mean, feature_std


def probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    l2: float = 1e-4,
    max_iter: int = 200,
) -> float:
    """Accuracy on the test features of a logistic regression fitted on the training features."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    weight, bias, mean, std = fit_logistic_regression(train_features, train_labels, num_classes, l2, max_iter)
    predictions = (((test_features.double() - mean) / std) @ weight + bias).argmax(1)
    return (predictions == test_labels).double().mean().item()


class LatentProbe(EvaluationCallback):
    """Logs `test/probe_acc`: test accuracy of a logistic regression on posterior means E_q[z|x].

    Training features: the posterior means of the datamodule's `probe_train_data()` (for MNIST, the training
    images binarized once with a fixed seed), encoded at the end of the test run. Test features: the means of
    the test step, gathered across processes. Skipped, with a note in the log, for data without class labels.
    """

    def __init__(
        self, max_train_examples: int | None = None, l2: float = 1e-4, max_iter: int = 200, batch_size: int = 1000
    ):
        """
        Args:
            max_train_examples: fit on the first this many training examples (None: all of them).
            l2: L2 penalty on the weights (features are standardised).
            max_iter: L-BFGS iterations.
            batch_size: examples per encoder call when encoding the training set.
        """
        self.means, self.labels = CatMetric(), CatMetric()
        super().__init__(0, {"means": self.means, "labels": self.labels})  # test runs only
        self.max_train_examples, self.l2, self.max_iter, self.batch_size = max_train_examples, l2, max_iter, batch_size
        self._has_labels = True

    def on_test_epoch_start(self, trainer, pl_module):
        super().on_test_epoch_start(trainer, pl_module)
        self._has_labels = isinstance(datamodule_of(trainer), LabeledData)

    def update(self, trainer, pl_module, outputs, batch) -> None:
        if "label" not in batch:
            self._has_labels = False
            return
        self.means.update(outputs["mean"].detach().float())
        self.labels.update(batch["label"].float())

    @torch.no_grad()
    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._has_labels:
            rank_zero_info("LatentProbe: the test data have no class labels; test/probe_acc is not computed.")
            return
        test_means, test_labels = self.means.compute(), self.labels.compute().long()
        x, labels = datamodule_of(trainer).probe_train_data(self.max_train_examples)
        train_means = []
        with evaluation_mode(pl_module), trainer.precision_plugin.forward_context():
            for start in range(0, len(x), self.batch_size):
                batch = x[start : start + self.batch_size].to(pl_module.device)
                train_means.append(latent_model(pl_module).encode(batch)[0].float())
        accuracy = probe_accuracy(
            torch.cat(train_means), labels.to(pl_module.device), test_means, test_labels, self.l2, self.max_iter
        )
        pl_module.log("test/probe_acc", accuracy)
