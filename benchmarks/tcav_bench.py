"""TCAV (interp_ops.tcav, issue 19) against Captum 0.9's ``captum.concept.TCAV`` and against its floor, in one process.

The work: the honest demo CNN at `features.8` and `features.12`; two concepts (triangle scenes, scenes with the
circle's corner patch) against 20 random sets of 50 scenes, plus the random-vs-random null; 3 classes of 50 inputs
each: the sizes an audit takes by default (ops.tcav); --quick: 10 sets of 20, 8 inputs per class. Every contender
computes every CAV once and scores every (concept, layer, class).

  ours         ``layer_tcav`` per layer, as the audit's task calls it: activations from the ONNX graph (exported
               beforehand: the audit has it), the null and each concept's CAVs once per layer, each class's logit
               gradients once per layer
  captum       ``TCAV.interpret`` per class with its default classifier (SGD); CAVs trained on the first class's call
               and read back from its save_path on the others, as Captum does
  captum_cavs  the same with our CAV classifier behind Captum's ``Classifier`` interface (tests/assets/tcav_reference.py)
  floor        the model work TCAV cannot avoid: per layer, the ONNX session's pass over the concept and random
               scenes for that layer's output, and per class one torch forward and backward from the class logit
               to the layer's output
  cav_fits     the part of ours the floor leaves out: the CAV fits on the layers' activations, computed beforehand
  tests        and the scoring and t-tests on the classes' gradients, computed beforehand

Prints ``speedup_vs_captum`` = captum / ours (target >= 3), ``speedup_vs_captum_same_cavs`` and
``overhead_vs_floor`` = ours / floor (target <= 1.5).

    .venv/bin/python benchmarks/tcav_bench.py           # writes results/tcav.json
    .venv/bin/python benchmarks/tcav_bench.py --quick   # smaller work; prints only
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "assets")]
LAYERS, CLASSES, ROUNDS = ["features.8", "features.12"], 3, 3
WORK = {"full": (20, 50, 50), "quick": (10, 20, 8)}  # random sets, examples, inputs per class


def main() -> None:
    from captum.concept import TCAV, Concept
    from captum.concept._utils.classifier import DefaultClassifier
    from safetensors.torch import load_file
    from tcav_reference import DEMO, CaptumCav, model_input, scenes, scenes_of_class, with_corner_patch

    from interp_ops import builtin_data, onnx_bundle
    from interp_ops.demo_models import ensure_demo_models, shapes_cnn
    from interp_ops.tcav import class_logit_gradients, layer_activations, layer_cavs, layer_tcav, tcav_test

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller work; writes no results file")
    parser.add_argument(
        "--resnet50", action="store_true", help="the seeded ResNet-50 (make examples) with the --quick work, no Captum"
    )
    args = parser.parse_args()
    random_set_count, examples, inputs_per_class = WORK["quick" if args.quick or args.resnet50 else "full"]

    if args.resnet50:
        from interp_ops.reference_models import resnet50

        model, layers = resnet50(), ["layer3", "layer4"]
        model.load_state_dict(load_file(ROOT / "demo-models/resnet50_seeded.safetensors"))
        settings = dict(shape=(3, 224, 224), value_range=(0, 1), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    else:
        model, layers, settings = shapes_cnn(), LAYERS, DEMO
        model.load_state_dict(load_file(ensure_demo_models(ROOT / "demo-models")["honest"].weights_path))
    model.eval()
    images = builtin_data.shapes("val", examples, seed=100)[0]
    concepts = {
        "triangle": scenes_of_class(2, examples, seed=400, patch=False, **settings),
        "patch": model_input(with_corner_patch(images, 0), **settings),
    }
    randoms = [scenes(examples, seed=200 + i, **settings) for i in range(random_set_count)]
    pool = np.concatenate(randoms)  # the audit's random sets are rows of one pool
    random_sets = [np.arange(i * examples, (i + 1) * examples) for i in range(random_set_count)]
    classes = {k: scenes_of_class(k, inputs_per_class, seed=300, patch=False, **settings) for k in range(CLASSES)}
    session = onnx_bundle.make_session(onnx_bundle.export_torch(model, settings["shape"], layers), "cpu")
    batch_size = 32  # layer_tcav's, for every contender of ours

    def ours() -> dict:
        scores = {}
        for layer in layers:
            results = layer_tcav(
                session, model, layer, concepts, pool, random_sets, classes, seed=0, batch_size=batch_size
            )
            scores |= {(name, layer, k): result.scores for (name, k), result in results.items()}
        return scores

    def floor() -> None:
        captured = []
        for layer in layers:
            for x in (pool, *concepts.values()):
                onnx_bundle.run_session(session, x, batch_size, outputs=[layer])
            hook = model.get_submodule(layer).register_forward_hook(
                lambda module, inputs, output: captured.append(output)
            )
            try:
                for k, x in classes.items():
                    captured.clear()
                    logits = model(torch.from_numpy(x))
                    torch.autograd.grad(logits[:, k].sum(), captured[0])
            finally:
                hook.remove()

    activations = {
        layer: {
            name: layer_activations(session, x, layer, batch_size) for name, x in (("pool", pool), *concepts.items())
        }
        for layer in layers
    }
    gradients = {(layer, k): class_logit_gradients(model, layer, x, k) for layer in layers for k, x in classes.items()}

    def cav_fits() -> dict:
        cavs = {}
        for layer in layers:
            randoms_at_layer = [activations[layer]["pool"][rows] for rows in random_sets]
            cavs[layer] = layer_cavs({name: activations[layer][name] for name in concepts}, randoms_at_layer, seed=0)
        return cavs

    cavs = cav_fits()

    def tests() -> None:
        for layer in layers:
            null, by_concept = cavs[layer]
            for k in classes:
                tcav_test(by_concept, null, gradients[layer, k])

    def captum(classifier) -> dict:
        sets = [(name, x) for name, x in concepts.items()] + [(f"random{i}", x) for i, x in enumerate(randoms)]
        made = [
            Concept(i, name, torch.utils.data.DataLoader(torch.from_numpy(x), batch_size=len(x)))
            for i, (name, x) in enumerate(sets)
        ]
        by_name, random_concepts = {c.name: c for c in made}, made[len(concepts) :]
        experiments = [[by_name[name], random] for name in concepts for random in random_concepts]
        experiments += [
            [random, random_concepts[(i + 1) % random_set_count]] for i, random in enumerate(random_concepts)
        ]
        scores = {}
        with tempfile.TemporaryDirectory() as save_path, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interpreter = TCAV(model, layers, classifier=classifier(), save_path=save_path)
            for k, x in classes.items():
                results = interpreter.interpret(torch.from_numpy(x), experiments, target=k)
                for name in concepts:
                    for layer in layers:
                        keys = [f"{by_name[name].id}-{random.id}" for random in random_concepts]
                        scores[name, layer, k] = np.array([float(results[key][layer]["sign_count"][0]) for key in keys])
        return scores

    contenders = {"ours": ours, "floor": floor, "cav_fits": cav_fits, "tests": tests}
    if not args.resnet50:  # Captum on ResNet-50 would take an hour here
        contenders |= {"captum": lambda: captum(DefaultClassifier), "captum_cavs": lambda: captum(lambda: CaptumCav(0))}
    timings: dict[str, list[float]] = {name: [] for name in contenders}
    outputs = {}
    for round_ in range(ROUNDS):  # rotating order, fastest round counts
        names = list(contenders)[round_:] + list(contenders)[:round_]
        for name in names:
            started = time.perf_counter()
            outputs[name] = contenders[name]()
            timings[name].append(time.perf_counter() - started)
    best = {name: min(values) for name, values in timings.items()}
    report = {
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "model": "resnet50 (seeded)" if args.resnet50 else "demo CNN (honest)",
        "work": dict(
            concepts=len(concepts),
            random_sets=random_set_count,
            examples=examples,
            layers=layers,
            classes=CLASSES,
            inputs_per_class=inputs_per_class,
        ),
        "rounds": ROUNDS,
        "seconds": {name: round(value, 3) for name, value in best.items()},
        "overhead_vs_floor": round(best["ours"] / best["floor"], 3),
    }
    if not args.resnet50:
        report |= {
            "speedup_vs_captum": round(best["captum"] / best["ours"], 2),
            "speedup_vs_captum_same_cavs": round(best["captum_cavs"] / best["ours"], 2),
            "max_score_difference_same_cavs": max(
                float(np.abs(outputs["ours"][key] - outputs["captum_cavs"][key]).max()) for key in outputs["ours"]
            ),
        }
    print(report)
    write_results("tcav_resnet50" if args.resnet50 else "tcav", report, args.quick)


if __name__ == "__main__":
    main()
