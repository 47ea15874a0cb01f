"""Training configurations: ``default.py`` and one file per recipe that overrides it.

They are part of the package, so a config file anywhere can build on them::

    from nin_jax.configs import cifar10

    def get_config():
        config = cifar10.get_config()
        config.learning_rate = 0.05
        return config

The repository's top-level ``configs/`` is this folder, so
``--config=configs/svhn.py`` works from the repository root.
"""
