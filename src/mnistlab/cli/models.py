"""`mnistlab models`: the models and the study's configurations in one table, then each model's
parameter count per layer, laid out like a hand calculation, and the shape of the data after each layer."""

from __future__ import annotations

from mnistlab.configurations import CONFIGURATIONS, DEFAULT_STUDY
from mnistlab.errors import UserError
from mnistlab.inside import format_shapes
from mnistlab.models import MODELS, count_parameters, create_model, parameter_table


def add_arguments(p) -> None:
    p.add_argument("names", nargs="*", help="models (or configurations: their models) to show (default: all)")


def run(args) -> int:
    if not args.names:
        print(models_table() + "\n")
    models = [model_of(name) for name in args.names] if args.names else list(MODELS)
    print(
        "\n\n".join(
            f"{format_parameter_table(name)}\n  shapes {format_shapes(create_model(name))}"
            for name in dict.fromkeys(models)
        )
    )
    return 0


def model_of(name: str) -> str:
    """The model of a name: a model's own, or a configuration's."""
    if name in MODELS:
        return name
    if name in CONFIGURATIONS:
        return CONFIGURATIONS[name].model
    known = f"models: {', '.join(MODELS)}; configurations: {', '.join(CONFIGURATIONS)}"
    raise UserError(f"unknown model or configuration {name!r}; {known}")


def models_table() -> str:
    """One Markdown table of every name `train --model` takes (a model) and `compare --models` takes (a
    configuration of the study): its label, family, and for a configuration its role and what it trains."""
    lines = [
        "| name | label | family | `train --model` | `compare --models`: role, what it trains | parameters |",
        "|---|---|---|---|---|---:|",
    ]
    for name in dict.fromkeys([*MODELS, *CONFIGURATIONS]):
        config = CONFIGURATIONS.get(name)
        model = config.model if config else name
        label = config.label if config else MODELS[name].label
        trains = "no"
        if config:
            role = config.role if config.base is None else f"{config.role} (varies `{config.base}`)"
            what = [f"model `{config.model}`", *(["augmentation"] if config.augment else [])]
            what += [f"{k.replace('_', '-')} {v}" for k, v in config.settings]
            default = ", in the default study" if name in DEFAULT_STUDY else ""
            trains = f"{role}{default}: {', '.join(what)}"
        cells = [f"`{name}`", label, MODELS[model].family, "yes" if name in MODELS else "no", trains]
        lines.append(f"| {' | '.join(cells)} | {count_parameters(create_model(model)):,} |")
    return "\n".join(lines)


def format_parameter_table(name: str) -> str:
    """The per-layer parameter counts of a registered model, laid out like a hand calculation."""
    model = create_model(name)
    rows = parameter_table(model)
    width = max(len(formula) for _, formula, _ in rows)
    lines = [f"{name} ({MODELS[name].label}): {count_parameters(model):,} parameters"]
    lines += [f"  {layer:<6} {formula:<{width}} = {count:>9,}" for layer, formula, count in rows]
    lines.append(f"  {'total':<6} {' + '.join(f'{c:,}' for _, _, c in rows)} = {count_parameters(model):,}")
    return "\n".join(lines)
