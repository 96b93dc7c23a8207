"""Network dissection speed: interp_ops.dissection.dissect against NetDissect-Lite's procedure and the forward pass.

One process, one ONNX model per case, the same layers and the same builtin concept set for every contender:
  (a) NetDissect-Lite's feature_operation.py at commit 0896577 (2018-01-17), transcribed: the last revision whose
      threshold is np.percentile, the exact quantile that dissect() computes (later revisions, to the repository's
      last, use vecquantile.QuantileVector, a randomized approximation). One forward pass storing every feature
      map (float64, as Lite's arrays), np.percentile per unit, then per layer a pass over the data with a Python
      loop over images and units: skip maps whose max is not above the threshold, resize the others with PIL's
      bilinear filter (Lite's scipy imresize(mode='F')), np.argwhere, np.bincount of the labels under them
  (a') the dense procedure: every map upsampled, every concept tallied densely (one boolean AND per unit and
      label); run on a subset of images and extrapolated linearly where the whole set would take over 5 minutes
  (b) ours: dissect() end to end, data reading included
  (c) the floor: the bare ONNX Runtime forward pass over the same images (prepared in memory), same batch size;
      beside it, the data floor: reading and decoding every image and mask once
Cases: the demo CNN (seeded random weights) on 1000 concept images at 64x64, features.8 and features.12; a
ResNet-18-shaped network (random init, defined here: no torchvision) at 112x112 on 500 concept images, layer3
and layer4. Other processes share the cores, so every contender runs in several rounds (rotating order) and its
fastest round counts. Peak RSS is sampled from /proc during each contender's fastest round.
Run: .venv/bin/python benchmarks/dissection_bench.py [--quick]  (writes benchmarks/results/dissection.json)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from _results import write_results
from PIL import Image
from torch import nn

from interp_ops.concepts import ConceptSet, builtin_concepts_dir, load_concepts
from interp_ops.datasets import Samples, to_model_input
from interp_ops.demo_models import DEMO_INPUT, shapes_cnn
from interp_ops.dissection import dissect
from interp_ops.onnx_bundle import export_torch, make_session

QUANTILE = 0.005
BATCH_SIZE = 64
DENSE_BUDGET_S = 300.0
IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


# --- the ResNet-18-shaped network ---------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + identity)


class ResNet18(nn.Module):
    """torchvision's resnet18 layout: stem, four stages of two basic blocks, average pool, linear."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, channels = [], 64
        for width, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            stages.append(nn.Sequential(BasicBlock(channels, width, stride), BasicBlock(width, width, 1)))
            channels = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


# --- measuring ----------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Samples this process's resident set every 5 ms while the block runs."""

    def __enter__(self):
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def measured(run) -> tuple[float, int, int, object]:
    """(seconds, peak RSS, RSS at the start, result)."""
    with PeakRSS() as rss:
        start = time.perf_counter()
        value = run()
        seconds = time.perf_counter() - start
    return seconds, rss.peak, rss.start, value


# --- the contenders -----------------------------------------------------------------------------


def model_inputs(concepts: ConceptSet, input_shape, mean, std) -> list[np.ndarray]:
    batches = []
    for batch in concepts.batches(BATCH_SIZE, masks=False):
        samples = Samples(
            ids=[str(i) for i in batch.indices], x=batch.images, labels=None, masks=None, class_names=None
        )
        batches.append(to_model_input(samples, input_shape, (0.0, 1.0), mean, std))
    return batches


def forward_floor(session, layers: list[str], inputs: list[np.ndarray]) -> None:
    name = session.get_inputs()[0].name
    for x in inputs:
        session.run(layers, {name: x})


def _extract(session, concepts, layers, input_shape, mean, std) -> dict[str, np.ndarray]:
    """Lite's feature_extraction: every feature map of every image, float64 (np.zeros(...) in Lite)."""
    name = session.get_inputs()[0].name
    features = {layer: None for layer in layers}
    for batch in concepts.batches(BATCH_SIZE, masks=False):
        samples = Samples(
            ids=[str(i) for i in batch.indices], x=batch.images, labels=None, masks=None, class_names=None
        )
        outputs = session.run(layers, {name: to_model_input(samples, input_shape, (0.0, 1.0), mean, std)})
        for layer, output in zip(layers, outputs):
            if features[layer] is None:
                features[layer] = np.zeros((len(concepts), *output.shape[1:]))
            features[layer][batch.indices] = output
    return features


