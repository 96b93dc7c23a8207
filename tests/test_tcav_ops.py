"""TCAV (issue 19, the computation; not yet an audit method): agreement with Captum 0.9's TCAV on the same CAVs,
the planted shortcut found on the shortcut demo model and not on the honest one, determinism and bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch
from captum.concept import TCAV, Concept
from safetensors.torch import load_file
from tcav_reference import DEMO, CaptumCav, model_input, scenes, scenes_of_class, with_corner_patch
from token_models import IMAGE, planted_vit

from interp_ops import builtin_data, onnx_bundle
from interp_ops.demo_models import shapes_cnn
from interp_ops.layer_capture import LayerCapture
from interp_ops.tcav import (
    TcavError,
    class_logit_gradients,
    directional_derivatives,
    layer_activations,
    layer_cavs,
    layer_tcav,
    tcav_scores,
    tcav_test,
    train_cav,
)
from interp_ops.token_grid import TokenGrid

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GRAY_INPUT = dict(shape=(1, 28, 28), value_range=(0, 1), mean=[0.5], std=[0.5])
EXAMPLES, RANDOM_SETS, CLASS_INPUTS = 20, 3, 16


def demo_model(weights_path: Path) -> torch.nn.Module:
    model = shapes_cnn()
    model.load_state_dict(load_file(weights_path))
    return model.eval()


def session_of(model: torch.nn.Module, shape, layers: list[str]):
    return onnx_bundle.make_session(onnx_bundle.export_torch(model, shape, layers), "cpu")


def captum_scores(model, layer, concept_x, random_xs, class_x, class_index, seed, save_path) -> tuple:
    """Captum's sign-count TCAV score of the concept (id 0) against each random set, and its CAV directions."""
    concepts = [
        Concept(i, name, torch.utils.data.DataLoader(torch.from_numpy(x), batch_size=len(x)))
        for i, (name, x) in enumerate([("concept", concept_x)] + [(f"random{j}", x) for j, x in enumerate(random_xs)])
    ]
    experiments = [[concepts[0], random] for random in concepts[1:]]
    captum = TCAV(model, [layer], classifier=CaptumCav(seed), save_path=str(save_path))
    results = captum.interpret(torch.from_numpy(class_x), experiments, target=class_index)
    keys = [f"0-{random.id}" for random in concepts[1:]]
    scores = np.array([float(results[key][layer]["sign_count"][0]) for key in keys])
    directions = np.stack([captum.cavs[key][layer].stats["weights"][0].numpy() for key in keys])
    return scores, directions


def agreement(model, shape_settings, layer, concept_x, random_xs, class_x, class_index, save_path) -> None:
    """Ours (ONNX Runtime activations) against Captum (torch activations), the same CAV classifier and seed."""
    session = session_of(model, shape_settings["shape"], [layer])
    concept = layer_activations(session, concept_x, layer)
    randoms = [layer_activations(session, x, layer) for x in random_xs]
    gradients = class_logit_gradients(model, layer, class_x, class_index)
    ours = tcav_scores(concept, randoms, gradients, seed=0)

    theirs, their_directions = captum_scores(model, layer, concept_x, random_xs, class_x, class_index, 0, save_path)
    our_directions = np.stack([train_cav(concept, random, 0).direction for random in randoms])
    cosines = np.sum(our_directions * their_directions, axis=1) / np.linalg.norm(their_directions, axis=1)
    assert cosines.min() > 1 - 1e-5, cosines  # the same CAVs, up to torch's against ONNX Runtime's activations
    derivatives = gradients @ our_directions.T
    assert np.abs(derivatives).min() > 1e-4 * np.abs(derivatives).max()  # no sign decided by rounding
    np.testing.assert_allclose(ours.scores, theirs, atol=1e-6)


