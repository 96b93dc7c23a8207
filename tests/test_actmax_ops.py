"""interp_ops.actmax on its own: batching changes nothing, seeds are honoured, gray and RGB models work, the
running top-k equals a brute-force sort, and bad input gets a clear ActmaxError. Random-init models, few steps."""

import numpy as np
import pytest
import torch
from user_models import gray_net

from interp_ops import onnx_bundle
from interp_ops.actmax import ActmaxError, render_units, top_exemplars
from interp_ops.actmax.objectives import channel, neuron
from interp_ops.actmax.transforms import STANDARD_TRANSFORMS, TransformChain
from interp_ops.datasets import Samples, to_model_input
from interp_ops.demo_models import DEMO_INPUT, shapes_cnn

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEMO = dict(input_shape=tuple(DEMO_INPUT["shape"]), mean=DEMO_INPUT["mean"], std=DEMO_INPUT["std"])
GRAY = dict(input_shape=(1, 28, 28), mean=[0.5], std=[0.5])


@pytest.fixture(scope="module")
def demo_cnn():
    torch.manual_seed(0)
    return shapes_cnn()


@pytest.fixture
def float64():
    """Float64 by default (image parameters, transforms, input map), restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_batched_equals_one_unit_at_a_time(float64):
    """render.py: "A unit's trajectory is the same (to float rounding) alone or in any batch". Checked in float64,
    where that rounding stays far below float32's resolution, so the float32 outputs must agree to a few ulps
    (rtol 1e-6; measured here: bit-identical). In float32 the same comparison is NOT ulps-close: the convolutions
    round differently for a batch of 4 than of 1 (2e-7 relative after 2 steps) and Adam, which divides each
    gradient entry by its own running magnitude, turns that rounding on near-cancelled entries into lr-sized
    steps from step 3 on: unit 20's curve then differs by up to 1.6e-3 relative after 16 steps (images by 0.04),
    measured on this CPU; with SGD instead of Adam it stays below 1.3e-5. A float64 run has none of it, so a real
    coupling between batch elements shows here far above rtol (checked: BatchNorm left in train mode, or a mean
    loss instead of the sum, moves unit 3's pixels by 1e-3 or more)."""
    torch.manual_seed(0)
    model = shapes_cnn().double()
    units = [3, 7, 11, 20]
    settings = dict(steps=16, thresholds=range(1, 17), robustness_draws=2, **DEMO)
    together = render_units(model, "features.8", units, **settings)
    uneven = render_units(model, "features.8", units, batch_units=3, **settings)  # batches [3, 7, 11] and [20]
    for row, unit in enumerate(units):
        alone = render_units(model, "features.8", [unit], **settings)
        for batched in (together, uneven):
            for field in ("images", "curve", "final_activation", "robustness"):
                np.testing.assert_allclose(
                    getattr(batched, field)[row],
                    getattr(alone, field)[0],
                    rtol=1e-6,
                    atol=0,
                    err_msg=f"unit {unit}: {field}",
                )
    assert np.all(together.curve[:, -1] > together.curve[:, 0])  # it does maximise


def test_same_seed_is_bit_identical_and_seeds_differ(demo_cnn):
    settings = dict(steps=4, robustness_draws=1, **DEMO)
    first = render_units(demo_cnn, "features.4", [0, 5], seed=1, **settings)
    again = render_units(demo_cnn, "features.4", [0, 5], seed=1, **settings)
    other = render_units(demo_cnn, "features.4", [0, 5], seed=2, **settings)
    assert np.array_equal(first.images, again.images) and np.array_equal(first.curve, again.curve)
    assert not np.allclose(first.images, other.images)


def test_each_batch_element_draws_its_own_transforms():
    chain = TransformChain(STANDARD_TRANSFORMS)
    generators = [torch.Generator().manual_seed(seed) for seed in range(8)]
    uniforms = torch.stack([torch.rand((1, chain.draws), generator=g) for g in generators], dim=1)
    thetas = chain.thetas(uniforms, (64, 64))[0]
    assert len(torch.unique(thetas.reshape(8, -1), dim=0)) == 8


def test_rgb_64_and_gray_28_models_render(demo_cnn):
    rgb = render_units(demo_cnn, "features.12", [0, 63], steps=3, renders_per_unit=2, **DEMO)
    gray = render_units(gray_net(), "body.act2", [0, 5], steps=3, renders_per_unit=2, **GRAY)
    for renders, shape in ((rgb, (3, 64, 64)), (gray, (1, 28, 28))):
        assert renders.images.shape == (4, *shape) and renders.images.dtype == np.float32
        assert renders.images.min() >= 0 and renders.images.max() <= 1
        assert renders.unit_of_row.tolist() == [renders.units[0]] * 2 + [renders.units[1]] * 2
        assert renders.render_index.tolist() == [0, 1, 0, 1]
        assert renders.thresholds == [1, 2, 3] and renders.curve.shape == (4, 3)
        assert renders.diversity.shape == (2,) and np.all(renders.diversity > 0)
        assert np.all(np.isfinite(renders.final_activation)) and renders.robustness.shape == (4,)
    assert gray.descriptions[0] == "channel(body.act2, 0)"


def test_colour_decorrelation_applies_to_three_channels_only(demo_cnn):
    def images(model, layer, settings, decorrelate):
        return render_units(model, layer, [1], steps=2, decorrelate=decorrelate, **settings).images

    gray = gray_net()
    assert np.array_equal(images(gray, "body.conv1", GRAY, True), images(gray, "body.conv1", GRAY, False))
    assert not np.allclose(images(demo_cnn, "features.4", DEMO, True), images(demo_cnn, "features.4", DEMO, False))


def test_neuron_objective_pixel_param_and_no_transforms(demo_cnn):
    renders = render_units(
        demo_cnn, "features.8", [2], objective="neuron", param="pixel", transforms="none", steps=2, **DEMO
    )
    assert renders.descriptions == ["neuron(features.8, 2)"]
    assert renders.robustness[0] == pytest.approx(1.0)  # no transforms: every draw sees the render itself


def test_linear_layers_and_other_render_sizes(demo_cnn):
    logits = render_units(demo_cnn, "classifier", [1], steps=2, **DEMO)
    assert np.isfinite(logits.final_activation).all()
    larger = render_units(demo_cnn, "features.4", [0], steps=2, image_size=80, **DEMO)
    assert larger.images.shape == (1, 3, 80, 80)
    with pytest.raises(ActmaxError, match="image_size"):
        render_units(gray_net(), "body.act2", [0], steps=2, image_size=4, **GRAY)


class _InputRecorder(torch.nn.Module):
    """Passes its input on and keeps a copy of each one."""

    def __init__(self):
        super().__init__()
        self.seen: list[np.ndarray] = []

    def forward(self, x):
        self.seen.append(x.detach().numpy().copy())
        return x


def test_renders_reach_the_model_as_data_images_do():
    """A render goes into the model exactly as ``to_model_input`` turns the same pixels into model input: one
    normalization for data and renders. Without transforms the last forward sees the finished render itself."""
    mean, std, value_range = [0.1, 0.2, 0.3], [0.3, 0.7, 0.9], (-1.0, 2.0)
    recorder = _InputRecorder()
    torch.manual_seed(0)
    model = torch.nn.Sequential(recorder, torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    renders = render_units(
        model,
        "2",
        [0, 3],
        input_shape=(3, 16, 20),
        value_range=value_range,
        mean=mean,
        std=std,
        transforms="none",
        steps=3,
        robustness_draws=1,
    )
    samples = Samples(ids=["a", "b"], x=renders.images.transpose(0, 2, 3, 1), labels=None, masks=None, class_names=None)
    as_data = to_model_input(samples, (3, 16, 20), value_range, mean, std)
    np.testing.assert_array_equal(recorder.seen[-1], as_data)


def test_objectives_combine_like_numbers():
    maps = {"l": torch.arange(2 * 3 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3, 3)}
    combined = channel("l", 1) - 0.5 * neuron("l", torch.tensor([0, 2]))
    assert combined.description == "channel(l, 1) - (0.5 * neuron(l, [0, 2]))"
    assert combined.layers == frozenset({"l"})
    expected = maps["l"][:, 1].mean(dim=(1, 2)) - 0.5 * maps["l"][[0, 1], [0, 2], 1, 1]
    torch.testing.assert_close(combined(maps), expected)


def test_model_state_is_restored():
    model = shapes_cnn().train()
    model.features[0].eval()
    model.classifier.requires_grad_(False)
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    render_units(model, "features.4", [0], steps=2, **DEMO)
    assert model.training and not model.features[0].training and model.features[1].training
    assert not model.classifier.weight.requires_grad and model.features[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # BatchNorm statistics untouched


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(layer="features.99"), r"no module named 'features.99'.*features\.8"),
        (dict(units=[64]), r"\[64\] are out of range .* 64 units \(0\.\.63\)"),
        (dict(units=[-1]), r"out of range"),
        (dict(steps=0), r"steps: 0 must be a whole number >= 1"),
        (dict(objective="channels"), r"unknown objective 'channels'; use one of channel, neuron"),
        (dict(param="cppn"), r"unknown param 'cppn'"),
        (dict(transforms="heavy"), r"unknown transforms 'heavy'; use one of none, standard"),
        (dict(lr=0), r"lr: 0 must be positive"),
        (dict(units=[]), r"units: empty"),
        (dict(thresholds=[0, 2]), r"thresholds: \[0\] are outside 1\.\.2"),
        (dict(mean=[0.1, 0.2]), r"mean: 2 values for 3 channels"),
        (dict(std=[0.5, 0.0, 0.5]), r"std: \[0.5, 0.0, 0.5\] must all be > 0"),
        (dict(value_range=(1.0, 0.0)), r"value_range: \(1.0, 0.0\) must be .* low < high"),
        (dict(device="gpu"), r"device: 'gpu' is not a torch device"),
    ],
)
def test_bad_input_is_a_clear_error(demo_cnn, settings, message):
    call = dict(layer="features.8", units=[0], steps=2, **DEMO) | settings
    with pytest.raises(ActmaxError, match=message):
        render_units(demo_cnn, call.pop("layer"), call.pop("units"), **call)


