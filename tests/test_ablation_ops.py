"""Unit ablation on the audited ONNX graph cut at a layer (issue 20, the ops; not yet an audit method): ground truth
from a planted unit, and equality with the plain way (a torch hook zeroing the units in a full forward pass)."""

import numpy as np
import pytest
import torch
from torch import nn

from interp_ops import onnx_bundle
from interp_ops.ablation import AblationError, ClassTally, UnitAblation, computed_activations, graph_after
from interp_ops.demo_models import shapes_cnn


class PlantedUnits(nn.Module):
    """Four units of a 1x1 conv: red, green, blue, red + green. Class 1 is read from the blue unit alone."""

    def __init__(self):
        super().__init__()
        self.units = nn.Conv2d(3, 4, 1, bias=False)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.units.weight.copy_(torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]).float()[..., None, None])
            self.head.weight.copy_(torch.tensor([[0, 0, 0, 0], [0, 0, 10, 0]]).float())
            self.head.bias.copy_(torch.tensor([0, -5]).float())

    def forward(self, x):
        return self.head(self.units(x).mean(dim=(2, 3)))


def ablation_of(model, x, labels, layer, num_classes) -> UnitAblation:
    onnx_bytes = onnx_bundle.export_torch(model.eval(), tuple(x.shape[1:]), [layer])
    activations = onnx_bundle.run_session(onnx_bundle.make_session(onnx_bytes, "cpu"), x, outputs=[layer])[layer]
    tail = onnx_bundle.make_session(graph_after(onnx_bytes, layer), "cpu")
    return UnitAblation(tail, activations, labels, num_classes)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    blue = rng.random(400).astype(np.float32)
    x = rng.random((400, 3, 6, 6), dtype=np.float32)
    x[:, 2] = blue[:, None, None]
    labels = (blue > 0.5).astype(np.int64)
    return ablation_of(PlantedUnits(), x, labels, "units", 2)


def test_the_planted_unit_is_ranked_first_and_removing_it_takes_its_class_to_chance(planted):
    intact = planted.scores([])
    assert intact.accuracy.tolist() == [1.0, 1.0]
    accuracy_drops, probability_drops = planted.single_unit_drops()
    assert probability_drops[1].argmax() == 2 and accuracy_drops[1].tolist() == [0, 0, 0.5, 0]  # blue carries 1
    without_blue = planted.scores([2])
    assert without_blue.accuracy.tolist() == [0.5, 0.5]  # every sample called class 0: recall 0 for class 1
    assert without_blue.probability[1] < 0.01 < intact.probability[1]
    for unit in (0, 1, 3):  # units the decision never reads change nothing
        np.testing.assert_array_equal(planted.scores([unit]).accuracy, intact.accuracy)


def test_the_cut_graph_equals_a_full_forward_with_the_units_zeroed_by_a_hook():
    """The reference: the plain way, one full torch forward per ablated set, a hook zeroing the units."""
    torch.manual_seed(3)
    model = shapes_cnn().eval()
    x = np.random.default_rng(1).random((16, 3, 64, 64), dtype=np.float32)
    ablation = ablation_of(model, x, np.zeros(16, dtype=np.int64), "features.8", 3)
    removed = [0, 5, 17, 31]

    def zero(module, inputs, output):
        output = output.clone()
        output[:, removed] = 0
        return output

    handle = model.features[8].register_forward_hook(zero)
    try:
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
    finally:
        handle.remove()
    np.testing.assert_allclose(ablation.logits(removed), want, rtol=1e-4, atol=1e-4)
    assert np.abs(ablation.logits([]) - want).max() > 1e-3  # zeroing them changed the logits