@pytest.mark.slow
def test_agrees_with_captum_on_a_user_model_at_its_last_activation(tmp_path):
    """gray_net, a model not shaped to the demo (1x28x28, ten classes). At body.act2 (before flatten and the
    linear head) the gradient is the head's row for every input, so a score there is 0 or 1; body.conv1 (before a
    ReLU and a max-pool) gives each input its own gradient."""
    from user_models import gray_net

    model = gray_net().eval()
    concept_x = scenes_of_class(2, EXAMPLES, seed=11, patch=False, **GRAY_INPUT)  # triangles
    random_xs = [scenes(EXAMPLES, seed=20 + i, **GRAY_INPUT) for i in range(RANDOM_SETS)]
    class_x = scenes(CLASS_INPUTS, seed=30, **GRAY_INPUT)
    for layer in ("body.act2", "body.conv1"):
        agreement(model, GRAY_INPUT, layer, concept_x, random_xs, class_x, 3, tmp_path / layer)


@pytest.mark.slow
def test_agrees_with_captum_on_the_demo_cnn(trained, tmp_path):
    model = demo_model(trained["honest"].weights_path)
    concept_x = scenes_of_class(2, EXAMPLES, seed=11, patch=False, **DEMO)  # triangles
    random_xs = [scenes(EXAMPLES, seed=20 + i, **DEMO) for i in range(RANDOM_SETS)]
    class_x = scenes_of_class(2, CLASS_INPUTS, seed=30, patch=False, **DEMO)
    agreement(model, DEMO, "features.8", concept_x, random_xs, class_x, 2, tmp_path)


# --- planted truth -----------------------------------------------------------------------------------------------

# at features.8 the honest model's CAVs, too, tell the patch apart (accuracy ~0.8), and a patch there nudges its logits
# by a little but of one sign: significant in some classes and draws of data
PLANTED_LAYER = "features.12"
# with 3 random sets the null's spread (scores from 0 to 1) leaves even a score of 1.0 at p ~ 0.1
PLANTED_RANDOM_SETS = 20
PER_CLASS = 7
COMPARISONS = 3  # one concept at one layer, for each of the three classes


def class_balanced_scenes(seed: int) -> np.ndarray:
    """PER_CLASS scenes of each class: a concept set and a random set then differ in nothing but the concept, not in
    their mix of classes (which a layer near the logits tells apart, and a CAV would follow)."""
    images, _, labels = builtin_data.shapes("val", 10 * PER_CLASS, seed)
    return np.concatenate([images[labels == label][:PER_CLASS] for label in range(len(builtin_data.CLASS_NAMES))])


@pytest.fixture(scope="module")
def planted_data():
    """Scenes with the circle's corner colour, scenes with a triangle, random sets of scenes with no patch;
    circles (with their patch, as the shortcut model was trained on them) and triangles to score."""
    return dict(
        patch=model_input(with_corner_patch(class_balanced_scenes(100), 0), **DEMO),
        triangles=scenes_of_class(2, 3 * PER_CLASS, seed=400, patch=False, **DEMO),
        randoms=[model_input(class_balanced_scenes(200 + i), **DEMO) for i in range(PLANTED_RANDOM_SETS)],
        circles=scenes_of_class(0, CLASS_INPUTS, seed=300, patch=True, **DEMO),
        triangles_to_score=scenes_of_class(2, CLASS_INPUTS, seed=300, patch=False, **DEMO),
    )


def planted_tcav(model, data: dict, concepts_and_classes: list[tuple[str, str, int]]) -> list:
    """For each (concept, class inputs, class index): the TCAV result at PLANTED_LAYER, one export per model."""
    session = session_of(model, DEMO["shape"], [PLANTED_LAYER])
    randoms = [layer_activations(session, x, PLANTED_LAYER) for x in data["randoms"]]
    return [
        tcav_scores(
            layer_activations(session, data[concept], PLANTED_LAYER),
            randoms,
            class_logit_gradients(model, PLANTED_LAYER, data[class_inputs], class_index),
            seed=0,
            alpha=0.05,
            comparisons=COMPARISONS,
        )
        for concept, class_inputs, class_index in concepts_and_classes
    ]


