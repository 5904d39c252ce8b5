import pytest

import mnistlab.plots as plots

# first and last epoch of a real 2-epoch LeNet-5 run: (loss, accuracy) per split; its accuracy
# axis gets tick labels as wide as "97.25", which pushed the y-label onto the loss panel
REAL = {"train": ((0.0721, 0.9779), (0.0499, 0.9851)), "val": ((0.0952, 0.9694), (0.0660, 0.9786)),
        "test": ((0.0643, 0.9792), (0.0453, 0.9862))}  # fmt: skip


def history(epochs):
    rows = []
    for e in range(1, epochs + 1):
        t = (e - 1) / (epochs - 1)
        row = {"epoch": e}
        for split, ((loss0, acc0), (loss1, acc1)) in REAL.items():
            row[f"{split}_loss"], row[f"{split}_acc"] = loss0 + t * (loss1 - loss0), acc0 + t * (acc1 - acc0)
        rows.append(row)
    return rows


@pytest.mark.parametrize("epochs", [2, 3, 10])
def test_curves_have_whole_epoch_ticks_and_labels_clear_of_the_other_panel(tmp_path, monkeypatch, epochs):
    plots.plot_curves(history(epochs), tmp_path / "curves.png", title="lenet5")
    assert (tmp_path / "curves.png").stat().st_size > 0
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))  # keep the figure open
    plots.plot_curves(history(epochs), tmp_path / "unused.png", title="lenet5")
    (fig,) = figures
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    loss, acc = fig.axes
    for ax in (loss, acc):
        lo, hi = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert shown and all(float(t).is_integer() for t in shown), shown
    # the accuracy panel (its y-label included) starts a visible gap to the right of the loss panel,
    # not on its frame (the gap was under 1 pixel)
    gap_inches = (acc.get_tightbbox(renderer).x0 - loss.get_tightbbox(renderer).x1) / fig.dpi
    assert gap_inches >= 0.05
    plots.plt.close(fig)
