"""HiFi-GAN's training pieces (slam_jax.models.discriminators, slam_jax.speech.mel, slam_jax.training.vocoder_losses)
against the original PyTorch code (the pip `hifi-gan`: `hifi_gan/models.py`, `hifi_gan/meldataset.py`): the
discriminators' scores, feature maps and spectral-norm vectors in training mode, the losses, their gradients with
respect to every discriminator parameter and to the generated waveform, the mel front end and its loss gradient,
and the duration predictor loss. Every reference parameter is copied into our modules (`copy_parameters` holds the
name and layout mapping)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from hifi_gan import meldataset
from hifi_gan import models as reference

from benchmarks import vocoder_train
from slam_jax.models import discriminators
from slam_jax.models.discriminators import SpectralVector
from slam_jax.speech import mel
from slam_jax.training import vocoder_losses

VALUE_TOLERANCE = 1e-5  # max |ours - reference| / max |reference|, per array
GRADIENT_TOLERANCE = 1e-4
BATCH, SAMPLES = 2, 2000  # 2000 = 9 mod 11, 5 mod 7, 2 mod 3: most periods reflect-pad
# torch name suffix -> our variable name (weight_u is spectral_norm's buffer u, a SpectralVector here)
NAMES = {"weight_g": "g", "weight_v": "v", "weight_orig": "kernel", "bias": "bias", "weight_u": "u"}
pytestmark = pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
MEL = dict(n_fft=1024, num_mels=80, sampling_rate=16_000, hop_size=256, win_size=1024, fmin=0)


def relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def assert_close(ours, theirs, tolerance: float, what: str) -> None:
    error = relative_error(ours, theirs)
    assert error <= tolerance, f"{what}: relative error {error:.2e} > {tolerance:.0e}"


def ours_layout(name: str, tensor: torch.Tensor) -> np.ndarray:
    """A reference tensor in our layout: weight_g [out, 1, ...] -> g [out]; a kernel [out, in / groups, *widths]
    -> [*widths, in / groups, out]; biases and u unchanged."""
    array = tensor.detach().numpy().copy()  # torch updates grads and u in place
    last = name.rpartition(".")[2]
    if last == "weight_g":
        return array.reshape(-1)
    if last in ("weight_v", "weight_orig"):
        return np.transpose(array, (*range(2, array.ndim), 1, 0))
    return array


def our_path(name: str) -> tuple:
    """`discriminators.0.convs.3.weight_v` -> ("discriminators", 0, "convs", 3, "v"): our modules use the reference's
    attribute names and list positions."""
    *parents, last = name.split(".")
    return (*(int(part) if part.isdigit() else part for part in parents), NAMES[last])


def reference_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter, and the spectral-norm vectors u (weight_u; weight_v, spectral_norm's other buffer, is
    recomputed from u on every training-mode call)."""
    buffers = {name: buffer for name, buffer in module.named_buffers() if name.endswith("weight_u")}
    return {**dict(module.named_parameters()), **buffers}


def spectral_buffers(module: torch.nn.Module) -> list[np.ndarray]:
    """Copies of the reference's u's (weight_u, updated in place on every training-mode call)."""
    return [ours_layout(name, u) for name, u in reference_tensors(module).items() if name.endswith("weight_u")]


def lookup(tree, path: tuple):
    for key in path:
        tree = getattr(tree, key) if isinstance(key, str) and isinstance(tree, nnx.Module) else tree[key]
    return tree


def copy_parameters(theirs: torch.nn.Module, ours: nnx.Module) -> None:
    """Every reference tensor into its variable of ours; every variable of ours gets one."""
    tensors = reference_tensors(theirs)
    assert len(tensors) == len(nnx.to_flat_state(nnx.state(ours)))
    for name, tensor in tensors.items():
        variable = lookup(ours, our_path(name))
        assert variable.shape == ours_layout(name, tensor).shape, name
        variable.value = jnp.asarray(ours_layout(name, tensor))