def _labelcat(concepts: ConceptSet) -> tuple[np.ndarray, list[str]]:
    categories = list(concepts.categories)
    labelcat = np.zeros((max(concepts.labels) + 1, len(categories)))
    for label, category in concepts.label_category.items():
        labelcat[label, categories.index(category)] = 1
    return labelcat, categories


def _image_records(concepts: ConceptSet, start: int = 0, stop: int | None = None):
    """What Lite's SegmentationPrefetcher yields per image: the index, sh/sw and per category the labels."""
    for batch in concepts.batches(BATCH_SIZE, images=False):
        for b, index in enumerate(batch.indices):
            if index < start or (stop is not None and index >= stop):
                continue
            pixels = [batch.pixel_labels[c][b] for c in concepts.pixel_categories()]
            scalars = [label for c in concepts.image_categories() for label in batch.image_labels[c][b]]
            yield int(index), pixels, scalars


def netdissect_lite(session, concepts, layers, input_shape, mean, std) -> tuple[dict[str, np.ndarray], dict]:
    """Lite's feature_extraction, quantile_threshold (np.percentile) and tally (tally_job) per layer, as at 0896577.
    Returns the IoU per layer (columns in label id order) and the seconds spent in each stage."""
    stages = {"extract": 0.0, "quantile": 0.0, "tally": 0.0}
    started = time.perf_counter()
    features = _extract(session, concepts, layers, input_shape, mean, std)
    stages["extract"] = time.perf_counter() - started
    labelcat, categories = _labelcat(concepts)
    sh, sw = concepts.mask_size
    results = {}
    for layer in layers:
        feature = features[layer]
        started = time.perf_counter()
        threshold = np.percentile(feature, 100 * (1 - QUANTILE), axis=[0, 2, 3])
        stages["quantile"] += time.perf_counter() - started
        started = time.perf_counter()
        units, labels = feature.shape[1], len(labelcat)
        tally_both = np.zeros((units, labels), dtype=np.float64)
        tally_units_cat = np.zeros((units, len(categories)), dtype=np.float64)
        tally_labels = np.zeros(labels, dtype=np.float64)
        for img_index, pixel_groups, scalars in _image_records(concepts):
            pixels = np.concatenate(pixel_groups) if pixel_groups else []
            for scalar in scalars:
                tally_labels[scalar] += sh * sw
            if len(pixels):
                tally_label = np.bincount(pixels.ravel())
                if len(tally_label) > 0:
                    tally_label[0] = 0
                tally_labels[: len(tally_label)] += tally_label
            for unit_id in range(units):
                feature_map = feature[img_index][unit_id]
                if feature_map.max() > threshold[unit_id]:
                    image = Image.fromarray(feature_map.astype(np.float32), mode="F")  # imresize(mode='F')
                    mask = np.asarray(image.resize((sw, sh), Image.BILINEAR))
                    indexes = np.argwhere(mask > threshold[unit_id])
                    tally_cat = np.zeros(len(categories))
                    if len(pixels) > 0:
                        tally_bt = np.bincount(pixels[:, indexes[:, 0], indexes[:, 1]].ravel())
                        if len(tally_bt) > 0:
                            tally_bt[0] = 0
                        tally_cat = np.dot(tally_bt[None, :], labelcat[: len(tally_bt), :])[0]
                        tally_both[unit_id, : len(tally_bt)] += tally_bt
                    for scalar in scalars:
                        tally_cat += labelcat[scalar]
                        tally_both[unit_id, scalar] += len(indexes)
                    tally_units_cat[unit_id] += len(indexes) * (tally_cat > 0)
        tally_units_cat = np.dot(tally_units_cat, labelcat.T)
        iou = tally_both / (tally_units_cat + tally_labels[np.newaxis, :] - tally_both + 1e-10)
        results[layer] = iou[:, sorted(concepts.labels)]
        stages["tally"] += time.perf_counter() - started
    return results, stages


