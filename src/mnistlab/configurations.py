"""The study's configurations, each declared with what it is (`mnistlab compare --models NAME`).

A configuration is a registered model (models.MODELS), with or without augmentation, and the
training settings of its own, if any; every other setting is the study's (StudyConfig.train).
What it is, the report reads from its declaration, never from its name: its label, its family
(its model's: convolutional or fully connected) and its role in the comparisons:

  baseline      a family's plain model; the baselines and size-matched models are compared
                with each other, and the best model of a family is picked among its configurations
  size-matched  a model of one family scaled to another's parameter count, compared likewise
  ablation      a baseline (`base`) with one regularizer added, or all: each is compared with it
  augmented     a baseline (`base`) trained with augmentation alone, outside the ablation

To add one, add a `Configuration` to CONFIGURATIONS; it joins the default study only when it is
also in DEFAULT_STUDY.
"""

from __future__ import annotations

from dataclasses import dataclass

from mnistlab.errors import UserError
from mnistlab.models import MODELS

BASELINE, MATCHED, ABLATION, AUGMENTED = "baseline", "size-matched", "ablation", "augmented"
EXPERIMENT = "experiment"  # a run of the claims' experiments (claims.py), outside the report's comparisons
ROLES = (BASELINE, MATCHED, ABLATION, AUGMENTED, EXPERIMENT)


@dataclass(frozen=True)
class Configuration:
    """One configuration of the study: what it trains, and what it is."""

    name: str
    model: str  # a name of models.MODELS
    label: str  # its name for a learner, in the report
    role: str  # one of ROLES
    augment: bool = False
    base: str | None = None  # the baseline that an ablation or augmented configuration varies
    settings: tuple[tuple[str, object], ...] = ()  # TrainConfig fields of its own, over the study's
    may_fail: bool = False  # a run that stops (loss not finite, accuracy at chance) is a result, not an error

    def __post_init__(self):
        if self.model not in MODELS:
            known = ", ".join(MODELS)
            raise UserError(f"configuration {self.name!r}: unknown model {self.model!r}; known models: {known}")
        if self.role not in ROLES:
            raise UserError(f"configuration {self.name!r}: its role is one of {', '.join(ROLES)}, got {self.role!r}")
        if (self.base is None) != (self.role in (BASELINE, MATCHED)):
            needs = "has no base" if self.base is not None else "names the baseline it varies (base=...)"
            raise UserError(f"configuration {self.name!r}: a configuration of role {self.role!r} {needs}")

    @property
    def family(self) -> str:
        """Its model's declared family (models.Registered.family)."""
        return MODELS[self.model].family

    def declaration(self) -> dict:
        """What results.json keeps of it, for the report."""
        return {
            "model": self.model,
            "augment": self.augment,
            "label": self.label,
            "family": self.family,
            "role": self.role,
            "base": self.base,
        }


CONFIGURATIONS = {
    c.name: c
    for c in (
        Configuration("lenet5", "lenet5", "LeNet-5", BASELINE),
        Configuration("mlp", "mlp", "MLP 500-150", BASELINE),
        Configuration("mlp-small", "mlp-small", "MLP 55-17 (LeNet-5 size)", MATCHED),
        Configuration("lenet5-bn", "lenet5-bn", "LeNet-5 + batch norm", ABLATION, base="lenet5"),
        Configuration("lenet5-dropout", "lenet5-dropout", "LeNet-5 + dropout", ABLATION, base="lenet5"),
        Configuration("lenet5-augment", "lenet5", "LeNet-5 + augmentation", ABLATION, augment=True, base="lenet5"),
        Configuration("lenet5-all", "lenet5-reg", "LeNet-5 + all three", ABLATION, augment=True, base="lenet5"),
        Configuration("mlp-augment", "mlp", "MLP 500-150 + augmentation", AUGMENTED, augment=True, base="mlp"),
    )
}

# The configurations of `mnistlab compare` without --models; the claims' experiments need them all.
DEFAULT_STUDY = (
    "lenet5",
    "mlp",
    "mlp-small",
    "lenet5-bn",
    "lenet5-dropout",
    "lenet5-augment",
    "lenet5-all",
    "mlp-augment",
)


def declared(results: dict) -> dict[str, dict]:
    """Each configuration of results.json as declared: its `declaration()`. A results.json written
    before configurations declared themselves holds only model, augment and label; the rest then
    comes from CONFIGURATIONS, which held the same configurations under the same names."""
    found = {}
    for name, kept in results["variants"].items():
        if "role" in kept:
            found[name] = kept
        elif name in CONFIGURATIONS:
            found[name] = {**CONFIGURATIONS[name].declaration(), **kept}
        else:
            found[name] = {**kept, "family": None, "role": None, "base": None}
    return found
