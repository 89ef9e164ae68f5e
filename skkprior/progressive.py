r"""Bayesian Progressive Neural Networks: one column per task, learned priors, no forgetting.

The paper's continual-learning architecture (docs/concepts.md, section 5). Task ``k`` (1-based) adds a
*column*, a fresh copy of the network with its own head, and trains it while the columns of
earlier tasks stay frozen. At chosen *lateral* layers the new column also reads the earlier
columns: with ``h^(j)`` the input of layer ``l`` in column ``j``,

.. math::
    z^{(k)}_l = \frac{1}{k}\Big(W^{(k)}_l h^{(k)} + \sum_{j<k} U^{(k \leftarrow j)}_l h^{(j)}\Big),

where ``W`` and each ``U`` hold their own bias (``[W | b]`` as everywhere in skkprior), so the
layer averages ``k`` affine maps of the same shape. The priors of task ``k``:

- intra-column layers: the source prior (e.g. :func:`~skkprior.learn_prior` on a pretrained
  network); the column starts at its mean;
- each lateral ``U^(k<-j)_l``: the Laplace posterior of layer ``l`` of column ``j``,
  ``N(theta_j, tau (beta F_j + alpha P_j)^-1)`` at the scales given to the estimator
  (``prior_scale``, ``likelihood_scale``, ``temperature``), compressed to one Kronecker product
  (:meth:`~skkprior.laplace.KroneckerPosterior.as_prior`, the Frobenius-nearest Kronecker
  product, as in the single-network continual chain; its relative error is in the prior's
  ``metadata["nkp_error"]``); the lateral starts at that posterior's mean, i.e. at column
  ``j``'s trained layer;
- the head: ``N(0, weight_decay^-1 I)``.

The lateral priors take the posterior at the *given* scales, not at the scales tuned for the
predictive; after training, the curvature of the new column (its layers and laterals; frozen
columns carry none) gives its Laplace posterior, whose scales ``scaling`` chooses. Why a task's
KL counts only its new column, why earlier predictions never change, and the measurement behind
the hand-over: the concepts page, "Bayesian Progressive Neural Networks".

Which networks can be wrapped
-----------------------------
The network is traced once per column with :mod:`torch.fx` (``nn.Linear`` and ``nn.Conv2d``
are kept as leaves) and each column runs its traced graph, so that the input of every lateral
layer can be read and its output replaced. The requirements:

1. ``forward`` takes one tensor and returns the logits as one tensor;
2. it is traceable by ``torch.fx.symbolic_trace``: no Python control flow that depends on the
   input's values (control flow on shapes, constants or module attributes is evaluated once,
   at trace time, in training mode);
3. every trainable ``nn.Linear`` / ``nn.Conv2d`` (``groups=1``) is called exactly once per
   forward pass, as a module (not through ``F.linear(x, self.fc.weight)``, not shared);
4. the *head* is the last of them in call order; a lateral layer is any other one, and its
   input and output shapes are the same in every column (only the head's size may change
   with a task's classes).

Everything else is free: activations, pooling, flatten, reshapes, normalization layers
(their parameters get the source prior's isotropic precision, as everywhere in skkprior).
:class:`skkprior.networks.MLP` and :class:`skkprior.datasets.MnistCNN` qualify. A network that
breaks a rule gets a ``ValueError`` naming the rule and the layer; the traced graph of each
column is also checked against the column's own ``forward`` on one example.

Parameter names
---------------
The network of the estimator (``network_``) holds ``columns.<k>.<name>`` (column ``k``'s copy of
the user's parameter ``<name>``) and ``laterals.<k>.<j>.<i>.weight`` / ``.bias`` (the lateral into
column ``k`` from column ``j`` at the ``i``-th layer of ``lateral_layers_``), 0-based.
"""

from .estimators._progressive import ProgressivePriorClassifier

__all__ = ["ProgressivePriorClassifier"]