class SkipAround(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Conv2d(3, 3, 1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head((self.inner(x) + x).mean(dim=(2, 3)))


def test_a_layer_with_a_skip_connection_around_it_or_units_out_of_range_are_refused(planted):
    onnx_bytes = onnx_bundle.export_torch(SkipAround().eval(), (3, 4, 4), ["inner"])
    with pytest.raises(AblationError, match=r"layer 'inner' does not separate the graph: the logits also read input"):
        graph_after(onnx_bytes, "inner")
    with pytest.raises(AblationError, match=r"layer 'head' is not an output of the audited graph"):
        graph_after(onnx_bytes, "head")
    with pytest.raises(AblationError, match=r"units \[4\] are outside the layer's 4 units \(0..3\)"):
        planted.scores([4])


def test_balanced_accuracy_is_the_mean_of_recall_and_true_negative_rate_whatever_the_batches():
    labels = np.array([0, 0, 0, 1, 1])
    logits = np.eye(3)[[0, 1, 1, 1, 1]] * 5  # predicted 0, 1, 1, 1, 1; class 2 never seen nor predicted
    whole, split = ClassTally(3), ClassTally(3)
    whole.add(logits, labels)
    split.add(logits[:2], labels[:2])
    split.add(logits[2:], labels[2:])
    for tally in (whole, split):
        scores = tally.scores()
        assert scores.accuracy[1] == pytest.approx((1.0 + 1 / 3) / 2)
        assert scores.accuracy[0] == pytest.approx((1 / 3 + 1.0) / 2)
        assert scores.accuracy[2] == pytest.approx(1.0)  # no sample of it: its true-negative rate alone
        assert scores.probability[1] == pytest.approx(np.exp(5) / (np.exp(5) + 2))  # both its samples predicted 1
        assert np.isnan(scores.probability[2])
    np.testing.assert_array_equal(whole.scores().accuracy, split.scores().accuracy)


def test_streamed_activations_give_the_stored_ones_answer_with_a_batch_in_memory(tmp_path):
    """The task's way (activations computed a batch at a time from the data) equals the stored activations' answer,
    on a gray user model with other layer names."""
    from user_models import gray_net

    model = gray_net().eval()
    x = np.random.default_rng(1).random((90, 1, 28, 28), dtype=np.float32)
    labels = np.random.default_rng(2).integers(0, 10, 90)
    onnx_bytes = onnx_bundle.export_torch(model, (1, 28, 28), ["body.act2"])
    head, tail = (
        onnx_bundle.make_session(onnx_bytes, "cpu"),
        onnx_bundle.make_session(graph_after(onnx_bytes, "body.act2"), "cpu"),
    )
    stored = onnx_bundle.run_session(head, x, outputs=["body.act2"])["body.act2"]
    streamed = computed_activations(head, x, "body.act2", batch_size=16)
    a = UnitAblation(tail, stored, labels, 10).effects([1, 2], 5, seed=0)
    b = UnitAblation(tail, streamed, labels, 10, batch_size=16).effects([1, 2], 5, seed=0)
    for left, right in zip(a.rows, b.rows, strict=True):
        assert {k: v for k, v in left.items() if "drop" not in k and "accuracy" not in k} == {
            k: v for k, v in right.items() if "drop" not in k and "accuracy" not in k
        }
        for key in ("accuracy_before", "accuracy_after", "accuracy_drop", "probability_drop", "random_drop_mean"):
            assert left[key] == pytest.approx(right[key], abs=1e-6)
    assert [u["unit"] for u in a.units] == [u["unit"] for u in b.units]


def test_effects_rank_on_one_half_measure_on_the_other_and_beat_random_sets_of_the_same_size(planted):
    effects = planted.effects(sizes=[1, 2], random_draws=20, seed=0, class_names=["dim", "blue"])
    blue = {row["k"]: row for row in effects.rows if row["class_name"] == "blue"}
    assert blue[1]["units"] == [2] and 2 in blue[2]["units"]
    assert blue[1]["accuracy_drop"] == pytest.approx(0.5)  # the other half: nothing of class 1 is recognised
    assert blue[1]["random_drop_mean"] < blue[1]["accuracy_drop"] - 0.2  # a random unit is the blue one 1 time in 4
    assert 0 < blue[1]["random_drop_std"]
    assert effects == planted.effects(sizes=[1, 2], random_draws=20, seed=0, class_names=["dim", "blue"])  # seeded
    by_unit = {row["unit"]: row for row in effects.units}
    assert sorted(by_unit) == [0, 1, 2, 3]
    assert by_unit[2]["class_name"] == "blue" and by_unit[2]["accuracy_drop"] == pytest.approx(0.5)
    assert by_unit[0]["class_name"] is None and by_unit[0]["probability_drop"] == 0  # the decision never reads it
    with pytest.raises(AblationError, match=r"sizes \[5\] must be between 1 and the 4 units ranked"):
        planted.effects(sizes=[5], random_draws=1, seed=0)


def test_only_the_candidate_units_are_ranked_and_random_sets_come_from_the_whole_layer(planted):
    """Ranking dissection's detectors only: a pool without the blue unit cannot find it, however large its effect;
    the random sets, drawn from the whole layer, still hit it sometimes."""
    effects = planted.effects(sizes=[1], random_draws=40, seed=0, class_names=["dim", "blue"], candidates=[0, 3])
    blue = next(row for row in effects.rows if row["class_name"] == "blue")
    assert blue["units"] in ([0], [3]) and blue["accuracy_drop"] == 0
    assert blue["random_drop_mean"] > 0
    assert sorted(row["unit"] for row in effects.units) == [0, 3]
    with pytest.raises(AblationError, match=r"sizes \[3\] must be between 1 and the 2 units ranked"):
        planted.effects(sizes=[3], random_draws=1, seed=0, candidates=[0, 3])
    with pytest.raises(AblationError, match=r"candidate units must lie in 0..3"):
        planted.effects(sizes=[1], random_draws=1, seed=0, candidates=[7])


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


class TwoResidualBlocks(nn.Module):
    """Skips inside each block, none across blocks: the output of block1 is all block2 and the head read."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block1, self.block2 = Residual(8), Residual(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.block2(self.block1(self.stem(x))).mean(dim=(2, 3)))


def test_a_residual_network_is_cut_between_its_blocks():
    torch.manual_seed(0)
    model = TwoResidualBlocks().eval()
    x = np.random.default_rng(2).random((8, 3, 16, 16), dtype=np.float32)
    ablation = ablation_of(model, x, np.zeros(8, dtype=np.int64), "block1", 3)
    handle = model.block1.register_forward_hook(lambda module, inputs, output: output * ZERO_0_AND_5)
    try:
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
    finally:
        handle.remove()
    np.testing.assert_allclose(ablation.logits([0, 5]), want, rtol=1e-4, atol=1e-5)


ZERO_0_AND_5 = torch.ones(1, 8, 1, 1).index_fill_(1, torch.tensor([0, 5]), 0.0)


def test_removing_the_honest_models_triangle_detectors_costs_triangle_more_than_any_random_set(trained, tmp_path):
    """Bau et al.'s check on the honest demo CNN: the units dissection names triangle detectors are the ones its
    triangle decision uses; the same number of random units (10 draws) never costs as much."""
    from pathlib import Path

    from safetensors.torch import load_file

    from interp_ops import datasets
    from interp_ops.concepts import load_concepts, write_builtin_concepts
    from interp_ops.demo_models import DEMO_INPUT
    from interp_ops.dissection import detectors, dissect

    model = shapes_cnn()
    model.load_state_dict(load_file(trained["honest"].weights_path))
    layer, shape = "features.12", tuple(DEMO_INPUT["shape"])
    onnx_bytes = onnx_bundle.export_torch(model.eval(), shape, [layer])
    session = onnx_bundle.make_session(onnx_bytes, "cpu")
    concepts = load_concepts(str(write_builtin_concepts(tmp_path / "concepts", 300, 64, 0))).head(150)
    result = dissect(session, concepts, [layer], input_shape=shape, mean=DEMO_INPUT["mean"], std=DEMO_INPUT["std"])
    units = detectors(result[layer], concepts)
    triangle_units = units[units.is_detector & (units.concept == "triangle")].unit.tolist()
    assert len(triangle_units) >= 8, units[units.is_detector].concept.value_counts()

    samples = datasets.load_samples("builtin:shapes?split=val&n=300", Path("."), 0)
    x = datasets.to_model_input(samples, shape, (0, 1), DEMO_INPUT["mean"], DEMO_INPUT["std"])
    activations = onnx_bundle.run_session(session, x, outputs=[layer])[layer]
    tail = onnx_bundle.make_session(graph_after(onnx_bytes, layer), "cpu")
    ablation = UnitAblation(tail, activations, samples.labels, num_classes=3)
    triangle = 2
    before = ablation.scores([]).accuracy[triangle]
    drop = before - ablation.scores(triangle_units).accuracy[triangle]
    rng = np.random.default_rng(0)
    random_sets = [rng.choice(ablation.num_units, len(triangle_units), replace=False) for _ in range(10)]
    random_drops = [before - ablation.scores(units).accuracy[triangle] for units in random_sets]
    assert before > 0.95 and drop > max(random_drops) and drop > 0.3, (before, drop, random_drops)


def test_stored_activations_are_left_as_they_were_and_read_only_ones_are_served(planted):
    stored = np.concatenate(list(planted.activations(planted.selected)))
    before = stored.copy()
    ablation = UnitAblation(planted.session, stored, planted.labels, 2, batch_size=64)
    assert ablation.scores([2]).accuracy.tolist() == [0.5, 0.5]
    np.testing.assert_array_equal(stored, before)
    stored.setflags(write=False)  # a memory map opened read-only, say
    assert ablation.scores([2]).accuracy.tolist() == [0.5, 0.5]


def test_top_k_keeps_the_units_of_largest_effect_on_any_class(planted):
    effects = planted.effects(sizes=[1], random_draws=0, seed=0, class_names=["dim", "blue"], top=1)
    assert [unit["unit"] for unit in effects.units] == [2]  # the blue unit, found on the ranking half
    assert {row["class_name"]: row["units"] for row in effects.rows} == {"dim": [2], "blue": [2]}
    with pytest.raises(AblationError, match="sizes \\[2\\] must be between 1 and the 1 units"):
        planted.effects(sizes=[2], random_draws=0, seed=0, top=1)
    with pytest.raises(AblationError, match="top=9 must be between 1 and the 4 units"):
        planted.effects(sizes=[1], random_draws=0, seed=0, top=9)