@pytest.mark.slow
def test_the_shortcut_models_corner_patch_is_significant_and_the_honest_models_is_not(trained, planted_data):
    """Figures (20 random sets): shortcut score 1.000 (null 0.569 +- 0.405, CAV accuracy 1.00), p 4.1e-05; honest
    0.341 +- 0.250 (null 0.509 +- 0.308, CAV accuracy 0.58), p 0.071; the honest triangle 1.000, p 9.5e-12."""
    (shortcut,) = planted_tcav(demo_model(trained["shortcut"].weights_path), planted_data, [("patch", "circles", 0)])
    assert shortcut.significant and shortcut.score_mean >= 0.95, shortcut
    assert shortcut.accuracies.min() >= 0.9, shortcut  # the layer tells the patch apart
    honest, triangles = planted_tcav(
        demo_model(trained["honest"].weights_path),
        planted_data,
        [("patch", "circles", 0), ("triangles", "triangles_to_score", 2)],
    )
    assert not honest.significant, honest
    assert triangles.significant and triangles.score_mean >= 0.9, triangles  # what the honest model did learn


def test_a_token_layers_gradients_lie_as_its_exported_activations():
    """At a transformer block the gradient is laid out as the ONNX bundle lays out the block's tokens (the grid's
    map): a direction in the activations' layout, put back onto the tokens through the exported activations'
    layout, moves the class logit (central differences in float64) as fast as the gradient says. blocks.0, whose
    patch tokens reach the class token through blocks.1's attention (blocks.1's do not reach the logits)."""
    layer, grid = "blocks.0", TokenGrid(12, 12, skip=1)
    model = planted_vit().eval()
    session = onnx_bundle.make_session(
        onnx_bundle.export_torch(model, (3, IMAGE, IMAGE), [layer], {layer: grid}), "cpu"
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, IMAGE, IMAGE)).astype(np.float32)
    activations = layer_activations(session, x, layer)
    gradients = class_logit_gradients(model, layer, x, 1, grid=grid)
    assert gradients.shape == activations.shape == (4, 8 * 12 * 12)

    def as_tokens(rows: np.ndarray) -> torch.Tensor:
        """(N, dim x rows x cols), the exported layout, -> the block's patch tokens (N, rows x cols, dim)."""
        return torch.from_numpy(rows.reshape(len(rows), 8, 12 * 12).transpose(0, 2, 1).astype(np.float64))

    reference = model.double()
    with LayerCapture(reference, [layer]) as capture, torch.no_grad():
        reference(torch.from_numpy(x).double())
    # the layout is the ONNX graph's: its activations, put back, are torch's patch tokens
    np.testing.assert_allclose(as_tokens(activations), capture.outputs[layer][:, 1:], atol=1e-5)

    direction = rng.standard_normal(gradients.shape[1])
    eps = 1e-4

    def logit(shift: float) -> np.ndarray:
        def moved(module, inputs, output):
            return torch.cat([output[:, :1], output[:, 1:] + shift * as_tokens(direction[None])], 1)

        handle = reference.get_submodule(layer).register_forward_hook(moved)
        try:
            with torch.no_grad():
                return reference(torch.from_numpy(x).double())[:, 1].numpy()
        finally:
            handle.remove()

    expected = (logit(eps) - logit(-eps)) / (2 * eps)
    assert np.abs(expected).min() > 1e-3  # the patch tokens do move the logit
    np.testing.assert_allclose(gradients @ direction, expected, rtol=1e-4)


# --- the CAV fit ----------------------------------------------------------------------------------------------


