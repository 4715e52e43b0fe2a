"""Retrieval-cost benchmark on the 1M-item planted corpus (BENCHMARKS.md §E). 17 minutes on an
idle 2-core CPU (about an hour on a loaded one), a quarter of it the MoNN's exhaustive reference on
config.monn_queries queries.

  python -m experiments.benchmark_retrieval --config=experiments/configs/bench_synthetic_1m.py \
      --out=runs/bench_1m.json
"""

from experiments.configs import bench_synthetic_100k


def get_config():
  c = bench_synthetic_100k.get_config()
  c.corpus = "synthetic_1m"
  c.dot_sweep = ("4,32:5000", "8,64:10000", "16,128:20000", "16,256:40000", "32,512:80000")
  # 256 codes at the last level: with fewer the prefixes collapse (64x32x8 gives 2,030 leaves of up
  # to 1,954 items on this corpus) and the top 100 spread over more leaves than a 1% budget holds.
  c.index.monn_index_shapes = ((64, 64, 256),)
  # Level-2 slots capped: with 256 codes the widest level-1 node has far more children than the
  # average, and uncapped slots (b_1 x widest) are padding every query computes.
  c.monn_sweep = ("16,128,256:1024,2048,10000", "32,256,1024:2048,4096,10000",
                  "64,256,1024:2048,4096,10000", "64,256,1024:2048,4096,20000",
                  "64,512,1024:2048,8192,20000")
  c.two_stage_k_primes = (2000, 10000, 20000, 40000)
  c.peers.nlist = 1024
  c.peers.scann_leaves = 1000
  c.peer_settings.faiss_ivf = (16, 64, 128, 256, 512)
  c.peer_settings.faiss_ivf_rcq = (16, 64, 128, 256, 512)
  c.peer_settings.scann = (20, 100, 200, 400)
  return c
