"""The training curves of a run: training loss and validation mAP per epoch, every stage (training_curves.png)."""

from __future__ import annotations

from pathlib import Path


def plot_training_curves(stages: list[dict], path: str | Path) -> None:
    """Training loss and validation mAP per epoch, all stages one after the other, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, map_axis) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for record in stages:
        history = record.get("history") or []
        if not history:
            continue
        epochs = [offset + entry["epoch"] for entry in history]
        label = f"stage {record['stage']} ({record['prediction']})"
        loss_axis.plot(epochs, [entry["train_loss"] for entry in history], marker="o", label=label)
        map_axis.plot(epochs, [entry["validation_mAP"] for entry in history], marker="o", label=label)
        best = record.get("best_epoch")
        if best:
            map_axis.scatter(
                [offset + best], [history[best - 1]["validation_mAP"]], s=120, facecolors="none", edgecolors="k"
            )
        offset = epochs[-1]
    loss_axis.set(title="training loss (stage's loss terms)", xlabel="epoch (all stages)", ylabel="loss")
    map_axis.set(
        title="validation mAP of the stage's prediction (o: kept epoch)", xlabel="epoch (all stages)", ylabel="mAP (%)"
    )
    for axis in (loss_axis, map_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


__all__ = ["plot_training_curves"]
