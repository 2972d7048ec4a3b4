"""Models the simulator retrains each round.

A model exposes ``fit(X, y)``, ``predict_proba(X)`` and ``embed(X)``. As in
the paper, ``embed`` is what the diversity methods and the one-time
clustering read: the (standardised) input for logistic regression, the last
hidden layer for the MLP.
"""
from __future__ import annotations

import numpy as np

from .._validation import BatchalInputError

MODELS = ("logreg", "mlp")


class LogRegModel:
    """Multinomial logistic regression (one-vs-rest for multi-label); embedding = standardised input."""

    def __init__(self, n_classes: int, multilabel: bool = False, C: float = 1.0, max_iter: int = 300, seed: int = 0):
        self.n_classes = n_classes
        self.multilabel = multilabel
        self.C = C
        self.max_iter = max_iter
        self.seed = seed
        self.scaler_ = None

    def set_pool(self, X: np.ndarray) -> "LogRegModel":
        """Standardise with statistics of the whole unlabeled pool (no labels used)."""
        from sklearn.preprocessing import StandardScaler

        self.scaler_ = StandardScaler().fit(X)
        return self

    def _t(self, X):
        return X if self.scaler_ is None else self.scaler_.transform(X).astype(np.float32)

    def fit(self, X, y):
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        Xt = self._t(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self.multilabel:
                self.models_ = []
                for c in range(self.n_classes):
                    yc = y[:, c]
                    if yc.min() == yc.max():  # a class not yet seen both ways: constant prediction
                        self.models_.append(float(yc[0]))
                    else:
                        self.models_.append(LogisticRegression(C=self.C, max_iter=self.max_iter).fit(Xt, yc))
            else:
                self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(Xt, y)
        return self

    def predict_proba(self, X) -> np.ndarray:
        Xt = self._t(X)
        if self.multilabel:
            cols = [np.full(Xt.shape[0], m) if isinstance(m, float) else m.predict_proba(Xt)[:, 1] for m in self.models_]
            return np.clip(np.column_stack(cols), 0, 1).astype(np.float32)
        P = np.zeros((Xt.shape[0], self.n_classes), dtype=np.float64)
        P[:, self.model_.classes_] = self.model_.predict_proba(Xt)
        return P.astype(np.float32)

    def embed(self, X) -> np.ndarray:
        return np.ascontiguousarray(self._t(X), dtype=np.float32)


class MLPModel:
    """A torch MLP (optional extra); embedding = its last hidden layer.

    Trained from scratch each round with Adam for ``epochs`` epochs, but at most
    ``max_steps`` gradient steps (``None``: no cap), so rounds stay cheap as the
    labeled set grows: with batches of 128, small sets get their 30 epochs and
    sets above about 4,000 rows get 1,000 steps (128,000 examples seen).
    """

    def __init__(self, n_classes: int, multilabel: bool = False, hidden=(256, 128), epochs: int = 30,
                 max_steps: int | None = 1000, batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 1e-4,
                 seed: int = 0, threads: int | None = None):
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise BatchalInputError("--model mlp needs torch: pip install torch==2.13.0 (or 'batchal[torch]')") from exc
        self.n_classes = n_classes
        self.multilabel = multilabel
        self.hidden = tuple(hidden)
        self.epochs = epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed
        self.threads = threads
        self.mu_ = None
        self.sd_ = None
        self._fits = 0

    def set_pool(self, X):
        self.mu_ = X.mean(0).astype(np.float32)
        self.sd_ = (X.std(0) + 1e-6).astype(np.float32)
        return self

    def _t(self, X):
        import torch

        X = np.asarray(X, dtype=np.float32)
        if self.mu_ is not None:
            X = (X - self.mu_) / self.sd_
        return torch.from_numpy(np.ascontiguousarray(X))

    def fit(self, X, y):
        import torch
        from torch import nn

        if self.threads:
            torch.set_num_threads(self.threads)
        g = torch.Generator().manual_seed(self.seed * 1000 + self._fits)
        torch.manual_seed(self.seed * 1000 + self._fits)
        self._fits += 1
        layers, d = [], X.shape[1]
        for h in self.hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.body_ = nn.Sequential(*layers)
        self.head_ = nn.Linear(d, self.n_classes)
        params = list(self.body_.parameters()) + list(self.head_.parameters())
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        Xt = self._t(X)
        if self.multilabel:
            yt = torch.from_numpy(np.asarray(y, dtype=np.float32))
            loss_fn = nn.BCEWithLogitsLoss()
        else:
            yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
            loss_fn = nn.CrossEntropyLoss()
        n = Xt.shape[0]
        bs = min(self.batch_size, n)
        steps_per_epoch = max(1, n // bs)
        total = self.epochs * steps_per_epoch
        if self.max_steps is not None:
            total = min(total, max(self.max_steps, steps_per_epoch))
        self.body_.train()
        step = 0
        while step < total:
            perm = torch.randperm(n, generator=g)
            for i in range(steps_per_epoch):
                idx = perm[i * bs : (i + 1) * bs]
                opt.zero_grad()
                loss = loss_fn(self.head_(self.body_(Xt[idx])), yt[idx])
                loss.backward()
                opt.step()
                step += 1
                if step >= total:
                    break
        self.body_.eval()
        return self

    def _forward(self, X, chunk=8192):
        import torch

        Xt = self._t(X)
        H, Z = [], []
        with torch.no_grad():
            for a in range(0, Xt.shape[0], chunk):
                h = self.body_(Xt[a : a + chunk])
                H.append(h.numpy())
                Z.append(self.head_(h).numpy())
        return np.concatenate(H), np.concatenate(Z)

    def predict_proba(self, X) -> np.ndarray:
        _, Z = self._forward(X)
        Z = Z.astype(np.float64)
        if self.multilabel:
            return (1.0 / (1.0 + np.exp(-Z))).astype(np.float32)
        Z -= Z.max(1, keepdims=True)
        P = np.exp(Z)
        P /= P.sum(1, keepdims=True)
        return P.astype(np.float32)

    def embed(self, X) -> np.ndarray:
        H, _ = self._forward(X)
        return np.ascontiguousarray(H, dtype=np.float32)


#: Epochs of the MLP trained on the whole pool (the reference for the target accuracy).
REFERENCE_EPOCHS = 10


def make_model(name: str, n_classes: int, multilabel: bool, seed: int, threads: int | None = None,
               reference: bool = False, epochs: int = 30, max_steps: int | None = 1000):
    """A fresh model by name.

    ``epochs`` and ``max_steps`` set the MLP's training budget per round (ignored
    by ``logreg``). ``reference=True`` is the model trained on the whole pool that
    sets the target accuracy: the MLP then trains ``REFERENCE_EPOCHS`` full epochs instead of the
    step cap, since a capped reference (2 epochs of a 60K pool) would be weaker than
    models trained on a fraction of the pool and make the target meaningless.
    """
    if name == "logreg":
        return LogRegModel(n_classes, multilabel, seed=seed)
    if name == "mlp":
        if reference:
            return MLPModel(n_classes, multilabel, epochs=REFERENCE_EPOCHS, max_steps=None, seed=seed, threads=threads)
        return MLPModel(n_classes, multilabel, epochs=epochs, max_steps=max_steps, seed=seed, threads=threads)
    raise BatchalInputError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
