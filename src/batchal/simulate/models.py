"""Models the simulator retrains each round.

A model exposes ``set_pool(X)``, ``fit(X, y)``, ``predict_proba(X)`` and
``embed(X)``. As in the paper, ``embed`` is what the diversity methods and the
one-time clustering read: the (standardised) input for the linear models, the
last hidden layer for the MLP. ``embedding_uses_labels`` says whether that
embedding depends on the labeled set (the simulator then clusters once per
trial) or not (once per dataset, cached).

Training scales with the labeled set, so pools of 1M rows replay in minutes:

- logistic regression is warm-started from the previous round's solution
  (the problem is convex: the same optimum, reached in fewer iterations),
  optionally on the whitened input (far fewer iterations on correlated features);
- multi-label logistic regression fits every class at once (one L-BFGS over
  the whole weight matrix, streamed over row chunks) instead of one model per
  class, which at 1,000 classes would be 1,000 fits a round;
- the MLP trains by epochs over the labeled set with a step floor
  (:class:`MLPModel`), instead of a fixed step cap that stops short once the
  labeled set passes a few thousand rows.
"""
from __future__ import annotations

import numpy as np

from .._validation import BatchalInputError

MODELS = ("logreg", "mlp")
#: MLP training rules: a budget of epochs with a step floor (default), stop on a held-out part of the
#: labeled set, or exactly ``epochs`` epochs at a constant learning rate
TRAINING = ("budget", "early-stop", "full")


