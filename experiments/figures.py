"""One figure per table report (matplotlib, Agg backend): quality against cost (the fraction of
items scored per query) for tables with the 'hierarchical' extra, the per-seed spread of the
first column for the others."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position

from experiments import tables  # noqa: E402  pylint: disable=wrong-import-position


def has_values(report: dict) -> bool:
  return any(cell["values"] for cell in report["cells"])


def _quality_vs_cost(ax, report: dict) -> None:
  """Each cell: beam-search recall@20 at its items-scored fraction (one dot per seed, the mean
  with its std), and the same model's exhaustive recall@20 at cost 1.0."""
  for i, cell in enumerate(report["cells"]):
    color = f"C{i}"
    pts = [(v["items_scored_frac"], v["recall@20"]) for v in cell["values"]
           if "items_scored_frac" in v and "recall@20" in v]
    exh = [v["exhaustive_recall@20"] for v in cell["values"] if "exhaustive_recall@20" in v]
    label = f"{cell['dataset']}: {cell['row']}"
    if pts:
      xs, ys = zip(*pts)
      ax.scatter(xs, ys, color=color, alpha=0.5, s=14)
      s_x, s_y = tables.mean_std(xs), tables.mean_std(ys)
      ax.errorbar([s_x["mean"]], [s_y["mean"]], yerr=[s_y["std"]], fmt="o", color=color,
                  label=f"{label}, beam search")
    if exh:
      s = tables.mean_std(exh)
      ax.errorbar([1.0], [s["mean"]], yerr=[s["std"]], fmt="s", color=color, mfc="none",
                  label=f"{label}, exhaustive")
  ax.set_xscale("log")
  ax.set_xlabel("items scored per query (fraction of the corpus)")
  ax.set_ylabel("Recall@20")


def _seed_spread(ax, report: dict) -> None:
  """The table's first recall column (else its first): one dot per seed, a bar at the mean,
  per cell."""
  column = next((c for c in report["columns"] if c.startswith("recall@")), report["columns"][0])
  labels = []
  for i, cell in enumerate(report["cells"]):
    ys = [v[column] for v in cell["values"] if isinstance(v.get(column), (int, float))]
    labels.append(f"{cell['dataset']}\n{cell['row']}")
    if ys:
      ax.scatter([i] * len(ys), ys, color=f"C{i % 10}", s=18, zorder=3)
      ax.hlines(sum(ys) / len(ys), i - 0.3, i + 0.3, color="k")
  ax.set_xticks(range(len(labels)))
  ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
  ax.set_ylabel(column)


def render(report: dict, path: str) -> bool:
  """Writes the report's figure to `path` (PNG); False (and nothing written) if it has no
  recorded values."""
  if not has_values(report):
    return False
  fig, ax = plt.subplots(figsize=(7, 4.5))
  if "items_scored_frac" in report["columns"]:
    _quality_vs_cost(ax, report)
    ax.legend(fontsize=7)
  else:
    _seed_spread(ax, report)
  ax.set_title(f"{report['title']} ({report['table']})", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120, format="png")
  plt.close(fig)
  return True
