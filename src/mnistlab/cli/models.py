"""`mnistlab models`: the models with their parameter counts per layer, laid out like a hand calculation,
and the shape of the data after each layer."""

from __future__ import annotations

from mnistlab.inside import format_shapes
from mnistlab.models import (
    MODELS,
    check_model_name,
    count_parameters,
    create_model,
    parameter_table,
)


def add_arguments(p) -> None:
    p.add_argument("names", nargs="*", help="models to show (default: all)")


def run(args) -> int:
    for name in args.names or MODELS:
        check_model_name(name)
    print("\n\n".join(f"{format_parameter_table(name)}\n  shapes {format_shapes(create_model(name))}"
                       for name in args.names or MODELS))  # fmt: skip
    return 0


def format_parameter_table(name: str) -> str:
    """The per-layer parameter counts of a registered model, laid out like a hand calculation."""
    model = create_model(name)
    rows = parameter_table(model)
    width = max(len(formula) for _, formula, _ in rows)
    lines = [f"{name}: {count_parameters(model):,} parameters"]
    lines += [f"  {layer:<6} {formula:<{width}} = {count:>9,}" for layer, formula, count in rows]
    lines.append(f"  {'total':<6} {' + '.join(f'{c:,}' for _, _, c in rows)} = {count_parameters(model):,}")
    return "\n".join(lines)
