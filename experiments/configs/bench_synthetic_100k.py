"""Retrieval-cost benchmark on the 100K-item planted corpus (a development size: ~20 min on a
loaded 2-core CPU, most of it MoNN training and its exhaustive reference).

  python -m experiments.benchmark_retrieval --config=experiments/configs/bench_synthetic_100k.py \
      --out=runs/bench_100k.json
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.corpus = "synthetic"  # a hsnn_jax.data.synthetic preset
  c.corpus_overrides = ml_collections.ConfigDict()  # SyntheticConfig fields to change
  c.suites = ("dot", "monn")
  c.seed = 0
  c.k = 100
  c.num_queries = 256  # planted dot-product queries (exhaustive reference on all of them)
  c.monn_queries = 64  # MoNN queries: its exhaustive reference is the expensive part
  c.query_batch = 32
  c.history_len = 20
  c.item_chunk = 8192

  c.index = ml_collections.ConfigDict()
  c.index.kmeans_iters = 10
  c.index.dot_nodes_per_level = (64, 64)
  c.index.monn_index_shapes = ((64, 32, 8),)  # nodes per level; several: one sweep each
  c.index.monn_embedding = "keys_tower"  # 'keys_tower' | 'item_tower' | 'planted'
  c.index.key_weight = 4.0  # keys_tower: weight of the category part
  c.dot_node_scoring = "representative"  # 'representative' | 'embedding'
  # MoNN beam search node scoring, one sweep per entry 'rule:R' (a node scores as the max over R
  # member items): 'nearest:1' is HSNN's representative item (nearest the node embedding);
  # 'mean_score:R' takes the R members of highest mean MoNN score over calibration users.
  c.index.monn_node_scoring = ("nearest:1", "mean_score:2", "mean_score:4")
  c.index.calibration_users = 64  # training users, never queries

  c.monn = ml_collections.ConfigDict()
  c.monn.preset = "monn_small"
  c.monn.steps = 300
  c.monn.batch_size = 128
  c.monn.num_negatives = 128
  c.monn.learning_rate = 3e-3
  c.monn.init_from_planted = True  # warm-start the user and item id embeddings

  # Beam settings 'b_0,...,b_{L-1}[:max items scored per query]'.
  c.dot_sweep = ("4,32:500", "8,64:1000", "16,128:2000", "16,256:4000", "32,512:8000")
  c.monn_sweep = ("16,128,256:1000", "32,256,512:2000", "64,512,1024:1000", "64,512,1024:2000",
                  "64,512,1024:8000")
  c.two_stage_k_primes = (200, 1000, 2000, 4000)

  c.peers = ml_collections.ConfigDict()
  c.peers.nlist = 256
  c.peers.hnsw_m = 16
  c.peers.scann_leaves = 256
  # Search-time knob per peer (IVF nprobe, HNSW efSearch, ScaNN leaves searched); 0 = default.
  # Sweeps wide enough that each peer reaches every matched-exactness target when it can.
  c.peer_settings = ml_collections.ConfigDict({
      "faiss_flat": (0,), "faiss_ivf": (4, 16, 32, 64, 128), "faiss_ivf_rcq": (4, 16, 32, 64, 128),
      "faiss_hnsw": (64, 128, 256, 512, 1024), "scann": (8, 32, 64, 128)})
  c.matched_exactness = (0.9, 0.95, 0.99)  # targets of the matched-exactness comparison
  return c
