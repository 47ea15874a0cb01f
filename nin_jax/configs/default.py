"""Defaults for every nin_jax run; the other configs override a few fields.

Launch (the seed's CIFAR network on the embedded digits, as configs/digits.py tunes it):
  python -m nin_jax.main --config=configs/default.py --workdir=/tmp/nin_default
Any field can be overridden: --config.batch_size=64 --config.model.dropout_rate=0.3
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # --- Data -----------------------------------------------------------------
    # TFDS name: digits (embedded, offline), mnist, cifar10, cifar100, svhn_cropped.
    config.dataset = "digits"
    # TFDS data directory (a gs:// path works on Cloud); None: TFDS's default
    # (~/tensorflow_datasets or $TFDS_DATA_DIR).
    config.data_dir = ml_collections.config_dict.placeholder(str)
    # Let TFDS read an already prepared copy of the dataset from its public bucket.
    config.try_gcs = False
    # TFDS split strings for training and for the final evaluation.
    config.train_split = "train"
    config.eval_split = "test"
    # True: hold out the paper's validation split of the training data and
    # evaluate on it instead of eval_split (nin_jax/splits.py says which examples).
    config.validation = False
    # 'standardize' (per-channel mean/std), 'gcn_zca' (the paper's CIFAR
    # preprocessing) or 'lcn' (the paper's SVHN one); see nin_jax/preprocessing.py.
    config.preprocess = "standardize"
    # For 'standardize': a fixed per-channel mean and std, in pixel units (0-255), instead
    # of the training split's; () fits them. nin_jax.convert sets them to the
    # normalisation a PyTorch model was trained with (docs/TOOLS.md).
    config.standardize_mean = ()
    config.standardize_std = ()
    # For 'gcn_zca': True (ours) rescales the whitened training images to RMS 1;
    # False keeps the maxout/NIN papers' scale (docs/RECIPES.md, "Diagnosis", 5).
    config.zca_unit_rms = True
    # 'none' or 'crop_flip' (pad 4, random crop back to size, horizontal flip).
    config.augment = "none"
    # True: put the uint8 training split on every device once and gather each
    # batch there (no host work per step); see docs/PERFORMANCE.md for when.
    config.data_on_device = False

    # --- Model (fields of nin_jax.models.NIN) ---------------------------------
    config.model = ml_collections.ConfigDict()
    # Widths of each mlpconv block (k x k conv, cccp1, cccp2); the last block's
    # class layer has num_classes outputs and is not listed.
    config.model.widths = ((192, 160, 96), (192, 192, 192), (192, 192))
    # Kernel size of each block's first convolution.
    config.model.kernel_sizes = (5, 5, 3)
    # Dropout after the pooling of the first two blocks.
    config.model.dropout_rate = 0.5
    # 'gap' (global average pooling, the paper's NIN), 'fc' or 'fc_dropout' (a
    # dense layer on the flattened class maps, the paper's ablation).
    config.model.head = "gap"
    # Fan-in-scaled kernel initialisation: 'lecun_normal' (Flax's default),
    # 'he_normal' (keeps activations' scale through ReLU layers: the paper recipes) or
    # 'he_normal_zero_mean' (the same, each kernel of mean 0 over its fan-in: CIFAR-100).
    config.model.kernel_init = "lecun_normal"
    # None: kernel_init; a float: N(0, init_std) for every kernel, as in the authors' code.
    config.model.init_std = ml_collections.config_dict.placeholder(float)
    # The class layer's (the last 1x1 convolution's) kernel initialisation: None as
    # the others, or N(0, class_init_std) (0: zeros); and its initial bias.
    config.model.class_init_std = ml_collections.config_dict.placeholder(float)
    config.model.class_bias = 0.0
    # 'auto' (matmul/im2col on CPU, XLA convolutions on GPU/TPU), 'xla', 'matmul'
    # ('matmul' is also the faster for num_models > 1 on a GPU: docs/PERFORMANCE.md)
    # or 'fused' (TPU, one model: XLA convolutions and a Pallas kernel for the rest of
    # each block, about half the HBM traffic: docs/PERFORMANCE.md; interpreted, so
    # slow, on a CPU).
    config.model.conv_impl = "auto"
    # Computation dtype: 'float32' or 'bfloat16' (parameters stay float32).
    config.dtype = "float32"

    # --- Optimisation ---------------------------------------------------------
    # Global batch size, split over all devices of all processes.
    config.batch_size = 128
    # Length of training in epochs, used when num_train_steps is -1.
    config.num_epochs = 10
    # Length of training in steps; -1: num_epochs * steps per epoch.
    config.num_train_steps = -1
    # Examples per epoch of the learning-rate schedule (warmup, decays, num_epochs);
    # None: the training split's size. Set it to keep a recipe's rate at every step
    # on other data (a subset, a real-image stand-in: docs/RECIPES.md).
    config.schedule_train_examples = ml_collections.config_dict.placeholder(int)
    # Peak learning rate (after warmup).
    config.learning_rate = 0.01
    # 'cosine' (decay to 0), 'step' (multiply by lr_decay_factor at each of
    # lr_decay_epochs) or 'constant'.
    config.lr_schedule = "cosine"
    # Linear warmup from 0 over this many epochs (NIN's ReLU class maps die
    # when the first steps are too large; see docs/RECIPES.md, "Diagnosis").
    config.warmup_epochs = 1.0
    # For lr_schedule='step': epochs at which the rate is multiplied by lr_decay_factor.
    config.lr_decay_epochs = (80, 160)
    config.lr_decay_factor = 0.1
    # SGD momentum, and whether to use Nesterov's variant.
    config.momentum = 0.9
    config.nesterov = False
    # L2 weight decay on convolution kernels (not biases), added to the gradient
    # as in PyTorch's SGD.
    config.weight_decay = 1e-4
    # The authors' per-layer learning rates: biases 2x, the class layer 0.1x.
    config.lr_multipliers = False

    # --- Bookkeeping ----------------------------------------------------------
    # Steps between training log lines.
    config.log_every_steps = 50
    # Steps between evaluations on eval_split; -1: once per epoch. There is
    # always one at the end.
    config.eval_every_steps = -1
    # Steps between checkpoints (there is always one at the end).
    config.checkpoint_every_steps = 1000
    # Checkpoints kept in workdir/checkpoints.
    config.max_checkpoints = 3
    # Seconds a gs:// file operation is retried (429, 5xx, dropped connections) before
    # the run stops with one "error: ... the bucket did not answer" line (exit 2; the
    # same command resumes from the newest complete checkpoint). Every client gets it:
    # nin_jax's own retries, TensorFlow's GCS file system and TensorStore (Orbax's
    # arrays), each keeping its 1-32 s backoff (nin_jax/retries.py). 120 s is
    # google-cloud-storage's default retry deadline: an outage of up to two minutes
    # costs a pause, a longer one ends the run within about twice this.
    config.storage_retry_seconds = 120
    # Seed of the data order and augmentation, and (unless init_seed is set) of
    # parameter initialisation and dropout.
    config.seed = 0

    # --- Several processes (nin_jax/peers.py; docs/SCALING.md) ----------------
    # A process of a multi-process run that shows no sign of life for this many
    # seconds (SIGKILL, an OOM kill, a failed host) is taken as lost: every other
    # process says which one and exits with code 75. A minute is far above any
    # stall of a healthy TPU-pod host and below the 100 s of JAX's own default;
    # JAX's runtime gets 2x + 10 s (jax.distributed.initialize's
    # heartbeat_timeout_seconds) as the backstop, which ends with a C++ abort.
    config.heartbeat_timeout_seconds = 60
    # How long a process that ends waits for the others in the distributed runtime's
    # shutdown barrier (jax.distributed.initialize's shutdown_timeout_seconds; JAX's
    # default is 300). They have all passed a final sync or saved the same stop step
    # by then, so the wait is for the others' last writes.
    config.shutdown_timeout_seconds = 120

    # --- Many models in one compiled step (nin_jax/ensemble.py) --------------
    # Models trained at once on the same batches; K > 1 stacks them on a leading
    # axis and vmaps the step (ours: seeds and sweeps for the paper's rows).
    config.num_models = 1
    # Seed of model k's initialisation and dropout: init_seed + k (None: seed).
    # Data order and augmentation always follow seed.
    config.init_seed = ml_collections.config_dict.placeholder(int)
    # Per-model values of a hyperparameter, num_models of them; () for the
    # config's own value for every model.
    config.sweep = ml_collections.ConfigDict()
    config.sweep.learning_rate = ()
    config.sweep.weight_decay = ()
    config.sweep.dropout_rate = ()

    # --- Profiling ------------------------------------------------------------
    # (first, last): a jax.profiler trace of those training steps in
    # workdir/tensorboard (TensorBoard's Profile tab); () for none. Start at 2 or
    # later: step 1 compiles.
    config.profile_steps = ()
    return config
