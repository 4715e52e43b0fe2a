"""Retrieval-cost benchmark on the 10M-item planted corpus (3-level planted tree). Sized for a
GPU host: the MoNN's exhaustive reference alone is ~10x the 1M run's.

  python -m experiments.benchmark_retrieval --config=experiments/configs/bench_synthetic_10m.py \
      --out=runs/bench_10m.json
"""

from experiments.configs import bench_synthetic_1m


def get_config():
  c = bench_synthetic_1m.get_config()
  c.corpus = "synthetic_10m"
  c.monn_queries = 32
  c.item_chunk = 65536
  c.index.dot_nodes_per_level = (128, 64, 16)
  c.index.monn_index_shapes = ((128, 64, 16),)
  c.dot_sweep = ("8,64,128:50000", "16,128,256:100000", "32,256,512:200000")
  c.monn_sweep = ("16,128,256:100000", "32,256,512:200000", "64,512,1024:400000")
  c.two_stage_k_primes = (20000, 100000, 200000)
  c.peers.nlist = 4096
  c.peers.scann_leaves = 4000
  c.peer_settings.scann = (40, 200)
  return c