class _Standardise:
    """Standardisation with statistics of the whole unlabeled pool (no labels used)."""

    mu_ = None
    sd_ = None
    #: also accumulate the pool's covariance (for whitening)
    _covariance = False

    def set_pool(self, X):
        X = np.asarray(X)
        d = X.shape[1]
        mu = np.zeros(d)
        sq = np.zeros(d)
        G = np.zeros((d, d)) if self._covariance else None
        for a in range(0, X.shape[0], 65536):  # streamed: the pool may be memory-mapped
            c = np.asarray(X[a : a + 65536], dtype=np.float64)
            mu += c.sum(0)
            sq += (c * c).sum(0)
            if G is not None:
                G += c.T @ c
        n = X.shape[0]
        mu /= n
        sd = np.sqrt(np.maximum(sq / n - mu * mu, 0.0))
        self.mu_ = mu.astype(np.float32)
        self.sd_ = np.where(sd > 1e-6, sd, 1.0).astype(np.float32)
        if G is not None:
            self._set_whitening(G / n - np.outer(mu, mu))
        return self

    def _set_whitening(self, cov: np.ndarray) -> None:
        pass

    def _t(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if self.mu_ is None:
            return np.ascontiguousarray(X)
        return (X - self.mu_) / self.sd_


class LogRegModel(_Standardise):
    """Multinomial logistic regression; embedding = standardised input.

    Parameters
    ----------
    n_classes : int
    multilabel : bool
        One sigmoid per class, all fitted jointly (:class:`_JointSigmoid`).
    C : float
        Inverse L2 strength, as scikit-learn's.
    max_iter : int, default 1000
        L-BFGS iterations per fit at most (scikit-learn's default tolerance decides
        convergence; 300 stopped short on 256 correlated features at 10K rows, which
        needed 522).
    warm_start : bool, default True
        Start each fit from the previous one's coefficients (classes seen for
        the first time start at zero). The objective is convex, so the optimum
        is the same; only the iterations to reach it shrink.
    whiten : bool, default False
        Fit on the input whitened with the pool's covariance (PCA, directions of
        variance below 1e-6 of the largest dropped): the same model family,
        reached in far fewer L-BFGS iterations on correlated features (the
        web-like pool's 256 ReLU features at 10K rows: 64 iterations whitened,
        522 standardised), but the L2 penalty then acts on the whitened
        coefficients, a different regulariser (measured there: 0.829 against
        0.840 test accuracy at 10K rows, equal at 110K). The embedding the
        clustering reads stays the standardised input.
    tol : float, default 1e-4
        L-BFGS stopping tolerance (scikit-learn's ``tol``; the joint multi-label
        fit's ``gtol``). At the default a fit on the web-like pool's features can
        stop 0.1-0.2 test-accuracy points from its optimum, by an amount that
        depends on the warm start and the BLAS thread count; at 1e-6 neither
        matters (BENCHMARKS.md).
    """

    embedding_uses_labels = False

    def __init__(self, n_classes: int, multilabel: bool = False, C: float = 1.0, max_iter: int = 1000, seed: int = 0,
                 warm_start: bool = True, whiten: bool = False, tol: float = 1e-4):
        self.n_classes = n_classes
        self.multilabel = multilabel
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self.warm_start = warm_start
        self.whiten = whiten
        self._covariance = whiten
        self.W_ = None
        self.model_ = None
        self.n_iter_: list[int] = []

    def _set_whitening(self, cov: np.ndarray) -> None:
        # the correlation matrix, not the covariance: a feature's scale must not decide
        # which directions fall under the cut-off
        sd = self.sd_.astype(np.float64)
        w, V = np.linalg.eigh(cov / np.outer(sd, sd))
        keep = w > 1e-6 * max(float(w.max()), 1e-300)
        self.W_ = ((V[:, keep] / np.sqrt(w[keep])) / sd[:, None]).astype(np.float32)

    def _w(self, X) -> np.ndarray:
        """The model's input: whitened (``whiten``) or standardised."""
        if self.W_ is None:
            return self._t(X)
        return (np.asarray(X, dtype=np.float32) - self.mu_) @ self.W_

    def fit(self, X, y):
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        Xt = self._w(X)
        if self.multilabel:
            prev = self.model_ if self.warm_start else None
            self.model_ = _JointSigmoid(self.C, self.max_iter, self.tol).fit(Xt, y, init=None if prev is None else prev.W_)
            self.n_iter_.append(self.model_.n_iter_)
            return self
        classes = np.unique(y)
        model = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol, warm_start=self.warm_start)
        init = self._warm_init(classes) if self.warm_start else None
        if init is not None:
            model.coef_, model.intercept_ = init
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(Xt, y)
        self.model_ = model
        self.n_iter_.append(int(np.max(model.n_iter_)))
        return self

    def _warm_init(self, classes):
        """The previous coefficients laid out for ``classes`` (new classes at zero); None when not applicable."""
        prev = self.model_
        if prev is None:
            return None
        if classes.shape[0] == 2 or prev.classes_.shape[0] == 2:
            # binary fits have one coefficient row: reuse it only for the same two classes
            if np.array_equal(prev.classes_, classes):
                return prev.coef_.copy(), prev.intercept_.copy()
            return None
        coef = np.zeros((classes.shape[0], prev.coef_.shape[1]), dtype=prev.coef_.dtype)
        icpt = np.zeros(classes.shape[0], dtype=prev.intercept_.dtype)
        where = np.searchsorted(classes, prev.classes_)
        ok = (where < classes.shape[0]) & (classes[np.minimum(where, classes.shape[0] - 1)] == prev.classes_)
        coef[where[ok]] = prev.coef_[ok]
        icpt[where[ok]] = prev.intercept_[ok]
        return coef, icpt

    def predict_proba(self, X, chunk: int = 262144) -> np.ndarray:
        out = np.zeros((np.asarray(X).shape[0], self.n_classes), dtype=np.float32)
        for a in range(0, out.shape[0], chunk):
            Xt = self._w(X[a : a + chunk])
            if self.multilabel:
                self.model_.predict_proba(Xt, out=out[a : a + chunk])
            else:
                out[a : a + chunk, self.model_.classes_] = self.model_.predict_proba(Xt)
        return out

    def embed(self, X) -> np.ndarray:
        return np.ascontiguousarray(self._t(X), dtype=np.float32)


