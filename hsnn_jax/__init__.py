"""hsnn_jax: learned hierarchical indexes (HSNN / MoNN / LTI) for recommendation retrieval in JAX.

Importing this package must not import tensorflow_datasets: the TFDS builders live in
`hsnn_jax.data.tfds_builders` and are imported only by the data-preparation entry point.
"""

__version__ = "0.1.0"
