"""Training recipes: every hyperparameter of a recipe in one visible dict, per model.

    python -m experiments.run --recipe fast --model resnet18 --impl scratch --backend cupy
    python -m experiments.run --recipe seed --model cnn --epochs 3        # a flag overrides the recipe

`seed` is the original study's setup, row for row; `fast` is a modern short schedule (the kind
that gets ResNet-18 to ~89% on CIFAR-10 in 20 epochs). Without --recipe the flags' own
defaults (BASE) apply. Whatever a run used ends up resolved in its config.json.
"""

# the flags a recipe sets, with the values they take when neither a recipe nor a flag does
BASE = dict(optimizer="sgd", lr=0.01, momentum=0.9, nesterov=False, weight_decay=0.0, decay_norm_bias=True,
            label_smoothing=0.0, schedule="constant", warmup_epochs=0.0, epochs=1, batch_size=64, augment=False,
            norm="cifar")

RECIPES = {
    # The original notebooks: plain SGD for the CNN, Adam for ResNet-18, batch 64, 10 epochs,
    # Normalize(0.5, 0.5), no augmentation, no schedule, no weight decay.
    "seed": {
        "cnn": dict(optimizer="sgd", lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, label_smoothing=0.0,
                    schedule="constant", epochs=10, batch_size=64, augment=False, norm="half"),
        "resnet18": dict(optimizer="adam", lr=1e-3, momentum=0.0, nesterov=False, weight_decay=0.0,
                         label_smoothing=0.0, schedule="constant", epochs=10, batch_size=64, augment=False,
                         norm="half"),
    },
    # SGD with nesterov momentum, one-cycle learning rate (linear up over the first quarter,
    # linear down), weight decay on weights only (not BatchNorm parameters or biases), label
    # smoothing, random crop + flip.
    "fast": {
        "cnn": dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, decay_norm_bias=False,
                    label_smoothing=0.1, schedule="onecycle", epochs=20, batch_size=128, augment=True, norm="cifar"),
        "resnet18": dict(optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4,
                         decay_norm_bias=False, label_smoothing=0.1, schedule="onecycle", epochs=20, batch_size=512,
                         augment=True, norm="cifar"),
    },
}


def resolve(recipe, model, given):
    """The value of every recipe flag: the one given on the command line (not None), else the
    recipe's for this model, else BASE's. `given` maps flag names to parsed values."""
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"--recipe {recipe!r} is not one of: {', '.join(RECIPES)}")
    chosen = RECIPES[recipe].get(model, {}) if recipe else {}
    return {k: given[k] if given.get(k) is not None else chosen.get(k, default) for k, default in BASE.items()}