class _JointSigmoid:
    """One logistic regression per class, fitted together by one L-BFGS over the (d + 1, C) weights.

    Minimises ``(sum_i sum_c BCE(y_ic, sigmoid(x_i w_c + b_c)) + ||W||^2 / (2 C)) / n``
    (scikit-learn's per-class objective, summed over classes), streaming the
    rows in chunks so memory stays O(chunk x C). Hand-written because
    scikit-learn fits classes one at a time: 1,000 classes are 1,000 fits.

    Cost per L-BFGS iteration (measured on 2,000 x 64 rows, 1,000 classes, one
    thread): the two float32 matrix products (logits and gradient, the bias
    folded in as a column of ones), then the loss and residual as numpy's SIMD
    float32 ``exp``/``log1p`` passes over cache-sized chunks (about 6 ms per 2M
    entries, against 27 ms for the scalar numba kernel this replaced: numba has
    no vectorised ``exp`` without SVML). The labels enter as the list of their
    positive entries (long-tailed multi-label sets are sparse), so the dense
    (n, C) 0/1 matrix is never read per iteration. Sums are accumulated in float64.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 300, tol: float = 1e-4, chunk: int = 2048):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.chunk = chunk

    def fit(self, X, Y, init=None):
        from scipy.optimize import minimize

        X = np.asarray(X, dtype=np.float32)
        n, d = X.shape
        C = Y.shape[1]
        # the input with a column of ones: the bias and its gradient come out of the matrix products
        X1 = np.empty((n, d + 1), dtype=np.float32)
        X1[:, :d] = X
        X1[:, d] = 1.0
        # positive labels as (row, class) pairs, rows ascending; 0/1 labels are checked by the dataset
        pr, pc = [], []
        for a in range(0, n, 65536):  # streamed: Y may be a memory-mapped (n, C) int8 matrix
            r, c = np.nonzero(np.asarray(Y[a : a + 65536]))
            pr.append(r + a)
            pc.append(c)
        pr = np.concatenate(pr).astype(np.intp)
        pc = np.concatenate(pc).astype(np.intp)
        starts = [(a, min(n, a + self.chunk)) for a in range(0, n, self.chunk)]
        cut = np.searchsorted(pr, [a for a, _ in starts] + [n])
        pos = [(pr[cut[k] : cut[k + 1]] - a, pc[cut[k] : cut[k + 1]]) for k, (a, _) in enumerate(starts)]
        m = min(n, self.chunk)
        Z = np.empty((m, C), dtype=np.float32)
        T = np.empty((m, C), dtype=np.float32)
        Gc = np.empty((d + 1, C), dtype=np.float32)
        w0 = np.zeros((d + 1, C)) if init is None else np.asarray(init, dtype=np.float64)

        def fun(w):
            W = w.reshape(d + 1, C)
            W32 = W.astype(np.float32)
            loss = 0.0
            G = np.zeros((d + 1, C), dtype=np.float64)
            for (a, b), (r, c) in zip(starts, pos):
                z, t = Z[: b - a], T[: b - a]
                np.matmul(X1[a:b], W32, out=z)
                loss += _bce_residual(z, t, r, c)  # z becomes the residual sigmoid(z) - y
                np.matmul(X1[a:b].T, z, out=Gc)
                G += Gc
            loss += 0.5 / self.C * float(np.sum(W[:d] ** 2))
            G[:d] += W[:d] / self.C
            # divided by n as scikit-learn does, so its tolerances mean the same here
            return loss / n, G.ravel() / n

        from threadpoolctl import threadpool_limits

        # one BLAS thread: L-BFGS-B's vector updates over the 65K weights and these matrix products are
        # too small to gain from threads, and with two OpenBLAS threads on a loaded 2-core machine the
        # 2,000-row fit took 40 s instead of 3 s (``batchal simulate --jobs 1`` sets no thread limit)
        with threadpool_limits(limits=1, user_api="blas"):
            res = minimize(fun, w0.ravel(), jac=True, method="L-BFGS-B",
                           options={"maxiter": self.max_iter, "gtol": self.tol, "ftol": 64 * np.finfo(float).eps})
        self.W_ = res.x.reshape(d + 1, C)
        self.n_iter_ = int(res.nit)
        return self

    def predict_proba(self, X, chunk: int = 4096, out: np.ndarray | None = None) -> np.ndarray:
        """``sigmoid(X w_c + b_c)`` as float32, computed in place chunk by chunk (no (n, C) temporaries)."""
        X = np.asarray(X, dtype=np.float32)
        d = self.W_.shape[0] - 1
        W32 = self.W_[:d].astype(np.float32)
        b32 = self.W_[d].astype(np.float32)
        if out is None:
            out = np.empty((X.shape[0], W32.shape[1]), dtype=np.float32)
        with np.errstate(over="ignore"):  # exp(-z) = inf below z = -88: the sigmoid is then 0, as it should be
            for a in range(0, X.shape[0], chunk):
                z = out[a : a + chunk]
                np.matmul(X[a : a + chunk], W32, out=z)
                z += b32
                np.negative(z, out=z)
                np.exp(z, out=z)
                z += 1.0
                np.divide(1.0, z, out=z)
        return out


def _bce_residual(Z, T, rows, cols) -> float:
    """Binary cross-entropy with logits ``Z`` (float32, C-contiguous), summed; ``Z`` becomes ``sigmoid(Z) - Y``.

    ``Y`` is 1 at ``(rows, cols)`` and 0 elsewhere; ``T`` is scratch of ``Z``'s shape.
    The loss is ``sum(max(z, 0) + log1p(exp(-|z|))) - sum(z at the positives)``, with
    ``max(z, 0) = (z + |z|) / 2``; the residual is ``1 / (1 + exp(-z))`` at the
    negatives and ``-1 / (1 + exp(z))`` at the positives (relative accuracy at both
    tails; ``exp`` overflows to inf beyond 88, where the fraction is 0).
    Every pass is a numpy float32 ufunc (SIMD), sums in float64.
    """
    np.abs(Z, out=T)
    s_abs = T.sum(dtype=np.float64)
    np.negative(T, out=T)
    np.exp(T, out=T)
    np.log1p(T, out=T)
    zp = Z[rows, cols].astype(np.float64)
    loss = T.sum(dtype=np.float64) + 0.5 * (Z.sum(dtype=np.float64) + s_abs) - zp.sum()
    np.negative(Z, out=Z)
    with np.errstate(over="ignore"):
        np.exp(Z, out=Z)
        Z += 1.0
        np.divide(1.0, Z, out=Z)
        # at the positives sigmoid(z) - 1 = -sigmoid(-z): no cancellation where z is large
        Z[rows, cols] = -1.0 / (1.0 + np.exp(zp))
    return float(loss)


class MLPModel(_Standardise):
    """A torch MLP (optional extra); embedding = its last hidden layer.

    Trained from scratch each round with Adam in minibatches of ``batch_size``.

    Training rule (``training``):

    - ``"budget"`` (default): every labeled row, for ``max(epochs x steps per
      epoch, min_steps)`` gradient steps at a constant learning rate, keeping
      the weights of the epoch with the lowest mean training loss (a guard
      against Adam's rare late loss spikes). The floor is what small labeled
      sets need: on MNIST-1D at 10K rows 30 epochs (2,340 steps) stop 3-4
      points of test accuracy short of longer training, while at 300K rows 30
      epochs are 70K steps. No budget is converged on every pool (MNIST-1D's
      test accuracy still rises at 40K steps): check a conclusion against a
      doubled budget (``epochs``, ``min_steps``; BENCHMARKS.md, *Label savings
      at scale*).
    - ``"early-stop"``: epochs over the labeled set, at most
      ``epochs``. From ``min_rows_for_validation`` labeled rows on,
      ``val_share`` of them (at most ``val_cap``) are held out, the model is
      scored on them after every epoch, training stops once the held-out loss
      has not improved for ``patience`` epochs, and the best epoch's weights
      are kept (constant learning rate). Measured 1.0-1.5 points below
      ``"full"`` on MNIST-1D at 1M: it trains on 90% of the rows and the
      best held-out loss comes before the best accuracy.
    - ``"full"``: exactly ``epochs`` epochs over the whole labeled set at a
      constant learning rate (the rule of the earlier converged-training checks).

    ``max_steps`` (None: no cap) caps the gradient steps of either rule.
    """

    embedding_uses_labels = True

    def __init__(self, n_classes: int, multilabel: bool = False, hidden=(256, 128), epochs: int = 30,
                 max_steps: int | None = None, batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 1e-4,
                 seed: int = 0, threads: int | None = None, training: str = "budget", patience: int = 3,
                 val_share: float = 0.1, val_cap: int = 20_000, min_rows_for_validation: int = 1_000,
                 min_steps: int = 20_000):
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise BatchalInputError("--model mlp needs torch: pip install torch==2.13.0 (or 'batchal[torch]')") from exc
        if training not in TRAINING:
            raise BatchalInputError(f"training must be one of {', '.join(TRAINING)}; got {training!r}")
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
        self.training = training
        self.patience = patience
        self.val_share = val_share
        self.val_cap = val_cap
        self.min_rows_for_validation = min_rows_for_validation
        self.min_steps = min_steps
        self._fits = 0
        #: per fit: (epochs run, best epoch, rows trained on, gradient steps)
        self.history_: list[tuple[int, int, int, int]] = []

    def _tensor(self, X):
        import torch

        return torch.from_numpy(np.ascontiguousarray(self._t(X)))

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
        Xt = self._tensor(X)
        if self.multilabel:
            yt = torch.from_numpy(np.asarray(y, dtype=np.float32))
            loss_fn = nn.BCEWithLogitsLoss()
        else:
            yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
            loss_fn = nn.CrossEntropyLoss()
        n = Xt.shape[0]
        val = None
        if self.training == "early-stop" and n >= self.min_rows_for_validation:
            n_val = int(min(self.val_cap, max(1, round(self.val_share * n))))
            perm = torch.randperm(n, generator=g)
            val, tr = perm[:n_val], perm[n_val:]
            Xv, yv = Xt[val], yt[val]
            Xt, yt = Xt[tr], yt[tr]
            n = Xt.shape[0]
        bs = min(self.batch_size, n)
        steps_per_epoch = max(1, n // bs)
        budget = self.epochs * steps_per_epoch
        if self.training == "budget":
            budget = max(budget, int(self.min_steps))
        if self.max_steps is not None:
            budget = min(budget, max(self.max_steps, steps_per_epoch))
        best, best_epoch, best_state, epoch, step = float("inf"), 0, None, 0, 0
        self.train_losses_ = []
        while step < budget:
            self.body_.train()
            order = torch.randperm(n, generator=g)
            total, seen = 0.0, 0
            for i in range(steps_per_epoch):
                idx = order[i * bs : (i + 1) * bs]
                opt.zero_grad()
                loss = loss_fn(self.head_(self.body_(Xt[idx])), yt[idx])
                loss.backward()
                opt.step()
                total, seen = total + float(loss.detach()), seen + 1
                step += 1
                if step >= budget:
                    break
            epoch += 1
            self.train_losses_.append(total / seen)
            if self.training == "budget":
                # Adam at a constant rate has rare late spikes (one fit measured 7 points of test
                # accuracy down for an epoch): keep the epoch with the lowest training loss
                vl = self.train_losses_[-1]
            elif val is None:
                continue
            else:
                self.body_.eval()
                with torch.no_grad():
                    vl = float(loss_fn(self.head_(self.body_(Xv)), yv))
            if vl < best - 1e-6:
                best, best_epoch = vl, epoch
                best_state = ([p.detach().clone() for p in self.body_.parameters()],
                              [p.detach().clone() for p in self.head_.parameters()])
            elif val is not None and epoch - best_epoch >= self.patience:
                break
        if best_state is not None:
            with torch.no_grad():
                for p, b in zip(list(self.body_.parameters()) + list(self.head_.parameters()),
                                best_state[0] + best_state[1]):
                    p.copy_(b)
        self.body_.eval()
        self.history_.append((epoch, best_epoch if best_state is not None else epoch, int(n), step))
        return self

    def _forward(self, X, chunk=65536):
        import torch

        X = np.asarray(X)
        H, Z = [], []
        with torch.no_grad():
            for a in range(0, X.shape[0], chunk):
                h = self.body_(self._tensor(X[a : a + chunk]))
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


def make_model(name: str, n_classes: int, multilabel: bool, seed: int, threads: int | None = None,
               reference: bool = False, epochs: int = 30, max_steps: int | None = None,
               training: str = "budget", warm_start: bool = True, whiten: bool = False, min_steps: int = 20_000,
               tol: float = 1e-4):
    """A fresh model by name.

    ``epochs``, ``min_steps``, ``max_steps`` and ``training`` set the MLP's training rule per
    round (see :class:`MLPModel`); ``warm_start``, ``whiten`` and ``tol`` apply to ``logreg``.
    ``reference=True`` is the model trained on the whole pool that sets the
    target metric: the same rule, without a step cap (a capped reference would
    be weaker than models trained on a fraction of the pool).
    """
    if name == "logreg":
        return LogRegModel(n_classes, multilabel, seed=seed, warm_start=warm_start, whiten=whiten, tol=tol)
    if name == "mlp":
        return MLPModel(n_classes, multilabel, epochs=epochs, max_steps=None if reference else max_steps,
                        seed=seed, threads=threads, training=training, min_steps=min_steps)
    raise BatchalInputError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