def reference_pair(seed: int = 0):
    """The reference MPD and MSD (training mode) with torch's default init, weight-norm magnitudes then scaled by
    U(0.7, 1.3) so that g is not ||v||; and ours with every tensor copied from them."""
    torch.manual_seed(seed)
    theirs = reference.MultiPeriodDiscriminator(), reference.MultiScaleDiscriminator()
    with torch.no_grad():
        for module in theirs:
            for name, parameter in module.named_parameters():
                if name.endswith("weight_g"):
                    parameter.mul_(torch.empty_like(parameter).uniform_(0.7, 1.3))
    # Built abstractly (shapes only; every value is then copied): the random init of 70M parameters takes seconds.
    ours = (
        nnx.eval_shape(lambda: discriminators.MultiPeriodDiscriminator(rngs=nnx.Rngs(seed))),
        nnx.eval_shape(lambda: discriminators.MultiScaleDiscriminator(rngs=nnx.Rngs(seed))),
    )
    for their_module, our_module in zip(theirs, ours, strict=True):
        copy_parameters(their_module, our_module)
    return theirs, ours


def waveforms(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A real-like batch (a tone in noise) and a generated-like one (noise, as from an untrained generator),
    [BATCH, SAMPLES] float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    time = np.arange(SAMPLES) / 16_000
    tone = 0.4 * np.sin(2 * np.pi * rng.uniform(100, 400, (BATCH, 1)) * time)
    y = np.clip(tone + rng.normal(0, 0.1, (BATCH, SAMPLES)), -1, 1)
    y_hat = np.clip(rng.normal(0, 0.3, (BATCH, SAMPLES)), -1, 1)
    return y.astype(np.float32), y_hat.astype(np.float32)


def numpy_tree(tree):
    return jax.tree.map(lambda leaf: np.asarray(leaf.detach() if isinstance(leaf, torch.Tensor) else leaf), tree)


def reference_gan_terms(outputs) -> list:
    """(generator_loss, feature_loss) of each discriminator's forward(y, y_hat) outputs."""
    return [
        (reference.generator_loss(scores)[0], reference.feature_loss(fmap_real, fmap_generated))
        for _, scores, fmap_real, fmap_generated in outputs
    ]


def our_gan_terms(outputs) -> list:
    return [
        (vocoder_losses.generator_loss(generated[0])[0], vocoder_losses.feature_loss(real[1], generated[1]))
        for real, generated in outputs
    ]


def reference_steps(mpd, msd, y: np.ndarray, y_hat: np.ndarray) -> dict:
    """The reference's discriminator step (loss, backward) then its generator step's GAN terms (generator loss +
    feature loss of both discriminators, backward to y_hat), each a forward(y, y_hat): u advances 4 times."""
    y, y_hat = torch.from_numpy(y)[:, None], torch.from_numpy(y_hat)[:, None]
    step: dict = {"outputs": [mpd(y, y_hat), msd(y, y_hat)]}
    losses = [reference.discriminator_loss(rs, gs) for rs, gs, _, _ in step["outputs"]]
    (losses[0][0] + losses[1][0]).backward()
    step["discriminator_losses"] = losses
    step["parameter_grads"] = [
        {name: ours_layout(name, tensor.grad) for name, tensor in module.named_parameters()} for module in (mpd, msd)
    ]
    step["u"] = spectral_buffers(msd)
    generated = y_hat.clone().requires_grad_(True)
    step["gan_terms"] = reference_gan_terms([mpd(y, generated), msd(y, generated)])
    sum(first + second for first, second in step["gan_terms"]).backward()
    step["waveform_grad"] = generated.grad[:, 0]
    step["u_after_generator"] = spectral_buffers(msd)
    return numpy_tree(step)


def call_all(graphdefs, params, spectral, y, y_hat) -> tuple[list, list]:
    """Each discriminator on (y, y_hat), as the reference's forward(y, y_hat): outputs and new spectral states."""
    outputs, new_spectral = [], []
    for graphdef, module_params, module_spectral in zip(graphdefs, params, spectral, strict=True):
        output, updated = discriminators.functional_call(graphdef, module_params, module_spectral, y, y_hat)
        outputs.append(output)
        new_spectral.append(updated)
    return outputs, new_spectral


@functools.partial(jax.jit, static_argnums=0)
def discriminator_step(graphdefs, params, spectral, y, y_hat):
    """Our discriminator step as a trainer runs it: jitted value_and_grad of the loss of both discriminators over
    their params, split from the modules with the spectral vectors, which come back updated as aux."""

    def loss(params):
        outputs, new_spectral = call_all(graphdefs, params, spectral, y, y_hat)
        losses = [vocoder_losses.discriminator_loss(real[0], generated[0]) for real, generated in outputs]
        return losses[0][0] + losses[1][0], (outputs, losses, new_spectral)

    return jax.value_and_grad(loss, has_aux=True)(params)


@functools.partial(jax.jit, static_argnums=0)
def gan_terms_step(graphdefs, params, spectral, y, y_hat):
    """The generator step's GAN terms (generator_loss + feature_loss of both discriminators) and their gradient
    with respect to the generated waveform y_hat."""

    def loss(y_hat):
        outputs, new_spectral = call_all(graphdefs, params, spectral, y, y_hat)
        terms = our_gan_terms(outputs)
        return sum(first + second for first, second in terms), (terms, new_spectral)

    return jax.value_and_grad(loss, has_aux=True)(y_hat)


def split_all(modules) -> tuple[tuple, list, list]:
    split = [discriminators.split(module) for module in modules]
    return tuple(part[0] for part in split), [part[1] for part in split], [part[2] for part in split]


def our_steps(mpd, msd, y: np.ndarray, y_hat: np.ndarray) -> dict:
    graphdefs, params, spectral_before = split_all((mpd, msd))
    (_, (outputs, losses, spectral)), parameter_grads = discriminator_step(graphdefs, params, spectral_before, y, y_hat)
    (_, (gan_terms, spectral_after)), waveform_grad = gan_terms_step(graphdefs, params, spectral, y, y_hat)
    return {
        "outputs": outputs,
        "discriminator_losses": losses,
        "parameter_grads": parameter_grads,
        "spectral_before": spectral_before,
        "spectral": spectral,
        "spectral_after_generator": spectral_after,
        "gan_terms": gan_terms,
        "waveform_grad": waveform_grad,
    }


@pytest.fixture(scope="module")
def steps():
    """(reference, ours, our MSD, the u's it started from): the discriminator step and the generator step's GAN
    terms, with their gradients, run by the reference and by us on the same parameters and batches.

    The gradients pass through about a million leaky ReLUs and the feature loss's |r - g|, whose slopes jump at 0:
    float32 rounding (about 5e-7 of a map's scale, in either implementation) can put a unit on the other side of a
    kink, which moves single gradient entries by up to 4e-3 relative (3 of 8 random batches tried; in float64 they
    agree to 1e-10). These batches have no unit that close to a kink; a gradient mismatch after a library upgrade
    that moves few entries is worth rechecking in float64 before suspecting the code."""
    (their_mpd, their_msd), (our_mpd, our_msd) = reference_pair()
    u_before = spectral_vectors(nnx.state(our_msd, SpectralVector))
    y, y_hat = waveforms(seed=1)
    return reference_steps(their_mpd, their_msd, y, y_hat), our_steps(our_mpd, our_msd, y, y_hat), our_msd, u_before


def spectral_vectors(state: nnx.State) -> list[np.ndarray]:
    """The u's of a spectral state, in the reference's named_buffers order (convs 0..6, then conv_post)."""
    flat = nnx.to_flat_state(state)
    by_path = {path: np.asarray(variable[...]) for path, variable in flat}
    order = sorted(by_path, key=lambda path: (path[2] == "conv_post", path[3] if path[2] == "convs" else 0))
    return [by_path[path] for path in order]


@pytest.mark.parametrize("which", ["mpd", "msd"])
def test_scores_and_feature_maps_match_the_reference_for_real_and_generated(steps, which):
    theirs, ours, _, _ = steps
    index = ("mpd", "msd").index(which)
    their_real, their_generated, their_fmap_real, their_fmap_generated = theirs["outputs"][index]
    (our_real, our_fmap_real), (our_generated, our_fmap_generated) = ours["outputs"][index]
    assert len(our_real) == len(their_real) == (5 if which == "mpd" else 3)
    for kind, our_scores, their_scores, our_maps, their_maps in (
        ("real", our_real, their_real, our_fmap_real, their_fmap_real),
        ("generated", our_generated, their_generated, our_fmap_generated, their_fmap_generated),
    ):
        for number, (ours_d, theirs_d) in enumerate(zip(our_scores, their_scores, strict=True)):
            assert_close(ours_d, theirs_d, VALUE_TOLERANCE, f"{which}[{number}] {kind} scores")
        for number, (maps, reference_maps) in enumerate(zip(our_maps, their_maps, strict=True)):
            assert len(maps) == len(reference_maps) == (6 if which == "mpd" else 8)
            for layer, (fmap, reference_fmap) in enumerate(zip(maps, reference_maps, strict=True)):
                # the reference's maps are channels first: [batch, channels, frames(, period)]
                what = f"{which}[{number}] {kind} fmap {layer}"
                assert_close(fmap, np.moveaxis(reference_fmap, 1, -1), VALUE_TOLERANCE, what)


def test_spectral_norm_vectors_advance_as_the_reference(steps):
    """u after the discriminator step's forward(y, y_hat) (two power iterations) and after the generator step's."""
    theirs, ours, _, u_before = steps
    for our_u, their_u in (
        (spectral_vectors(ours["spectral"][1]), theirs["u"]),
        (spectral_vectors(ours["spectral_after_generator"][1]), theirs["u_after_generator"]),
    ):
        assert len(our_u) == len(their_u) == 8
        for layer, (u, reference_u) in enumerate(zip(our_u, their_u, strict=True)):
            assert_close(u, reference_u, VALUE_TOLERANCE, f"u of conv {layer}")
    moved = [relative_error(u, before) for u, before in zip(theirs["u"], u_before, strict=True)]
    assert min(moved[:-1]) > 1e-3, "the power iterations left u where it was"  # conv_post's u is [1]: +-1
    assert not nnx.to_flat_state(ours["spectral"][0]), "the MPD has no spectral norm"


def test_losses_match_the_reference(steps):
    theirs, ours, _, _ = steps
    for index in range(2):
        total, real, generated = ours["discriminator_losses"][index]
        their_total, their_real, their_generated = theirs["discriminator_losses"][index]
        assert_close(total, their_total, VALUE_TOLERANCE, "discriminator_loss")
        assert_close(real, their_real, VALUE_TOLERANCE, "discriminator_loss real terms")
        assert_close(generated, their_generated, VALUE_TOLERANCE, "discriminator_loss generated terms")
        for name, ours_term, theirs_term in zip(
            ("generator_loss", "feature_loss"), ours["gan_terms"][index], theirs["gan_terms"][index], strict=True
        ):
            assert_close(ours_term, theirs_term, VALUE_TOLERANCE, name)


def test_discriminator_loss_gradients_match_the_reference(steps):
    """Every weight_g, weight_v, weight_orig and bias gradient of the discriminator step."""
    theirs, ours, _, _ = steps
    for index in range(2):
        grads = theirs["parameter_grads"][index]
        assert len(grads) == len(nnx.to_flat_state(ours["parameter_grads"][index]))
        for name, reference_grad in grads.items():
            ours_grad = lookup(ours["parameter_grads"][index], our_path(name))[...]
            assert_close(ours_grad, reference_grad, GRADIENT_TOLERANCE, f"d loss / d {name}")


def test_gan_terms_gradient_with_respect_to_the_generated_waveform_matches(steps):
    theirs, ours, _, _ = steps
    assert_close(ours["waveform_grad"], theirs["waveform_grad"], GRADIENT_TOLERANCE, "d (gen + feature loss) / d y_hat")


def test_a_jitted_functional_step_returns_the_new_spectral_vectors(steps):
    """`discriminator_step` jits value_and_grad through split / functional_call: the inputs stay as they were, the
    new u's come back as a SpectralVector state (the reference's, above), and nnx.update writes them into the
    module, whose next eager call advances them by one more power iteration."""
    _, ours, our_msd, u_before = steps
    before, after = ours["spectral_before"][1], ours["spectral"][1]
    assert all(isinstance(variable, SpectralVector) for _, variable in nnx.to_flat_state(after))
    assert all(isinstance(variable, nnx.Param) for _, variable in nnx.to_flat_state(ours["parameter_grads"][1]))
    for u, original in zip(spectral_vectors(before), u_before, strict=True):
        np.testing.assert_array_equal(u, original)
    nnx.update(our_msd, after)
    np.testing.assert_array_equal(our_msd.discriminators[0].convs[0].u[...], spectral_vectors(after)[0])
    conv = our_msd.discriminators[0].convs[6]
    expected, _ = discriminators.power_iteration(discriminators.torch_matrix(conv.kernel[...]), conv.u[...])
    conv(jnp.ones((1, 8, 1024), jnp.float32))
    np.testing.assert_allclose(conv.u[...], expected, rtol=1e-6, atol=1e-7)
    assert relative_error(conv.u[...], spectral_vectors(after)[6]) > 1e-6, "the eager call left u where it was"


def test_grouped_convolutions_run_per_group_or_as_xla_alike():
    """Each grouped conv of the MSD (channels / 8) with XLA's grouped convolution (the default, that of the parity
    tests above) and with one convolution per group (`model.grouped_convolutions=per_group`): the same output and
    gradients w.r.t. input and kernel."""
    rng = np.random.default_rng(4)
    grouped = [spec for spec in discriminators.SCALE_CONVS if spec[4] > 1]
    assert len(grouped) == 5

    def loss(x, kernel, stride, side, groups, grouping):
        out = discriminators.convolve(x, kernel, (stride,), (side,), groups, grouping)
        return jnp.sum(jnp.sin(out)), out

    for cin, cout, width, stride, groups, side in grouped:
        x = jnp.asarray(rng.normal(size=(2, 300, cin // 8)), jnp.float32)
        kernel = jnp.asarray(rng.normal(size=(width, cin // 8 // groups, cout // 8)) / 10, jnp.float32)
        results = [
            jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=(2, 3, 4, 5))(
                x, kernel, stride, side, groups, grouping
            )
            for grouping in discriminators.GROUPINGS
        ]
        ((_, xla), xla_grads), ((_, per_group), per_group_grads) = results
        what = f"conv {cin}->{cout} groups {groups}"
        assert_close(per_group, xla, VALUE_TOLERANCE, what)
        for name, ours, theirs in zip(("input", "kernel"), per_group_grads, xla_grads, strict=True):
            assert_close(ours, theirs, GRADIENT_TOLERANCE, f"{what}: gradient w.r.t. the {name}")


def test_initialisation_is_torch_default_conv_init_then_the_norms():
    """Kernels and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (fan_in = in / groups x width); weight norm's g = ||v||,
    so the first kernel is v; spectral norm's u a unit vector."""
    rngs = nnx.Rngs(0)
    weight_normed = discriminators.WeightNormConv(32, 64, (5,), (1,), (2,), groups=4, rngs=rngs)
    spectral_normed = discriminators.SpectralNormConv(8, 16, (5, 1), (3, 1), (2, 0), rngs=rngs)
    bound = 1 / np.sqrt(8 * 5)  # both: 8 inputs per group, width 5
    for array in (weight_normed.v, weight_normed.bias, spectral_normed.kernel, spectral_normed.bias):
        values = np.asarray(array[...])
        assert 0.8 * bound < np.abs(values).max() <= bound
    assert weight_normed.v.shape == (5, 8, 64) and spectral_normed.kernel.shape == (5, 1, 8, 16)
    np.testing.assert_allclose(weight_normed.kernel(), weight_normed.v[...], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(spectral_normed.u[...]), 1.0, rtol=1e-6)
    assert isinstance(spectral_normed.u, SpectralVector) and not isinstance(spectral_normed.u, nnx.Param)


def test_average_pool_counts_the_padding_as_torch():
    y = np.random.default_rng(0).normal(size=(2, 11)).astype(np.float32)
    expected = torch.nn.AvgPool1d(4, 2, padding=2)(torch.from_numpy(y)[:, None])[:, 0].numpy()
    assert_close(discriminators.average_pool(jnp.asarray(y)), expected, 1e-6, "AvgPool1d(4, 2, padding=2)")


@pytest.mark.parametrize("fmax", [8000, None])
def test_mel_spectrogram_and_its_loss_gradient_match_hifi_gan(fmax):
    rng = np.random.default_rng(2)
    y = np.clip(rng.normal(0, 0.3, (2, 4000)), -1, 1).astype(np.float32)
    y_hat = np.clip(rng.normal(0, 0.3, (2, 4000)), -1, 1).astype(np.float32)
    with vocoder_train.reference_mel():  # the reference on today's librosa and torch
        their_y = meldataset.mel_spectrogram(torch.from_numpy(y), **MEL, fmax=fmax)
        generated = torch.from_numpy(y_hat).requires_grad_(True)
        their_mel = meldataset.mel_spectrogram(generated, **MEL, fmax=fmax)
        F.l1_loss(their_y, their_mel).backward()

    ours = mel.mel_spectrogram(jnp.asarray(y_hat), **MEL, fmax=fmax)
    assert ours.shape == (2, mel.num_frames(4000, 1024, 256), 80) == (2, their_mel.shape[2], 80)
    assert_close(ours, their_mel.detach().numpy().transpose(0, 2, 1), VALUE_TOLERANCE, "log-mel")

    def loss(y_hat):
        return vocoder_losses.mel_loss(
            mel.mel_spectrogram(jnp.asarray(y), **MEL, fmax=fmax), mel.mel_spectrogram(y_hat, **MEL, fmax=fmax)
        )

    grad = jax.jit(jax.grad(loss))(jnp.asarray(y_hat))
    assert_close(grad, generated.grad.numpy(), GRADIENT_TOLERANCE, "d mel loss / d y_hat")


def test_duration_loss_is_the_mse_over_valid_units():
    rng = np.random.default_rng(3)
    predicted = rng.normal(1.0, 0.5, (3, 7)).astype(np.float32)
    durations = rng.integers(1, 9, (3, 7))
    mask = np.arange(7)[None, :] < np.array([[7], [4], [1]])
    expected = F.mse_loss(
        torch.from_numpy(predicted)[torch.from_numpy(mask)],
        torch.log(torch.from_numpy(durations)[torch.from_numpy(mask)].float() + 1),
        reduction="mean",
    )
    ours = vocoder_losses.duration_loss(jnp.asarray(predicted), jnp.asarray(durations), jnp.asarray(mask))
    assert_close(ours, expected.numpy(), 1e-6, "duration_loss")
    nothing = vocoder_losses.duration_loss(jnp.asarray(predicted), jnp.asarray(durations), jnp.zeros((3, 7), bool))
    assert float(nothing) == 0.0  # no valid unit: 0, where torch's mean of nothing is nan
