"""Published reference numbers (docs/BENCHMARKS.md sections A-C), quoted to print beside ours.

These are other people's reported figures, copied with their source strings; this library did not
produce them. Every one ranks the full corpus. `format_comparison` prints them next to a run's
metrics for the dataset's protocol, on the metrics both report.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, Mapping, Tuple


@dataclasses.dataclass(frozen=True)
class PublishedResult:
  dataset: str  # canonical key, see DATASET_ALIASES
  protocol: str  # the BENCHMARKS.md section it is quoted from
  method: str
  metrics: Mapping[str, float]  # our metric names: 'recall@20', 'ndcg@10', 'hr@10', ...
  source: str


_LIGHTGCN = "A: LightGCN protocol, all items ranked, train items excluded"
_TIGER = "B: TIGER leave-one-out, full corpus (Recall@K = HR@K)"
_RAILS = "C: generative-recommenders / RAILS protocol, last item vs full corpus"
_NESCL = "NESCL repository README leaderboard"
_THIRD = "NESCL, as listed by third parties"
_TIGER_SRC = "arXiv 2305.05065 as re-quoted in public reimplementations"
_RAILS_SRC = "bailuding/rails and meta-recsys/generative-recommenders READMEs"


def _r20(recall, ndcg=None):
  return {"recall@20": recall, **({} if ndcg is None else {"ndcg@20": ndcg})}


def _tiger(r5, n5, r10, n10):
  return {"recall@5": r5, "ndcg@5": n5, "recall@10": r10, "ndcg@10": n10}


def _hr10(hr, ndcg):
  return {"hr@10": hr, "ndcg@10": ndcg}


PUBLISHED: Tuple[PublishedResult, ...] = (
    PublishedResult("gowalla", _LIGHTGCN, "LightGCN", _r20(0.1830, 0.1554), _NESCL),
    PublishedResult("gowalla", _LIGHTGCN, "SimpleX", _r20(0.1872, 0.1557), _NESCL),
    PublishedResult("gowalla", _LIGHTGCN, "UltraGCN", _r20(0.1862, 0.1580), _NESCL),
    PublishedResult("gowalla", _LIGHTGCN, "BSPM-EM", _r20(0.1920, 0.1597), _NESCL),
    PublishedResult("gowalla", _LIGHTGCN, "NESCL", _r20(0.1917, 0.1617), _NESCL),
    PublishedResult("gowalla", _LIGHTGCN, "HILL (+NESCL backbone)", _r20(0.1924, 0.1628),
                    "secondary description of arXiv 2604.12965; unverified"),
    PublishedResult("yelp2018", _LIGHTGCN, "NESCL", _r20(0.0743, 0.0611), _THIRD),
    PublishedResult("amazon-book", _LIGHTGCN, "NESCL", _r20(0.0624), _THIRD),
    PublishedResult("beauty", _TIGER, "TIGER (paper)", _tiger(.0454, .0321, .0648, .0384),
                    _TIGER_SRC),
    PublishedResult("beauty", _TIGER, "SASRec (tuned reimplementation)",
                    _tiger(.0469, .0305, .0688, .0375), "phonism/genrec README"),
    PublishedResult("beauty", _TIGER, "HSTU (reimplementation)", _tiger(.0486, .0340, .0708, .0412),
                    "phonism/genrec README"),
    PublishedResult("sports", _TIGER, "TIGER (paper)", _tiger(.0264, .0181, .0400, .0225),
                    _TIGER_SRC),
    PublishedResult("toys", _TIGER, "TIGER (paper)", _tiger(.0521, .0371, .0712, .0432),
                    _TIGER_SRC),
    PublishedResult("ml-1m", _RAILS, "SASRec", _hr10(.2853, .1603), _RAILS_SRC),
    PublishedResult("ml-1m", _RAILS, "HSTU-large", _hr10(.3294, .1893), _RAILS_SRC),
    PublishedResult("ml-1m", _RAILS, "HSTU-large + MoL", _hr10(.3412, .1979), _RAILS_SRC),
    PublishedResult("ml-20m", _RAILS, "SASRec", _hr10(.2889, .1621), _RAILS_SRC),
    PublishedResult("ml-20m", _RAILS, "HSTU-large", _hr10(.3556, .2098), _RAILS_SRC),
    PublishedResult("ml-20m", _RAILS, "HSTU-large + MoL", _hr10(.3661, .2181), _RAILS_SRC),
    PublishedResult("amazon-books", _RAILS, "SASRec", _hr10(.0306, .0164), _RAILS_SRC),
    PublishedResult("amazon-books", _RAILS, "HSTU-large", _hr10(.0478, .0262), _RAILS_SRC),
    PublishedResult("amazon-books", _RAILS, "HSTU-large + MoL", _hr10(.0613, .0350), _RAILS_SRC),
)

# Normalised name (lower case, letters and digits only) -> canonical key. Note Amazon-Book
# (LightGCN files, section A) and Amazon Books (5-core, RAILS, section C) are different datasets.
DATASET_ALIASES: Dict[str, str] = {
    "gowalla": "gowalla", "yelp2018": "yelp2018", "yelp": "yelp2018",
    "amazonbook": "amazon-book", "amazonbooks": "amazon-books",
    "beauty": "beauty", "sports": "sports", "sportsandoutdoors": "sports",
    "toys": "toys", "toysandgames": "toys",
    "ml1m": "ml-1m", "movielens1m": "ml-1m", "ml20m": "ml-20m", "movielens20m": "ml-20m",
}


# Caveats printed under a comparison.
NOTES: Dict[str, str] = {
    "ml-1m": "Only a partial ML-1M is in shared/data: numbers on it are not comparable "
             "(BENCHMARKS.md C).",
}


def canonical_dataset(name: str) -> str:
  """'Sports_and_Outdoors' -> 'sports'; unknown names come back normalised."""
  key = re.sub(r"[^a-z0-9]", "", name.lower())
  return DATASET_ALIASES.get(key, key)


def published_for(dataset_name: str) -> Tuple[PublishedResult, ...]:
  key = canonical_dataset(dataset_name)
  return tuple(r for r in PUBLISHED if r.dataset == key)


def format_comparison(dataset_name: str, our_metrics: Mapping[str, float]) -> str:
  """A plain-text table: published rows (quoted) and 'hsnn_jax (this run)', on shared metrics."""
  rows = published_for(dataset_name)
  if not rows:
    return f"No published reference numbers for dataset {dataset_name!r} (BENCHMARKS.md A-C)."
  names = []
  for r in rows:
    names += [m for m in r.metrics if m in our_metrics and m not in names]
  if not names:
    return (f"{dataset_name}: no metric in common with the published numbers "
            f"({', '.join(rows[0].metrics)}).")
  ours = "hsnn_jax (this run)"
  width = max(len(ours), *(len(r.method) for r in rows)) + 2
  fmt = lambda v: f"{v:>11.4f}" if v is not None else f"{'-':>11}"
  header = f"{'method':<{width}}" + "".join(f"{m:>11}" for m in names) + "  source"
  lines = [f"{dataset_name}: {rows[0].protocol}. Published numbers are quoted references, "
           "not produced by this library.", header, "-" * len(header)]
  for r in rows:
    lines.append(f"{r.method:<{width}}" + "".join(fmt(r.metrics.get(m)) for m in names)
                 + f"  {r.source}")
  lines.append(f"{ours:<{width}}"
               + "".join(fmt(float(our_metrics[m])) for m in names))
  note = NOTES.get(canonical_dataset(dataset_name))
  return "\n".join(lines + ([f"Note: {note}"] if note else []))