def ours(session, concepts, layers, input_shape, mean, std) -> tuple[dict, dict]:
    """dissect() end to end; the progress callback splits pass 1 (read images, forward, top-k, keep maps) from
    pass 2 (read masks, tally)."""
    stamps = []
    started = time.perf_counter()
    results = dissect(
        session,
        concepts,
        layers,
        input_shape=input_shape,
        mean=mean,
        std=std,
        quantile=QUANTILE,
        batch_size=BATCH_SIZE,
        progress=lambda done, total: stamps.append(time.perf_counter()),
    )
    pass_one = stamps[len(stamps) // 2 - 1] - started
    return results, {"pass1": pass_one, "pass2": stamps[-1] - started - pass_one}


def read_data(concepts) -> None:
    """Reading and decoding every image and mask once: a floor that the forward floor does not include."""
    for _ in concepts.batches(BATCH_SIZE):
        pass


def dense_procedure(session, concepts, layers, input_shape, mean, std, images: int) -> None:
    """Every map upsampled, every concept tallied densely (per unit and label), on the first `images` images.
    The same forward pass and quantiles as Lite; only the tally differs."""
    subset = concepts.head(images)
    features = _extract(session, subset, layers, input_shape, mean, std)
    label_ids = sorted(concepts.labels)
    categories = list(concepts.categories)
    for layer in layers:
        feature = features[layer]
        units = feature.shape[1]
        threshold = np.percentile(feature, 100 * (1 - QUANTILE), axis=[0, 2, 3])
        intersection = np.zeros((units, len(label_ids)))
        activation = np.zeros((units, len(categories)))
        for img_index, pixel_groups, scalars in _image_records(subset):
            up = torch.nn.functional.interpolate(
                torch.from_numpy(feature[img_index].astype(np.float32))[None],
                size=concepts.mask_size,
                mode="bilinear",
                align_corners=False,
            )
            active = up[0].numpy() > threshold[:, None, None]  # (U, sh, sw)
            pixels = np.concatenate(pixel_groups) if pixel_groups else np.zeros((0, *concepts.mask_size), int)
            for column, label in enumerate(label_ids):
                concept = (pixels == label).any(axis=0) | (label in scalars)
                intersection[:, column] += (active & concept).sum(axis=(1, 2))
            for k, category in enumerate(categories):
                in_category = [label for label in label_ids if concepts.label_category[label] == category]
                carried = np.isin(pixels, in_category).any(axis=0) | any(s in in_category for s in scalars)
                activation[:, k] += (active & carried).any(axis=(1, 2)) * active.sum(axis=(1, 2))


# --- one case -----------------------------------------------------------------------------------


def dense_seconds_for_all(session, concepts, layers, input_shape, mean, std) -> tuple[float, int, float]:
    """Time the dense procedure on all images, or, where that would take over DENSE_BUDGET_S, on the first images
    (about a minute's worth) and extrapolate linearly. Returns (seconds for all, images run, seconds run)."""
    probe = min(len(concepts), 10)
    probe_seconds = measured(lambda: dense_procedure(session, concepts, layers, input_shape, mean, std, probe))[0]
    if probe == len(concepts):
        return probe_seconds, probe, probe_seconds
    per_image = probe_seconds / probe
    images = len(concepts) if per_image * len(concepts) <= DENSE_BUDGET_S else max(probe, int(60 / per_image))
    images = min(images, len(concepts))
    seconds = measured(lambda: dense_procedure(session, concepts, layers, input_shape, mean, std, images))[0]
    return seconds * len(concepts) / images, images, seconds


def bench_case(
    name: str, model: nn.Module, input_shape, layers, concepts: ConceptSet, mean, std, rounds: int, lite_rounds: int
) -> dict:
    model = model.eval()
    started = time.perf_counter()
    session = make_session(export_torch(model, input_shape, layers), "cpu")
    export_seconds = time.perf_counter() - started
    inputs = model_inputs(concepts, input_shape, mean, std)
    forward_floor(session, layers, inputs[:1])  # warm-up: ONNX Runtime plans its first batch shapes lazily
    contenders = {
        "forward_floor": lambda: forward_floor(session, layers, inputs),
        "ours": lambda: ours(session, concepts, layers, input_shape, mean, std),
        "netdissect_lite": lambda: netdissect_lite(session, concepts, layers, input_shape, mean, std),
        "read_data": lambda: read_data(concepts),
    }
    rounds_of = {"forward_floor": rounds, "ours": rounds, "netdissect_lite": lite_rounds, "read_data": rounds}
    runs: dict[str, list[tuple[float, int, int, object]]] = {key: [] for key in contenders}
    for round_index in range(max(rounds_of.values())):
        order = list(contenders)[round_index % 4 :] + list(contenders)[: round_index % 4]
        for key in order:
            if len(runs[key]) < rounds_of[key]:
                runs[key].append(measured(contenders[key]))
                print(f"  {name} {key}: {runs[key][-1][0]:.2f} s", flush=True)
    best = {key: min(values, key=lambda run: run[0]) for key, values in runs.items()}
    seconds = {key: run[0] for key, run in best.items()}

    dense_full, dense_images, dense_seconds = dense_seconds_for_all(session, concepts, layers, input_shape, mean, std)
    print(f"  {name} dense procedure: {dense_seconds:.2f} s on {dense_images} images", flush=True)

    (our_results, our_stages), (lite_results, lite_stages) = best["ours"][3], best["netdissect_lite"][3]
    agreement = max(float(np.abs(our_results[layer].iou - lite_results[layer]).max()) for layer in layers)
    units = {layer: int(our_results[layer].thresholds.shape[0]) for layer in layers}
    return {
        "model": name,
        "input_shape": list(input_shape),
        "layers": layers,
        "units": units,
        "images": len(concepts),
        "mask_size": list(concepts.mask_size),
        "labels": len(concepts.labels),
        "quantile": QUANTILE,
        "batch_size": BATCH_SIZE,
        "rounds": rounds_of,
        "export_seconds": round(export_seconds, 2),
        "seconds": {key: round(value, 3) for key, value in seconds.items()},
        "seconds_all_rounds": {key: [round(run[0], 3) for run in values] for key, values in runs.items()},
        "dense_procedure": {
            "images_run": dense_images,
            "seconds_on_subset": round(dense_seconds, 3),
            "seconds_extrapolated": round(dense_full, 1),
            "extrapolated": dense_images < len(concepts),
        },
        "stages_seconds": {
            "ours": {key: round(value, 3) for key, value in our_stages.items()},
            "netdissect_lite": {key: round(value, 3) for key, value in lite_stages.items()},
        },
        "speedup_vs_naive": round(seconds["netdissect_lite"] / seconds["ours"], 2),
        "tally_speedup_vs_naive": round(lite_stages["tally"] / our_stages["pass2"], 1),
        "overhead_vs_forward_and_data_floor": round(
            seconds["ours"] / (seconds["forward_floor"] + seconds["read_data"]), 3
        ),
        "speedup_vs_dense_procedure": round(dense_full / seconds["ours"], 1),
        "overhead_vs_forward_floor": round(seconds["ours"] / seconds["forward_floor"], 3),
        "naive_overhead_vs_forward_floor": round(seconds["netdissect_lite"] / seconds["forward_floor"], 3),
        "peak_rss_mb": {key: round(run[1] / 2**20, 1) for key, run in best.items()},
        "rss_growth_mb": {key: round((run[1] - run[2]) / 2**20, 1) for key, run in best.items()},
        "max_abs_iou_diff_vs_lite": agreement,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sets, one round; prints, writes nothing")
    parser.add_argument("--cache", type=Path, default=None, help="where builtin concept sets are cached")
    args = parser.parse_args()
    cache = args.cache or Path(tempfile.gettempdir()) / "interp-audit-bench-concepts"
    n_demo, n_resnet = (100, 40) if args.quick else (1000, 500)
    rounds, lite_rounds = (1, 1) if args.quick else (3, 2)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), ONNX Runtime on CPU",
        "torch_threads": torch.get_num_threads(),
        "cases": {},
    }
    cases = [  # key, title, model factory, input size, layers, concept images, normalisation
        ("demo_cnn", "demo CNN (shapes_cnn, seeded random weights)", shapes_cnn, 64, ["features.8", "features.12"],
         n_demo, DEMO_INPUT),
        ("resnet18", "ResNet-18-shaped (random init)", ResNet18, 112, ["layer3", "layer4"], n_resnet, IMAGENET),
    ]  # fmt: skip
    for key, title, factory, size, layers, n, normalisation in cases:
        torch.manual_seed(0)
        concepts = load_concepts(str(builtin_concepts_dir(f"builtin:concepts?n={n}&size={size}", 0, cache)))
        report["cases"][key] = bench_case(
            title,
            factory(),
            (3, size, size),
            layers,
            concepts,
            normalisation["mean"],
            normalisation["std"],
            rounds,
            lite_rounds,
        )
        print(json.dumps(report["cases"][key], indent=2), flush=True)
    write_results("dissection", report, args.quick)


if __name__ == "__main__":
    main()
