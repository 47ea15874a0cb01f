"""Datasets shipped with nin_jax.

``standins`` builds the real-image stand-in arrays with numpy alone (no
TensorFlow), so scripts can use them on machines without TF; ``digits`` is the
TFDS builder over them and ``fashion_standins`` the one of Fashion-MNIST at the
other recipes' shapes, registered when ``nin_jax.input_pipeline`` imports them.
"""
