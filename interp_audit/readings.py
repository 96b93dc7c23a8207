"""Aggregates of the method tables that several readers print (``report show``, the HTML report, the model card, the
gates, the flow's progress lines, the version diff): each is computed here once, so no two readers can disagree."""

from __future__ import annotations

import pandas as pd


def similarity_by_step(checks: pd.DataFrame) -> pd.DataFrame:
    """``sanity_checks`` per randomisation step (and the module re-drawn through): the mean and highest rank
    similarity of the explanations to the model's own, and the mean of their absolute weights' (columns step,
    randomised_through, mean, max, mean_abs; step order)."""
    return (
        checks.groupby(["step", "randomised_through"], sort=True)
        .agg(mean=("similarity", "mean"), max=("similarity", "max"), mean_abs=("similarity_abs", "mean"))
        .reset_index()
    )


def largest_drops(results: pd.DataFrame) -> pd.DataFrame:
    """``ablation_results`` reduced to one row per layer and K: the class whose balanced accuracy drops most when
    its K most important units are zeroed."""
    return results.loc[results.groupby(["layer", "k"], sort=True)["accuracy_drop"].idxmax()].reset_index(drop=True)


def versus_random(units: pd.DataFrame) -> pd.DataFrame:
    """``actmax_units`` per layer beside its re-drawn copy (``ops.activation_max.sanity``): of the renders with a
    ratio for both (compared), how many of the model's beat the copy's (beating) and both mean ratios; and the
    mean robustness of both over every render. Empty without the check."""
    columns = ["layer", "compared", "beating", "ratio", "random_ratio", "robustness", "random_robustness"]
    if units.empty or "random_robustness" not in units or units["random_robustness"].isna().all():
        return pd.DataFrame(columns=columns)
    checked = units.dropna(subset=["random_robustness"])
    compared = checked.dropna(subset=["ratio", "random_ratio"])
    ratios = compared.assign(beating=compared["ratio"] > compared["random_ratio"]).groupby("layer")
    robustness = checked.groupby("layer")
    return (
        pd.DataFrame(
            {
                "compared": ratios.size(),
                "beating": ratios["beating"].sum(),
                "ratio": ratios["ratio"].mean(),
                "random_ratio": ratios["random_ratio"].mean(),
                "robustness": robustness["robustness"].mean(),
                "random_robustness": robustness["random_robustness"].mean(),
            }
        )
        .fillna({"compared": 0, "beating": 0})
        .astype({"compared": int, "beating": int})
        .rename_axis("layer")
        .reset_index()[columns]
    )