# ---------------------------------------------------------------------------------------------- exemplars


@pytest.fixture(scope="module")
def gray_session():
    model = gray_net().eval()
    return model, onnx_bundle.make_session(
        onnx_bundle.export_torch(model, (1, 28, 28), ["body.conv1", "body.act2"]), "cpu"
    )


def brute_force_top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-values, axis=0, kind="stable")[:k].T  # stable: ties keep the lower row first
    return order, np.take_along_axis(values.T, order, axis=1)


@pytest.mark.parametrize("objective", ["channel", "neuron"])
def test_top_exemplars_equal_a_full_sort(gray_session, objective, rng):
    _, session = gray_session
    x = rng.normal(size=(50, 1, 28, 28)).astype(np.float32)
    x[[7, 31, 44]] = x[12]  # exact ties across batches: the lower row index must win
    x[20:23] = -10.0  # all-dead rows: ReLU ties at 0
    full = onnx_bundle.run_session(session, x)
    units = {"body.conv1": [3, 0], "body.act2": [0, 1, 2, 3, 4, 5]}
    found = top_exemplars(session, x, ["body.conv1", "body.act2"], units, k=6, objective=objective, batch_size=16)
    for layer, chosen in units.items():
        maps = full[layer][:, chosen]
        values = (
            maps.mean(axis=(2, 3)) if objective == "channel" else maps[:, :, maps.shape[2] // 2, maps.shape[3] // 2]
        )
        indices, activations = brute_force_top_k(values, 6)
        assert found[layer].units == chosen
        np.testing.assert_array_equal(found[layer].indices, indices)
        np.testing.assert_allclose(found[layer].activations, activations, rtol=1e-6)
        np.testing.assert_array_equal(found[layer].dataset_max, found[layer].activations[:, 0])
        assert found[layer].indices.dtype == np.int64 and found[layer].activations.dtype == np.float32


def test_top_exemplars_defaults_and_errors(gray_session, rng):
    _, session = gray_session
    x = rng.normal(size=(5, 1, 28, 28)).astype(np.float32)
    everything = top_exemplars(session, x, ["body.act2"], {}, k=9)["body.act2"]
    assert everything.units == list(range(6)) and everything.indices.shape == (6, 5)  # k capped at N
    with pytest.raises(ActmaxError, match=r"\['features.8'\] are not outputs of the ONNX session"):
        top_exemplars(session, x, ["features.8"], {})
    with pytest.raises(ActmaxError, match=r"\[6\] are out of range for layer 'body.act2'"):
        top_exemplars(session, x, ["body.act2"], {"body.act2": [6]})
    with pytest.raises(ActmaxError, match="unknown objective 'mean'"):
        top_exemplars(session, x, ["body.act2"], {}, objective="mean")


def test_no_forward_hook_is_left_on_the_callers_model(gray_session):
    """Export, parity run and render hook the audited layers only while they run, also when they fail (all three
    through interp_ops.layer_capture)."""
    model, _ = gray_session  # exported by the fixture
    layers = ["body.conv1", "body.act2"]

    def hooked() -> list[str]:
        return [name or "(root)" for name, module in model.named_modules() if module._forward_hooks]

    assert hooked() == []
    onnx_bundle.run_torch(model, np.zeros((2, 1, 28, 28), np.float32), layers, "cpu")
    render_units(model, "body.act2", [0], steps=2, **GRAY)
    assert hooked() == []
    with pytest.raises(RuntimeError):  # three channels into a one-channel convolution
        onnx_bundle.run_torch(model, np.zeros((2, 3, 28, 28), np.float32), layers, "cpu")
    with pytest.raises(ActmaxError, match="the model fails on a 3x28x28 input"):
        render_units(model, "body.act2", [0], steps=2, input_shape=(3, 28, 28))
    with pytest.raises(onnx_bundle.OnnxBundleError, match="ONNX export failed"):
        onnx_bundle.export_torch(model, (3, 28, 28), layers)
    assert hooked() == []


def test_parity_reads_a_read_only_array_as_it_reads_a_writable_one(gray_session, recwarn):
    """Samples may arrive read-only (memory-mapped .npy, Ray's object store): torch gets a copy, the same values."""
    model, _ = gray_session
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    frozen = x.copy()
    frozen.flags.writeable = False
    writable = onnx_bundle.run_torch(model, x, ["body.act2"], "cpu")
    read_only = onnx_bundle.run_torch(model, frozen, ["body.act2"], "cpu")
    assert all(np.array_equal(writable[key], read_only[key]) for key in writable)
    assert not [w for w in recwarn if "not writable" in str(w.message)]