def liblinear_cav(concept: np.ndarray, random: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """The reference: scikit-learn's liblinear (L2 logistic, C = 1, its intercept a regularised feature of 1s) on the
    same training rows, scaled by their mean norm as train_cav scales them, run to tol 1e-12; its unit normal and
    its accuracy on the held-out rows."""
    from sklearn.linear_model import LogisticRegression

    from interp_ops.tcav import _held_out_split

    x = np.concatenate([concept, random]).astype(np.float64)
    y = np.r_[np.ones(len(concept)), np.zeros(len(random))]
    train, held_out = _held_out_split(len(concept), len(random), seed)
    scale = np.linalg.norm(x[train], axis=1).mean()
    fit = LogisticRegression(C=1.0, solver="liblinear", tol=1e-12, max_iter=100_000).fit(x[train] / scale, y[train])
    return fit.coef_[0] / np.linalg.norm(fit.coef_[0]), fit.score(x[held_out] / scale, y[held_out])


def test_a_cav_is_liblinears_l2_logistic_fit_also_when_rows_repeat(gray_activations):
    """train_cav solves the L2 logistic problem on the training rows' Gram matrix, factored with pivots; rows that
    repeat others (the same image twice, a concept example also drawn into a random set) make that matrix
    singular, and the factor must stop at its rank rather than fail or blow up."""
    concept, random = gray_activations["concept"], gray_activations["randoms"][0]
    repeating = concept.copy()
    repeating[1::2] = concept[0]  # half the concept's rows are one row
    overlapping = np.concatenate([random[:6], concept[:6]])  # the random set holds concept examples
    for concept_rows, random_rows in ((concept, random), (repeating, random), (concept, overlapping)):
        cav = train_cav(concept_rows, random_rows, 3)
        direction, accuracy = liblinear_cav(concept_rows, random_rows, 3)
        assert cav.direction.dtype == np.float32 and np.linalg.norm(cav.direction) == pytest.approx(1.0, abs=1e-6)
        assert float(cav.direction @ direction) > 1 - 1e-6
        assert cav.accuracy == pytest.approx(accuracy)


def test_a_layers_cavs_trained_together_are_each_pair_trained_alone(gray_activations):
    """train_cavs shares each set's Gram blocks between its pairs and solves the pairs in one batch: the same CAVs
    as one pair at a time, in the order of the pairs, for sets of different sizes too."""
    from interp_ops.tcav import train_cavs

    randoms = gray_activations["randoms"]
    sets = [gray_activations["concept"], *randoms, randoms[0][:7]]
    pairs = [(0, 1), (0, 2), (1, 2), (2, 3), (3, 1), (0, 4), (4, 2), (0, 3)]
    together = train_cavs(sets, pairs, 7)
    for (concept, random), cav in zip(pairs, together):
        alone = train_cav(sets[concept], sets[random], 7)
        np.testing.assert_allclose(cav.direction, alone.direction, atol=1e-6)
        assert cav.accuracy == alone.accuracy


# --- determinism, the model left as it was, bad input ------------------------------------------------------------


@pytest.fixture(scope="module")
def gray_activations():
    from user_models import gray_net

    model = gray_net().eval()
    layer = "body.conv1"
    session = session_of(model, GRAY_INPUT["shape"], [layer])
    concept = layer_activations(session, scenes_of_class(2, 12, seed=11, patch=False, **GRAY_INPUT), layer)
    randoms = [layer_activations(session, scenes(12, seed=20 + i, **GRAY_INPUT), layer) for i in range(3)]
    gradients = class_logit_gradients(model, layer, scenes(8, seed=30, **GRAY_INPUT), 3)
    return dict(model=model, session=session, concept=concept, randoms=randoms, gradients=gradients)


def test_the_same_seed_gives_the_same_result(gray_activations):
    first, second = (
        tcav_scores(*(gray_activations[key] for key in ("concept", "randoms", "gradients")), seed=5) for _ in range(2)
    )
    for field in ("scores", "accuracies", "random_scores", "random_accuracies"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))
    assert first.p_value == second.p_value or np.isnan(first.p_value) and np.isnan(second.p_value)
    null, cavs = layer_cavs({"concept": gray_activations["concept"]}, gray_activations["randoms"], 5)
    pieces = tcav_test(cavs, null, gray_activations["gradients"])["concept"]  # trained once, tested per class
    np.testing.assert_array_equal(pieces.scores, first.scores)
    np.testing.assert_array_equal(pieces.random_scores, first.random_scores)
    cav = train_cav(gray_activations["concept"], gray_activations["randoms"][0], 5)
    np.testing.assert_array_equal(
        cav.direction, train_cav(gray_activations["concept"], gray_activations["randoms"][0], 5).direction
    )
    assert np.linalg.norm(cav.direction) == pytest.approx(1.0)


