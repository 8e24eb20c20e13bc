"""3-D U-Net with domain-specific batch normalisation, and export of the target-domain model.

Architecture (the original QSMInvNet+ layout): `depth` 2x2x2 max-poolings; at every level two
3x3x3 convolutions, each followed by DSBN and ReLU; nearest-neighbour upsampling and skip
concatenation on the way up; a final 1x1x1 linear convolution. Filters double per level from
`base_filters`. Inputs: the local field (ppm) and the brain mask, as two channels.

Input contract (both domains, pre-training, fine-tuning and inference): the network sees the
local field x mask, zero outside the brain. Step 2 and step 3 already write masked fields; the
models multiply once more, so a field map with values outside the mask (a MATLAB background-removed
field, a synthetic field computed over the whole volume) cannot feed the network signal that the
other domain never shows it.

Scaling (a config value, not a hidden constant): the network sees `field_ppm * input_scale` and
its last convolution predicts `chi_ppm * label_scale`; the models here return chi in **ppm**,
multiplied by the mask. Defaults follow the original method: input x100, label x100/3.

Two views of the same weights:
    `DomainAdaptiveUNet` — training view, called with `domain=0` (source) or `domain=1` (target);
        only the BN parameters/statistics differ between the two passes.
    `export_target_model` — a plain functional keras.Model [field_ppm, mask] -> chi_ppm with the
        target domain's BN turned into ordinary `BatchNormalization` layers (data contract 3).
"""
from __future__ import annotations

import keras
from keras import layers, ops

from daqsm.network_model.dsbn import PACKAGE, DomainSpecificBatchNormalization

#: Name of exported target models; fine-tuning uses it to recognise a model of this package.
TARGET_MODEL_NAME = "daqsm_target_unet"
DEFAULT_INPUT_SCALE = 100.0
DEFAULT_LABEL_SCALE = 100.0 / 3.0


def _level_plan(depth: int, base_filters: int):
    """[(block name, filters)] in call order: encoder levels, bottleneck, decoder levels."""
    enc = [(f"enc{lvl}", base_filters * 2**lvl) for lvl in range(depth)]
    mid = [("mid", base_filters * 2**depth)]
    dec = [(f"dec{lvl}", base_filters * 2**lvl) for lvl in reversed(range(depth))]
    return enc + mid + dec


@keras.saving.register_keras_serializable(package=PACKAGE)
class DomainAdaptiveUNet(keras.Model):
    """Training view: 3-D U-Net whose batch normalisations are domain-specific.

    Args:
        depth: number of 2x poolings (input sizes must be divisible by 2**depth).
        base_filters: filters of the first level (doubling per level).
        num_domains: DSBN domains (0 source, 1 target).
        input_scale: network input = field_ppm * input_scale.
        label_scale: network output = chi_ppm * label_scale.
        momentum, epsilon: BN settings (Keras semantics).
        synchronized_bn: batch moments over all replicas under a distribution strategy.
        masked_bn: training-mode batch moments of every DSBN over the brain mask only (pooled to
            each level); False: over all voxels, background included (the behaviour before issue 22).

    Call arguments:
        inputs: [field_ppm, mask], each float32 (batch, x, y, z, 1).
        domain: Python int, which domain's BN to use.
        training: BN mode (batch statistics and moving-average updates when True).

    Returns:
        chi in ppm, float32 (batch, x, y, z, 1), zero outside the mask.
    """

    def __init__(self, depth: int = 4, base_filters: int = 16, num_domains: int = 2,
                 input_scale: float = DEFAULT_INPUT_SCALE, label_scale: float = DEFAULT_LABEL_SCALE,
                 momentum: float = 0.99, epsilon: float = 1e-3, synchronized_bn: bool = True,
                 masked_bn: bool = True, **kwargs):
        # the container stays float32 (its inputs in ppm are not cast down); the layers built below
        # follow the global policy, reduced under mixed precision (daqsm/network_model/precision.py)
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if int(depth) < 1 or int(base_filters) < 1:
            raise ValueError(f"depth and base_filters must be >= 1, got {depth}, {base_filters}")
        self.depth, self.base_filters, self.num_domains = int(depth), int(base_filters), int(num_domains)
        self.input_scale, self.label_scale = float(input_scale), float(label_scale)
        self.momentum, self.epsilon, self.synchronized_bn = float(momentum), float(epsilon), bool(synchronized_bn)
        self.masked_bn = bool(masked_bn)
        self.convs, self.norms = {}, {}
        for block, filters in _level_plan(self.depth, self.base_filters):
            for k in range(2):
                name = f"{block}_conv{k}"
                self.convs[name] = layers.Conv3D(filters, 3, padding="same", name=name)
                self.norms[name] = DomainSpecificBatchNormalization(
                    self.num_domains, momentum=self.momentum, epsilon=self.epsilon,
                    synchronized=self.synchronized_bn, name=f"{block}_bn{k}")
                # named attributes: tf.train.Checkpoint tracks attributes, not Keras' dict wrappers
                setattr(self, name, self.convs[name])
                setattr(self, f"{block}_bn{k}", self.norms[name])
        self.out_conv = layers.Conv3D(1, 1, padding="same", name="out_conv")
        self.pool = layers.MaxPooling3D(2, name="pool")
        self.up = layers.UpSampling3D(2, name="up")  # nearest neighbour

    def call(self, inputs, domain=0, training=None):
        field_ppm, mask = inputs
        check_spatial_shape(field_ppm.shape[1:4], self.depth)
        x = ops.concatenate([field_ppm * mask * self.input_scale, mask], axis=-1)
        # the mask at every level (a coarse voxel is brain when any of its 8 children is): DSBN's
        # batch moments are taken inside it, so the background fraction of a crop does not enter them
        level_masks = [mask]
        for _ in range(self.depth):
            level_masks.append(self.pool(level_masks[-1]))
        bn_masks = {"mid": level_masks[self.depth]}
        for lvl in range(self.depth):
            bn_masks[f"enc{lvl}"] = bn_masks[f"dec{lvl}"] = level_masks[lvl]
        skips = []
        for block, _ in _level_plan(self.depth, self.base_filters):
            if block.startswith("dec"):
                x = ops.concatenate([self.up(x), skips.pop()], axis=-1)
            bn_mask = bn_masks[block] if self.masked_bn else None
            for k in range(2):
                name = f"{block}_conv{k}"
                x = ops.relu(self.norms[name](self.convs[name](x), domain=domain, training=training, mask=bn_mask))
            if block.startswith("enc"):
                skips.append(x)
                x = self.pool(x)
        # float32 from here on under a mixed precision policy (daqsm/network_model/precision.py)
        return ops.cast(self.out_conv(x), "float32") * (1.0 / self.label_scale) * mask

    def build(self, input_shape=None):
        """Create every weight by running `call` on zeros (smallest valid size, all domains)."""
        n = 2**self.depth
        zeros = ops.zeros((1, n, n, n, 1))
        self.built = True  # sublayers build on first use inside call
        for d in range(self.num_domains):
            self.call([zeros, zeros], domain=d, training=False)

    def build_for(self, patch_size=None) -> "DomainAdaptiveUNet":
        """Build the weights (patch_size is accepted for readability; weights do not depend on it)."""
        if not self.built:
            self.build()
        return self

    def get_config(self):
        return {**super().get_config(), "depth": self.depth, "base_filters": self.base_filters,
                "num_domains": self.num_domains, "input_scale": self.input_scale,
                "label_scale": self.label_scale, "momentum": self.momentum, "epsilon": self.epsilon,
                "synchronized_bn": self.synchronized_bn, "masked_bn": self.masked_bn}


