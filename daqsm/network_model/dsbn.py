"""Domain-specific batch normalisation (DSBN) for domain-adaptive training (steps 4 and 5).

One batch-normalisation per domain — separate gamma/beta **and** separate moving mean/variance —
while everything around it (the convolutions) is shared. Each batch is single-domain: the domain
index is a Python int chosen per call, so under `tf.function` every domain traces its own branch
and no tensor-valued switch is needed.

Reference:
    Chang W.-G. et al., "Domain-Specific Batch Normalization for Unsupervised Domain Adaptation",
    CVPR 2019 (arXiv:1906.03950).
"""
from __future__ import annotations

import keras
from keras import ops

#: Keras package name under which the custom layers of this project are registered.
PACKAGE = "daqsm"


@keras.saving.register_keras_serializable(package=PACKAGE)
class DomainSpecificBatchNormalization(keras.layers.Layer):
    """Batch normalisation with one set of parameters and statistics per domain.

    Semantics follow `keras.layers.BatchNormalization` (Keras 3): in training mode the batch
    moments normalise the input and update the moving averages of the chosen domain,
    `moving = moving * momentum + batch * (1 - momentum)` (Keras momentum 0.99 = PyTorch 0.01);
    in inference mode the chosen domain's moving statistics are used. As in Keras, a layer with
    `trainable = False` always runs in inference mode.

    Args:
        num_domains: number of domains (2: 0 = source / synthetic, 1 = target / measured).
        axis: channel axis (channels-last: -1).
        momentum: moving-average momentum.
        epsilon: added to the variance.
        synchronized: under a `tf.distribute` strategy, compute batch moments over all replicas
            (so a mirrored run gives the same normalisation as one device with the whole batch).
        **kwargs: base layer arguments (name, dtype, ...).

    Call arguments:
        inputs: float32 (batch, x, y, z, channels).
        domain: Python int in [0, num_domains).
        training: bool or None; training mode uses batch statistics.
        mask: optional (batch, x, y, z, 1) 0/1: in training mode the batch moments (and so the
            moving averages) are taken over the mask voxels only; inference does not need it.

    Weights per domain d: `gamma_d`, `beta_d` (trainable), `moving_mean_d`, `moving_variance_d`.
    """

    def __init__(self, num_domains: int = 2, axis: int = -1, momentum: float = 0.99,
                 epsilon: float = 1e-3, synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        if int(num_domains) < 1:
            raise ValueError(f"num_domains: expected >= 1, got {num_domains}")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum: expected in [0, 1), got {momentum}")
        self.num_domains = int(num_domains)
        self.axis = int(axis)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.synchronized = bool(synchronized)
        self.supports_masking = True

    def build(self, input_shape):
        channels = input_shape[self.axis]
        if channels is None:
            raise ValueError("DomainSpecificBatchNormalization needs a known channel count")
        shape = (int(channels),)
        self.gammas, self.betas, self.moving_means, self.moving_variances = [], [], [], []
        for d in range(self.num_domains):
            self.gammas.append(self.add_weight(shape=shape, name=f"gamma_{d}", initializer="ones",
                                               trainable=True, autocast=False))
            self.betas.append(self.add_weight(shape=shape, name=f"beta_{d}", initializer="zeros",
                                              trainable=True, autocast=False))
            # aggregation "mean": the update may run in a replica context (MirroredStrategy);
            # with synchronized moments every replica writes the same value anyway.
            self.moving_means.append(self.add_weight(shape=shape, name=f"moving_mean_{d}",
                                                     initializer="zeros", trainable=False,
                                                     autocast=False, aggregation="mean"))
            self.moving_variances.append(self.add_weight(shape=shape, name=f"moving_variance_{d}",
                                                         initializer="ones", trainable=False,
                                                         autocast=False, aggregation="mean"))
        # named attributes as well: tf.train.Checkpoint tracks attributes, not Keras' list wrappers
        for d in range(self.num_domains):
            for kind, store in (("gamma", self.gammas), ("beta", self.betas), ("moving_mean", self.moving_means),
                                ("moving_variance", self.moving_variances)):
                setattr(self, f"{kind}_{d}", store[d])
        ndim = len(input_shape)
        self._reduction_axes = [a for a in range(ndim) if a != self.axis % ndim]

    def call(self, inputs, domain=0, training=None, mask=None):
        domain = self._check_domain(domain)
        x = ops.cast(inputs, "float32")
        if training and self.trainable:
            if mask is None:
                mean, variance = ops.moments(x, axes=self._reduction_axes, synchronized=self.synchronized)
            else:
                mean, variance = self._masked_moments(x, ops.cast(mask, "float32"))
            m = self.momentum
            self.moving_means[domain].assign(self.moving_means[domain] * m + mean * (1.0 - m))
            self.moving_variances[domain].assign(self.moving_variances[domain] * m + variance * (1.0 - m))
        else:
            mean, variance = self.moving_means[domain], self.moving_variances[domain]
        out = ops.batch_normalization(x, mean=mean, variance=variance, axis=self.axis,
                                      offset=self.betas[domain], scale=self.gammas[domain],
                                      epsilon=self.epsilon)
        return ops.cast(out, self.compute_dtype)

    def _masked_moments(self, x, mask):
        """Per-channel mean and (biased) variance over the voxels where mask > 0, all samples.

        Why: the zeroed background would otherwise enter the moments, and its fraction differs
        between source patches and whole-brain target crops, so DSBN would adapt to the crop
        geometry instead of the domain. `mask` broadcasts against `x` (one channel for all).
        Under `synchronized` the sums are all-reduced over replicas first.
        """
        import tensorflow as tf

        weight = ops.broadcast_to(mask, ops.shape(x))
        axes = self._reduction_axes
        count, total = ops.sum(weight, axis=axes), ops.sum(x * weight, axis=axes)
        context = tf.distribute.get_replica_context()
        synced = self.synchronized and context is not None and context.num_replicas_in_sync > 1
        if synced:
            count, total = context.all_reduce(tf.distribute.ReduceOp.SUM, [count, total])
        count = ops.maximum(count, 1.0)  # an all-background batch: zero moments instead of NaN
        mean = total / count
        # second pass around the (all-reduced) mean: exact, no E[x^2] - E[x]^2 cancellation
        squares = ops.sum(ops.square(x - ops.stop_gradient(mean)) * weight, axis=axes)
        if synced:
            squares = context.all_reduce(tf.distribute.ReduceOp.SUM, squares)
        return mean, squares / count

    def domain_weights(self, domain: int) -> list:
        """[gamma, beta, moving_mean, moving_variance] of one domain as numpy arrays.

        The order is that of `keras.layers.BatchNormalization.get_weights()`, so a plain BN layer
        can take them (single-domain export).
        """
        domain = self._check_domain(domain)
        return [ops.convert_to_numpy(v) for v in (self.gammas[domain], self.betas[domain],
                                                 self.moving_means[domain],
                                                 self.moving_variances[domain])]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_domains": self.num_domains, "axis": self.axis,
                "momentum": self.momentum, "epsilon": self.epsilon,
                "synchronized": self.synchronized}

    def _check_domain(self, domain) -> int:
        if isinstance(domain, bool) or not isinstance(domain, int):
            try:
                domain = int(domain)  # numpy ints; tensors are not supported (one branch per domain)
            except TypeError:
                raise TypeError(f"domain: expected a Python int, got {type(domain).__name__}") from None
        if not 0 <= domain < self.num_domains:
            raise ValueError(f"domain: expected 0..{self.num_domains - 1}, got {domain}")
        return domain