def test_a_concepts_result_does_not_depend_on_the_concepts_beside_it(gray_activations):
    """The audit's tasks fan out per layer and batch of concepts (ops.tcav.concepts_per_task): each task trains the
    null again and its concepts' CAVs in one batch, so a concept's result must be bit-identical whichever concepts
    share its task."""
    model, session, layer = gray_activations["model"], gray_activations["session"], "body.conv1"
    concepts = {
        "triangles": scenes_of_class(2, 12, seed=11, patch=False, **GRAY_INPUT),
        "circles": scenes_of_class(0, 12, seed=12, patch=False, **GRAY_INPUT),
    }
    pool = np.concatenate([scenes(12, seed=20 + i, **GRAY_INPUT) for i in range(3)])
    random_sets = [np.arange(i * 12, (i + 1) * 12) for i in range(3)]
    classes = {3: scenes(8, seed=30, **GRAY_INPUT), 5: scenes(8, seed=31, **GRAY_INPUT)}
    together = layer_tcav(session, model, layer, concepts, pool, random_sets, classes, seed=5)
    for name, x in concepts.items():
        alone = layer_tcav(session, model, layer, {name: x}, pool, random_sets, classes, seed=5)
        for class_index in classes:
            for field in ("scores", "accuracies", "random_scores", "random_accuracies"):
                np.testing.assert_array_equal(
                    getattr(together[name, class_index], field), getattr(alone[name, class_index], field)
                )


def test_directional_derivatives_are_the_heads_row_along_the_direction_and_leave_the_model_as_it_was():
    """Past body.act2 gray_net is flatten and a linear head: the derivative of logit k along d is head.weight[k] . d.
    A model in training mode with batch norm keeps its mode, running statistics, gradients and hooks."""
    from user_models import gray_net

    model = gray_net().eval()
    direction = np.random.default_rng(0).standard_normal(6 * 11 * 11)
    x = scenes(5, seed=30, **GRAY_INPUT)
    derivatives = directional_derivatives(model, "body.act2", x, 4, direction)
    expected = model.head.weight[4].detach().double().numpy() @ direction
    np.testing.assert_allclose(derivatives, np.full(5, expected), rtol=1e-5)
    model.requires_grad_(False)  # a frozen model, called under no_grad: the same derivatives
    with torch.no_grad():
        np.testing.assert_array_equal(directional_derivatives(model, "body.act2", x, 4, direction), derivatives)

    demo = shapes_cnn().train()
    before = {name: tensor.clone() for name, tensor in demo.state_dict().items()}
    class_logit_gradients(demo, "features.8", scenes(4, seed=30, **DEMO), 1, batch_size=3)
    assert all(module.training for module in demo.modules())
    assert all(torch.equal(before[name], tensor) for name, tensor in demo.state_dict().items())
    assert all(parameter.grad is None for parameter in demo.parameters())
    assert not any(module._forward_hooks for module in demo.modules())


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(randoms=1), "at least 2 random sets, got 1"),
        (dict(alpha=0.0), r"alpha must lie in \(0, 1\), got 0.0"),
        (dict(alpha=1.5), r"alpha must lie in \(0, 1\), got 1.5"),
        (dict(comparisons=0), "comparisons .* must be at least 1, got 0"),
        (dict(examples=13), "the concept has 12 examples but 13 were asked for"),
        (dict(concept_width=5), r"one layer's width D; got widths \[5, 2704, 2704, 2704, 2704\]"),
    ],
)
def test_bad_input_is_refused_with_a_message(gray_activations, change, message):
    concept = gray_activations["concept"]
    if "concept_width" in change:
        concept = concept[:, : change.pop("concept_width")]
    randoms = gray_activations["randoms"][: change.pop("randoms", 3)]
    with pytest.raises(TcavError, match=message):
        tcav_scores(concept, randoms, gray_activations["gradients"], seed=0, **change)


def test_a_layer_missing_from_the_graph_or_the_model_is_refused(gray_activations):
    x = scenes(2, seed=30, **GRAY_INPUT)
    with pytest.raises(
        TcavError, match=r"layer 'body.act1' is not an output of the ONNX graph \(its layers: \['body.conv1'\]\)"
    ):
        layer_activations(gray_activations["session"], x, "body.act1")
    with pytest.raises(TcavError, match="the model has no module 'body.conv9'"):
        class_logit_gradients(gray_activations["model"], "body.conv9", x, 0)
    with pytest.raises(TcavError, match="at least 3 examples on each side, got 2 concept and 12 random"):
        train_cav(gray_activations["concept"][:2], gray_activations["randoms"][0], 0)