def check_spatial_shape(spatial_shape, depth: int) -> None:
    """Raise ValueError unless every known spatial size is divisible by 2**depth."""
    step = 2**depth
    known = [int(n) for n in spatial_shape if n is not None]
    if any(n % step for n in known):
        raise ValueError(f"spatial size {tuple(spatial_shape)} must be divisible by 2**depth = {step} "
                         "(pad the volume first)")


def build_target_model(depth: int = 4, base_filters: int = 16, input_scale: float = DEFAULT_INPUT_SCALE,
                       label_scale: float = DEFAULT_LABEL_SCALE, momentum: float = 0.99,
                       epsilon: float = 1e-3) -> keras.Model:
    """Single-domain functional U-Net [field_ppm, mask] -> chi_ppm with plain BN (contract 3).

    Spatial input sizes are left free (fully convolutional); they must be divisible by 2**depth.
    """
    field = keras.Input((None, None, None, 1), name="field_ppm")
    mask = keras.Input((None, None, None, 1), name="mask")
    masked = layers.Multiply(name="field_masked")([field, mask])  # input contract (module docstring)
    x = layers.Concatenate(name="input_concat")([layers.Rescaling(input_scale, name="input_scale")(masked), mask])
    skips = []
    for block, filters in _level_plan(depth, base_filters):
        if block.startswith("dec"):
            x = layers.Concatenate(name=f"{block}_concat")([layers.UpSampling3D(2, name=f"{block}_up")(x),
                                                              skips.pop()])
        for k in range(2):
            x = layers.Conv3D(filters, 3, padding="same", name=f"{block}_conv{k}")(x)
            x = layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=f"{block}_bn{k}")(x)
            x = layers.ReLU(name=f"{block}_relu{k}")(x)
        if block.startswith("enc"):
            skips.append(x)
            x = layers.MaxPooling3D(2, name=f"{block}_pool")(x)
    x = layers.Conv3D(1, 1, padding="same", name="out_conv")(x)
    chi = layers.Rescaling(1.0 / label_scale, name="label_scale")(x)
    chi = layers.Multiply(name="chi_ppm")([chi, mask])
    return keras.Model([field, mask], chi, name=TARGET_MODEL_NAME)


def export_target_model(model: DomainAdaptiveUNet, domain: int = 1) -> keras.Model:
    """Copy the shared convolutions and one domain's BN into a plain single-domain model.

    Args:
        model: a built `DomainAdaptiveUNet`.
        domain: the domain whose BN to keep (1 = target).

    Returns:
        keras.Model [field_ppm, mask] -> chi_ppm; save it with `.save(path.keras)`.
    """
    from daqsm.network_model.precision import precision_policy

    with precision_policy("float32"):  # exported models are float32 whatever the training precision
        target = build_target_model(model.depth, model.base_filters, model.input_scale, model.label_scale,
                                    model.momentum, model.epsilon)
    for name, conv in model.convs.items():
        target.get_layer(name).set_weights(conv.get_weights())
        target.get_layer(model.norms[name].name).set_weights(model.norms[name].domain_weights(domain))
    target.get_layer("out_conv").set_weights(model.out_conv.get_weights())
    return target


def describe_target_model(model) -> dict:
    """Depth, input and label scale of an exported target model (ValueError if it is not one)."""
    if not isinstance(model, keras.Model) or model.name != TARGET_MODEL_NAME:
        raise ValueError(f"expected a keras model named {TARGET_MODEL_NAME!r}, "
                         f"got {getattr(model, 'name', type(model).__name__)!r}")
    depth = sum(1 for layer in model.layers if isinstance(layer, layers.MaxPooling3D))
    return {"depth": depth, "input_scale": float(model.get_layer("input_scale").scale),
            "label_scale": 1.0 / float(model.get_layer("label_scale").scale)}
